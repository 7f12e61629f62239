"""evaluate(): exact answers on hand-built ground truth and detections."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from harmonic.boxes import box_iou, xywh_to_xyxy
from harmonic.errors import HarmonicError
from harmonic.evaluation import evaluate
from harmonic.evaluation.matching import best_iou

from .helpers import NAMES, iou_of_shift, make_gt, shifted


def test_perfect_detections_ap_one_and_aic():
    gt = make_gt()
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.3, 1.0, len(gt["annotations"]))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": float(s)}
            for a, s in zip(gt["annotations"], scores)]
    r = evaluate(gt, dets)
    assert r["coco"]["AP"] == pytest.approx(1.0)
    assert r["coco"]["AP50"] == pytest.approx(1.0)
    assert r["coco"]["AR100"] == pytest.approx(1.0)
    assert all(r["voc"][k] == pytest.approx(1.0) for k in ("AP50", "AP60", "AP70", "AP80", "AP90", "mean"))
    assert set(r["per_class"]) == set(NAMES)
    c = r["consistency"]
    assert c["aic"] == pytest.approx(float(np.mean(np.abs(scores - 1.0))))
    assert c["num_used"] == len(dets) and c["num_false_positive"] == 0
    assert c["harmonious_0.5"] == pytest.approx(float(np.mean(scores >= 0.5)))
    assert c["harmonious_0.7"] == pytest.approx(float(np.mean(scores >= 0.7)))
    assert r["counts"]["gt_objects"] == len(gt["annotations"])
    json.dumps(r)  # JSON-serialisable


def test_monotone_score_of_iou_gives_rank_correlation_one():
    gt = make_gt(num_images=5, per_image=4, seed=3)
    rng = np.random.default_rng(2)
    dets, ious = [], []
    for a in gt["annotations"]:
        w = a["bbox"][2]
        dx = float(rng.uniform(0, 0.6)) * w
        iou = iou_of_shift(w, dx)
        ious.append(iou)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": shifted(a["bbox"], dx),
                     "score": 0.1 + 0.9 * iou ** 2})
    # plus false positives: a class absent from the image and a far-away box
    a0 = gt["annotations"][0]
    absent = ({1, 2, 3} - {a["category_id"] for a in gt["annotations"] if a["image_id"] == a0["image_id"]})
    fp_cat = next(iter(absent)) if absent else a0["category_id"]
    dets.append({"image_id": a0["image_id"], "category_id": fp_cat, "bbox": [500, 500, 10, 10], "score": 0.9})
    dets.append({"image_id": a0["image_id"], "category_id": a0["category_id"], "bbox": [0, 0, 0.5, 0.5],
                 "score": 0.04})  # below score_min: not counted at all
    r = evaluate(gt, dets, return_pairs=True)
    c = r["consistency"]
    assert c["spearman"] == pytest.approx(1.0)
    assert c["kendall"] == pytest.approx(1.0)
    assert c["num_used"] == len(ious)
    assert c["num_false_positive"] == 1
    s = 0.1 + 0.9 * np.asarray(ious) ** 2
    assert c["aic"] == pytest.approx(float(np.mean(np.abs(s - np.asarray(ious)))), abs=1e-9)
    assert c["harmonious_0.5"] == pytest.approx(float(np.mean(np.minimum(s, ious) >= 0.5)))
    assert len(r["pairs"]["score"]) == len(ious) + 1
    assert sorted(r["pairs"]["iou"])[0] == 0.0


def test_crowd_ground_truth_is_not_matched_for_consistency():
    gt = make_gt(num_images=1, per_image=2)
    gt["annotations"][1]["iscrowd"] = 1
    a, b = gt["annotations"]
    dets = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.8},
            {"image_id": 1, "category_id": b["category_id"], "bbox": b["bbox"], "score": 0.8}]
    r = evaluate(gt, dets)
    assert r["consistency"]["num_used"] == 1
    assert r["consistency"]["num_false_positive"] == 1
    assert r["counts"]["gt_ignored"] == 1


def _inside(bbox: list[float], size: int = 128) -> list[float]:
    """``bbox`` (xywh) cut at the image's right and bottom edges, as a detector's clipped output."""
    x, y, w, h = bbox
    return [x, y, min(w, size - x), min(h, size - y)]


def _noisy(gt: dict, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        for _ in range(3):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.12, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": int(rng.choice([a["category_id"], 1, 2, 3],
                                                                                    p=[0.7, 0.1, 0.1, 0.1])),
                         "bbox": _inside([max(x + j[0], 0), max(y + j[1], 0), w + j[2], h + j[3]]),
                         "score": float(rng.uniform(0.01, 1))})
    return dets


def _pycocotools(gt: dict, dets: list[dict], iou_thrs=None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        if iou_thrs is None:
            ev.summarize()
    return ev


def test_voc_aps_equal_pycocotools_at_each_threshold_and_coco_stats_match():
    gt = make_gt(num_images=8, per_image=4, seed=5)
    dets = _noisy(gt, 6)
    r = evaluate(gt, dets)
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        ev = _pycocotools(gt, dets, [t])
        prec = ev.eval["precision"][0, :, :, 0, 2]
        expected = float(prec[prec > -1].mean())
        assert r["voc"][f"AP{int(round(t * 100))}"] == pytest.approx(expected, abs=1e-12)
    ev = _pycocotools(gt, dets)
    stats = ev.stats
    assert r["coco"]["AP"] == pytest.approx(stats[0], abs=1e-12)
    assert r["coco"]["AP50"] == pytest.approx(stats[1], abs=1e-12)
    assert r["coco"]["AP75"] == pytest.approx(stats[2], abs=1e-12)
    assert r["coco"]["AR100"] == pytest.approx(stats[8], abs=1e-12)
    assert r["coco"]["AP_S"] == pytest.approx(stats[3], abs=1e-12)
    assert r["voc"]["mean"] == pytest.approx(np.mean([r["voc"][f"AP{k}"] for k in (50, 60, 70, 80, 90)]))
    assert 0.0 < r["coco"]["AP"] < 1.0
    assert r["coco"]["AP_L"] is None  # no large objects: undefined, not -1


def test_threshold_off_the_coco_grid_is_added_to_the_same_run():
    gt = make_gt(num_images=4, seed=7)
    dets = _noisy(gt, 8)
    r = evaluate(gt, dets, iou_thresholds_voc=(0.5, 0.65))
    ev = _pycocotools(gt, dets, [0.65])
    prec = ev.eval["precision"][0, :, :, 0, 2]
    assert r["voc"]["AP65"] == pytest.approx(float(prec[prec > -1].mean()), abs=1e-12)
    assert r["coco"]["AP"] == pytest.approx(_pycocotools(gt, dets).stats[0], abs=1e-12)


def test_nms_regret_constructed_rate():
    gt = make_gt(num_images=2, per_image=4, seed=9)
    anns = gt["annotations"]
    kept, cands = [], []
    # objects 0..3: kept box is poor (IoU ~0.55), a suppressed candidate is exact -> regret, lost = 1 - 0.55..
    # objects 4..5: kept box is the exact one -> no regret; 6: candidates all below IoU 0.5 -> not counted
    # 7: no kept box at all but a good candidate -> regret with IoU lost = 1
    lost = []
    for k, a in enumerate(anns):
        w = a["bbox"][2]
        base = {"image_id": a["image_id"], "category_id": a["category_id"]}
        if k < 4:
            dx = 0.25 * w
            kept.append({**base, "bbox": shifted(a["bbox"], dx), "score": 0.9})
            cands += [{**base, "bbox": shifted(a["bbox"], dx), "score": 0.9}, {**base, "bbox": a["bbox"], "score": 0.6}]
            lost.append(1.0 - iou_of_shift(w, dx))
        elif k < 6:
            kept.append({**base, "bbox": a["bbox"], "score": 0.9})
            cands += [{**base, "bbox": a["bbox"], "score": 0.9}, {**base, "bbox": shifted(a["bbox"], 0.1 * w), "score": 0.5}]
        elif k == 6:
            cands.append({**base, "bbox": shifted(a["bbox"], 0.8 * w), "score": 0.9})
        else:
            cands.append({**base, "bbox": a["bbox"], "score": 0.3})
            cands.append({**base, "bbox": [0, 0, 1, 1], "score": 0.01})  # below score_min: ignored
            lost.append(1.0)
    r = evaluate(gt, kept, cands)
    reg = r["regret"]
    assert reg["num_objects"] == 7
    assert reg["num_regret"] == 5
    assert reg["rate"] == pytest.approx(5 / 7)
    assert reg["mean_iou_lost"] == pytest.approx(float(np.mean(lost)))
    assert r["counts"]["candidates"] == len(cands)
    assert evaluate(gt, kept)["regret"] is None


def test_best_iou_matches_brute_force_and_chunking():
    rng = np.random.default_rng(0)
    nq, nt = 300, 120
    qk, tk = rng.integers(0, 15, nq), rng.integers(0, 15, nt)
    qb = xywh_to_xyxy(np.c_[rng.uniform(0, 50, (nq, 2)), rng.uniform(5, 30, (nq, 2))])
    tb = xywh_to_xyxy(np.c_[rng.uniform(0, 50, (nt, 2)), rng.uniform(5, 30, (nt, 2))])
    full = box_iou(qb, tb) * (qk[:, None] == tk[None, :])
    expected = full.max(axis=1)
    np.testing.assert_allclose(best_iou(qk, qb, tk, tb), expected, atol=1e-12)
    np.testing.assert_allclose(best_iou(qk, qb, tk, tb, max_pairs=7), expected, atol=1e-12)
    assert best_iou(qk[:0], qb[:0], tk, tb).shape == (0,)
    np.testing.assert_array_equal(best_iou(qk, qb, tk[:0], tb[:0]), np.zeros(nq))


def test_empty_detections_give_zero_ap_and_na_consistency(tmp_path):
    gt = make_gt(num_images=2)
    p = tmp_path / "dets.json"
    p.write_text("[]")
    r = evaluate(gt, str(p))
    assert r["coco"]["AP"] == 0.0 and r["voc"]["mean"] == 0.0
    assert r["consistency"]["spearman"] is None and r["consistency"]["aic"] is None
    assert r["consistency"]["num_used"] == 0
    assert r["counts"]["detections"] == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(image_id=999), "2 with an image_id not in the ground truth"),
    (lambda d: d.update(category_id=0), "2 with a category_id not in the ground truth"),
    (lambda d: d.update(bbox=[1, 2, float("nan"), 3]), "2 with a NaN/inf bbox"),
    (lambda d: d.update(bbox=[1, 2, -3, 3]), "2 with a negative bbox width or height"),
    (lambda d: d.update(score=float("nan")), "2 with a NaN/inf score"),
    (lambda d: d.update(score=-0.2), "2 with a negative score"),
])
def test_bad_detections_name_the_file_and_count(tmp_path, mutate, message):
    gt = make_gt(num_images=2)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
            for a in gt["annotations"]]
    mutate(dets[0])
    mutate(dets[3])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(dets))
    with pytest.raises(HarmonicError, match=message) as exc:
        evaluate(gt, str(p))
    assert str(p) in str(exc.value)


def test_bad_files_and_empty_ground_truth(tmp_path):
    gt = make_gt(num_images=2)
    with pytest.raises(HarmonicError, match="not found"):
        evaluate(gt, str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(HarmonicError, match="broken.json: not valid JSON"):
        evaluate(gt, str(tmp_path / "broken.json"))
    empty = dict(gt, annotations=[])
    with pytest.raises(HarmonicError, match=r"no objects \(2 images, 0 boxes"):
        evaluate(empty, [])
    with pytest.raises(HarmonicError, match="image_id must be a number"):
        evaluate(gt, [{"image_id": "img", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(HarmonicError, match="1 with a non-integer image_id"):
        evaluate(gt, [{"image_id": 1.5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(HarmonicError, match="needs image_id, category_id, bbox and score"):
        evaluate(gt, [{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(HarmonicError, match="candidates: .*1 with an image_id"):
        evaluate(gt, [], [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])


def test_coco_file_mapped_by_names_and_columns_input(tmp_path):
    gt = make_gt(num_images=3, seed=11)
    # an external file: categories with other ids and order; detections use the file's own ids
    ext = json.loads(json.dumps(gt))
    new_id = {1: 40, 2: 7, 3: 15}
    ext["categories"] = [{"id": new_id[c["id"]], "name": c["name"]} for c in reversed(gt["categories"])]
    for a in ext["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    p = tmp_path / "ext.json"
    p.write_text(json.dumps(ext))
    cols = {"image_id": np.array([a["image_id"] for a in gt["annotations"]]),
            "category_id": np.array([a["category_id"] for a in gt["annotations"]]),
            "bbox": np.array([a["bbox"] for a in gt["annotations"]]),
            "score": np.full(len(gt["annotations"]), 0.8)}
    cols["category_id"] = np.array([new_id[c] for c in cols["category_id"]])
    r = evaluate(str(p), cols, names=NAMES)
    assert r["coco"]["AP"] == pytest.approx(1.0)
    assert list(r["per_class"]) == NAMES
    with pytest.raises(HarmonicError, match="not in names"):
        evaluate(str(p), cols, names=["circle", "square"])


def test_dataset_yaml_ground_truth(tmp_path):
    readers = pytest.importorskip("harmonic.data.readers")
    pytest.importorskip("harmonic.data.dataset_file")
    gt = make_gt(num_images=3, seed=13)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(gt))
    (tmp_path / "data.yaml").write_text(
        "names: [circle, triangle, star]\n"
        "val: {images: images, annotations: annotations/val.json}\n")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.7}
            for a in gt["annotations"]]
    r1 = evaluate(f"{tmp_path / 'data.yaml'}:val", dets)
    r2 = evaluate((tmp_path / "data.yaml", "val"), dets)
    assert r1["coco"]["AP"] == pytest.approx(1.0) and r2["coco"] == r1["coco"]
    records = readers.read_coco(tmp_path / "annotations" / "val.json", NAMES)
    r3 = evaluate(records, dets, names=NAMES)
    assert r3["coco"]["AP"] == pytest.approx(1.0)
    assert r3["consistency"]["aic"] == pytest.approx(0.3)


def test_detections_partly_outside_the_image_are_clipped_and_counted(caplog):
    """Another detector's unclipped output is scored, not refused: clipped to the image, with a counted warning."""
    import logging

    gt = make_gt(num_images=2)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.5}
            for a in gt["annotations"]]
    x, y, w, h = dets[0]["bbox"]
    dets[0]["bbox"] = [-5.0, y, x + w + 5.0, h]  # starts 5 px left of the image, same right edge
    dets[1]["bbox"] = [120.0, 120.0, 30.0, 30.0]  # runs past the 128 px image's corner
    with caplog.at_level(logging.WARNING):
        r = evaluate(copy.deepcopy(gt), dets)
    assert "2 of 8 detections partly outside their image, clipped to it" in caplog.text
    clipped = copy.deepcopy(dets)
    clipped[0]["bbox"] = [0.0, y, x + w, h]
    clipped[1]["bbox"] = [120.0, 120.0, 8.0, 8.0]
    assert r["coco"]["AP"] == pytest.approx(evaluate(copy.deepcopy(gt), clipped)["coco"]["AP"], abs=1e-12)
