"""The statistical design, fixed before the data: which comparisons get a verdict, and at what level.

- **Primary metric**: ρ TP (Spearman of score and IoU over the true positives). **Secondary**: NMS
  top-1 (the share of objects whose top-scored candidate is within 0.05 IoU of the best one). They
  are the confirmatory metrics; every other metric (AP, AP50…AP90, the pooled correlations, AIC,
  regret, NMS ρ, τ TP) is exploratory: reported with its interval, never with a verdict.
- **Families, tested in order** (serial gatekeeping): the first family holds the headline contrast
  (HarmonicDet − baseline). A later family is tested only when every hypothesis of the families
  before it was rejected, so the familywise error rate over all families stays at ``alpha``
  without splitting it between them: the headline keeps its full power, and claims about
  mechanisms are made only on top of a headline that held.
- **Within a family**, Holm's step-down procedure over its (contrast, metric) hypotheses: it
  controls the familywise error rate under any dependence between them (the primary and secondary
  metrics of one contrast are strongly dependent) and rejects at least what Bonferroni rejects.
- **Testable** means two or more seed pairs and at least ``MIN_COUNT`` (30) eligible items
  (:func:`harmonic.experiments.stats.compare`); a one-seed contrast has an interval over images
  only and is never tested.

:func:`apply_design` writes the verdicts into the rows :func:`harmonic.experiments.stats.compare`
made; tables and sentences only read them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from harmonic.experiments.stats import MIN_COUNT

PRIMARY = "tp_spearman"
SECONDARY = "nms_top1"
CONFIRMATORY = (PRIMARY, SECONDARY)
ALPHA = 0.05


@dataclass(frozen=True)
class Contrast:
    """``a − b`` between two arms (variant names), with its label in tables and sentences."""

    a: str
    b: str
    label: str


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the ``k``-th smallest (1-based) of ``m``
    becomes ``max_{j<=k} min(1, (m − j + 1) p_(j))``; reject where the adjusted value is below alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _why_untestable(row: Mapping[str, Any]) -> str:
    if row.get("delta") is None:
        return "undefined"
    if row.get("seeds", 0) < 2:
        return "one seed: interval over images only"
    return f"{row.get('n', 0)} eligible (< {MIN_COUNT}): no interval"


def apply_design(results: MutableMapping[str, MutableMapping[str, dict[str, Any]]],
                 families: Sequence[Sequence[str]], alpha: float = ALPHA) -> None:
    """Write each row's verdict into ``results[contrast][metric]`` (rows of
    :func:`harmonic.experiments.stats.compare`).

    Every row gets ``confirmatory`` (bool), ``p_holm`` (None unless tested), ``significant``,
    ``better`` (None unless significant) and ``verdict`` (a short phrase for tables). ``families``
    lists contrast keys of ``results``, the headline family first; contrasts in no family, and
    metrics outside :data:`CONFIRMATORY`, are exploratory.
    """
    in_family = {c for fam in families for c in fam}
    for contrast, rows in results.items():
        for metric, row in rows.items():
            confirmatory = contrast in in_family and metric in CONFIRMATORY
            row.update(confirmatory=confirmatory, p_holm=None, significant=False, better=None,
                       verdict="exploratory" if not confirmatory else "")
    gate_open = True
    for fam in families:
        hyps = [(c, m) for c in fam if c in results for m in CONFIRMATORY if m in results[c]]
        testable = [(c, m) for c, m in hyps if results[c][m].get("p") is not None]
        for c, m in hyps:
            if (c, m) not in testable:
                results[c][m]["verdict"] = f"no test ({_why_untestable(results[c][m])})"
        if not gate_open:
            for c, m in testable:
                results[c][m]["verdict"] = "not tested (an earlier family did not hold)"
            continue
        adjusted = holm([results[c][m]["p"] for c, m in testable])
        for (c, m), p_adj in zip(testable, adjusted):
            row = results[c][m]
            row["p_holm"] = p_adj
            row["significant"] = p_adj < alpha
            if row["significant"]:
                row["better"] = (row["delta"] > 0) == row["higher_better"]
                row["verdict"] = f"{'better' if row['better'] else 'worse'} (Holm p = {p_adj:.3g})"
            else:
                row["verdict"] = f"not shown (Holm p = {p_adj:.3g})"
        gate_open = bool(hyps) and len(testable) == len(hyps) and all(results[c][m]["significant"]
                                                                      for c, m in testable)
