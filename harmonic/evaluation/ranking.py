"""Do the scores rank boxes by quality where it matters? True positives, NMS clusters, calibration.

The pooled score–IoU correlation (``consistency``) is dominated by false positives: on the demo's
detectors ~80 % of the kept boxes overlap no object by 0.5. The metrics here look where NMS and a
user ranking detections actually live:

- **true positives** (:func:`match_true_positives`): COCO matching at IoU 0.5 (per image and
  class, detections in score order, each takes the unmatched object it overlaps most, at most
  ``max_dets`` per image and class as pycocotools), so one detection per object; Spearman and
  Kendall between their score and IoU, pooled and as a mean over classes;
- **NMS ranking** (:func:`nms_ranking`): per object, its pre-NMS candidates (same class,
  IoU >= 0.5 with it): is the top-scored one within ``margin`` IoU of the best one (the box NMS
  keeps is the top-scored one), and the within-object rank correlation of score and IoU. The
  candidates are taken as given, with no score floor of their own: they should be what the graph's
  NMS saw (its score threshold, ``harmonic.experiments.runner.write_candidates``), so the metric
  depends on the order of the scores only, not on their scale;
- **calibration** (:func:`calibration`): mean score of the true positives per IoU bin.

numpy + scipy only (no torch): it runs wherever ``harmonic eval`` runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from harmonic.boxes import box_iou
from harmonic.evaluation.inputs import Detections, GroundTruth
from harmonic.evaluation.matching import group_keys

CALIBRATION_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class TruePositives:
    """One row per matched object: ``image`` int64[T] image position (in ``gt.image_ids``),
    ``category`` int64[T] category position (in ``gt.category_ids``), ``score`` and ``iou`` float64[T]."""

    image: np.ndarray
    category: np.ndarray
    score: np.ndarray
    iou: np.ndarray


@dataclass
class NmsObjects:
    """One row per non-ignored object: ``image`` int64[G] image position, ``num_candidates`` int64[G]
    (IoU >= the threshold), ``top_ok`` float64[G] in [0, 1] (1 when the top-scored candidate is within
    the margin of the best; with candidates tied at the top score, the share of them that is: the
    expected outcome of an arbitrary tie-break), ``rho`` float64[G] within-object Spearman (NaN with
    < 3 candidates or constant inputs)."""

    image: np.ndarray
    num_candidates: np.ndarray
    top_ok: np.ndarray
    rho: np.ndarray

    @property
    def eligible(self) -> np.ndarray:
        """Objects with two or more candidates: the ones NMS has a choice for (bool[G])."""
        return self.num_candidates >= 2


def _groups(keys: np.ndarray) -> dict[int, np.ndarray]:
    """``{key: indices}`` of an int64 key array, indices in their original order."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]]) if sk.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], sk.size]
    return {int(sk[s]): order[s:e] for s, e in zip(starts, ends)}


def _gt_groups(gt: GroundTruth) -> tuple[dict[int, np.ndarray], np.ndarray]:
    keep = ~gt.ann_crowd
    keys = group_keys(gt.ann_image[keep], gt.ann_category[keep], gt.image_ids, gt.category_ids)
    return _groups(keys), gt.ann_boxes[keep]


def match_true_positives(gt: GroundTruth, dets: Detections, iou_threshold: float = 0.5,
                         max_dets: int = 100) -> TruePositives:
    """COCO's greedy matching at ``iou_threshold``: the detections that match a non-ignored object.

    Per (image, class): detections by decreasing score (stable, as pycocotools), the first
    ``max_dets``; each matches the still-unmatched object it overlaps most with IoU >= the
    threshold, and among objects it overlaps equally the last one in annotation order (pycocotools
    keeps a later object whose IoU equals the best so far). Detections that only overlap crowd boxes
    are neither matched nor counted.
    """
    gt_groups, gboxes = _gt_groups(gt)
    dkeys = group_keys(dets.image_id, dets.category_id, gt.image_ids, gt.category_ids)
    n_cat = len(gt.category_ids)
    image, category, score, iou = [], [], [], []
    for key, idx in _groups(dkeys).items():
        gidx = gt_groups.get(key)
        if gidx is None:
            continue
        idx = idx[np.argsort(-dets.score[idx], kind="mergesort")][:max_dets]
        ious = box_iou(dets.boxes[idx], gboxes[gidx])  # [D, G]
        taken = np.zeros(len(gidx), bool)
        for d in range(len(idx)):
            row = np.where(taken, -1.0, ious[d])
            g = len(row) - 1 - int(np.argmax(row[::-1]))  # the last of equal best IoUs, as pycocotools
            if row[g] >= iou_threshold:
                taken[g] = True
                image.append(key // n_cat)
                category.append(key % n_cat)
                score.append(dets.score[idx[d]])
                iou.append(row[g])
    return TruePositives(np.asarray(image, np.int64), np.asarray(category, np.int64),
                         np.asarray(score, np.float64), np.asarray(iou, np.float64))


def _spearman(score: np.ndarray, iou: np.ndarray) -> float:
    if score.size < 3 or np.ptp(score) == 0 or np.ptp(iou) == 0:
        return np.nan
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(score, iou).statistic)


def nms_ranking(gt: GroundTruth, candidates: Detections, min_iou: float = 0.5,
                margin: float = 0.05) -> NmsObjects:
    """Per non-ignored object, how its pre-NMS candidates' scores rank them by IoU.

    A candidate counts for an object when it has the object's class and IoU >= ``min_iou`` with it;
    every candidate given counts (no score floor: pass what the NMS saw). ``top_ok``: the share of
    the candidates tied at the top score whose IoU is within ``margin`` of the best candidate's (1 or
    0 without a tie; 1 with one candidate); ``rho``: Spearman of score and IoU over the object's
    candidates (ties get average ranks).
    """
    gt_groups, gboxes = _gt_groups(gt)
    keep = ~gt.ann_crowd
    obj_image = np.searchsorted(gt.image_ids, gt.ann_image[keep]).astype(np.int64)
    n = int(keep.sum())
    num = np.zeros(n, np.int64)
    top_ok = np.zeros(n, np.float64)
    rho = np.full(n, np.nan)
    cand = candidates
    ckeys = group_keys(cand.image_id, cand.category_id, gt.image_ids, gt.category_ids)
    for key, idx in _groups(ckeys).items():
        gidx = gt_groups.get(key)
        if gidx is None:
            continue
        ious = box_iou(gboxes[gidx], cand.boxes[idx])  # [G, D]
        scores = cand.score[idx]
        for j, g in enumerate(gidx):
            mask = ious[j] >= min_iou
            k = int(mask.sum())
            num[g] = k
            if k == 0:
                continue
            q, s = ious[j][mask], scores[mask]
            top = s == s.max()
            top_ok[g] = float(np.mean(q[top] >= q.max() - margin))
            rho[g] = _spearman(s, q)
    return NmsObjects(obj_image, num, top_ok, rho)


def calibration(score: np.ndarray, iou: np.ndarray, bins: tuple[float, ...] = CALIBRATION_BINS) -> dict:
    """Mean score per IoU bin ``[lo, hi)`` (the last one closed) -> ``{"bins", "mean_score", "count"}``
    (``mean_score[k]`` None for an empty bin)."""
    means, counts = [], []
    for k, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
        last = k == len(bins) - 2
        mask = (iou >= lo) & ((iou <= hi) if last else (iou < hi))
        counts.append(int(mask.sum()))
        means.append(float(score[mask].mean()) if mask.any() else None)
    return {"bins": [[float(lo), float(hi)] for lo, hi in zip(bins[:-1], bins[1:])], "mean_score": means,
            "count": counts}


def spearman_kendall(score: np.ndarray, iou: np.ndarray) -> tuple[float, float]:
    """Spearman and Kendall (tau-b) of ``score[N]`` and ``iou[N]``; NaN with < 2 pairs or a constant input."""
    if score.size < 2 or np.ptp(score) == 0 or np.ptp(iou) == 0:
        return np.nan, np.nan
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(score, iou).statistic), float(stats.kendalltau(score, iou).statistic)


def _corr(score: np.ndarray, iou: np.ndarray) -> tuple[float | None, float | None]:
    """:func:`spearman_kendall` with None where undefined (the report's JSON form)."""
    rho, tau = spearman_kendall(score, iou)
    return (rho if np.isfinite(rho) else None), (tau if np.isfinite(tau) else None)


def ranking_metrics(gt: GroundTruth, dets: Detections, candidates: Detections | None = None) -> dict:
    """The report's ``ranking`` section (JSON-serialisable).

    ``true_positives``: ``spearman``, ``kendall`` (pooled), ``spearman_class_mean``,
    ``kendall_class_mean``, ``count``, ``per_class`` {name: {spearman, kendall, count}};
    ``nms`` (None without candidates): ``top1_share`` (over objects with >= 2 candidates),
    ``within_spearman`` (mean over objects with a defined correlation), ``num_objects``,
    ``num_eligible``; ``calibration``: mean true-positive score per IoU bin.
    """
    tp = match_true_positives(gt, dets)
    rho, tau = _corr(tp.score, tp.iou)
    per_class = {}
    for k, name in enumerate(gt.names):
        m = tp.category == k
        r, t = _corr(tp.score[m], tp.iou[m])
        per_class[str(name)] = {"spearman": r, "kendall": t, "count": int(m.sum())}
    rs = [v["spearman"] for v in per_class.values() if v["spearman"] is not None]
    ts = [v["kendall"] for v in per_class.values() if v["kendall"] is not None]
    out: dict = {"true_positives": {
        "spearman": rho, "kendall": tau,
        "spearman_class_mean": float(np.mean(rs)) if rs else None,
        "kendall_class_mean": float(np.mean(ts)) if ts else None,
        "count": int(tp.score.size), "iou_threshold": 0.5, "per_class": per_class}}
    if candidates is not None:
        objs = nms_ranking(gt, candidates)
        el = objs.eligible
        finite = el & np.isfinite(objs.rho)
        out["nms"] = {"top1_share": float(objs.top_ok[el].mean()) if el.any() else None,
                      "within_spearman": float(objs.rho[finite].mean()) if finite.any() else None,
                      "num_objects": int(objs.image.size), "num_eligible": int(el.sum()),
                      "min_iou": 0.5, "margin": 0.05}
    else:
        out["nms"] = None
    out["calibration"] = calibration(tp.score, tp.iou)
    return out
