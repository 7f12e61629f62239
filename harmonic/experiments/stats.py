"""Is one arm − another a real difference or noise? Seed-paired intervals over seeds and images.

A run's evaluation is reduced once to per-image pieces (``RunData``): pycocotools' per-image
matches for AP, every scored detection's (score, IoU) for the consistency metrics, every object's
NMS-regret flag. A bootstrap resample of the evaluation images is then a vector of image
multiplicities ``w[I]``; each metric is recomputed with those weights, which is the same as
evaluating on the resampled image list (an image drawn twice counts twice; detections with exactly
equal scores are the one exception, as pycocotools orders ties by image). Every run is evaluated on
the *same* resamples (:func:`image_replicates`), so image-to-image difficulty cancels in a contrast.

Arms are compared seed by seed (:func:`compare`, :func:`seed_paired_interval`): seed ``s`` of both
arms shares the initial weights and the data order, the per-seed differences give the
training-to-training variation with each run's image noise counted once, and the image resamples
give only what the seeds share. Which contrasts get a verdict is the statistical design's
(:mod:`harmonic.experiments.design`).

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

# a metric over fewer eligible items (counts()) gets no interval
MIN_COUNT = 30

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
        nms = nms_ranking(gt, cands)
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


def counts(data: RunData) -> dict[str, int]:
    """How many eligible items each metric of :data:`METRICS` is computed over, for one run.

    AP: the non-ignored objects; ρ/τ TP: the true positives; NMS top-1: objects with two or more
    candidates; NMS ρ: those with a defined within-object correlation; pooled metrics: the scored
    detections overlapping an object; regret: the objects it is defined for.
    """
    objects = int(sum(int(c.npig.sum()) for c in data.categories))
    tp = int(data.tp.score.size) if data.tp is not None else 0
    nms = data.nms
    eligible = int(nms.eligible.sum()) if nms is not None else 0
    finite = int((nms.eligible & np.isfinite(nms.rho)).sum()) if nms is not None else 0
    out = {m: objects for m in METRICS if m.startswith("AP")}
    out.update(tp_spearman=tp, tp_kendall=tp, tp_spearman_cls=tp, nms_top1=eligible, nms_rho=finite,
               spearman=int(data.pair_score.size), kendall=int(data.pair_score.size),
               aic=int(data.pair_score.size), regret=int(data.regret_eligible.sum()))
    return out


@dataclass
class Replicates:
    """One run's metrics on the full evaluation set (``point``), on ``B`` image resamples shared by every
    run of the analysis (``boot[metric]`` float64[B], NaN where undefined), and the eligible counts."""

    point: dict[str, float]
    boot: dict[str, np.ndarray]
    counts: dict[str, int]


def _check_same_images(runs: Sequence[RunData]) -> int:
    sizes = {d.num_images for d in runs}
    if len(sizes) != 1:
        raise HarmonicError(f"runs were evaluated on different image sets ({sorted(sizes)} images)")
    ids = [d.image_ids for d in runs if d.image_ids is not None]
    if any(not np.array_equal(ids[0], other) for other in ids[1:]):
        raise HarmonicError("runs were evaluated on different image ids (the same number of images, not the "
                            "same images)")
    return sizes.pop()


def image_replicates(arms: Mapping[str, Sequence[RunData]], resamples: int = 1000,
                     seed: int = 0) -> dict[str, list[Replicates]]:
    """Every run of every arm on the same ``resamples`` bootstrap resamples of the evaluation images.

    ``arms[name][s]`` is seed ``s``'s run. A resample draws I images with replacement (seeded) as
    multiplicities ``w[I]``; each metric is recomputed with them (:func:`metrics`). Seeds are never
    resampled: seed-to-seed variation enters through :func:`seed_paired_interval`.
    """
    runs = [d for rs in arms.values() for d in rs]
    if not runs or any(len(rs) < 1 for rs in arms.values()):
        raise HarmonicError("an analysis needs at least one run of each arm")
    if resamples < 1:
        raise HarmonicError(f"resamples must be >= 1, got {resamples}")
    n = _check_same_images(runs)
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]
    out: dict[str, list[Replicates]] = {}
    for name, rs in arms.items():
        out[name] = []
        for d in rs:
            rows = [metrics(d, w) for w in weights]
            out[name].append(Replicates(metrics(d), {m: np.array([r[m] for r in rows], np.float64) for m in METRICS},
                                        counts(d)))
    return out


@dataclass
class Interval:
    """A contrast ``a − b`` and its interval. ``noise`` says what the interval holds: ``"seeds+images"``
    (seed-paired, :func:`seed_paired_interval`) or ``"images only"`` (one seed: training-to-training
    variation is not in it). ``p`` is the two-sided p-value of ``delta = 0`` (None for images only)."""

    delta: float
    lo: float | None
    hi: float | None
    p: float | None
    df: float | None
    seeds: int
    noise: str


def seed_paired_interval(a: np.ndarray, b: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray,
                         level: float = 0.95) -> Interval:
    """Interval of the mean over seeds of ``a − b`` for arms paired by seed (same initialisation and data
    order), evaluated on the same images.

    Args:
        a, b: float64[S] each seed's metric on the evaluation set (seed ``s`` of both arms).
        boot_a, boot_b: float64[S, B] the same on ``B`` image resamples shared by all runs.

    With ``S >= 2`` the per-seed differences ``D_s`` carry each pair's training noise and its own image
    noise, so their sample variance ``s²`` estimates both, counted once. What they share, the arms'
    systematic difference on these particular images, cancels in ``s²``: it is estimated as the
    bootstrap covariance of ``D_s`` and ``D_s'`` (``s != s'``; >= 0). The variance of the mean is
    ``V = s²/S + C`` and the interval ``mean ± t(df) sqrt(V)`` with ``df = (S−1) V/(s²/S)``: ``S−1``
    when the seeds carry all the variance, more as the image part ``C`` (estimated from hundreds of
    images) grows. Satterthwaite's ``(S−1)(V/(s²/S))²`` under-covers with three seeds (``s²`` has two
    degrees of freedom and a small draw of it inflates ``df`` just when the interval needs its tail);
    ``tests/experiments/test_stats_coverage.py`` measures both. With ``S = 1`` the interval is the
    bootstrap percentile interval of ``D`` over images only, ``p`` None.
    """
    from scipy import stats as sps

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    dstar = np.asarray(boot_a, np.float64) - np.asarray(boot_b, np.float64)  # [S, B]
    dstar = dstar[:, np.isfinite(dstar).all(axis=0)]
    s = d.size
    delta = float(d.mean())
    alpha = 1.0 - level
    if s < 2:
        if dstar.shape[1] < 10:
            return Interval(delta, None, None, None, None, s, "images only")
        lo, hi = (float(v) for v in np.quantile(dstar[0], [alpha / 2, 1 - alpha / 2]))
        return Interval(delta, lo, hi, None, None, s, "images only")
    seed_var = float(d.var(ddof=1)) / s
    shared = 0.0
    if dstar.shape[1] >= 10:
        cov = np.cov(dstar)
        shared = max(0.0, float((cov.sum() - np.trace(cov)) / (s * (s - 1))))
    var = seed_var + shared
    if var <= 0.0:
        return Interval(delta, delta, delta, 1.0 if delta == 0 else 0.0, float("inf"), s, "seeds+images")
    df = float("inf") if seed_var == 0 else (s - 1) * var / seed_var
    half = float(sps.t.ppf(1 - alpha / 2, df)) * np.sqrt(var)
    p = float(2 * sps.t.sf(abs(delta) / np.sqrt(var), df))
    return Interval(delta, delta - half, delta + half, p, df, s, "seeds+images")


def compare(a: Sequence[Replicates], b: Sequence[Replicates], level: float = 0.95,
            min_count: int = MIN_COUNT) -> dict[str, dict[str, Any]]:
    """Every metric's contrast ``a − b`` over the seeds both arms ran (seed ``s`` with seed ``s``).

    Returns ``{metric: {"a", "b", "delta", "lo", "hi", "p", "df", "seeds", "noise", "n",
    "higher_better"}}``: the arms' means over the paired seeds, the :class:`Interval`, and ``n`` the
    smallest eligible count over the runs involved (:func:`counts`). A metric over fewer than
    ``min_count`` eligible items gets no interval (``lo``/``hi``/``p`` None). Verdicts are the
    design's (:mod:`harmonic.experiments.design`), not this function's.
    """
    s = min(len(a), len(b))
    if s < 1:
        raise HarmonicError("a contrast needs at least one run of each arm")
    a, b = list(a)[:s], list(b)[:s]
    out: dict[str, dict[str, Any]] = {}
    for m, higher_better in METRICS.items():
        pa = np.array([r.point[m] for r in a])
        pb = np.array([r.point[m] for r in b])
        n = min(r.counts[m] for r in (*a, *b))
        row: dict[str, Any] = {"a": _num(float(np.mean(pa))), "b": _num(float(np.mean(pb))), "n": n,
                               "seeds": s, "higher_better": higher_better, "lo": None, "hi": None, "p": None,
                               "df": None, "noise": "seeds+images" if s > 1 else "images only"}
        if not (np.isfinite(pa).all() and np.isfinite(pb).all()):
            row["delta"] = None
        else:
            iv = seed_paired_interval(pa, pb, np.stack([r.boot[m] for r in a]), np.stack([r.boot[m] for r in b]),
                                      level)
            row["delta"] = iv.delta
            if n >= min_count:
                row.update(lo=iv.lo, hi=iv.hi, p=iv.p, df=iv.df)
        out[m] = row
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
