"""Letterboxing shared by training and deployment (numpy + OpenCV, no torch).

The model sees a square ``S x S`` image: the original is resized so that its
longer side is ``S`` (aspect kept), then centred on a grey (114) canvas.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original ``orig_w x orig_h`` image maps into the square input: ``x' = x * scale + pad_x``."""

    scale: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int


def letterbox_params(width: int, height: int, size: int) -> tuple[LetterboxInfo, tuple[int, int]]:
    """Geometry only: ``(info, (new_w, new_h))`` for an image of ``width x height``."""
    scale = size / max(width, height)
    new_w = max(1, min(size, round(width * scale)))
    new_h = max(1, min(size, round(height * scale)))
    pad_x = (size - new_w) // 2
    pad_y = (size - new_h) // 2
    return LetterboxInfo(scale, float(pad_x), float(pad_y), int(width), int(height)), (new_w, new_h)


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """``image[H, W, 3]`` uint8 -> ``(out[S, S, 3] uint8, info)``."""
    h, w = image.shape[:2]
    info, (new_w, new_h) = letterbox_params(w, h, size)
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if info.scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    px, py = int(info.pad_x), int(info.pad_y)
    out[py:py + new_h, px:px + new_w] = image
    return out, info


def letterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Original-pixel ``boxes[N, 4]`` -> letterboxed-pixel boxes (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = boxes * info.scale
    out[:, [0, 2]] += info.pad_x
    out[:, [1, 3]] += info.pad_y
    return out


def unletterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Letterboxed-pixel ``boxes[N, 4]`` -> original-pixel boxes, clipped to the image (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] -= info.pad_x
    boxes[:, [1, 3]] -= info.pad_y
    boxes /= info.scale
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, info.orig_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, info.orig_h)
    return boxes
