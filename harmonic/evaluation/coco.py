"""COCO AP through one pycocotools ``COCOeval`` run; the VOC-style APs come from the same precision array."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from harmonic.evaluation.inputs import Detections, GroundTruth

# the COCO grid 0.50:0.05:0.95, built exactly as pycocotools builds it
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)


def _quiet():
    """pycocotools prints progress; library code stays silent."""
    return contextlib.redirect_stdout(io.StringIO())


def _mean_valid(values: np.ndarray) -> float | None:
    """Mean over entries > -1 (pycocotools marks undefined entries -1) or None when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _threshold_index(thresholds: np.ndarray, t: float) -> int:
    hits = np.nonzero(np.isclose(thresholds, t, rtol=0, atol=1e-9))[0]
    return int(hits[0])


def build_coco_objects(gt: GroundTruth, dets: Detections):
    """``(cocoGt, cocoDt)`` pycocotools objects; the results set is built directly (no ``loadRes``
    deep copies, no polygon per box) from the validated columns."""
    from pycocotools.coco import COCO

    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = gt.dataset
        coco_gt.createIndex()
        xywh = dets.xywh.tolist()
        anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "score": s, "area": b[2] * b[3],
                 "iscrowd": 0}
                for i, (im, c, b, s) in enumerate(zip(dets.image_id.tolist(), dets.category_id.tolist(), xywh,
                                                      dets.score.tolist()))]
        coco_dt = COCO()
        coco_dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                           "annotations": anns}
        coco_dt.createIndex()
    return coco_gt, coco_dt


def coco_metrics(gt: GroundTruth, dets: Detections,
                 iou_thresholds_voc: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """COCO box metrics, VOC-style AP at ``iou_thresholds_voc`` and per-class AP, from one ``COCOeval``.

    Returns ``{"coco": {AP, AP50, AP75, AP_S, AP_M, AP_L, AR100}, "voc": {"AP50", ..., "mean"},
    "per_class": {name: AP}}``; a metric pycocotools leaves undefined (e.g. AP_S with no small
    objects) is None. VOC thresholds on the COCO grid are read from its precision array at
    their exact index; any other threshold is added to the same run.
    """
    from pycocotools.cocoeval import COCOeval

    voc = [float(t) for t in iou_thresholds_voc]
    extra = [t for t in voc if not np.isclose(COCO_IOU_THRESHOLDS, t, rtol=0, atol=1e-9).any()]
    thresholds = np.sort(np.concatenate([COCO_IOU_THRESHOLDS, np.asarray(extra, dtype=np.float64)]))
    grid = [_threshold_index(thresholds, t) for t in COCO_IOU_THRESHOLDS]

    coco_gt, coco_dt = build_coco_objects(gt, dets)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.iouThrs = thresholds
    ev.params.maxDets = list(MAX_DETS)
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    rec = ev.eval["recall"]  # [T, K, A, M]
    m100 = MAX_DETS.index(100)
    all_, small, medium, large = 0, 1, 2, 3

    def ap(t_idx: Sequence[int], area: int = all_) -> float | None:
        return _mean_valid(prec[list(t_idx), :, :, area, m100])

    i50, i75 = _threshold_index(thresholds, 0.5), _threshold_index(thresholds, 0.75)
    coco = {"AP": ap(grid), "AP50": ap([i50]), "AP75": ap([i75]), "AP_S": ap(grid, small),
            "AP_M": ap(grid, medium), "AP_L": ap(grid, large), "AR100": _mean_valid(rec[grid, :, all_, m100])}
    voc_out: dict[str, float | None] = {}
    for t in voc:
        voc_out[f"AP{int(round(t * 100))}"] = ap([_threshold_index(thresholds, t)])
    vals = list(voc_out.values())
    voc_out["mean"] = None if any(v is None for v in vals) or not vals else float(np.mean(vals))
    cat_ids = list(ev.params.catIds)
    name_of = {int(c["id"]): c["name"] for c in gt.dataset["categories"]}
    per_class = {name_of[int(c)]: _mean_valid(prec[grid, :, k, all_, m100]) for k, c in enumerate(cat_ids)}
    return {"coco": coco, "voc": voc_out, "per_class": per_class}
