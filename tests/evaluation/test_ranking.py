"""Ranking metrics: oracle scores (score = IoU) rank perfectly, random scores don't, by construction."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from harmonic.evaluation import evaluate
from harmonic.evaluation.inputs import load_detections, load_ground_truth
from harmonic.evaluation.ranking import calibration, match_true_positives, nms_ranking

from .helpers import iou_of_shift, make_gt, shifted


def _candidates(gt: dict, per_object: int, rng: np.random.Generator, score_of) -> tuple[list[dict], list[float]]:
    """``per_object`` shifted copies of every object (IoU 0.5-1 with it), scored by ``score_of(iou)``."""
    dets, ious = [], []
    for a in gt["annotations"]:
        w = a["bbox"][2]
        for _ in range(per_object):
            dx = float(rng.uniform(0.0, 1 / 3)) * w  # shift < w/3 -> IoU > 0.5
            iou = iou_of_shift(w, dx)
            ious.append(iou)
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": shifted(a["bbox"], dx),
                         "score": float(score_of(iou))})
    return dets, ious


def _nms(dets: list[dict], thr: float = 0.5) -> list[dict]:
    """Greedy per-(image, class) NMS of COCO results (what the graph does), by decreasing score."""
    from harmonic.boxes import nms, xywh_to_xyxy

    kept = []
    keys = sorted({(d["image_id"], d["category_id"]) for d in dets})
    for key in keys:
        group = [d for d in dets if (d["image_id"], d["category_id"]) == key]
        boxes = xywh_to_xyxy(np.array([d["bbox"] for d in group], np.float64))
        scores = np.array([d["score"] for d in group])
        kept += [group[i] for i in nms(boxes, scores, thr)]
    return kept


def test_oracle_scores_rank_perfectly():
    gt = make_gt(num_images=8, per_image=4, seed=5)
    rng = np.random.default_rng(0)
    cands, _ = _candidates(gt, 6, rng, lambda iou: iou)
    r = evaluate(gt, _nms(cands), candidates=cands)
    tp = r["ranking"]["true_positives"]
    assert tp["count"] == len(gt["annotations"])  # one true positive per object
    assert tp["spearman"] == pytest.approx(1.0) and tp["kendall"] == pytest.approx(1.0)
    assert tp["spearman_class_mean"] == pytest.approx(1.0)
    nms = r["ranking"]["nms"]
    assert nms["top1_share"] == 1.0 and nms["within_spearman"] == pytest.approx(1.0)
    assert nms["num_eligible"] == len(gt["annotations"])
    cal = r["ranking"]["calibration"]
    for (lo, hi), mean, n in zip(cal["bins"], cal["mean_score"], cal["count"]):
        assert n == 0 or lo <= mean <= hi  # an oracle's score is its IoU, bin by bin
    assert sum(cal["count"]) == tp["count"]


def test_random_scores_rank_at_chance():
    gt = make_gt(num_images=60, per_image=4, seed=6)
    rng = np.random.default_rng(1)
    cands, _ = _candidates(gt, 5, rng, lambda iou: rng.uniform(0.05, 1.0))
    r = evaluate(gt, _nms(cands), candidates=cands)
    tp, nms = r["ranking"]["true_positives"], r["ranking"]["nms"]
    assert abs(tp["spearman"]) < 0.15 and abs(tp["kendall"]) < 0.1
    assert abs(nms["within_spearman"]) < 0.1
    # chance of the top-scored of 5 being within 0.05 IoU of the best: measured on the same candidates
    gt_obj = load_ground_truth(gt)
    objs = nms_ranking(gt_obj, load_detections(cands, gt_obj), margin=0.0)
    assert objs.top_ok[objs.eligible].mean() == pytest.approx(0.2, abs=0.07)  # margin 0: exactly 1 in 5
    assert 0.2 <= nms["top1_share"] < 0.6  # the 0.05 margin adds near-ties, nowhere near the oracle's 1


def test_true_positive_matching_agrees_with_pycocotools():
    """Our greedy matching at IoU 0.5 finds the same matched detections as pycocotools' evaluateImg."""
    import contextlib
    import io

    gt = make_gt(num_images=10, per_image=4, seed=7)
    rng = np.random.default_rng(3)
    dets, _ = _candidates(gt, 3, rng, lambda iou: rng.uniform(0.1, 1.0))
    dets += [{"image_id": 1, "category_id": 1, "bbox": [100, 100, 10, 10], "score": 0.99}]  # a false positive
    gto = load_ground_truth(gt)
    tp = match_true_positives(gto, load_detections(dets, gto))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.evaluate()
    scores = sorted(s for e in ev.evalImgs if e is not None and e["aRng"] == ev.params.areaRng[0]
                    for s, m in zip(e["dtScores"], e["dtMatches"][0]) if m > 0)
    assert sorted(tp.score.tolist()) == pytest.approx(scores)


def test_calibration_bins():
    cal = calibration(np.array([0.2, 0.4, 0.9, 0.7]), np.array([0.55, 0.58, 1.0, 0.95]))
    assert cal["count"] == [2, 0, 0, 0, 2]
    assert cal["mean_score"][0] == pytest.approx(0.3) and cal["mean_score"][4] == pytest.approx(0.8)
    assert cal["mean_score"][1] is None
