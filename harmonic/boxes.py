"""Box functions in numpy for the torch-free side (evaluation, runtime).

The training side uses ``torchvision.ops``; these are the numpy twins it lacks.
All boxes are ``float[N, 4]`` as ``x1, y1, x2, y2`` in pixels.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of ``boxes[N, 4]`` -> ``[N]`` float64 (zero for degenerate boxes)."""
    return _area(np.asarray(boxes, dtype=np.float64))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``a[N, 4]`` and ``b[M, 4]`` -> ``[N, M]`` float64; 0 where a union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _iou(a[:, None, :], b[None, :, :])


def elementwise_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` for ``a[P, 4]``, ``b[P, 4]`` -> ``[P]`` float64; 0 where a union is empty
    (no epsilon: the numpy twin of :func:`harmonic.losses.elementwise_box_iou` without its gradient guard)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _iou(a, b)


def _area(boxes: np.ndarray) -> np.ndarray:
    """Area of ``boxes[..., 4]`` -> ``[...]`` in their dtype (zero for degenerate boxes)."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[..., 4]`` with ``b[..., 4]``, broadcast against each other -> ``[...]`` in their dtype;
    0 where the union is empty. :func:`box_iou` and :func:`elementwise_box_iou` compute it in float64."""
    lt = np.maximum(a[..., :2], b[..., :2])
    rb = np.minimum(a[..., 2:], b[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a) + _area(b) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def iou_one_to_many(box: np.ndarray, area: float, others: np.ndarray, other_areas: np.ndarray) -> np.ndarray:
    """IoU of one ``box[4]`` (with its ``area``) against ``others[M, 4]`` (with ``other_areas[M]``) -> ``[M]``.

    The inner step of greedy NMS; areas are passed in because NMS computes them once. Not
    :func:`box_iou`: the intersections stay in the boxes' dtype (float32 in :func:`nms`) and the
    union is floored at 1e-12.
    """
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = area + other_areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS. ``boxes[N, 4]``, ``scores[N]`` -> kept indices ``int64[K]`` by decreasing score.

    A box is suppressed when its IoU with a kept, higher-scoring box is strictly
    greater than ``iou_threshold`` (the rule of torchvision and ONNX NonMaxSuppression).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    areas = box_area(boxes)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if not rest.size:
            break
        order = rest[iou_one_to_many(boxes[i], areas[i], boxes[rest], areas[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS: boxes of different ``classes[N]`` never suppress each other.

    Runs :func:`nms` per class (no coordinate-offset trick, so it is exact for any
    box range) and returns kept indices sorted by decreasing score.
    """
    classes = np.asarray(classes)
    scores = np.asarray(scores)
    keep = [np.nonzero(classes == c)[0][nms(boxes[classes == c], scores[classes == c], iou_threshold)]
            for c in np.unique(classes)]
    if not keep:
        return np.zeros(0, dtype=np.int64)
    keep_all = np.concatenate(keep)
    return keep_all[np.argsort(-scores[keep_all], kind="stable")]


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` x1,y1,x2,y2 -> x,y,w,h (COCO)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` x,y,w,h (COCO) -> x1,y1,x2,y2."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
