"""Score-IoU consistency of kept detections: rank correlation, AIC (paper Eq. 14), harmonious fraction."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from harmonic.evaluation.inputs import Detections, GroundTruth
from harmonic.evaluation.matching import best_iou, group_keys

HARMONIOUS_THRESHOLDS = (0.5, 0.7)


def detection_ious(gt: GroundTruth, dets: Detections) -> np.ndarray:
    """Each detection's best IoU with a same-class, same-image, non-ignored GT box -> float64[N] (0 if none)."""
    keep = ~gt.ann_crowd
    gkeys = group_keys(gt.ann_image[keep], gt.ann_category[keep], gt.image_ids, gt.category_ids)
    dkeys = group_keys(dets.image_id, dets.category_id, gt.image_ids, gt.category_ids)
    return best_iou(dkeys, dets.boxes, gkeys, gt.ann_boxes[keep])


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def consistency_metrics(score: np.ndarray, iou: np.ndarray,
                        thresholds: Sequence[float] = HARMONIOUS_THRESHOLDS) -> dict:
    """Consistency between ``score[N]`` and ``iou[N]`` of scored detections.

    Detections with IoU > 0 are "used": Spearman and Kendall (tau-b) correlation,
    AIC = mean |score - IoU| and the harmonious fraction at each ``t`` (share with
    ``min(score, IoU) >= t``) are over them; IoU == 0 ones are counted apart as
    false positives; ``share_iou_below_0.5`` is the share of the used ones that overlap no object
    by 0.5 (the pooled correlation's population is mostly junk). Values are None where undefined (no used detection; a
    correlation needs two and non-constant inputs).
    """
    score = np.asarray(score, dtype=np.float64)
    iou = np.asarray(iou, dtype=np.float64)
    used = iou > 0
    s, q = score[used], iou[used]
    out: dict[str, float | int | None] = {"spearman": None, "kendall": None, "aic": None}
    out.update({f"harmonious_{t:g}": None for t in thresholds})
    out["num_used"] = int(used.sum())
    out["num_false_positive"] = int((~used).sum())
    # the population the pooled correlation is over: most of it overlaps no object by 0.5
    out["share_iou_below_0.5"] = float((q < 0.5).mean()) if s.size else None
    if s.size == 0:
        return out
    out["aic"] = float(np.abs(s - q).mean())
    both = np.minimum(s, q)
    for t in thresholds:
        out[f"harmonious_{t:g}"] = float((both >= t).mean())
    if s.size >= 2 and np.ptp(s) > 0 and np.ptp(q) > 0:
        from scipy import stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["spearman"] = _finite_or_none(stats.spearmanr(s, q).statistic)
            out["kendall"] = _finite_or_none(stats.kendalltau(s, q).statistic)
    return out
