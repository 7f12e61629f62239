"""Readable text tables of one report, and the paper-style markdown table comparing several."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (column, path into the report, scale, decimals); AP columns in % like the paper's Table 1
COMPARE_COLUMNS: list[tuple[str, tuple[str, ...], float, int]] = [
    ("ρ TP ↑", ("ranking", "true_positives", "spearman"), 1, 3),
    ("NMS top-1 ↑", ("ranking", "nms", "top1_share"), 1, 3),
    ("AP", ("coco", "AP"), 100, 1),
    ("AP50", ("voc", "AP50"), 100, 1),
    ("AP60", ("voc", "AP60"), 100, 1),
    ("AP70", ("voc", "AP70"), 100, 1),
    ("AP80", ("voc", "AP80"), 100, 1),
    ("AP90", ("voc", "AP90"), 100, 1),
    ("AP75", ("coco", "AP75"), 100, 1),
    ("Spearman pooled ↑", ("consistency", "spearman"), 1, 3),
    ("Kendall pooled ↑", ("consistency", "kendall"), 1, 3),
    ("AIC ↓", ("consistency", "aic"), 1, 3),
    ("harm@0.5 ↑", ("consistency", "harmonious_0.5"), 1, 3),
    ("harm@0.7 ↑", ("consistency", "harmonious_0.7"), 1, 3),
    ("regret ↓", ("regret", "rate"), 1, 3),
]


def get_metric(report: dict, path: Sequence[str]) -> float | None:
    """``report[path[0]][path[1]]...`` as a float, or None when absent or not a number."""
    cur: Any = report
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    if isinstance(cur, bool) or not isinstance(cur, (int, float)):
        return None
    return float(cur)


def _fmt(value: float | None, scale: float = 1.0, decimals: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * scale:{'+' if sign else ''}.{decimals}f}"


def format_report_table(report: dict) -> str:
    """Plain-text summary of one :func:`~harmonic.evaluation.evaluate` report (what ``harmonic eval`` prints)."""
    lines: list[str] = []
    coco, voc = report.get("coco") or {}, report.get("voc") or {}
    lines.append("Accuracy (%)")
    keys = ["AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR100"]
    lines.append("  COCO  " + "  ".join(f"{k}={_fmt(coco.get(k), 100, 1)}" for k in keys))
    lines.append("  VOC   " + "  ".join(f"{k}={_fmt(v, 100, 1)}" for k, v in voc.items()))
    per_class = report.get("per_class") or {}
    if per_class:
        width = max(len(str(n)) for n in per_class)
        lines.append("Per-class AP (%)")
        lines += [f"  {str(n):<{width}}  {_fmt(v, 100, 1)}" for n, v in per_class.items()]
    lines += _ranking_lines(report.get("ranking") or {})
    c = report.get("consistency") or {}
    lines.append(f"Pooled score-IoU consistency (secondary: every detection with score >= "
                 f"{(report.get('settings') or {}).get('score_min', 0.05)} matched to GT)")
    lines.append(f"  Spearman={_fmt(c.get('spearman'))}  Kendall={_fmt(c.get('kendall'))}  "
                 f"AIC={_fmt(c.get('aic'))}  harmonious@0.5={_fmt(c.get('harmonious_0.5'))}  "
                 f"harmonious@0.7={_fmt(c.get('harmonious_0.7'))}")
    lines.append(f"  used={c.get('num_used', 0)} (IoU < 0.5: {_fmt(c.get('share_iou_below_0.5'), 100, 0)} %)  "
                 f"false positives (IoU=0)={c.get('num_false_positive', 0)}")
    r = report.get("regret")
    if r:
        lines.append("NMS regret (from pre-NMS candidates)")
        lines.append(f"  rate={_fmt(r.get('rate'))}  mean IoU lost={_fmt(r.get('mean_iou_lost'))}  "
                     f"objects={r.get('num_objects', 0)}  regretted={r.get('num_regret', 0)}")
    counts = report.get("counts") or {}
    if counts:
        lines.append("Counts")
        lines.append("  " + "  ".join(f"{k}={v}" for k, v in counts.items() if v is not None))
    return "\n".join(lines)


def _ranking_lines(rk: dict) -> list[str]:
    """The ranking section (primary score-IoU metrics) as text lines; empty for an older report."""
    if not rk:
        return []
    tp = rk.get("true_positives") or {}
    lines = ["Score ranks boxes by IoU? (true positives: one per object, COCO matching at IoU 0.5)",
             f"  Spearman={_fmt(tp.get('spearman'))}  Kendall={_fmt(tp.get('kendall'))}  "
             f"class-mean Spearman={_fmt(tp.get('spearman_class_mean'))}  true positives={tp.get('count', 0)}"]
    nms = rk.get("nms")
    if nms:
        lines.append(f"  NMS clusters: top-scored candidate within 0.05 IoU of the best for "
                     f"{_fmt(nms.get('top1_share'), 100, 1)} % of {nms.get('num_eligible', 0)} objects; "
                     f"within-object Spearman={_fmt(nms.get('within_spearman'))}")
    cal = rk.get("calibration") or {}
    if cal.get("bins"):
        cells = [f"{lo:.1f}-{hi:.1f}: {_fmt(m, 1, 2)} (n={n})"
                 for (lo, hi), m, n in zip(cal["bins"], cal["mean_score"], cal["count"])]
        lines.append("  mean score of true positives per IoU bin: " + ", ".join(cells))
    return lines


def _as_report(item: dict | str | Path) -> dict:
    if isinstance(item, dict):
        return item
    from harmonic.evaluation.api import load_report

    return load_report(item, with_pairs=False)


def compare_table(reports: Sequence[dict | str | Path], labels: Sequence[str] | None = None) -> str:
    """Markdown table, one row per report (dicts or report.json paths), paper-style columns
    (AP, AP50..AP90, AP75 in %, then consistency and regret); with two or more reports a last
    row gives the delta last minus first. Missing metrics read ``n/a``."""
    reps = [_as_report(r) for r in reports]
    if labels is None:
        labels = [Path(r).parent.name or Path(r).stem if not isinstance(r, dict) else f"run {i + 1}"
                  for i, r in enumerate(reports)]
    labels = list(labels)
    if len(labels) != len(reps):
        from harmonic.errors import HarmonicError

        raise HarmonicError(f"{len(labels)} labels for {len(reps)} reports")
    head = "| run | " + " | ".join(c[0] for c in COMPARE_COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(COMPARE_COLUMNS)]
    values = [[get_metric(r, path) for _, path, _, _ in COMPARE_COLUMNS] for r in reps]
    for label, row in zip(labels, values):
        cells = [_fmt(v, scale, dec) for v, (_, _, scale, dec) in zip(row, COMPARE_COLUMNS)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if len(reps) >= 2:
        cells = []
        for a, b, (_, _, scale, dec) in zip(values[0], values[-1], COMPARE_COLUMNS):
            cells.append("n/a" if a is None or b is None else _fmt(b - a, scale, dec, sign=True))
        lines.append(f"| Δ ({labels[-1]} − {labels[0]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nAP columns in %; ρ TP over true positives (one per object, IoU ≥ 0.5); " \
                              "NMS top-1 and regret need pre-NMS candidates; pooled consistency over every " \
                              "kept detection that overlaps an object (mostly false positives).\n"
