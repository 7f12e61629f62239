"""NMS regret: objects for which NMS kept a worse box than a candidate it suppressed (paper Fig. 1)."""

from __future__ import annotations

import numpy as np

from harmonic.evaluation.inputs import Detections, GroundTruth
from harmonic.evaluation.matching import best_iou, group_keys


def regret_flags(gt: GroundTruth, kept: Detections, candidates: Detections, score_min: float = 0.05,
                 min_iou: float = 0.5, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-ignored GT object: ``(eligible bool[G], regretted bool[G], image_id int64[G])``.

    See :func:`nms_regret` for the definitions; ``best_lost`` is not returned.
    """
    eligible, lost, image_id = _regret_parts(gt, kept, candidates, score_min, min_iou)
    return eligible, eligible & (lost > margin), image_id


def _regret_parts(gt: GroundTruth, kept: Detections, candidates: Detections, score_min: float,
                  min_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = ~gt.ann_crowd
    boxes = gt.ann_boxes[keep]
    gkeys = group_keys(gt.ann_image[keep], gt.ann_category[keep], gt.image_ids, gt.category_ids)
    cand = candidates  # what the NMS saw: no score floor of their own
    dets = kept.select(kept.score >= score_min)
    best_cand = best_iou(gkeys, boxes, group_keys(cand.image_id, cand.category_id, gt.image_ids,
                                                  gt.category_ids), cand.boxes)
    best_kept = best_iou(gkeys, boxes, group_keys(dets.image_id, dets.category_id, gt.image_ids,
                                                  gt.category_ids), dets.boxes)
    return best_cand >= min_iou, best_cand - best_kept, gt.ann_image[keep]


def nms_regret(gt: GroundTruth, kept: Detections, candidates: Detections, score_min: float = 0.05,
               min_iou: float = 0.5, margin: float = 0.05) -> dict:
    """Regret over non-ignored GT objects, from kept detections and pre-NMS candidates.

    An object ``g`` counts when some same-class candidate (every candidate given: pass what the NMS
    saw) has IoU(g) >= ``min_iou``; it is regretted when that best candidate IoU exceeds the best IoU
    of a kept detection (score >= ``score_min``, same class; 0 if none overlaps) by more
    than ``margin``. Returns ``{rate, mean_iou_lost, num_objects, num_regret}`` (rate and
    mean_iou_lost None when undefined: no such object, no regretted object).
    """
    eligible, lost, _ = _regret_parts(gt, kept, candidates, score_min, min_iou)
    regret = eligible & (lost > margin)
    n = int(eligible.sum())
    return {"rate": float(regret.sum() / n) if n else None,
            "mean_iou_lost": float(lost[regret].mean()) if regret.any() else None,
            "num_objects": n, "num_regret": int(regret.sum())}
