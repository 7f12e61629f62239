"""Paired bootstrap: per-image reduction reproduces the evaluation; resampling weights = duplicated images."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from harmonic.errors import HarmonicError
from harmonic.evaluation import evaluate
from harmonic.experiments.stats import compare, counts, image_replicates, metrics, run_data
from tests.evaluation.helpers import make_gt


def _noisy_detections(gt: dict, seed: int, quality: float = 3.0, fp_rate: float = 0.5) -> list[dict]:
    """Jittered copies of every GT box, score loosely tied to how close the box is, plus false positives."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(2):
            j = rng.normal(0, quality, 4)
            box = [max(0.0, x + j[0]), max(0.0, y + j[1]), max(2.0, w + j[2]), max(2.0, h + j[3])]
            # continuous (no ties: pycocotools orders tied scores by image, which duplication changes)
            score = float(0.01 + 0.98 / (1 + np.exp(np.abs(j).mean() / 2 - 1.5 + rng.normal(0, 0.4))))
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box, "score": score})
        if rng.uniform() < fp_rate:
            dets.append({"image_id": a["image_id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(v) for v in rng.uniform(0, 90, 2)] + [20.0, 20.0],
                         "score": float(rng.uniform(0.05, 0.6))})
    return dets


def _candidates(dets: list[dict], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = list(dets)
    for d in dets:
        x, y, w, h = d["bbox"]
        out.append({**d, "bbox": [abs(x + rng.normal(0, 2)), abs(y + rng.normal(0, 2)), w, h],
                    "score": float(d["score"] * rng.uniform(0.5, 1.0))})
    return out


@pytest.fixture(scope="module")
def case():
    gt = make_gt(num_images=12, per_image=4, seed=1)
    dets = _noisy_detections(gt, seed=2)
    return gt, dets, _candidates(dets, 3)


def test_point_metrics_equal_the_evaluation_report(case):
    gt, dets, cands = case
    rep = evaluate(copy.deepcopy(gt), dets, cands)
    m = metrics(run_data(copy.deepcopy(gt), dets, cands))
    assert m["AP"] == pytest.approx(rep["coco"]["AP"], abs=1e-9)
    assert m["AP50"] == pytest.approx(rep["coco"]["AP50"], abs=1e-9)
    assert m["AP75"] == pytest.approx(rep["coco"]["AP75"], abs=1e-9)
    for t in (60, 70, 80, 90):
        assert m[f"AP{t}"] == pytest.approx(rep["voc"][f"AP{t}"], abs=1e-9)
    for k in ("spearman", "kendall", "aic"):
        assert m[k] == pytest.approx(rep["consistency"][k], abs=1e-12)
    assert m["regret"] == pytest.approx(rep["regret"]["rate"], abs=1e-12)
    rk = rep["ranking"]
    assert m["tp_spearman"] == pytest.approx(rk["true_positives"]["spearman"], abs=1e-12)
    assert m["tp_kendall"] == pytest.approx(rk["true_positives"]["kendall"], abs=1e-12)
    assert m["tp_spearman_cls"] == pytest.approx(rk["true_positives"]["spearman_class_mean"], abs=1e-12)
    assert m["nms_top1"] == pytest.approx(rk["nms"]["top1_share"], abs=1e-12)
    assert m["nms_rho"] == pytest.approx(rk["nms"]["within_spearman"], abs=1e-12)
    assert 0.2 < m["AP"] < 0.9  # a non-trivial case
    assert 0.1 < m["tp_spearman"] < 0.95 and 0.2 < m["nms_top1"] < 1.0


def test_weights_equal_duplicated_images(case):
    gt, dets, cands = case
    w = np.array([0, 2, 1, 3, 0, 1, 1, 0, 2, 1, 1, 0])
    # the same multiset of images, written out with fresh ids
    dup = {"images": [], "annotations": [], "categories": gt["categories"]}
    new_dets, new_cands = [], []
    for pos, im in enumerate(sorted(gt["images"], key=lambda i: i["id"])):
        for _ in range(w[pos]):
            new_id = len(dup["images"]) + 1
            dup["images"].append({**im, "id": new_id})
            for a in gt["annotations"]:
                if a["image_id"] == im["id"]:
                    dup["annotations"].append({**a, "id": len(dup["annotations"]) + 1, "image_id": new_id})
            new_dets += [{**d, "image_id": new_id} for d in dets if d["image_id"] == im["id"]]
            new_cands += [{**d, "image_id": new_id} for d in cands if d["image_id"] == im["id"]]
    weighted = metrics(run_data(copy.deepcopy(gt), dets, cands), w)
    rep = evaluate(dup, new_dets, new_cands)
    assert weighted["AP"] == pytest.approx(rep["coco"]["AP"], abs=1e-9)
    assert weighted["AP75"] == pytest.approx(rep["coco"]["AP75"], abs=1e-9)
    assert weighted["spearman"] == pytest.approx(rep["consistency"]["spearman"], abs=1e-12)
    assert weighted["aic"] == pytest.approx(rep["consistency"]["aic"], abs=1e-12)
    assert weighted["regret"] == pytest.approx(rep["regret"]["rate"], abs=1e-12)
    rk = rep["ranking"]
    assert weighted["tp_spearman"] == pytest.approx(rk["true_positives"]["spearman"], abs=1e-12)
    assert weighted["tp_kendall"] == pytest.approx(rk["true_positives"]["kendall"], abs=1e-12)
    assert weighted["nms_top1"] == pytest.approx(rk["nms"]["top1_share"], abs=1e-12)
    assert weighted["nms_rho"] == pytest.approx(rk["nms"]["within_spearman"], abs=1e-12)


def _reps(arms, resamples=200, seed=0):
    return image_replicates(arms, resamples=resamples, seed=seed)


def test_identical_runs_give_a_zero_interval(case):
    gt, dets, cands = case
    a = run_data(copy.deepcopy(gt), dets, cands)
    reps = _reps({"x": [a], "y": [a]})
    rows = compare(reps["x"], reps["y"])
    for m in ("AP", "spearman", "aic", "regret", "tp_spearman", "nms_top1"):
        assert rows[m]["delta"] == 0.0 and rows[m]["seeds"] == 1 and rows[m]["noise"] == "images only"
        if rows[m]["n"] >= 30:
            assert rows[m]["lo"] == 0.0 and rows[m]["hi"] == 0.0 and rows[m]["p"] is None


def test_a_clearly_better_model_has_an_interval_above_zero_and_a_noisy_copy_does_not(case):
    gt, dets, cands = case
    base = run_data(copy.deepcopy(gt), dets, cands)
    better = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=2, quality=1.0, fp_rate=0.0), cands)
    reseeded = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=7), cands)
    reps = _reps({"base": [base], "better": [better], "same": [reseeded]}, resamples=300, seed=1)
    up = compare(reps["better"], reps["base"])["AP"]
    assert up["delta"] > 0.1 and 0 < up["lo"] <= up["delta"] <= up["hi"]
    assert up["a"] == pytest.approx(metrics(better)["AP"]) and up["b"] == pytest.approx(metrics(base)["AP"])
    same = compare(reps["same"], reps["base"])["AP"]
    assert same["lo"] < 0 < same["hi"]
    # seeded: the same call gives the same interval
    again = compare(_reps({"base": [base], "better": [better]}, resamples=300, seed=1)["better"],
                    _reps({"base": [base], "better": [better]}, resamples=300, seed=1)["base"])["AP"]
    assert again["lo"] == up["lo"] and again["hi"] == up["hi"]


def test_every_run_sees_the_same_resamples_whatever_else_is_in_the_analysis(case):
    gt, dets, cands = case
    base = run_data(copy.deepcopy(gt), dets, cands)
    other = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=7), cands)
    alone = _reps({"base": [base]}, resamples=50, seed=3)["base"][0]
    together = _reps({"other": [other], "base": [base]}, resamples=50, seed=3)["base"][0]
    for m in ("AP", "tp_spearman", "nms_top1"):
        np.testing.assert_array_equal(alone.boot[m], together.boot[m])
        assert alone.point[m] == metrics(base)[m]


def test_replicates_reject_mismatched_inputs(case):
    gt, dets, cands = case
    a = run_data(copy.deepcopy(gt), dets, cands)
    with pytest.raises(HarmonicError, match="at least one run"):
        image_replicates({"a": [a], "b": []})
    small = make_gt(num_images=3, per_image=2, seed=5)
    b = run_data(small, _noisy_detections(small, 1))
    with pytest.raises(HarmonicError, match="different image sets"):
        image_replicates({"a": [a], "b": [b]})
    with pytest.raises(HarmonicError, match="resamples must be >= 1"):
        image_replicates({"a": [a]}, resamples=0)


def test_replicates_reject_runs_on_different_image_ids(case):
    gt, dets, cands = case
    a = run_data(copy.deepcopy(gt), dets, cands)
    other = copy.deepcopy(gt)
    shift = {im["id"]: im["id"] + 100 for im in other["images"]}
    for im in other["images"]:
        im["id"] = shift[im["id"]]
    for ann in other["annotations"]:
        ann["image_id"] = shift[ann["image_id"]]
    b = run_data(other, [{**d, "image_id": shift[d["image_id"]]} for d in dets])
    with pytest.raises(HarmonicError, match="different image ids"):
        image_replicates({"a": [a], "b": [b]})


def test_seeds_are_paired_and_their_variation_widens_the_interval(case):
    """Two arms of equal quality whose seeds differ a lot: seed s is compared with seed s, and the
    seed-paired interval is wider than either seed's image-only interval."""
    gt, dets, cands = case
    runs = [run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=s, quality=q), cands)
            for s, q in ((11, 1.0), (12, 5.0), (13, 5.0), (14, 1.0))]
    base, arm = runs[:2], runs[2:]  # seed 0: good baseline vs poor arm; seed 1: the other way round
    reps = _reps({"base": base, "arm": arm}, resamples=300)
    both = compare(reps["arm"], reps["base"])["AP"]
    assert both["seeds"] == 2 and both["noise"] == "seeds+images" and both["p"] is not None
    per_seed = [metrics(a)["AP"] - metrics(b)["AP"] for a, b in zip(arm, base)]
    assert both["delta"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert both["lo"] < 0 < both["hi"]
    single = [compare([reps["arm"][s]], [reps["base"][s]])["AP"] for s in (0, 1)]
    assert all(r["noise"] == "images only" and r["p"] is None for r in single)
    assert both["hi"] - both["lo"] > 1.5 * max(r["hi"] - r["lo"] for r in single)


def test_arms_are_compared_on_the_seeds_both_ran(case):
    """A one-seed arm against a three-seed baseline: seed 0 against seed 0, an interval over images only."""
    gt, dets, cands = case
    base = [run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=s), cands) for s in (21, 22, 23)]
    one = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=2, quality=1.0, fp_rate=0.0), cands)
    reps = _reps({"base": base, "one": [one]}, resamples=100, seed=4)
    row = compare(reps["one"], reps["base"])["AP"]
    assert row["seeds"] == 1 and row["noise"] == "images only" and row["p"] is None
    assert row["delta"] == pytest.approx(metrics(one)["AP"] - metrics(base[0])["AP"], abs=1e-12)
    assert row["b"] == pytest.approx(metrics(base[0])["AP"])


def test_counts_and_no_interval_below_thirty_eligible(case):
    gt, dets, cands = case
    a = run_data(copy.deepcopy(gt), dets, cands)
    c = counts(a)
    rep = evaluate(copy.deepcopy(gt), dets, cands)
    assert c["AP"] == len(gt["annotations"]) == 48
    assert c["tp_spearman"] == rep["ranking"]["true_positives"]["count"]
    assert c["nms_top1"] == rep["ranking"]["nms"]["num_eligible"]
    assert c["regret"] == rep["regret"]["num_objects"]
    b = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=7), cands)
    reps = _reps({"a": [a], "b": [b]}, resamples=50)
    assert compare(reps["a"], reps["b"], min_count=c["AP"] + 1)["AP"]["lo"] is None
    assert compare(reps["a"], reps["b"], min_count=c["AP"])["AP"]["lo"] is not None
