"""REPORT.md (baseline vs HarmonicDet) and ABLATION.md (one row per variant) from an experiment."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harmonic import atomic
from harmonic.runtime.backends.base import cpu_name

# (label, metric key of harmonic.experiments.stats.METRICS, scale); stats.METRICS says which way is better
ROWS: list[tuple[str, str, float]] = [
    ("ρ TP: Spearman(score, IoU), true positives", "tp_spearman", 1),
    ("τ TP: Kendall(score, IoU), true positives", "tp_kendall", 1),
    ("ρ TP, mean over classes", "tp_spearman_cls", 1),
    ("NMS top-1: top-scored candidate within 0.05 IoU of the best", "nms_top1", 1),
    ("NMS ρ: within-object Spearman of candidates", "nms_rho", 1),
    ("AP (COCO, IoU .50:.95)", "AP", 100), ("AP50", "AP50", 100), ("AP60", "AP60", 100),
    ("AP70", "AP70", 100), ("AP75", "AP75", 100), ("AP80", "AP80", 100),
    ("AP90", "AP90", 100), ("Spearman pooled (all kept boxes, mostly false positives)", "spearman", 1),
    ("Kendall pooled", "kendall", 1), ("AIC = mean abs(score − IoU), pooled", "aic", 1),
    ("NMS regret rate", "regret", 1),
]
# the ablation's columns (a subset) and the deltas it gives with intervals
ABLATION_KEYS = ("tp_spearman", "nms_top1", "nms_rho", "AP", "AP50", "AP75", "AP90", "spearman", "regret")
ABLATION_DELTAS = (("tp_spearman", "ρ TP", 1), ("nms_top1", "NMS top-1", 1), ("AP", "AP", 100))
# short labels for the ablation table's columns
SHORT = {"tp_spearman": "ρ TP", "tp_kendall": "τ TP", "tp_spearman_cls": "ρ TP class-mean",
         "nms_top1": "NMS top-1", "nms_rho": "NMS ρ", "spearman": "ρ pooled", "kendall": "τ pooled",
         "aic": "AIC pooled", "regret": "regret"}
# the floors a converged demo detector must reach (AP50 and AP in %)
FLOORS = {"AP50": 60.0, "AP": 35.0}


def machine_line(device: str) -> str:
    return (f"device `{device}`, {cpu_name()} ({platform.machine()}), {os.cpu_count()} logical cores, "
            f"Python {platform.python_version()}")


def _fmt(v: float | None, scale: float, digits: int, sign: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v * scale:+.{digits}f}" if sign else f"{v * scale:.{digits}f}"


def _digits(scale: float) -> int:
    return 2 if scale == 100 else 3


def delta_table(boot: Mapping[str, Mapping], labels: tuple[str, str] = ("Baseline", "HarmonicDet"),
                per_seed: Mapping[str, Sequence[Mapping[str, float]]] | None = None) -> str:
    """Markdown table: both models, the delta, its 95 % bootstrap interval and the verdict per metric.

    ``per_seed`` (variant label -> per-seed metric dicts) adds mean ± std over seeds to each cell.
    """
    head = (f"| metric | {labels[0]} | {labels[1]} | Δ ({labels[1]} − {labels[0]}) | 95 % CI of Δ | "
            f"significant? |")
    lines = [head, "|---|---|---|---|---|---|"]
    for label, key, scale in ROWS:
        b = boot.get(key)
        if b is None:
            continue
        d = _digits(scale)
        cells = []
        for which, name in ((labels[0], "baseline"), (labels[1], "harmonic")):
            cell = _fmt(b[name], scale, d)
            if per_seed and len(per_seed.get(which, ())) > 1:
                vals = np.array([r.get(key, np.nan) for r in per_seed[which]], dtype=np.float64)
                vals = vals[np.isfinite(vals)]
                if vals.size > 1:
                    cell += f" ± {vals.std() * scale:.{d}f}"
            cells.append(cell)
        ci = "n/a" if b["lo"] is None else f"[{_fmt(b['lo'], scale, d, True)}, {_fmt(b['hi'], scale, d, True)}]"
        verdict = ("no" if not b["significant"] else
                   ("yes, better" if b["better"] else "yes, worse"))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {_fmt(b['delta'], scale, d, True)} | {ci} | {verdict} |")
    return "\n".join(lines)


def per_seed_table(per_seed: Mapping[str, Sequence[Mapping[str, float]]]) -> str:
    """Markdown table: one row per (variant, seed) with every metric."""
    head = "| run | seed | " + " | ".join(SHORT.get(key, label) for label, key, _ in ROWS) + " |"
    lines = [head, "|---|---|" + "---|" * len(ROWS)]
    for variant, rows in per_seed.items():
        for seed, row in enumerate(rows):
            lines.append(f"| {variant} | {seed} | "
                         + " | ".join(_fmt(row.get(key), scale, _digits(scale)) for _, key, scale in ROWS) + " |")
    return "\n".join(lines)


def floor_failures(per_seed: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, list[str]]:
    """Per model, the demo floors (:data:`FLOORS`) some seed missed, e.g. ``["AP50 57.9 (seed 0)"]``."""
    out: dict[str, list[str]] = {}
    for label, rows in per_seed.items():
        out[label] = [f"{key} {100 * row[key]:.1f} (seed {seed})" for seed, row in enumerate(rows)
                      for key, floor in FLOORS.items() if not 100 * row.get(key, float("nan")) >= floor]
    return out


def verdict_paragraph(boot: Mapping[str, Mapping], seeds: int, floors_missed: Mapping[str, Sequence[str]],
                      labels: tuple[str, str] = ("the baseline", "HarmonicDet"), split: str = "test") -> str:
    """The report's first paragraph: in plain words, what held and what did not."""
    better = [label for label, key, *_ in ROWS if boot.get(key, {}).get("significant") and boot[key]["better"]]
    worse = [label for label, key, *_ in ROWS
             if boot.get(key, {}).get("significant") and boot[key]["better"] is False]
    parts = []
    missed = {name: m for name, m in floors_missed.items() if m}
    if missed:
        parts.append(f"**Not converged:** below the demo's floors (AP50 ≥ {FLOORS['AP50']:.0f}, "
                     f"AP ≥ {FLOORS['AP']:.0f}): "
                     + "; ".join(f"{name}: {', '.join(m)}" for name, m in missed.items())
                     + ". Differences between under-trained detectors say little about trained ones.")
    else:
        parts.append(f"Both detectors converged (AP50 ≥ {FLOORS['AP50']:.0f} and AP ≥ {FLOORS['AP']:.0f}).")
    for key, what, scale in (("tp_spearman", "Do scores rank true positives by IoU? Spearman over true "
                                             "positives", 1),
                             ("nms_top1", "Does NMS keep the best box? Share of objects whose top-scored "
                                          "candidate is within 0.05 IoU of the best", 1),
                             ("AP", "COCO AP", 100)):
        b = boot.get(key, {})
        if b.get("delta") is None:
            continue
        d = 2 if scale == 100 else 3
        parts.append(f"{what}: {labels[0]} {scale * b['baseline']:.{d}f} → {labels[1]} "
                     f"{scale * b['harmonic']:.{d}f} (Δ {scale * b['delta']:+.{d}f}, 95 % CI "
                     + ("n/a" if b["lo"] is None else f"[{scale * b['lo']:+.{d}f}, {scale * b['hi']:+.{d}f}]")
                     + ("), a real difference." if b.get("significant") else "), not distinguishable from noise."))
    parts.append(f"Significantly better with {labels[1]}: " + (", ".join(better) if better else "nothing") + ". "
                 + "Significantly worse: " + (", ".join(worse) if worse else "nothing") + ".")
    parts.append(f"Intervals: paired bootstrap over the {split} images, {seeds} seed(s)"
                 + (" with the seeds resampled as well, so training-to-training variation is inside them."
                    if seeds > 1 else
                    "; one seed does not show training-to-training variation: use `--seeds 3`."))
    return " ".join(parts)


def latency_table(benches: Mapping[str, dict]) -> str:
    """Markdown table of ``infer/run.py --bench`` results (``bench.json``), one row per model."""
    rows = ["| run | backend | device | batch | engine-only p50 ms/batch | end-to-end p50 ms/batch "
            "| engine-only img/s | end-to-end img/s | end-to-end / engine-only |",
            "|---|---|---|---|---|---|---|---|---|"]

    def f(v: float | None, digits: int = 1) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    for label, b in benches.items():
        eng, e2e = b.get("engine_only", {}), b.get("end_to_end", {})
        eng_p50 = eng.get("latency_ms_per_batch", {}).get("p50")
        e2e_p50 = e2e.get("stages", {}).get("end_to_end", {}).get("per_batch", {}).get("p50")
        ratio = b.get("end_to_end_over_engine_only")
        rows.append(f"| {label} | {b.get('backend', '?')} | {b.get('device', '?')} | {b.get('batch', '?')} | "
                    f"{f(eng_p50, 2)} | {f(e2e_p50, 2)} | {f(eng.get('throughput_img_s'))} | "
                    f"{f(e2e.get('throughput_img_s'))} | {'n/a' if ratio is None else f'{100 * ratio:.0f}%'} |")
    return "\n".join(rows)


def ablation_table(per_variant: Mapping[str, Sequence[Mapping[str, float]]],
                   versus_baseline: Mapping[str, Mapping[str, Mapping]] | None = None) -> str:
    """ABLATION.md's table: one row per variant, mean ± std over seeds of every metric.

    ``versus_baseline[variant][metric]`` (bootstrap results against the baseline) adds the deltas of
    :data:`ABLATION_DELTAS` (true-positive ρ, NMS top-1 share, AP) with their 95 % intervals.
    """
    keys = [r for key in ABLATION_KEYS for r in ROWS if r[1] == key]
    head = "| variant | " + " | ".join(SHORT.get(key, label) for label, key, _ in keys) + " |"
    extra = ""
    if versus_baseline:
        head += "".join(f" Δ {name} vs baseline [95 % CI] |" for _, name, _ in ABLATION_DELTAS)
        extra = "---|" * len(ABLATION_DELTAS)
    lines = [head, "|---|" + "---|" * len(keys) + extra]
    for variant, rows in per_variant.items():
        cells = []
        for _, key, scale in keys:
            vals = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            d = _digits(scale)
            cells.append("n/a" if not vals.size else f"{vals.mean() * scale:.{d}f}"
                         + (f" ± {vals.std() * scale:.{d}f}" if vals.size > 1 else ""))
        row = f"| {variant} | " + " | ".join(cells) + " |"
        if versus_baseline:
            vb = versus_baseline.get(variant)
            for key, _, scale in ABLATION_DELTAS:
                b = (vb or {}).get(key)
                if not b or b["lo"] is None:
                    row += " – |"
                    continue
                d = _digits(scale)
                star = " *" if b["significant"] else ""
                row += (f" {_fmt(b['delta'], scale, d, True)} [{_fmt(b['lo'], scale, d, True)}, "
                        f"{_fmt(b['hi'], scale, d, True)}]{star} |")
        lines.append(row)
    note = "\nAP columns in %, mean ± std over seeds"
    if versus_baseline:
        note += "; * = the 95 % paired-bootstrap interval excludes 0"
    return "\n".join(lines) + note + "."


def write_markdown(path: Path, lines: Sequence[str]) -> Path:
    """Write ``lines`` atomically (a temporary file renamed into place)."""
    return atomic.write_text(path, "\n".join(lines) + "\n")


def calibration_table(reports: dict[str, list[dict]]) -> str:
    """Markdown: mean true-positive score per IoU bin, one row per model (mean over seeds), with counts."""
    rows, bins = [], None
    for label, runs in reports.items():
        cals = [(r.get("ranking") or {}).get("calibration") for r in runs]
        cals = [c for c in cals if c and c.get("bins")]
        if not cals:
            continue
        bins = cals[0]["bins"]
        cells = []
        for k in range(len(bins)):
            vals = [c["mean_score"][k] for c in cals if c["mean_score"][k] is not None]
            n = sum(c["count"][k] for c in cals)
            cells.append(f"{sum(vals) / len(vals):.3f} (n={n})" if vals else f"n/a (n={n})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if bins is None:
        return "(no calibration in the reports)"
    head = "| model | " + " | ".join(f"IoU {lo:.1f}–{hi:.1f}" for lo, hi in bins) + " |"
    return "\n".join([head, "|---|" + "---|" * len(bins), *rows])
