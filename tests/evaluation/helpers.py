"""Small hand-built ground truth and detections for the evaluation tests."""

from __future__ import annotations

import numpy as np

NAMES = ["circle", "triangle", "star"]


def make_gt(num_images: int = 6, per_image: int = 4, seed: int = 0, size: int = 128) -> dict:
    """COCO dict: ``num_images`` images, ``per_image`` well-separated boxes each, category_id = index + 1."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": size, "height": size, "file_name": f"{i}.png"} for i in range(num_images)]
    anns = []
    cell = size // 2
    for im in images:
        for j in range(per_image):
            cx, cy = (j % 2) * cell, (j // 2) * cell
            w, h = rng.uniform(20, 40, 2)
            x, y = cx + rng.uniform(2, cell - w - 2), cy + rng.uniform(2, cell - h - 2)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    return {"images": images, "annotations": anns, "categories": cats}


def shifted(bbox: list[float], dx: float, size: int = 128) -> list[float]:
    """``bbox`` moved by ``dx`` along x, to the left where moving right would leave the ``size`` px image
    (the evaluation clips such boxes; the IoU with the original is the same either way)."""
    x, y, w, h = bbox
    return [x + dx if x + dx + w <= size else x - dx, y, w, h]


def iou_of_shift(w: float, dx: float) -> float:
    """IoU of a box with itself shifted by ``dx`` along x (same height)."""
    inter = max(w - abs(dx), 0.0)
    return inter / (2 * w - inter)
