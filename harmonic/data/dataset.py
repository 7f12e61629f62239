"""The torch ``Dataset`` for training and validation: decode, letterbox, augment, tensors.

Items follow ``docs/CONTRACTS.md``: ``image`` float32[3, S, S] RGB in [0, 1]
letterboxed with :func:`harmonic.data.letterbox.letterbox`, and a target with
``boxes`` float32[N, 4] xyxy in letterboxed pixels, ``labels`` int64[N] =
class index + 1 and ``image_id`` (int64 scalar). Ignored regions (COCO crowd,
VOC difficult) are not training targets and are dropped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harmonic.data.images import decode_image
from harmonic.data.letterbox import letterbox, letterbox_boxes
from harmonic.data.readers import ImageRecord
from harmonic.data.transforms import apply_transforms, build_train_transforms
from harmonic.errors import HarmonicError

Target = dict[str, torch.Tensor]


def load_image(path: Path) -> np.ndarray:
    """uint8[H, W, 3] RGB as displayed, decoded exactly as at inference
    (:func:`harmonic.data.images.decode_image`: EXIF orientation applied, gray / 16-bit / CMYK
    converted); a missing, corrupt or truncated file is a :class:`HarmonicError` naming it."""
    return decode_image(path)


class DetectionDataset(Dataset):
    """``records`` (from :mod:`harmonic.data.readers`) of images under ``images_dir``, letterboxed to ``img_size``.

    ``augment`` (default: ``train``) applies :func:`harmonic.data.transforms.build_train_transforms`.
    """

    def __init__(self, records: Sequence[ImageRecord], images_dir: str | Path, img_size: int, train: bool,
                 augment: bool | None = None, transforms: Any = None) -> None:
        self.records = list(records)
        self.images_dir = Path(images_dir)
        self.img_size = int(img_size)
        self.train = train
        self.augment = train if augment is None else augment
        self.transforms = transforms
        if self.augment and self.transforms is None:
            self.transforms = build_train_transforms(self.img_size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        r = self.records[i]
        path = self.images_dir / r.file_name
        img = load_image(path)
        if img.shape[:2] != (r.height, r.width):
            raise HarmonicError(f"{path}: image is {img.shape[1]}x{img.shape[0]} but its annotations "
                                f"say {r.width}x{r.height}")
        img, info = letterbox(img, self.img_size)
        keep = ~r.ignore
        boxes = torch.from_numpy(letterbox_boxes(r.boxes[keep], info))
        labels = torch.from_numpy(r.labels[keep] + 1)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if self.augment:
            image, boxes, labels = apply_transforms(self.transforms, image, boxes, labels)
        target = {"boxes": boxes.reshape(-1, 4).float(), "labels": labels.long(),
                  "image_id": torch.tensor(r.image_id, dtype=torch.int64)}
        return image.float().div_(255.0), target


def collate(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """``[(image[3, S, S], target), ...]`` -> ``(images[B, 3, S, S], [target, ...])``."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
