"""REPORT.md (baseline vs HarmonicDet) and ABLATION.md (one row per variant) from an experiment."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from harmonic import atomic
from harmonic.experiments.stats import MIN_COUNT
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
# the ablation's columns (a subset)
ABLATION_KEYS = ("tp_spearman", "nms_top1", "nms_rho", "AP", "AP50", "AP75", "AP90", "spearman", "regret")
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


def _interval(row: Mapping, scale: float, d: int) -> str:
    if row.get("lo") is None:
        return "n/a" if row.get("delta") is None or row.get("n", 0) >= MIN_COUNT else f"none (n < {MIN_COUNT})"
    return f"[{_fmt(row['lo'], scale, d, True)}, {_fmt(row['hi'], scale, d, True)}]"


def delta_table(rows: Mapping[str, Mapping], labels: tuple[str, str] = ("Baseline", "HarmonicDet"),
                per_seed: Mapping[str, Sequence[Mapping[str, float]]] | None = None) -> str:
    """Markdown table of one contrast (``labels[1] − labels[0]``): per metric the eligible count, both
    arms, the delta, its 95 % interval, what the interval holds and the design's verdict.

    ``rows`` are :func:`harmonic.experiments.stats.compare` rows with
    :func:`harmonic.experiments.design.apply_design`'s verdicts (``a`` = ``labels[1]``,
    ``b`` = ``labels[0]``); ``per_seed`` (label -> per-seed metric dicts) adds ± std over seeds.
    """
    head = (f"| metric | n | {labels[0]} | {labels[1]} | Δ ({labels[1]} − {labels[0]}) | 95 % CI of Δ | "
            "interval holds | verdict |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for label, key, scale in ROWS:
        r = rows.get(key)
        if r is None:
            continue
        d = _digits(scale)
        cells = []
        for which, name in ((labels[0], "b"), (labels[1], "a")):
            cell = _fmt(r[name], scale, d)
            if per_seed and len(per_seed.get(which, ())) > 1:
                vals = np.array([x.get(key, np.nan) for x in per_seed[which]], dtype=np.float64)
                vals = vals[np.isfinite(vals)]
                if vals.size > 1:
                    cell += f" ± {vals.std() * scale:.{d}f}"
            cells.append(cell)
        name = f"**{label}**" if r.get("confirmatory") else label
        lines.append(f"| {name} | {r.get('n', 'n/a')} | {cells[0]} | {cells[1]} | {_fmt(r['delta'], scale, d, True)} | "
                     f"{_interval(r, scale, d)} | {_holds(r)} | {r.get('verdict', 'exploratory')} |")
    return "\n".join(lines)


def _holds(row: Mapping) -> str:
    if row.get("lo") is None:
        return "–"
    return "seeds and images" if row.get("noise") == "seeds+images" else "image noise only"


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


def _sentence(row: Mapping, what: str, labels: tuple[str, str], scale: float) -> str:
    d = _digits(scale)
    text = (f"{what}: {labels[0]} {scale * row['b']:.{d}f} → {labels[1]} {scale * row['a']:.{d}f} "
            f"(Δ {scale * row['delta']:+.{d}f}, 95 % CI {_interval(row, scale, d)}")
    if row.get("significant"):
        return text + f"): {'better' if row['better'] else 'worse'}, Holm-adjusted p = {row['p_holm']:.3g}."
    if row.get("p_holm") is not None:
        return text + f"): no difference shown (Holm-adjusted p = {row['p_holm']:.3g})."
    return text + ")."


def verdict_paragraph(rows: Mapping[str, Mapping], seeds: int, floors_missed: Mapping[str, Sequence[str]],
                      labels: tuple[str, str] = ("the baseline", "HarmonicDet"), split: str = "test") -> str:
    """The report's first paragraph: the design's verdicts on the primary and secondary metric, then AP
    (exploratory), in plain words. ``rows``: one contrast's rows with verdicts (see :func:`delta_table`)."""
    parts = []
    missed = {name: m for name, m in floors_missed.items() if m}
    if missed:
        parts.append(f"**Not converged:** below the demo's floors (AP50 ≥ {FLOORS['AP50']:.0f}, "
                     f"AP ≥ {FLOORS['AP']:.0f}): "
                     + "; ".join(f"{name}: {', '.join(m)}" for name, m in missed.items())
                     + ". Differences between under-trained detectors say little about trained ones.")
    else:
        parts.append(f"Both detectors converged (AP50 ≥ {FLOORS['AP50']:.0f} and AP ≥ {FLOORS['AP']:.0f}).")
    for key, what, scale in (("tp_spearman", "Primary: do scores rank true positives by IoU? Spearman over "
                                             "true positives", 1),
                             ("nms_top1", "Secondary: does NMS keep the best box? Share of objects whose "
                                          "top-scored candidate is within 0.05 IoU of the best", 1),
                             ("AP", "Exploratory: COCO AP", 100)):
        r = rows.get(key, {})
        if r.get("delta") is None:
            continue
        parts.append(_sentence(r, what, labels, scale))
    if seeds > 1:
        parts.append(f"Intervals: {seeds} seeds paired by seed (same initial weights and data order) on the "
                     f"{split} images; they hold training-to-training and image variation. Verdicts only for "
                     "the primary and secondary metric (Holm over both); every other metric is exploratory.")
    else:
        parts.append(f"Intervals: bootstrap over the {split} images of one seed; they hold image noise only, not "
                     "training-to-training variation, so no difference gets a verdict: use `--seeds 3`.")
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
                   counts: Mapping[str, Sequence[Mapping[str, int]]] | None = None) -> str:
    """ABLATION.md's table: one row per variant, mean ± std over seeds of :data:`ABLATION_KEYS`, and
    (``counts``: per variant, per seed, :func:`harmonic.experiments.stats.counts`) the eligible count of
    the two confirmatory metrics (smallest over seeds)."""
    keys = [r for key in ABLATION_KEYS for r in ROWS if r[1] == key]
    head = "| variant | seeds | " + " | ".join(SHORT.get(key, label) for label, key, _ in keys) + " |"
    lines = [head, "|---|---|" + "---|" * len(keys)]
    for variant, rows in per_variant.items():
        cells = []
        for _, key, scale in keys:
            vals = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            d = _digits(scale)
            cell = "n/a" if not vals.size else (f"{vals.mean() * scale:.{d}f}"
                                                + (f" ± {vals.std() * scale:.{d}f}" if vals.size > 1 else ""))
            if counts and key in CONTRAST_COLUMNS[:2] and counts.get(variant):
                cell += f" (n={min(c[key] for c in counts[variant])})"
            cells.append(cell)
        lines.append(f"| {variant} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\nAP columns in %, mean ± std over seeds; n = eligible items (fewest over seeds)."


# the contrast table's metrics: the two confirmatory ones, then AP (exploratory)
CONTRAST_COLUMNS = ("tp_spearman", "nms_top1", "AP")


def contrast_table(results: Mapping[str, Mapping[str, Mapping]]) -> str:
    """Markdown: one row per contrast (label -> :func:`harmonic.experiments.stats.compare` rows with
    verdicts): paired seeds, then per metric of :data:`CONTRAST_COLUMNS` the delta, its 95 % interval
    (and n) and the verdict; ``*`` marks a difference the design calls significant."""
    head = "| contrast | seeds | " + " | ".join(f"Δ {SHORT.get(k, k)} [95 % CI] | verdict" for k in CONTRAST_COLUMNS) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(CONTRAST_COLUMNS)]
    for label, rows in results.items():
        first = rows.get(CONTRAST_COLUMNS[0], {})
        seeds = first.get("seeds", "?")
        cells = [f"{seeds}" + ("" if seeds != 1 else " (image noise only)")]
        for key in CONTRAST_COLUMNS:
            r = rows.get(key)
            scale = 100 if key.startswith("AP") else 1
            if r is None or r.get("delta") is None:
                cells += ["n/a", "–"]
                continue
            d = _digits(scale)
            star = " *" if r.get("significant") else ""
            cells += [f"{_fmt(r['delta'], scale, d, True)} {_interval(r, scale, d)}{star} (n={r.get('n')})",
                      r.get("verdict", "exploratory")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n* = significant under the design (Holm within a family, families in order); "
                                "AP is exploratory; a one-seed contrast's interval holds image noise only.")


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
