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
    gt = make_gt(num_images=10, per_image=4, seed=7)
    rng = np.random.default_rng(3)
    dets, _ = _candidates(gt, 3, rng, lambda iou: rng.uniform(0.1, 1.0))
    dets += [{"image_id": 1, "category_id": 1, "bbox": [100, 100, 10, 10], "score": 0.99}]  # a false positive
    gto = load_ground_truth(gt)
    tp = match_true_positives(gto, load_detections(dets, gto))
    scores = sorted(score for score, _ in _pycocotools_matches(gt, dets))
    assert sorted(tp.score.tolist()) == pytest.approx(scores)


def test_calibration_bins():
    cal = calibration(np.array([0.2, 0.4, 0.9, 0.7]), np.array([0.55, 0.58, 1.0, 0.95]))
    assert cal["count"] == [2, 0, 0, 0, 2]
    assert cal["mean_score"][0] == pytest.approx(0.3) and cal["mean_score"][4] == pytest.approx(0.8)
    assert cal["mean_score"][1] is None


def _pycocotools_matches(gt: dict, dets: list[dict]) -> list[tuple[float, float]]:
    """(score, IoU with the matched object) of every detection pycocotools matches at IoU 0.5."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.evaluate()
    out = []
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0]:
            continue
        for det_id, gt_id in zip(e["dtIds"], e["dtMatches"][0]):
            if gt_id > 0:
                d, g = coco_dt.anns[det_id], coco_gt.anns[int(gt_id)]
                iou = float(mask_utils.iou([d["bbox"]], [g["bbox"]], [0])[0, 0])
                out.append((d["score"], iou))
    return sorted(out)


def _crowded_gt(num_images: int, seed: int) -> dict:
    """Objects of one class heaped on each other (IoU between objects up to ~0.8), three classes."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 128, "height": 128, "file_name": f"{i}.png"} for i in range(num_images)]
    anns = []
    for im in images:
        for cat in (1, 2, 3):
            cx, cy = rng.uniform(30, 90, 2)
            for _ in range(int(rng.integers(2, 5))):
                w, h = rng.uniform(25, 40, 2)
                x, y = cx + rng.normal(0, 4) - w / 2, cy + rng.normal(0, 4) - h / 2
                anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat,
                             "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(
        ["a", "b", "c"])]}


def test_true_positive_matching_agrees_with_pycocotools_on_crowded_objects():
    """Overlapping objects of one class, several detections each: the same matches, scores and IoUs."""
    gt = _crowded_gt(30, seed=11)
    rng = np.random.default_rng(12)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(3):
            j = rng.normal(0, 4, 4)
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + j[0], y + j[1], max(4.0, w + j[2]), max(4.0, h + j[3])],
                         "score": float(rng.uniform(0.05, 1.0))})
    gto = load_ground_truth(gt)
    tp = match_true_positives(gto, load_detections(dets, gto))
    ours = sorted(zip(tp.score.tolist(), tp.iou.tolist()))
    theirs = _pycocotools_matches(gt, dets)
    assert len(ours) == len(theirs) > 0.7 * len(gt["annotations"])
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=0, atol=1e-9)


def test_equal_ious_go_to_the_last_object_as_in_pycocotools():
    """A detection overlapping two objects equally takes the second (pycocotools' rule), so a second detection
    overlapping only the first one is a true positive too: 2 true positives, not 1."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10], "area": 200, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 0, 20, 10], "area": 200,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [5, 0, 20, 10], "score": 0.9},  # IoU 0.6 with both
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 15, 10], "score": 0.8}]  # IoU 0.75 with the first
    gto = load_ground_truth(gt)
    tp = match_true_positives(gto, load_detections(dets, gto))
    np.testing.assert_allclose(sorted(zip(tp.score.tolist(), tp.iou.tolist())), _pycocotools_matches(gt, dets))
    assert tp.score.size == 2


def test_nms_top1_credits_a_top_tie_by_the_share_within_the_margin_whatever_the_file_order():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}]}
    cands = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.7},    # the best, IoU 1
             {"image_id": 1, "category_id": 1, "bbox": [8, 0, 40, 40], "score": 0.7},    # tied, IoU 0.667
             {"image_id": 1, "category_id": 1, "bbox": [4, 0, 40, 40], "score": 0.5}]    # IoU 0.818
    gto = load_ground_truth(gt)
    for order in (cands, cands[::-1]):
        objs = nms_ranking(gto, load_detections(order, gto))
        assert objs.num_candidates.tolist() == [3] and objs.top_ok.tolist() == [0.5]


def test_nms_metrics_do_not_depend_on_the_score_scale():
    """Scaling every candidate's score keeps their order inside each object, and the metrics with it."""
    gt = make_gt(num_images=20, per_image=4, seed=8)
    rng = np.random.default_rng(4)
    cands, _ = _candidates(gt, 6, rng, lambda iou: rng.uniform(0.001, 0.3))
    gto = load_ground_truth(gt)
    a = nms_ranking(gto, load_detections(cands, gto))
    b = nms_ranking(gto, load_detections([{**c, "score": 0.6 * c["score"]} for c in cands], gto))
    assert a.eligible.sum() == len(gt["annotations"])
    np.testing.assert_array_equal(a.top_ok, b.top_ok)
    np.testing.assert_allclose(a.rho, b.rho, rtol=0, atol=1e-12)
    assert a.num_candidates.tolist() == b.num_candidates.tolist()
