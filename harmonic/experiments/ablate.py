"""``harmonic ablate``: the paper's ablation (its Tables 3–5) as one command.

Trains each variant — the baseline, +HL (harmonic factors only), +HL+TC, +HL+HIoU, full HarmonicDet,
the mechanism variants of the full loss (detached factors, β_c detached only, β_c = exp(−L_cls), HIoU
α 0.5 and 1.0, constant factors) and the QFL positive control — through the same train → export →
infer path as ``harmonic demo`` (one runner), then writes ``ABLATION.md`` (mean ± std over seeds of
the ranking metrics, AP, AP50…AP90, pooled Spearman and NMS regret, one row per variant; then the
planned contrasts, :func:`planned_contrasts`, with seed-paired intervals of the ρ TP, NMS top-1 and
AP deltas and the verdicts of the statistical design, :mod:`harmonic.experiments.design`), the
paper's Fig. 4 and the per-IoU-bin score of the positives per epoch as PNGs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from harmonic.errors import HarmonicError
from harmonic.experiments import pictures, report
from harmonic.experiments.design import Contrast, apply_design
from harmonic.experiments.recipe import add_recipe_args, prepare
from harmonic.experiments.runner import BASELINE, Variant, run_experiment
from harmonic.experiments.stats import compare, counts, image_replicates, metrics, run_data_from_dir

# The paper's parts: harmonic factors (HL, Eq. 2-3), HIoU inside L_loc (alpha, Eq. 10-11), TC (Eq. 8);
# then the mechanism variants of the full loss (which part compresses the scores of focal heads?),
# and the positive control, beyond the paper: GFL's quality focal loss (+ IoU centre-ness for FCOS), a
# loss known to make scores rank boxes by IoU: if the harness cannot see its gain, the harness is wrong.
QFL_OPTIONS = (("harmonic_factors", False), ("alpha", 0.0), ("tc_weight", 0.0), ("quality_focal", True))
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    BASELINE,
    Variant("hl", "+HL", "harmonic", (("harmonic_factors", True), ("alpha", 0.0), ("tc_weight", 0.0))),
    Variant("hl_tc", "+HL+TC", "harmonic", (("harmonic_factors", True), ("alpha", 0.0))),
    Variant("hl_hiou", "+HL+HIoU", "harmonic", (("harmonic_factors", True), ("tc_weight", 0.0))),
    Variant("full", "HarmonicDet (full)", "harmonic", ()),
    Variant("full_detached", "full, detached factors", "harmonic", (("detach_factors", True),)),
    Variant("detach_bc", "full, β_c detached only", "harmonic", (("detach_beta_c", True),)),
    Variant("exp_ce", "full, β_c = exp(−L_cls)", "harmonic", (("beta_c", "exp_ce"),)),
    Variant("alpha05", "full, HIoU α = 0.5", "harmonic", (("alpha", 0.5),)),
    Variant("alpha10", "full, HIoU α = 1.0", "harmonic", (("alpha", 1.0),)),
    Variant("const", "full, constant factors 1.5", "harmonic", (("factor_mode", "constant"),)),
    Variant("qfl", "QFL control (beyond the paper)", "harmonic", QFL_OPTIONS),
)}


# the variants that change one mechanism of the full loss (each is contrasted with the full loss) and the
# paper's parts added to the baseline one at a time (each contrasted with the baseline)
MECHANISMS = ("full_detached", "detach_bc", "exp_ce", "alpha05", "alpha10", "const")
PARTS = ("hl", "hl_tc", "hl_hiou")


def planned_contrasts(names: Sequence[str]) -> tuple[list[Contrast], list[list[str]]]:
    """The contrasts the ablation reports, and the design's families (lists of contrast labels), for the
    variants ``names`` that ran.

    Every variant against the baseline (exploratory unless in a family); the headline family:
    full − baseline; the second family (tested only when the headline held): the positive control
    against the baseline, full − constant factors (the coupling vs "more weight on positives"),
    full − QFL, each of the paper's parts against the baseline and each mechanism variant against
    the full loss.
    """
    present = set(names)
    label = {v: VARIANTS[v].label for v in VARIANTS}
    out: list[Contrast] = []

    def add(a: str, b: str) -> str | None:
        if a in present and b in present and a != b:
            c = Contrast(a, b, f"{label[a]} − {label[b]}")
            if c not in out:
                out.append(c)
            return c.label
        return None

    for v in names:
        add(v, BASELINE.name)
    headline = [c for c in (add("full", BASELINE.name),) if c]
    second = [add("qfl", BASELINE.name), add("full", "const"), add("full", "qfl"),
              *(add(v, BASELINE.name) for v in PARTS), *(add(v, "full") for v in MECHANISMS if v != "const")]
    return out, [f for f in (headline, [c for c in second if c]) if f]


def for_family(variant: Variant, family: str) -> Variant:
    """``variant`` as it runs on a model of ``family``: the QFL control adds IoU centre-ness on FCOS."""
    if variant.name == "qfl" and family == "fcos":
        return Variant(variant.name, variant.label, variant.loss, (*variant.loss_options, ("iou_centerness", True)))
    return variant


def parse_variants(text: str | None) -> list[Variant]:
    """``"baseline,hl,full"`` -> those variants in that order (default: all); unknown names are an error."""
    if not text:
        return list(VARIANTS.values())
    names = [n.split(":")[0].strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise HarmonicError(f"--variants: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise HarmonicError(f"--variants: a variant is named twice in {text!r}")
    return [VARIANTS[n] for n in names]


def parse_seed_counts(text: str | None, default: int) -> dict[str, int]:
    """Seeds per variant from ``--variants``: ``"baseline:3,full:3,hl"`` -> ``{"baseline": 3, "full": 3,
    "hl": default}``; a count must be an integer >= 1 (one line naming it otherwise)."""
    counts = {}
    for item in (text or ",".join(VARIANTS)).split(","):
        if not item.strip():
            continue
        name, _, count = item.partition(":")
        if not count.strip():
            counts[name.strip()] = default
            continue
        try:
            n = int(count)
        except ValueError:
            n = 0
        if n < 1:
            raise HarmonicError(f"--variants: {item.strip()!r}: the seed count after ':' must be an integer >= 1")
        counts[name.strip()] = n
    return counts


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic ablate", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablate", help="output folder (ABLATION.md and the PNG go here)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated subset of: {', '.join(VARIANTS)} (default: all, in that order); "
                        "NAME:N runs N seeds of that variant instead of --seeds (e.g. baseline:3,full:3,hl)")
    add_recipe_args(p, epochs=7, synthetic_help="the demo's synthetic shapes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    variants = parse_variants(args.variants)
    seed_counts = parse_seed_counts(args.variants, args.seeds)
    t0 = time.perf_counter()
    out, data_yaml, device, recipe = prepare(args, num_variants=len(variants))
    from harmonic.models import model_info

    variants = [for_family(v, model_info(recipe.model).family) for v in variants]
    exp = run_experiment(out, data_yaml, variants, max(seed_counts.values()), recipe, keep=args.keep,
                         save_vis=False, seeds_per_variant=seed_counts)
    data = {v.name: [run_data_from_dir(r.run_dir, exp.eval_annotations) for r in exp.runs[v.name]] for v in variants}
    per_variant = {v.label: [metrics(d) for d in data[v.name]] for v in variants}
    eligible = {v.label: [counts(d) for d in data[v.name]] for v in variants}
    contrasts, families = planned_contrasts([v.name for v in variants])
    reps = image_replicates(data, resamples=args.resamples) if contrasts else {}
    results = {c.label: compare(reps[c.a], reps[c.b]) for c in contrasts}
    apply_design(results, families)
    fig = pictures.fig4_per_epoch({v.label: exp.runs[v.name][0].run_dir / "log.jsonl" for v in variants},
                                  out / "ablation_fig4.png")
    bins = pictures.score_bins_per_epoch({v.label: exp.runs[v.name][0].run_dir / "log.jsonl" for v in variants},
                                         out / "ablation_score_per_iou_bin.png")
    reports = {v.label: [r.report for r in exp.runs[v.name]] for v in variants}
    cal = pictures.calibration(reports, out / "ablation_calibration.png")
    table = report.ablation_table(per_variant, eligible)
    contrast_md = report.contrast_table(results) if results else "(no contrast: one variant)"
    options = {v.label: (dict(v.loss_options) if v.loss != "baseline" else "torchvision's loss") for v in variants}
    lines = [
        "# HarmonicDet ablation", "",
        f"Model `{recipe.model}`, {recipe.epochs} epochs at {recipe.img_size} px, batch {recipe.batch_size}, "
        f"{recipe.optimizer} lr {recipe.lr}, seeds per variant: "
        + ", ".join(f"{v.label} {seed_counts.get(v.name, args.seeds)}" for v in variants) + "; data "
        f"{'`' + str(args.data) + '`' if args.data else '`harmonic synth` (the demo set)'}; "
        f"{report.machine_line(device)}; {(time.perf_counter() - t0) / 60:.1f} min.", "",
        "Every variant uses the same recipe and seeds and is evaluated as shipped (exported ONNX graph, "
        "torch-free inference). Loss options per variant (the rest at their defaults):", "",
        *[f"- {label}: `{opts}`" for label, opts in options.items()], "",
        table, "",
        "## Contrasts", "",
        "The design, fixed before the data: ρ TP is the primary metric and NMS top-1 the secondary one; the "
        "headline family (full − baseline) is tested first, and the second family ("
        + (", ".join(families[1]) if len(families) > 1 else "none here")
        + ") only when every hypothesis of the headline held; Holm within a family. Δ is the mean over the seeds "
        "both arms ran of arm − arm, seed s with seed s (same initial weights and data order); with two or more "
        "seed pairs the interval holds training-to-training and image variation "
        "(`harmonic.experiments.stats.seed_paired_interval`), with one it holds image noise only and gets no "
        "verdict. A metric over fewer than 30 eligible items (n) gets no interval. Contrasts outside the "
        "families, and AP everywhere, are exploratory.", "",
        contrast_md, "",
        "Mean score of the true positives per IoU bin (the evaluation split; mean over seeds):", "",
        report.calibration_table(reports), "", f"![calibration]({cal.name})", "",
        "Mean score of the training positives per IoU bin, per epoch (seed 0 of each variant): compressed "
        "scores show as lines bunched far below 1.", "", f"![score per IoU bin]({bins.name})", "",
        "The paper's Fig. 4 per variant (seed 0): mean 1+β_r, 1+β_c and AIC over positives per epoch.", "",
        f"![Fig. 4]({fig.name})", "",
    ]
    path = report.write_markdown(out / "ABLATION.md", lines)
    print()
    print(table)
    print()
    print(contrast_md)
    print(f"\nAblation: {path}\nFigure: {fig}")
    return 0
