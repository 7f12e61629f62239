"""Paired bootstrap over validation images: is HarmonicDet − baseline a real difference or noise?

A run's evaluation is reduced once to per-image pieces (``RunData``): pycocotools' per-image
matches for AP, every scored detection's (score, IoU) for the consistency metrics, every object's
NMS-regret flag. A bootstrap resample of the validation images is then a vector of image
multiplicities ``w[I]``; each metric is recomputed with those weights, which is the same as
evaluating on the resampled image list (an image drawn twice counts twice; detections with exactly
equal scores are the one exception, as pycocotools orders ties by image). Both models are
evaluated on the *same* resamples, so image-to-image difficulty cancels in the delta.

numpy + scipy + pycocotools only (no torch): it runs wherever ``harmonic eval`` runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.errors import HarmonicError
from harmonic.evaluation.ranking import NmsObjects, TruePositives, spearman_kendall

# COCO's recall grid (101 points) and IoU grid 0.50:0.05:0.95
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
VOC_THRS = (0.5, 0.6, 0.7, 0.8, 0.9)

# metric name -> higher is better? The ranking metrics first (harmonic.evaluation.ranking): true
# positives' Spearman/Kendall (pooled and mean over classes), the NMS-cluster share and correlation;
# then AP; then the pooled (mostly false-positive) correlation, AIC and the NMS regret rate.
METRICS: dict[str, bool] = {
    "tp_spearman": True, "tp_kendall": True, "tp_spearman_cls": True, "nms_top1": True, "nms_rho": True,
    "AP": True, "AP50": True, "AP60": True, "AP70": True, "AP75": True, "AP80": True, "AP90": True,
    "spearman": True, "kendall": True, "aic": False, "regret": False,
}


@dataclass
class CategoryMatches:
    """One category's detections over all images, sorted by score as pycocotools sorts them.

    ``image`` int64[D] image position, ``tp``/``fp`` bool[T, D] at each of the IoU thresholds
    :data:`IOU_THRS`, ``npig`` int64[I] non-ignored GT objects per image.
    """

    image: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    npig: np.ndarray


@dataclass
class RunData:
    """Per-image pieces of one run's evaluation (see module docstring).

    ``num_images`` I; ``image_ids`` int64[I] the evaluated images (sorted); ``categories`` one
    :class:`CategoryMatches` per category; ``pair_image`` int64[P], ``pair_score``/``pair_iou``
    float64[P] for scored detections with IoU > 0; ``regret_image`` int64[G],
    ``regret_eligible``/``regret_flag`` bool[G]; ``tp`` the true positives (one per matched
    object); ``nms`` per-object NMS-cluster ranking (None without candidates).
    """

    num_images: int
    categories: list[CategoryMatches]
    pair_image: np.ndarray
    pair_score: np.ndarray
    pair_iou: np.ndarray
    regret_image: np.ndarray
    regret_eligible: np.ndarray
    regret_flag: np.ndarray
    image_ids: np.ndarray | None = None
    tp: TruePositives | None = None
    nms: NmsObjects | None = None


def _category_matches(ev: Any, num_images: int, k: int) -> CategoryMatches:
    """Gather pycocotools' ``evalImgs`` of category index ``k`` (area 'all', maxDet 100)."""
    num_area = len(ev.params.areaRng)
    scores, images, matched, ignored = [], [], [], []
    npig = np.zeros(num_images, np.int64)
    for i in range(num_images):
        e = ev.evalImgs[k * num_area * num_images + i]  # pycocotools' layout: [K, A, I], area 0 = 'all'
        if e is None:
            continue
        npig[i] = int(np.count_nonzero(e["gtIgnore"] == 0))
        d = len(e["dtScores"])
        if d:
            scores.append(np.asarray(e["dtScores"], np.float64))
            images.append(np.full(d, i, np.int64))
            matched.append(e["dtMatches"][:, :d] != 0)
            ignored.append(e["dtIgnore"][:, :d].astype(bool))
    t = len(ev.params.iouThrs)
    if not scores:
        empty = np.zeros((t, 0), bool)
        return CategoryMatches(np.zeros(0, np.int64), empty, empty, npig)
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="mergesort")  # exactly pycocotools' accumulate order
    m, ig = np.concatenate(matched, 1)[:, order], np.concatenate(ignored, 1)[:, order]
    return CategoryMatches(np.concatenate(images)[order], m & ~ig, ~m & ~ig, npig)


def run_data(ground_truth: Any, detections: Any, candidates: Any = None, score_min: float = 0.05,
             names: Sequence[str] | None = None) -> RunData:
    """Reduce one run's evaluation to per-image pieces.

    Args:
        ground_truth, detections, candidates, score_min, names: as :func:`harmonic.evaluation.evaluate`.
    """
    from pycocotools.cocoeval import COCOeval

    from harmonic.evaluation.coco import _quiet, build_coco_objects
    from harmonic.evaluation.consistency import detection_ious
    from harmonic.evaluation.inputs import load_detections, load_ground_truth
    from harmonic.evaluation.ranking import match_true_positives, nms_ranking
    from harmonic.evaluation.regret import regret_flags

    gt = load_ground_truth(ground_truth, names)
    dets = load_detections(detections, gt, "detections")
    coco_gt, coco_dt = build_coco_objects(gt, dets)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    ev.params.iouThrs = IOU_THRS
    ev.params.maxDets = [100]
    ev.params.imgIds = [int(i) for i in gt.image_ids]  # sorted, = positions 0..I-1
    with _quiet():
        ev.evaluate()
    num_images = len(gt.image_ids)
    cats = [_category_matches(ev, num_images, k) for k in range(len(ev.params.catIds))]

    scored = dets.select(dets.score >= score_min)
    iou = detection_ious(gt, scored)
    used = iou > 0
    pair_image = np.searchsorted(gt.image_ids, scored.image_id[used]).astype(np.int64)

    nms = None
    if candidates is not None:
        cands = load_detections(candidates, gt, "candidates")
        eligible, flag, obj_image = regret_flags(gt, dets, cands, score_min)
        regret_image = np.searchsorted(gt.image_ids, obj_image).astype(np.int64)
        nms = nms_ranking(gt, cands, score_min)
    else:
        eligible = flag = np.zeros(0, bool)
        regret_image = np.zeros(0, np.int64)
    return RunData(num_images, cats, pair_image, scored.score[used].astype(np.float64), iou[used],
                   regret_image, eligible, flag, image_ids=np.asarray(gt.image_ids, np.int64),
                   tp=match_true_positives(gt, dets), nms=nms)


def _weighted_ap(cat: CategoryMatches, w: np.ndarray) -> np.ndarray:
    """AP per IoU threshold ``float64[T]`` (NaN where the category has no GT), pycocotools' way."""
    npig = float(np.dot(cat.npig, w))
    t = cat.tp.shape[0]
    if npig == 0:
        return np.full(t, np.nan)
    if cat.image.size == 0:
        return np.zeros(t)
    wd = w[cat.image].astype(np.float64)
    keep = wd > 0
    tp = np.cumsum(cat.tp[:, keep] * wd[keep], axis=1)
    fp = np.cumsum(cat.fp[:, keep] * wd[keep], axis=1)
    if tp.shape[1] == 0:
        return np.zeros(t)
    rc = tp / npig
    pr = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
    out = np.empty(t)
    for j in range(t):
        inds = np.searchsorted(rc[j], REC_THRS, side="left")
        q = np.zeros(len(REC_THRS))
        ok = inds < pr.shape[1]
        q[ok] = pr[j, inds[ok]]
        out[j] = q.mean()
    return out


def metrics(data: RunData, w: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of :data:`METRICS` on image multiplicities ``w[I]`` (default: each image once).

    AP values are fractions (COCO AP averages IoU 0.50:0.95); NaN where undefined.
    """
    w = np.ones(data.num_images, np.int64) if w is None else np.asarray(w)
    per_cat = np.array([_weighted_ap(c, w) for c in data.categories])  # [K, T]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ap_t = np.nanmean(per_cat, axis=0) if per_cat.size else np.full(len(IOU_THRS), np.nan)
    out = {"AP": float(np.nanmean(ap_t)) if np.isfinite(ap_t).any() else np.nan}
    for thr in (*VOC_THRS, 0.75):
        out[f"AP{int(round(thr * 100))}"] = float(ap_t[int(np.argmin(np.abs(IOU_THRS - thr)))])
    reps = w[data.pair_image]
    score, iou = np.repeat(data.pair_score, reps), np.repeat(data.pair_iou, reps)
    out["spearman"], out["kendall"] = spearman_kendall(score, iou)
    out["aic"] = float(np.abs(score - iou).mean()) if score.size else np.nan
    ow = w[data.regret_image] * data.regret_eligible
    out["regret"] = float(np.dot(ow, data.regret_flag) / ow.sum()) if ow.sum() else np.nan
    out.update(_ranking(data, w))
    return out


def _ranking(data: RunData, w: np.ndarray) -> dict[str, float]:
    """The ranking metrics of :mod:`harmonic.evaluation.ranking` on image multiplicities ``w[I]``."""
    out = dict.fromkeys(("tp_spearman", "tp_kendall", "tp_spearman_cls", "nms_top1", "nms_rho"), np.nan)
    tp = data.tp
    if tp is not None and tp.score.size:
        reps = w[tp.image]
        score, iou, cat = np.repeat(tp.score, reps), np.repeat(tp.iou, reps), np.repeat(tp.category, reps)
        out["tp_spearman"], out["tp_kendall"] = spearman_kendall(score, iou)
        per_cat = [spearman_kendall(score[cat == k], iou[cat == k])[0] for k in np.unique(cat)]
        per_cat = [r for r in per_cat if np.isfinite(r)]
        out["tp_spearman_cls"] = float(np.mean(per_cat)) if per_cat else np.nan
    nms = data.nms
    if nms is not None:
        ow = w[nms.image] * nms.eligible
        if ow.sum():
            out["nms_top1"] = float(np.dot(ow, nms.top_ok) / ow.sum())
        finite = np.isfinite(nms.rho)
        rw = ow * finite
        if rw.sum():
            out["nms_rho"] = float(np.dot(rw, np.where(finite, nms.rho, 0.0)) / rw.sum())
    return out


def paired_bootstrap(baseline: Sequence[RunData], harmonic: Sequence[RunData], resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float | bool | None]]:
    """95 % confidence intervals of ``mean_seeds(harmonic) − mean_seeds(baseline)`` per metric.

    ``baseline[s]``/``harmonic[s]`` are seed ``s``'s runs on the same evaluation images. Each
    resample draws I images with replacement (seeded) and recomputes every run on them; with two
    or more seeds it also draws, per arm, S seeds with replacement; the delta of the (drawn) seed
    means is taken per resample, and the interval is its percentiles.

    Returns ``{metric: {"baseline", "harmonic", "delta", "lo", "hi", "significant", "better"}}``:
    point values on the full set (seed means), the interval, whether it excludes 0, and
    whether the delta's direction is an improvement (None when not significant).
    """
    return paired_bootstrap_arms(baseline, {"harmonic": harmonic}, resamples, seed, level)["harmonic"]


def paired_bootstrap_arms(baseline: Sequence[RunData], arms: Mapping[str, Sequence[RunData]],
                          resamples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict[str, dict[str, dict[str, float | bool | None]]]:
    """:func:`paired_bootstrap` of every arm against the same baseline, on the same resamples.

    Images are resampled jointly for all runs (paired); with two or more seeds, the baseline's seeds
    and the arm's seeds are resampled as well, independently of each other.

    The baseline is evaluated once per resample, not once per arm; when no arm has more seeds than
    the baseline, each arm's result equals ``paired_bootstrap(baseline, arms[name], resamples, seed, level)``.
    """
    arms = dict(arms)
    if not baseline or any(len(runs) < 1 for runs in arms.values()):
        raise HarmonicError("paired bootstrap needs at least one baseline run and one run of each arm")
    all_runs = [*baseline, *(d for runs in arms.values() for d in runs)]
    sizes = {d.num_images for d in all_runs}
    if len(sizes) != 1:
        raise HarmonicError(f"paired bootstrap: runs were evaluated on different image sets ({sorted(sizes)})")
    ids = [d.image_ids for d in all_runs if d.image_ids is not None]
    if any(not np.array_equal(ids[0], other) for other in ids[1:]):
        raise HarmonicError("paired bootstrap: runs were evaluated on different image ids "
                            "(the same number of images, not the same images)")
    if resamples < 1:
        raise HarmonicError(f"paired bootstrap: resamples must be >= 1, got {resamples}")
    n = sizes.pop()
    rng = np.random.default_rng(seed)

    def seed_mean(runs: Sequence[RunData], w: np.ndarray | None, pick: np.ndarray | None = None) -> dict[str, float]:
        rows = [metrics(r, w) for r in runs]
        if pick is not None:
            rows = [rows[i] for i in pick]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {m: float(np.nanmean([row[m] for row in rows])) for m in METRICS}

    # With 2+ seeds the seeds are resampled too, so training-to-training variation is inside the
    # interval: the baseline's and the arm's independently (different arms' trainings are independent
    # draws), from streams of their own so that the image resamples are the same as with one seed and,
    # as long as no arm has more seeds than the baseline, each arm's result does not depend on which
    # other arms are compared in the same call. An arm with one seed has no seed variation to resample
    # (the baseline's is still inside the interval).
    seed_rngs = (np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2]))
    most = max([len(baseline), *(len(runs) for runs in arms.values())])

    def pick(u: np.ndarray, count: int) -> np.ndarray | None:
        return np.minimum((u[:count] * count).astype(np.int64), count - 1) if count > 1 else None

    point_b = seed_mean(baseline, None)
    points = {name: seed_mean(runs, None) for name, runs in arms.items()}
    deltas = {name: {m: np.empty(resamples) for m in METRICS} for name in arms}
    for b in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        u_base, u_arm = seed_rngs[0].random(most), seed_rngs[1].random(most)
        mb = seed_mean(baseline, w, pick(u_base, len(baseline)))
        for name, runs in arms.items():
            mh = seed_mean(runs, w, pick(u_arm, len(runs)))
            for m in METRICS:
                deltas[name][m][b] = mh[m] - mb[m]
    return {name: _intervals(point_b, points[name], deltas[name], resamples, level) for name in arms}


def _intervals(point_b: dict[str, float], point_h: dict[str, float], deltas: dict[str, np.ndarray],
               resamples: int, level: float) -> dict[str, dict[str, float | bool | None]]:
    """Per metric: point values, the delta, its percentile interval and the verdict."""
    alpha = (1.0 - level) / 2.0
    out: dict[str, dict[str, float | bool | None]] = {}
    for m, higher_better in METRICS.items():
        d = deltas[m][np.isfinite(deltas[m])]
        delta = point_h[m] - point_b[m]
        if d.size < max(10, resamples // 2) or not np.isfinite(delta):
            out[m] = {"baseline": _num(point_b[m]), "harmonic": _num(point_h[m]), "delta": _num(delta),
                      "lo": None, "hi": None, "significant": False, "better": None}
            continue
        lo, hi = (float(v) for v in np.quantile(d, [alpha, 1.0 - alpha]))
        significant = lo > 0 or hi < 0
        out[m] = {"baseline": _num(point_b[m]), "harmonic": _num(point_h[m]), "delta": float(delta),
                  "lo": lo, "hi": hi, "significant": bool(significant),
                  "better": (bool((delta > 0) == higher_better) if significant else None)}
    return out


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def run_data_from_dir(run_dir: str | Path, annotations: str | Path, names: Sequence[str] | None = None) -> RunData:
    """:func:`run_data` of an experiment run folder (``infer/detections.json``, ``candidates.json``)."""
    run_dir = Path(run_dir)
    dets = run_dir / "infer" / "detections.json"
    if not dets.exists():
        raise HarmonicError(f"{dets}: missing (the run's inference did not finish)")
    cands = run_dir / "candidates.json"
    return run_data(annotations, dets, cands if cands.exists() else None, names=names)
