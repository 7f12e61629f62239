"""Box-aware training augmentation with ``torchvision.transforms.v2`` (no hand-written box maths).

The transforms act on the already letterboxed ``S x S`` uint8 image and its
``tv_tensors.BoundingBoxes``, and keep the canvas ``S x S``: horizontal flip,
scale jitter with translation (``RandomAffine``, the uncovered area filled with
the letterbox grey), photometric colour jitter, then ``SanitizeBoundingBoxes``
drops boxes that became degenerate (pushed out of the canvas).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harmonic.data.letterbox import PAD_VALUE


def build_train_transforms(img_size: int, hflip: float = 0.5, scale: tuple[float, float] = (0.6, 1.4),
                           translate: float = 0.15, color: bool = True, min_box_size: float = 2.0) -> v2.Compose:
    """Augmentation for ``(image uint8 Image[3, S, S], {"boxes": BoundingBoxes[N, 4] xyxy, "labels": [N]})``.

    ``scale`` is the zoom range of the affine scale jitter (``(1, 1)`` disables
    it), ``translate`` the max shift as a fraction of ``S``. Boxes smaller than
    ``min_box_size`` px after the geometry (and their labels) are removed.
    """
    ops: list[v2.Transform] = []
    if color:
        ops.append(v2.RandomPhotometricDistort(p=0.5))
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=hflip))
    if scale != (1.0, 1.0) or translate > 0:
        ops.append(v2.RandomAffine(degrees=0.0, translate=(translate, translate), scale=scale,
                                   fill=PAD_VALUE))
    ops.append(v2.SanitizeBoundingBoxes(min_size=min_box_size))
    return v2.Compose(ops)


def apply_transforms(transforms: v2.Transform, image: torch.Tensor, boxes: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``image uint8[3, S, S]``, ``boxes float32[N, 4]`` xyxy, ``labels int64[N]`` -> the same, augmented."""
    img = tv_tensors.Image(image)
    bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
    img, target = transforms(img, {"boxes": bb, "labels": labels})
    return (img.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor).float(),
            target["labels"])
