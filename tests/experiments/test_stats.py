"""Paired bootstrap: per-image reduction reproduces the evaluation; resampling weights = duplicated images."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from harmonic.errors import HarmonicError
from harmonic.evaluation import evaluate
from harmonic.experiments.stats import metrics, paired_bootstrap, run_data
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


def test_identical_runs_give_a_zero_interval(case):
    gt, dets, cands = case
    a = run_data(copy.deepcopy(gt), dets, cands)
    boot = paired_bootstrap([a], [a], resamples=200, seed=0)
    for m in ("AP", "spearman", "aic", "regret"):
        assert boot[m]["delta"] == 0.0
        assert boot[m]["lo"] == 0.0 and boot[m]["hi"] == 0.0
        assert boot[m]["significant"] is False and boot[m]["better"] is None


def test_a_clearly_better_model_is_significant_and_a_noisy_copy_is_not(case):
    gt, dets, cands = case
    base = run_data(copy.deepcopy(gt), dets, cands)
    better = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=2, quality=1.0, fp_rate=0.0), cands)
    boot = paired_bootstrap([base], [better], resamples=300, seed=1)
    assert boot["AP"]["delta"] > 0.1 and boot["AP"]["lo"] > 0 and boot["AP"]["better"] is True
    assert boot["AP"]["lo"] <= boot["AP"]["delta"] <= boot["AP"]["hi"]
    reseeded = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=7), cands)
    same_quality = paired_bootstrap([base], [reseeded], resamples=300, seed=1)
    assert same_quality["AP"]["lo"] < 0 < same_quality["AP"]["hi"]
    # seeded: the same call gives the same interval
    again = paired_bootstrap([base], [better], resamples=300, seed=1)
    assert again["AP"]["lo"] == boot["AP"]["lo"]


def test_bootstrap_rejects_mismatched_inputs(case):
    gt, dets, cands = case
    a = run_data(copy.deepcopy(gt), dets, cands)
    with pytest.raises(HarmonicError, match="at least one"):
        paired_bootstrap([a], [])
    small = make_gt(num_images=3, per_image=2, seed=5)
    b = run_data(small, _noisy_detections(small, 1))
    with pytest.raises(HarmonicError, match="different image sets"):
        paired_bootstrap([a], [b])


def test_many_arms_share_the_baseline_and_equal_one_arm_at_a_time(case):
    from harmonic.experiments.stats import paired_bootstrap_arms

    gt, dets, cands = case
    base = run_data(copy.deepcopy(gt), dets, cands)
    a = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=7), cands)
    b = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=2, quality=1.0, fp_rate=0.0), cands)
    both = paired_bootstrap_arms([base], {"a": [a], "b": [b]}, resamples=100, seed=3)
    assert both["a"] == paired_bootstrap([base], [a], resamples=100, seed=3)
    assert both["b"] == paired_bootstrap([base], [b], resamples=100, seed=3)


def test_seed_resampling_puts_training_variance_inside_the_interval(case):
    """Two arms of equal quality whose seeds differ a lot: with seeds resampled the interval widens."""
    gt, dets, cands = case
    runs = [run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=s, quality=q), cands)
            for s, q in ((11, 1.0), (12, 5.0), (13, 1.0), (14, 5.0))]
    base, arm = runs[:2], runs[2:]  # each arm: one good seed and one poor seed
    boot = paired_bootstrap(base, arm, resamples=300, seed=0)
    image_only = [paired_bootstrap([b], [a], resamples=300, seed=0)["AP"] for b, a in zip(base, arm)]
    width = boot["AP"]["hi"] - boot["AP"]["lo"]
    assert boot["AP"]["lo"] < 0 < boot["AP"]["hi"]
    assert width > 1.5 * max(r["hi"] - r["lo"] for r in image_only)
    # the point estimate is still the difference of the seed means
    mean = lambda rs: np.mean([metrics(r)["AP"] for r in rs])  # noqa: E731
    assert boot["AP"]["delta"] == pytest.approx(mean(arm) - mean(base), abs=1e-12)


def test_bootstrap_rejects_runs_on_different_image_ids(case):
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
        paired_bootstrap([a], [b])


def test_arms_may_have_fewer_seeds_than_the_baseline(case):
    """ABLATION.md runs 3 seeds of a few variants and 1 of the others: the delta is of the seed means."""
    from harmonic.experiments.stats import paired_bootstrap_arms

    gt, dets, cands = case
    base = [run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=s), cands) for s in (21, 22, 23)]
    one = run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=2, quality=1.0, fp_rate=0.0), cands)
    three = [one, run_data(copy.deepcopy(gt), _noisy_detections(gt, seed=24), cands), base[0]]
    both = paired_bootstrap_arms(base, {"one": [one], "three": three}, resamples=100, seed=4)
    mean = lambda rs: np.mean([metrics(r)["AP"] for r in rs])  # noqa: E731
    assert both["one"]["AP"]["delta"] == pytest.approx(metrics(one)["AP"] - mean(base), abs=1e-12)
    assert both["three"]["AP"]["delta"] == pytest.approx(mean(three) - mean(base), abs=1e-12)
    # each arm's interval does not depend on the other arms in the call (nor on their seed counts)
    assert both["one"] == paired_bootstrap(base, [one], resamples=100, seed=4)
    assert both["three"] == paired_bootstrap(base, three, resamples=100, seed=4)
    two = paired_bootstrap_arms(base, {"one": [one], "two": three[:2]}, resamples=100, seed=4)
    assert two["one"] == both["one"]
    # an ablation of the baseline alone has no arm to compare: no error, nothing to report
    assert paired_bootstrap_arms(base, {}, resamples=10, seed=4) == {}
