"""Figures of an experiment: score–IoU scatter, the paper's Fig. 4 per epoch, AP vs IoU threshold, examples.

numpy, OpenCV and matplotlib only; every function writes one PNG and returns its path.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from harmonic.atomic import atomic_path
from harmonic.errors import HarmonicError
from harmonic.evaluation import plots

AP_THRESHOLDS = (50, 60, 70, 80, 90)
# BGR colours of the models' boxes in the examples grid (ground truth is green)
_BOX_COLOURS = [(40, 40, 230), (230, 120, 20), (200, 40, 200), (20, 170, 230), (120, 120, 120), (0, 0, 0)]


def scatter_side_by_side(reports: Mapping[str, Path], out_png: Path) -> Path:
    """Score vs IoU of kept detections, one panel per model on the same axes, Spearman in each title."""
    labels = []
    for label, path in reports.items():
        rho = (json.loads(Path(path).read_text()).get("consistency") or {}).get("spearman")
        labels.append(f"{label} (Spearman {rho:.3f})" if rho is not None else f"{label} (Spearman n/a)")
    return plots.scatter_side_by_side(list(reports.values()), out_png, labels=labels)


def _epoch_series(log_path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in plots.read_training_log(log_path):
        if row.get("type") != "epoch":
            continue
        v = (row.get("train") or {}).get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            xs.append(int(row["epoch"]) + 1)
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def fig4_per_epoch(logs: Mapping[str, Path], out_png: Path) -> Path:
    """The paper's Fig. 4 per epoch: mean 1+β_r, 1+β_c and AIC over positives, a line per model.

    Reads the ``epoch`` records of each training ``log.jsonl`` (``train.stat_factor_r`` etc.).
    """
    fig = plots.new_figure(3, width=5.0, height=4.2)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    panels = (("stat_factor_r", "(a) mean 1+β_r (weights the classification loss)"),
              ("stat_factor_c", "(b) mean 1+β_c (weights the localisation loss)"),
              ("stat_aic", "(c) AIC = mean |p − IoU| over positives ↓"))
    for ax, (key, title) in zip(axes, panels):
        for i, (label, path) in enumerate(logs.items()):
            x, y = _epoch_series(Path(path), key)
            if y.size:
                ax.plot(x, y, marker="o", ms=3, color=f"C{i}", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return plots.save_figure(fig, out_png)


def score_per_iou_bin(record: Mapping) -> dict[int, float]:
    """``{50: mean score, 60: ..., 90: ...}`` of the positives per IoU bin from a training-log record
    holding ``stat_score_sum_iouN`` / ``stat_count_iouN`` (window means of the batch sums and counts,
    so their ratio is the exact mean); NaN where a bin had no positive or the record lacks them."""
    out = {}
    for lo in AP_THRESHOLDS:
        total, count = record.get(f"stat_score_sum_iou{lo}"), record.get(f"stat_count_iou{lo}")
        out[lo] = float(total) / float(count) if total is not None and count else float("nan")
    return out


def score_bins_per_epoch(logs: Mapping[str, Path], out_png: Path) -> Path:
    """Mean score of the training positives per IoU bin, per epoch: one panel per model, a line per bin.

    A detector whose scores rank its boxes keeps the lines apart and ordered (higher IoU, higher
    score); compressed scores show as lines bunched far below 1.
    """
    logs = dict(logs)
    fig = plots.new_figure(max(1, len(logs)), width=4.2, height=3.8)
    for i, (label, path) in enumerate(logs.items()):
        ax = fig.add_subplot(1, max(1, len(logs)), i + 1)
        rows = [r for r in plots.read_training_log(Path(path)) if r.get("type") == "epoch"]
        epochs = [int(r["epoch"]) + 1 for r in rows]
        per = [score_per_iou_bin(r.get("train") or {}) for r in rows]
        for k, lo in enumerate(AP_THRESHOLDS):
            y = np.array([p[lo] for p in per], np.float64)
            if np.isfinite(y).any():
                ax.plot(epochs, y, marker="o", ms=3, color=f"C{k}", label=f"IoU {lo / 100:.1f}–{lo / 100 + 0.1:.1f}")
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean score of positives" if i == 0 else "")
        ax.grid(alpha=0.3)
        if i == 0 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return plots.save_figure(fig, out_png)


def calibration(reports: Mapping[str, Sequence[dict]], out_png: Path) -> Path:
    """Mean score of the true positives per IoU bin (``report["ranking"]["calibration"]``), a line per
    model (mean over seeds, error bars = std when > 1 seed), with the diagonal score = IoU."""
    fig = plots.new_figure(1, width=6.0, height=4.2)
    ax = fig.add_subplot(1, 1, 1)
    centres = None
    for i, (label, runs) in enumerate(reports.items()):
        cals = [(r.get("ranking") or {}).get("calibration") for r in runs]
        cals = [c for c in cals if c and c.get("bins")]
        if not cals:
            continue
        centres = np.array([(lo + hi) / 2 for lo, hi in cals[0]["bins"]])
        vals = np.array([[np.nan if m is None else m for m in c["mean_score"]] for c in cals], np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # empty bins: NaN, drawn as gaps
            mean = np.nanmean(vals, 0)
            std = np.nanstd(vals, 0) if len(cals) > 1 else None
        ax.errorbar(centres, mean, yerr=std, marker="o", ms=4, capsize=3, color=f"C{i}", label=label)
    if centres is not None:
        ax.plot([0.5, 1.0], [0.5, 1.0], ls="--", color="grey", lw=1, label="score = IoU")
    ax.set_xlabel("IoU of the true positive with its object (bin centre)")
    ax.set_ylabel("mean score")
    ax.set_ylim(0, 1)
    ax.set_title("Calibration of true positives: mean score per IoU bin", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return plots.save_figure(fig, out_png)


def ap_vs_iou(reports: Mapping[str, Sequence[dict]], out_png: Path) -> Path:
    """AP at IoU 0.5…0.9, one line per model (mean over seeds, error bars = std when > 1 seed)."""
    fig = plots.new_figure(1, width=6.0, height=4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.asarray(AP_THRESHOLDS) / 100
    for i, (label, runs) in enumerate(reports.items()):
        vals = np.array([[100 * float((r.get("voc") or {}).get(f"AP{t}") or 0.0) for t in AP_THRESHOLDS]
                         for r in runs])
        mean = vals.mean(0)
        ax.errorbar(x, mean, yerr=vals.std(0) if len(runs) > 1 else None, marker="o", ms=4, capsize=3,
                    color=f"C{i}", label=label)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP at stricter IoU thresholds (paper Table 1 columns)", fontsize=10)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save_figure(fig, out_png)


def _draw_boxes(img: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int],
                scores: np.ndarray | None = None, thickness: int = 1) -> None:
    for k, (x, y, w, h) in enumerate(boxes):
        p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
        cv2.rectangle(img, p1, p2, colour, thickness, cv2.LINE_AA)
        if scores is not None:
            cv2.putText(img, f"{scores[k]:.2f}", (p1[0] + 1, max(9, p1[1] + 9)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.3, colour, 1, cv2.LINE_AA)


def examples_grid(images_dir: Path, annotations: Path, detections: Mapping[str, Path], out_png: Path,
                  count: int = 4, top: int = 8, min_score: float = 0.3, tile: int = 256) -> Path:
    """A grid: rows = the first ``count`` validation images, columns = models.

    Each tile shows the ground truth (green) and the model's ``top`` highest-scoring kept boxes
    with score >= ``min_score`` (the model's colour, score printed), upscaled to ``tile`` px.
    """
    gt = json.loads(Path(annotations).read_text())
    images = sorted(gt["images"], key=lambda im: im["id"])[:count]
    gt_by = {}
    for a in gt["annotations"]:
        gt_by.setdefault(a["image_id"], []).append(a["bbox"])
    dets_by: dict[str, dict[int, list[dict]]] = {}
    for label, path in detections.items():
        per: dict[int, list[dict]] = {}
        for d in json.loads(Path(path).read_text()):
            per.setdefault(d["image_id"], []).append(d)
        dets_by[label] = per
    rows = []
    for im in images:
        bgr = cv2.imread(str(Path(images_dir) / im["file_name"]), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        scale = tile / max(bgr.shape[:2])
        base = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        tiles = []
        for i, (label, per) in enumerate(dets_by.items()):
            canvas = base.copy()
            _draw_boxes(canvas, np.asarray(gt_by.get(im["id"], []), np.float64).reshape(-1, 4) * scale,
                        (60, 200, 60), thickness=2)
            ds = sorted((d for d in per.get(im["id"], []) if d["score"] >= min_score),
                        key=lambda d: -d["score"])[:top]
            boxes = np.asarray([d["bbox"] for d in ds], np.float64).reshape(-1, 4) * scale
            _draw_boxes(canvas, boxes, _BOX_COLOURS[i % len(_BOX_COLOURS)],
                        np.asarray([d["score"] for d in ds]))
            pad = np.full((tile, tile, 3), 255, np.uint8)
            pad[:canvas.shape[0], :canvas.shape[1]] = canvas
            cv2.putText(pad, label, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(pad, label, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(np.pad(pad, ((2, 2), (2, 2), (0, 0)), constant_values=255))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0) if rows else np.full((tile, tile, 3), 255, np.uint8)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        if not cv2.imwrite(str(tmp), grid):
            raise HarmonicError(f"{out_png}: cannot write image")
    return out_png
