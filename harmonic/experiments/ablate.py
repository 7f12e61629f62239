"""``harmonic ablate``: the paper's ablation (its Tables 3–5) as one command.

Trains each variant — the baseline, +HL (harmonic factors only), +HL+TC, +HL+HIoU, full HarmonicDet
and full HarmonicDet with detached factors — through the same train → export → infer path as
``harmonic demo`` (one runner), then writes ``ABLATION.md`` (mean ± std over seeds of AP, AP50…AP90,
Spearman, AIC and NMS regret, one row per variant, with paired-bootstrap intervals of the AP and
Spearman deltas against the baseline) and the paper's Fig. 4 as a PNG (a line per variant).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from harmonic.errors import HarmonicError
from harmonic.experiments import pictures, report
from harmonic.experiments.demo import add_recipe_args, prepare
from harmonic.experiments.runner import BASELINE, Variant, run_experiment
from harmonic.experiments.stats import metrics, paired_bootstrap_arms, run_data_from_dir

# The paper's parts: harmonic factors (HL, Eq. 2-3), HIoU inside L_loc (alpha, Eq. 10-11), TC (Eq. 8).
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    BASELINE,
    Variant("hl", "+HL", "harmonic", (("harmonic_factors", True), ("alpha", 0.0), ("tc_weight", 0.0))),
    Variant("hl_tc", "+HL+TC", "harmonic", (("harmonic_factors", True), ("alpha", 0.0))),
    Variant("hl_hiou", "+HL+HIoU", "harmonic", (("harmonic_factors", True), ("tc_weight", 0.0))),
    Variant("full", "HarmonicDet (full)", "harmonic", ()),
    Variant("full_detached", "full, detached factors", "harmonic", (("detach_factors", True),)),
)}


def parse_variants(text: str | None) -> list[Variant]:
    """``"baseline,hl,full"`` -> those variants in that order (default: all); unknown names are an error."""
    if not text:
        return list(VARIANTS.values())
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise HarmonicError(f"--variants: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise HarmonicError(f"--variants: a variant is named twice in {text!r}")
    return [VARIANTS[n] for n in names]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic ablate", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablate", help="output folder (ABLATION.md and the PNG go here)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated subset of: {', '.join(VARIANTS)} (default: all, in that order)")
    add_recipe_args(p, epochs=7, synthetic_help="the demo's synthetic shapes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    variants = parse_variants(args.variants)
    t0 = time.perf_counter()
    out, data_yaml, device, recipe = prepare(args)
    exp = run_experiment(out, data_yaml, variants, args.seeds, recipe, keep=args.keep, save_vis=False)
    data = {v.name: [run_data_from_dir(r.run_dir, exp.eval_annotations) for r in exp.runs[v.name]] for v in variants}
    per_variant = {v.label: [metrics(d) for d in data[v.name]] for v in variants}
    versus = None
    if BASELINE.name in data:
        arms = {v.label: data[v.name] for v in variants if v.name != BASELINE.name}
        versus = paired_bootstrap_arms(data[BASELINE.name], arms, resamples=args.resamples)
    fig = pictures.fig4_per_epoch({v.label: exp.runs[v.name][0].run_dir / "log.jsonl" for v in variants},
                                  out / "ablation_fig4.png")
    table = report.ablation_table(per_variant, versus)
    options = {v.label: (dict(v.loss_options) if v.loss != "baseline" else "torchvision's loss") for v in variants}
    lines = [
        "# HarmonicDet ablation", "",
        f"Model `{recipe.model}`, {recipe.epochs} epochs at {recipe.img_size} px, batch {recipe.batch_size}, "
        f"{recipe.optimizer} lr {recipe.lr}, {args.seeds} seed(s), data "
        f"{'`' + str(args.data) + '`' if args.data else '`harmonic synth` (the demo set)'}; "
        f"{report.machine_line(device)}; {(time.perf_counter() - t0) / 60:.1f} min.", "",
        "Every variant uses the same recipe and seeds and is evaluated as shipped (exported ONNX graph, "
        "torch-free inference). Loss options per variant (the rest at their defaults):", "",
        *[f"- {label}: `{opts}`" for label, opts in options.items()], "",
        table, "",
        "The paper's Fig. 4 per variant (seed 0): mean 1+β_r, 1+β_c and AIC over positives per epoch.", "",
        f"![Fig. 4]({fig.name})", "",
    ]
    path = report.write_markdown(out / "ABLATION.md", lines)
    print()
    print(table)
    print(f"\nAblation: {path}\nFigure: {fig}")
    return 0
