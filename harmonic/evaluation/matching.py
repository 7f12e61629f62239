"""Vectorised best-IoU matching within (image, class) groups, without a Python loop per box."""

from __future__ import annotations

import numpy as np

from harmonic.boxes import elementwise_box_iou

# pairs materialised at once; bounds memory at ~ 200 MB for pathological groups
MAX_PAIRS = 4_000_000


def group_keys(image_id: np.ndarray, category_id: np.ndarray, image_ids: np.ndarray,
               category_ids: np.ndarray) -> np.ndarray:
    """One int64 key per box for its (image, class) group.

    ``image_id[N]``/``category_id[N]`` must be members of the sorted ``image_ids[I]`` /
    ``category_ids[C]`` (validated by the loaders) -> ``int64[N]``.
    """
    img = np.searchsorted(image_ids, image_id).astype(np.int64)
    cat = np.searchsorted(category_ids, category_id).astype(np.int64)
    return img * len(category_ids) + cat


def best_iou(query_keys: np.ndarray, query_boxes: np.ndarray, target_keys: np.ndarray,
             target_boxes: np.ndarray, max_pairs: int = MAX_PAIRS) -> np.ndarray:
    """For each query box, the best IoU with a target box of the same group key (0 if none).

    Args:
        query_keys: int64[Q] group keys; query_boxes: float[Q, 4] xyxy.
        target_keys: int64[T] group keys; target_boxes: float[T, 4] xyxy.
    Returns:
        float64[Q].

    Targets are sorted by key; each query's group is a slice ``[lo, hi)`` found by
    ``searchsorted``; all (query, target) pairs are expanded with ``np.repeat``
    and reduced with ``np.maximum.reduceat``, in chunks of at most ``max_pairs``.
    """
    nq = len(query_keys)
    best = np.zeros(nq, dtype=np.float64)
    if nq == 0 or len(target_keys) == 0:
        return best
    order = np.argsort(target_keys, kind="stable")
    tk = target_keys[order]
    tb = np.asarray(target_boxes, dtype=np.float64)[order]
    qb = np.asarray(query_boxes, dtype=np.float64)
    lo = np.searchsorted(tk, query_keys, "left")
    cnt = np.searchsorted(tk, query_keys, "right") - lo
    has = np.nonzero(cnt)[0]
    if not has.size:
        return best
    cum = np.cumsum(cnt[has])
    start = 0
    while start < has.size:
        base = cum[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(cum, base + max_pairs, "right")))
        idx = has[start:end]
        c = cnt[idx]
        first = np.cumsum(c) - c
        total = int(c.sum())
        qrep = np.repeat(idx, c)
        trep = np.repeat(lo[idx] - first, c) + np.arange(total)
        best[idx] = np.maximum.reduceat(elementwise_box_iou(qb[qrep], tb[trep]), first)
        start = end
    return best
