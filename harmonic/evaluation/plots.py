"""PNG plots: score-vs-IoU with the harmonious region (paper Fig. 5) and training curves (Fig. 4).

matplotlib is imported inside the functions and drawn on an Agg canvas (no
pyplot, no global backend switch), so importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

HEXBIN_ABOVE = 3000  # points; above this a density (hexbin) reads better than a scatter


def new_figure(ncols: int, width: float = 5.0, height: float = 4.6):
    """A matplotlib ``Figure`` on its own Agg canvas, ``ncols`` panels of ``width x height`` inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_png: str | Path) -> Path:
    """Lay out ``fig`` and write it as a PNG atomically; returns the path."""
    from harmonic.atomic import atomic_path

    out = Path(out_png)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def load_pairs(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """(score[N], iou[N]) from a report dict with ``pairs``, a report.json path (with its pairs
    sidecar), a ``{"score", "iou"}`` dict or a ``(score, iou)`` tuple."""
    if isinstance(source, (str, Path)):
        from harmonic.evaluation.api import load_report

        report = load_report(source)
        if "pairs" not in report:
            raise HarmonicError(f"{source}: report has no score-IoU pairs (write it with harmonic eval --out, "
                                "or evaluate(..., return_pairs=True) + save_report)")
        source = report
    if isinstance(source, dict):
        pairs = source.get("pairs", source)
        if not isinstance(pairs, dict) or "score" not in pairs or "iou" not in pairs:
            raise HarmonicError("report has no score-IoU pairs (use evaluate(..., return_pairs=True))")
        score, iou = pairs["score"], pairs["iou"]
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        score, iou = source
    else:
        raise HarmonicError(f"cannot read score-IoU pairs from {type(source).__name__}")
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    iou = np.asarray(iou, dtype=np.float64).reshape(-1)
    if score.shape != iou.shape:
        raise HarmonicError(f"score-IoU pairs differ in length: {score.size} scores, {iou.size} IoUs")
    return score, iou


def _draw_scatter(ax, score: np.ndarray, iou: np.ndarray, title: str | None, dense: bool | None = None,
                  t: float = 0.5, t2: float = 0.7) -> None:
    from matplotlib.patches import Rectangle

    used = iou > 0
    s, q = score[used], iou[used]
    if dense is None:
        dense = s.size > HEXBIN_ABOVE
    if dense and s.size:
        hb = ax.hexbin(q, s, gridsize=40, extent=(0, 1, 0, 1), bins="log", cmap="viridis", mincnt=1)
        ax.figure.colorbar(hb, ax=ax, label="detections (log)")
    elif s.size:
        ax.scatter(q, s, s=8, alpha=0.45, color="tab:blue", edgecolors="none")
    ax.add_patch(Rectangle((t, t), 1 - t, 1 - t, facecolor=(0.84, 0.15, 0.16, 0.08), edgecolor="tab:red", lw=1.5,
                           zorder=3,
                           label=f"harmonious (score, IoU ≥ {t:g}): {np.mean(np.minimum(s, q) >= t) if s.size else 0:.1%}"))
    ax.add_patch(Rectangle((t2, t2), 1 - t2, 1 - t2, fill=False, edgecolor="tab:red", lw=1.2, ls="--", zorder=3,
                           label=f"score, IoU ≥ {t2:g}: {np.mean(np.minimum(s, q) >= t2) if s.size else 0:.1%}"))
    ax.plot([0, 1], [0, 1], color="0.3", lw=0.8, ls=":", label="score = IoU", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("IoU with best same-class ground truth")
    ax.set_ylabel("classification score")
    sub = f"{s.size} matched, {int((~used).sum())} with IoU = 0 not shown"
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=10)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.85)


def scatter_score_iou(report_or_pairs: Any, out_png: str | Path, title: str | None = None) -> Path:
    """Score vs IoU of kept detections with the harmonious region marked (paper Fig. 5) -> the PNG path.

    ``report_or_pairs``: see :func:`load_pairs`. Detections with IoU 0 are counted in the subtitle.
    """
    score, iou = load_pairs(report_or_pairs)
    fig = new_figure(1)
    _draw_scatter(fig.add_subplot(1, 1, 1), score, iou, title)
    return save_figure(fig, out_png)


def scatter_side_by_side(reports: Sequence[Any], out_png: str | Path, labels: Sequence[str] | None = None,
                         title: str | None = None) -> Path:
    """One score-vs-IoU panel per run (e.g. baseline and HarmonicDet) in one PNG."""
    reports = list(reports)
    if not reports:
        raise HarmonicError("scatter_side_by_side needs at least one report")
    labels = list(labels) if labels is not None else [f"run {i + 1}" for i in range(len(reports))]
    if len(labels) != len(reports):
        raise HarmonicError(f"{len(labels)} labels for {len(reports)} reports")
    pairs = [load_pairs(rep) for rep in reports]
    dense = max(int((iou > 0).sum()) for _, iou in pairs) > HEXBIN_ABOVE  # same rendering in every panel
    fig = new_figure(len(reports))
    for i, ((score, iou), label) in enumerate(zip(pairs, labels)):
        _draw_scatter(fig.add_subplot(1, len(reports), i + 1), score, iou, label, dense)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)


def read_training_log(path: str | Path) -> list[dict]:
    """One dict per JSON line of a training log (blank lines skipped)."""
    path = Path(path)
    if not path.exists():
        raise HarmonicError(f"{path}: training log not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarmonicError(f"{path}: line {n} is not JSON ({exc.msg})") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            x = r.get("iter", i)
            xs.append(float(x) if isinstance(x, (int, float)) else float(i))
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def _smooth(y: np.ndarray) -> np.ndarray:
    k = max(1, y.size // 40)
    if k == 1:
        return y
    kernel = np.ones(k) / k
    padded = np.concatenate([np.full(k - 1, y[0]), y])  # causal moving average, same length
    return np.convolve(padded, kernel, mode="valid")


def training_curves(logs: str | Path | Sequence[str | Path], out_png: str | Path,
                    labels: Sequence[str] | None = None) -> Path:
    """Paper Fig. 4 from training JSONL logs: (a) ``1+β_r`` (solid) and ``1+β_c`` (dashed) and
    (b) AIC over iterations, one colour per log (keys ``iter``, ``stat_factor_r``,
    ``stat_factor_c``, ``stat_aic``; missing keys are skipped, e.g. a baseline without factors)."""
    logs = [logs] if isinstance(logs, (str, Path)) else list(logs)
    labels = list(labels) if labels is not None else [Path(p).parent.name or Path(p).stem for p in logs]
    if len(labels) != len(logs):
        raise HarmonicError(f"{len(labels)} labels for {len(logs)} logs")
    fig = new_figure(2, width=5.5)
    ax_f, ax_a = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    drawn = 0
    for i, (path, label) in enumerate(zip(logs, labels)):
        rows = read_training_log(path)
        color = f"C{i}"
        for key, style, name in (("stat_factor_r", "-", "1+β_r"), ("stat_factor_c", "--", "1+β_c")):
            x, y = _series(rows, key)
            if y.size:
                ax_f.plot(x, y, color=color, alpha=0.2, lw=0.8, ls=style)
                ax_f.plot(x, _smooth(y), color=color, lw=1.6, ls=style, label=f"{label}: {name}")
                drawn += 1
        x, y = _series(rows, "stat_aic")
        if y.size:
            ax_a.plot(x, y, color=color, alpha=0.2, lw=0.8)
            ax_a.plot(x, _smooth(y), color=color, lw=1.6, label=label)
            drawn += 1
    if not drawn:
        log.warning("no stat_factor_r / stat_factor_c / stat_aic values in %s", ", ".join(map(str, logs)))
    for ax, title, ylabel in ((ax_f, "(a) harmonic factors", "mean factor"), (ax_a, "(b) AIC", "mean |score − IoU|")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    return save_figure(fig, out_png)
