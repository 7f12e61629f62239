"""``evaluate``: accuracy (COCO + VOC-style AP), score-IoU consistency and NMS regret in one report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.errors import HarmonicError
from harmonic.evaluation.coco import coco_metrics
from harmonic.evaluation.consistency import consistency_metrics, detection_ious
from harmonic.evaluation.inputs import load_detections, load_ground_truth
from harmonic.evaluation.ranking import ranking_metrics
from harmonic.evaluation.regret import nms_regret

log = logging.getLogger(__name__)

REPORT_FORMAT = "harmonicdet-eval"


def evaluate(ground_truth: Any, detections: Any, candidates: Any = None, score_min: float = 0.05,
             names: Sequence[str] | None = None,
             iou_thresholds_voc: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
             return_pairs: bool = False) -> dict:
    """Evaluate kept detections (and optionally pre-NMS candidates) against ground truth.

    Args:
        ground_truth: COCO json path, COCO dict, ``(dataset.yaml, split)`` / ``"dataset.yaml:split"``,
            or a list of ``ImageRecord`` (then ``names`` is required).
        detections: COCO results (``category_id`` = the ground truth's own ids, bbox xywh px): a list of
            dicts, a json path, or columns ``{"image_id"[N], "category_id"[N], "bbox"[N, 4], "score"[N]}``.
        candidates: pre-NMS boxes in the same format, taken as given (no score floor): what the
            graph's NMS saw; enables the NMS-cluster ranking and the regret metric.
        score_min: the pooled consistency metrics and the regret's kept boxes use detections with
            score >= this (the true-positive and NMS-cluster ranking metrics use no floor).
        names: class names; a COCO ground truth's categories must be among them (they order ``per_class``).
        iou_thresholds_voc: IoU thresholds of the paper's VOC-style AP (Table 1).
        return_pairs: add ``report["pairs"] = {"score": [...], "iou": [...]}`` for every scored
            detection (IoU 0 = false positive), for the score-IoU scatter plot.

    Returns:
        A JSON-serialisable dict: ``coco``, ``voc``, ``per_class``, ``ranking`` (the primary
        score-IoU metrics: true positives, NMS clusters with candidates, calibration; see
        :mod:`harmonic.evaluation.ranking`), ``consistency`` (secondary: pooled over every scored
        detection with IoU > 0, most of them false positives), ``regret`` (None without
        candidates), ``counts``, ``settings``, ``sources`` (+ ``pairs``).

    Raises:
        HarmonicError: unreadable files, unknown image/category ids, NaN or negative boxes/scores,
            ground truth without objects.
    """
    t0 = time.perf_counter()
    if not 0 <= score_min <= 1:
        raise HarmonicError(f"score_min must be in [0, 1], got {score_min}")
    gt = load_ground_truth(ground_truth, names)
    dets = load_detections(detections, gt, "detections")
    cands = load_detections(candidates, gt, "candidates") if candidates is not None else None
    if len(dets) == 0:
        log.warning("%s: no detections: AP is 0 and consistency is n/a", dets.source)

    report: dict[str, Any] = {"format": REPORT_FORMAT}
    report.update(coco_metrics(gt, dets, iou_thresholds_voc))
    if names is not None and isinstance(report.get("per_class"), dict):
        order = [str(n) for n in names] + [n for n in report["per_class"] if n not in {str(m) for m in names}]
        report["per_class"] = {n: report["per_class"][n] for n in order if n in report["per_class"]}
    scored = dets.score >= score_min
    scored_dets = dets.select(scored)
    iou = detection_ious(gt, scored_dets)
    report["consistency"] = consistency_metrics(scored_dets.score, iou)
    report["ranking"] = ranking_metrics(gt, dets, cands)
    report["regret"] = nms_regret(gt, dets, cands, score_min) if cands is not None else None
    report["counts"] = {
        "images": int(len(gt.image_ids)),
        "categories": int(len(gt.category_ids)),
        "gt_objects": int((~gt.ann_crowd).sum()),
        "gt_ignored": int(gt.ann_crowd.sum()),
        "detections": len(dets),
        "detections_scored": int(scored.sum()),
        "candidates": len(cands) if cands is not None else None,
    }
    report["settings"] = {"score_min": float(score_min), "iou_thresholds_voc": [float(t) for t in iou_thresholds_voc],
                          "max_dets": 100, "names": list(gt.names)}
    report["sources"] = {"ground_truth": gt.source, "detections": dets.source,
                         "candidates": cands.source if cands is not None else None}
    if return_pairs:
        report["pairs"] = {"score": scored_dets.score.tolist(), "iou": iou.tolist()}
    log.debug("evaluate: %d detections on %d images in %.2f s", len(dets), len(gt.image_ids),
              time.perf_counter() - t0)
    return report


def save_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as JSON; its ``pairs`` (if any) go to a ``.pairs.npz`` sidecar named in the JSON."""
    from harmonic.atomic import atomic_path, output_group, write_json

    path = Path(path)
    out = {k: v for k, v in report.items() if k != "pairs"}
    pairs = report.get("pairs")
    with output_group(path.parent):  # the JSON and its sidecar appear together, or neither
        if pairs is not None:
            sidecar = path.with_name(path.stem + ".pairs.npz")
            with atomic_path(sidecar) as tmp:
                np.savez_compressed(tmp, score=np.asarray(pairs["score"], dtype=np.float32),
                                    iou=np.asarray(pairs["iou"], dtype=np.float32))
            out["pairs_file"] = sidecar.name
        write_json(path, out, indent=2)
    return path


def load_report(path: str | Path, with_pairs: bool = True) -> dict:
    """Read a report JSON; with ``with_pairs``, load its ``pairs_file`` sidecar into ``report["pairs"]``."""
    path = Path(path)
    if not path.exists():
        raise HarmonicError(f"{path}: report not found")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarmonicError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(report, dict):
        raise HarmonicError(f"{path}: not an evaluation report (expected a JSON object)")
    if with_pairs and "pairs" not in report and report.get("pairs_file"):
        sidecar = path.parent / report["pairs_file"]
        if sidecar.exists():
            with np.load(sidecar) as z:
                report["pairs"] = {"score": z["score"].astype(np.float64), "iou": z["iou"].astype(np.float64)}
        else:
            log.warning("%s: pairs file %s missing", path, sidecar)
    return report
