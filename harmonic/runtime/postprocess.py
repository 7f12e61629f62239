"""Graph outputs -> detections in original image pixels, COCO results, drawings (numpy + OpenCV)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from harmonic.boxes import box_area, iou_one_to_many
from harmonic.contract import DET_BOXES, DET_CLASSES, DET_SCORES, NUM_DETS, OUTPUT_NAMES, RAW_OUTPUT_NAMES
from harmonic.data.letterbox import LetterboxInfo, unletterbox_boxes


@dataclass
class Detections:
    """Detections of one image: ``boxes[N, 4]`` x1,y1,x2,y2 float32, ``scores[N]`` float32, ``classes[N]``
    int64 0-based, sorted by decreasing score as the graph returns them.

    ``model_names`` / ``model_category_ids`` are the model's tables (class index -> name, -> the
    dataset's category id); :class:`harmonic.runtime.detector.Detector` fills them, and
    :attr:`names`, :attr:`category_ids`, :meth:`to_coco` and :meth:`draw` read them.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    model_names: Sequence[str] | None = None
    model_category_ids: Sequence[int] | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        """The class name of each detection (``class<i>`` where the model has no names)."""
        return [class_name(int(c), self.model_names) for c in self.classes.tolist()]

    @property
    def category_ids(self) -> np.ndarray:
        """``int64[N]``: the dataset's category id of each detection (default ``class + 1``)."""
        if self.model_category_ids is None:
            return self.classes.astype(np.int64) + 1
        table = np.asarray(self.model_category_ids, dtype=np.int64)
        return table[self.classes.astype(np.int64)]

    def to_coco(self, image_id: int, file_name: str | None = None) -> list[dict[str, Any]]:
        """COCO results entries (``bbox`` x, y, w, h) with the dataset's category ids (:func:`coco_results`)."""
        return coco_results(self, image_id, file_name, self.model_category_ids)

    def draw(self, image: np.ndarray, rgb: bool = False) -> np.ndarray:
        """A copy of ``image[H, W, 3]`` uint8 (BGR, or RGB with ``rgb=True``) with the labelled boxes drawn."""
        return draw_detections(image, self, self.model_names, bgr=not rgb)


def raw_to_nms_outputs(boxes: np.ndarray, scores: np.ndarray, score_threshold: float,
                       iou_threshold: float, max_det: int) -> dict[str, np.ndarray]:
    """A raw-head graph's ``boxes[B, A, 4]`` and ``scores[B, A, C]`` -> the four NMS outputs.

    Same rule as the ONNX ``NonMaxSuppression`` in the exported graph: every
    (anchor, class) pair with score > ``score_threshold`` is a candidate, class-aware
    NMS at ``iou_threshold``, the top ``max_det`` by score; rows past ``num_dets`` are zero.
    """
    b = boxes.shape[0]
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    num = np.zeros((b, 1), np.int32)
    out_boxes = np.zeros((b, max_det, 4), np.float32)
    out_scores = np.zeros((b, max_det), np.float32)
    out_classes = np.zeros((b, max_det), np.int32)
    for i in range(b):
        a_idx, c_idx = np.nonzero(scores[i] > score_threshold)
        s = scores[i][a_idx, c_idx]
        bx = boxes[i][a_idx]
        keep = topk_batched_nms(bx, s, c_idx, iou_threshold, max_det)
        k = keep.size
        num[i, 0] = k
        out_boxes[i, :k] = bx[keep]
        out_scores[i, :k] = s[keep]
        out_classes[i, :k] = c_idx[keep]
    return dict(zip(OUTPUT_NAMES, (num, out_boxes, out_scores, out_classes)))


def topk_batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                     k: int) -> np.ndarray:
    """``harmonic.boxes.batched_nms(...)[:k]``, stopping once ``k`` boxes are kept.

    Greedy NMS decides a box only from higher-scoring boxes of its class, so walking
    all candidates by decreasing score and stopping at ``k`` keeps gives the same
    result, in ``k`` vectorised steps instead of one per kept box of every class.
    ``boxes[N, 4]``, ``scores[N]``, ``classes[N]`` -> kept indices ``int64[<=k]``.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes, dtype=np.float32)[order]
    classes = np.asarray(classes)[order]
    areas = box_area(boxes)
    alive = np.ones(order.size, dtype=bool)
    keep: list[int] = []
    pos = 0
    while len(keep) < k:
        nxt = np.flatnonzero(alive[pos:])
        if not nxt.size:
            break
        i = pos + int(nxt[0])
        keep.append(i)
        alive[i] = False
        pos = i + 1
        rest = pos + np.flatnonzero(alive[pos:] & (classes[pos:] == classes[i]))
        if rest.size:
            alive[rest[iou_one_to_many(boxes[i], areas[i], boxes[rest], areas[rest]) > iou_threshold]] = False
    return order[np.asarray(keep, dtype=np.int64)]


def find_raw_outputs(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``boxes[B, A, 4]`` and ``scores[B, A, C]`` from a raw graph's outputs (by name, else by shape)."""
    if all(name in outputs for name in RAW_OUTPUT_NAMES):
        boxes, scores = (outputs[name] for name in RAW_OUTPUT_NAMES)
        return boxes, scores
    three_d = [v for v in outputs.values() if v.ndim == 3]
    boxes = [v for v in three_d if v.shape[-1] == 4]
    scores = [v for v in three_d if not boxes or v is not boxes[0]]
    if not boxes or not scores:
        raise ValueError(f"raw graph outputs not recognised: {[(k, v.shape) for k, v in outputs.items()]}")
    return boxes[0], scores[0]


def split_outputs(outputs: dict[str, np.ndarray], n: int, conf: float | None = None) -> list[Detections]:
    """The four graph outputs -> one :class:`Detections` per image for the first ``n`` rows.

    Boxes stay in letterboxed input pixels. ``conf`` drops detections scoring below it.
    """
    num = np.asarray(outputs[NUM_DETS]).reshape(-1)
    out = []
    for i in range(n):
        k = int(num[i])
        boxes = np.asarray(outputs[DET_BOXES][i, :k], dtype=np.float32)
        scores = np.asarray(outputs[DET_SCORES][i, :k], dtype=np.float32)
        classes = np.asarray(outputs[DET_CLASSES][i, :k]).astype(np.int64)
        if conf is not None:
            m = scores >= conf
            boxes, scores, classes = boxes[m], scores[m], classes[m]
        out.append(Detections(boxes, scores, classes))
    return out


def unletterbox(det: Detections, info: LetterboxInfo) -> Detections:
    """Letterboxed-pixel detections -> original image pixels (clipped to the image)."""
    return Detections(unletterbox_boxes(det.boxes, info), det.scores, det.classes)


def refine(det: Detections, iou: float | None = None, max_det: int | None = None) -> Detections:
    """A stricter operating point on a graph's output: class-aware NMS at ``iou`` over the detections
    the graph kept (one box suppresses another of its class with IoU > ``iou``), then the top ``max_det``.

    The graph's own NMS has already run at its threshold, so an ``iou`` above it changes nothing.
    """
    keep: np.ndarray | None = None
    if iou is not None and len(det) > 1:
        keep = np.sort(topk_batched_nms(det.boxes, det.scores, det.classes, iou, len(det)))
    if max_det is not None:
        idx = keep if keep is not None else np.arange(len(det))
        keep = idx[: max(0, int(max_det))]
    if keep is None:
        return det
    return Detections(det.boxes[keep], det.scores[keep], det.classes[keep], det.model_names, det.model_category_ids)


def coco_results(det: Detections, image_id: int, file_name: str | None = None,
                 category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO results entries: ``category_id = category_ids[class]`` (the dataset's own ids; default
    ``class + 1``), bbox ``[x, y, w, h]`` rounded to 0.01 px, score to 1e-5."""
    res = []
    for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(c)]) if category_ids is not None else int(c) + 1,
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(s), 5),
        }
        if file_name is not None:
            entry["file_name"] = file_name
        res.append(entry)
    return res


def class_name(c: int, names: Sequence[str] | None) -> str:
    return names[c] if names is not None and 0 <= c < len(names) else f"class{c}"


@functools.lru_cache(maxsize=1024)
def _color(c: int) -> tuple[int, int, int]:
    """A fixed colour per class (drawing a frame's boxes asks for it once per box: cached)."""
    rng = np.random.default_rng(c * 7919 + 17)
    r, g, b = (int(v) for v in rng.integers(64, 256, 3))
    return r, g, b


def draw_detections(img: np.ndarray, det: Detections, names: Sequence[str] | None = None,
                    bgr: bool = False) -> np.ndarray:
    """Draw labelled boxes on a copy of ``img[H, W, 3]`` uint8 RGB (``bgr=True``: BGR; boxes in its pixels)."""
    out = np.ascontiguousarray(img.copy())
    thick = max(1, round(max(out.shape[:2]) / 400))
    scale = max(0.35, max(out.shape[:2]) / 1200)
    for (x1, y1, x2, y2), s, c in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
        color = _color(int(c))[::-1] if bgr else _color(int(c))
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, thick, cv2.LINE_AA)
        label = f"{class_name(int(c), names)} {s:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(p1[1], th + base)
        cv2.rectangle(out, (p1[0], ty - th - base), (p1[0] + tw, ty), color, -1)
        cv2.putText(out, label, (p1[0], ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write ``rgb[H, W, 3]`` uint8 to ``path`` (format from the suffix; unicode paths work)."""
    from harmonic.atomic import atomic_path

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: cannot encode image")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())  # a Python write: a full disk keeps its errno (numpy's tofile drops it)
