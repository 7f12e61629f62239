"""``harmonic demo`` / ``make demo``: the paper's experiment in miniature, end to end.

synthetic data → train baseline and HarmonicDet (same recipe, same seeds) → export to ONNX with
NMS (verified against PyTorch) → torch-free inference with accuracy and a benchmark → NMS regret
from the raw graph → ``REPORT.md``: deltas with paired-bootstrap 95 % intervals, per-seed table,
latency, pictures. The defaults are sized to finish within about 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from harmonic.errors import HarmonicError
from harmonic.experiments import pictures, report
from harmonic.experiments.runner import (
    BASELINE,
    HARMONIC,
    Experiment,
    Recipe,
    check_counts,
    check_output_dir,
    evaluation_split,
    prepare_synthetic,
    resolve_device,
    run_experiment,
)
from harmonic.experiments.stats import metrics, paired_bootstrap, run_data_from_dir

log = logging.getLogger(__name__)

# The CPU demo's recipe (measured on a 2-core CPU: see README "Results of the demo").
DEMO_MODEL = "fcos_resnet10s_fpn"
# The synthetic task: 3 irregular shape classes at 15-60 % of the image, up to 5 per image, occluding and
# touching each other on textured, cluttered backgrounds: hard to localise precisely, easy to recognise.
SYNTH = {"classes": 3, "scale": (0.2, 0.6), "max_objects": 5}
DEMO_MODEL_OPTIONS = {"fcos_resnet10s_fpn": ["num_convs=2"], "retinanet_resnet10s_fpn": ["head_norm=gn"]}


def add_recipe_args(p: argparse.ArgumentParser, *, epochs: int, synthetic_help: str) -> None:
    """The flags shared by ``harmonic demo`` and ``harmonic ablate``."""
    p.add_argument("--data", default=None, help=f"dataset.yaml to use instead of {synthetic_help}")
    p.add_argument("--model", default=DEMO_MODEL, help="detector name (harmonic train --list-models)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per variant; tables give mean ± std")
    p.add_argument("--img-size", type=int, default=128, help="square input size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--optimizer", default="adamw", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 1e-3 with adamw, the train command's default with sgd)")
    p.add_argument("--fpn-channels", type=int, default=64, help="FPN/head width")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="builder option for training, repeatable (default for the demo models: "
                        "fcos num_convs=2, retinanet head_norm=gn)")
    p.add_argument("--augment", default="flip", choices=["full", "flip", "none"],
                   help="training augmentation (flip: the synthetic set is large enough; use full on real data)")
    p.add_argument("--backbone-weights", default=None, help="DEFAULT (torchvision ImageNet) or a local state dict")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers for training")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--num-train", type=int, default=2000, help="synthetic training images")
    p.add_argument("--num-val", type=int, default=150, help="synthetic validation images (select best.pt)")
    p.add_argument("--num-test", type=int, default=300,
                   help="synthetic held-out test images (what the comparison reports on)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (>= 1000 for the report)")
    p.add_argument("--keep", action="store_true",
                   help="also reuse finished trainings of older runs in --out that have no stage record "
                        "(finished stages whose inputs are unchanged are always reused)")
    p.add_argument("--max-iters-per-epoch", type=int, default=None, help=argparse.SUPPRESS)  # smoke tests


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output folder (REPORT.md and the pictures go here)")
    add_recipe_args(p, epochs=7, synthetic_help="the generated synthetic shapes")
    return p


def recipe_from_args(args: argparse.Namespace, device: str) -> Recipe:
    options = args.model_option
    if options is None:
        options = DEMO_MODEL_OPTIONS.get(args.model, [])
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adamw" else None)
    return Recipe(model=args.model, epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size,
                  optimizer=args.optimizer, lr=lr, fpn_channels=args.fpn_channels, model_options=list(options),
                  backbone_weights=args.backbone_weights, augment=args.augment, workers=args.workers,
                  device=device, max_iters_per_epoch=args.max_iters_per_epoch)


def prepare(args: argparse.Namespace) -> tuple[Path, Path, str, Recipe]:
    """Check everything that can fail before any training, in seconds, each problem one line (exit 2):
    counts, --out writable, the dataset file and every split the experiment uses (train, val, and the
    test split it reports on, which the evaluator must load), the model and its options, and the
    disk space for the checkpoints. Generates (or reuses) the synthetic set when there is no --data."""
    check_counts(args.seeds, args.epochs)
    if args.resamples < 1:
        raise HarmonicError(f"--resamples must be >= 1, got {args.resamples}")
    for flag in ("num_train", "num_val", "num_test"):
        if getattr(args, flag) < 0 or (flag != "num_test" and getattr(args, flag) < 1):
            raise HarmonicError(f"--{flag.replace('_', '-')}: must be >= {0 if flag == 'num_test' else 1}, "
                                f"got {getattr(args, flag)}")
    out = check_output_dir(Path(args.out))
    if args.backbone_weights not in (None, "DEFAULT") and not Path(args.backbone_weights).is_file():
        raise HarmonicError(f"--backbone-weights {args.backbone_weights}: not found (DEFAULT or a local state dict)")
    eval_data = None
    if args.data:
        data_yaml = Path(args.data).resolve()
        eval_data = evaluation_split(data_yaml)
        num_classes = len(eval_data.names)
    else:
        data_yaml = None
        num_classes = SYNTH["classes"]
    device = resolve_device(args.device)
    recipe = recipe_from_args(args, device)
    params = check_model(recipe, num_classes)
    check_disk_space(out, params, args.seeds * _num_variants(args), recipe)
    if data_yaml is None:
        data_yaml = prepare_synthetic(out, args.num_train, args.num_val, args.img_size, classes=SYNTH["classes"],
                                      scale=SYNTH["scale"], max_objects=SYNTH["max_objects"], keep=args.keep,
                                      num_test=args.num_test)
        evaluation_split(data_yaml)
    return out, data_yaml, device, recipe


def _num_variants(args: argparse.Namespace) -> int:
    if not hasattr(args, "variants"):
        return 2  # the demo: baseline and HarmonicDet
    from harmonic.experiments.ablate import parse_variants

    return len(parse_variants(args.variants))


def check_model(recipe: Recipe, num_classes: int) -> int:
    """Build the recipe's detector once (unknown model, option or size: one line); returns its parameter count."""
    from harmonic.models import build_detector, model_info
    from harmonic.training.cli import parse_key_values

    model_info(recipe.model)
    options = parse_key_values(recipe.model_options, "--model-option")
    if recipe.fpn_channels is not None:
        options["fpn_channels"] = recipe.fpn_channels
    weights = recipe.backbone_weights if recipe.backbone_weights not in (None, "DEFAULT") else None
    try:
        model = build_detector(recipe.model, num_classes, loss="baseline", img_size=recipe.img_size,
                               backbone_weights=weights, **options)
    except HarmonicError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmonicError(f"--model {recipe.model} with options {options}: {first[:200]}") from None
    return sum(p.numel() for p in model.parameters())


def check_disk_space(out: Path, params: int, runs: int, recipe: Recipe) -> None:
    """Free space under ``out`` for ``runs`` runs: best.pt and last.pt (weights + optimizer state) and two
    ONNX graphs each, float32, with a 20 % margin."""
    import shutil

    states = 2 if (recipe.optimizer or "sgd") == "adamw" else 1
    need = int(1.2 * runs * 4 * params * (2 * (1 + states) + 2)) + (64 << 20)
    free = shutil.disk_usage(out).free
    if free < need:
        raise HarmonicError(f"--out {out}: {free / 2**30:.2f} GiB free, the {runs} run(s) need about "
                            f"{need / 2**30:.2f} GiB (checkpoints and ONNX graphs)")


def evaluate_experiment(exp: Experiment, resamples: int) -> tuple[dict, dict[str, list[dict[str, float]]]]:
    """Paired bootstrap of HarmonicDet vs baseline, and every run's metrics (per variant label, per seed)."""
    data = {v.name: [run_data_from_dir(r.run_dir, exp.eval_annotations) for r in exp.runs[v.name]]
            for v in exp.variants}
    per_seed = {v.label: [metrics(d) for d in data[v.name]] for v in exp.variants}
    boot = paired_bootstrap(data[BASELINE.name], data[HARMONIC.name], resamples=resamples)
    return boot, per_seed


def write_report(exp: Experiment, args: argparse.Namespace, device: str, recipe: Recipe,
                 table: str, verdict: str, per_seed: dict[str, list[dict[str, float]]]) -> Path:
    """REPORT.md: ``verdict`` (its first paragraph), ``table`` (deltas and intervals), the per-seed
    table of ``per_seed`` (with 2+ seeds) and the pictures."""
    out = exp.out
    first = {v.label: exp.runs[v.name][0] for v in exp.variants}
    pics = {
        "scatter": pictures.scatter_side_by_side({k: r.run_dir / "report.json" for k, r in first.items()},
                                                 out / "score_iou_side_by_side.png"),
        "fig4": pictures.fig4_per_epoch({k: r.run_dir / "log.jsonl" for k, r in first.items()},
                                        out / "harmonic_factors_per_epoch.png"),
        "ap_iou": pictures.ap_vs_iou({v.label: [r.report for r in exp.runs[v.name]] for v in exp.variants},
                                     out / "ap_vs_iou.png"),
        "calibration": pictures.calibration({v.label: [r.report for r in exp.runs[v.name]] for v in exp.variants},
                                            out / "calibration.png"),
        "score_bins": pictures.score_bins_per_epoch({k: r.run_dir / "log.jsonl" for k, r in first.items()},
                                                    out / "score_per_iou_bin_per_epoch.png"),
        "examples": pictures.examples_grid(exp.eval_images, exp.eval_annotations,
                                           {k: r.run_dir / "infer" / "detections.json" for k, r in first.items()},
                                           out / "examples.png"),
    }
    benches = {k: r.bench for k, r in first.items() if r.bench}
    train_s = [r.seconds.get("train") for runs in exp.runs.values() for r in runs if r.seconds.get("train")]
    lines = [
        "# HarmonicDet demo report", "",
        verdict, "",
        "## Set-up", "",
        f"- Model `{recipe.model}` (FPN width {recipe.fpn_channels}, options {recipe.model_options or 'none'}), "
        f"trained from {'`' + str(recipe.backbone_weights) + '`' if recipe.backbone_weights else 'scratch'} "
        f"for {recipe.epochs} epochs at {recipe.img_size} px, batch {recipe.batch_size}, {recipe.optimizer} "
        f"lr {recipe.lr}, augmentation `{recipe.augment}`; both losses use the same recipe and seeds.",
        f"- Data: {'`' + str(args.data) + '`' if args.data else f'`harmonic synth` ({args.num_train} train / {args.num_val} val images, 3 shape classes, objects 20–60 % of the image side, up to 5 per image, occluding each other)'}; "
        f"scored on the `{exp.eval_split}` split, {first[BASELINE.label].report.get('counts', {}).get('images', '?')} "
        f"images{'' if exp.eval_split == 'test' else ' (no test split: the split that also selected best.pt)'}.",
        f"- Machine: {report.machine_line(device)}. {args.seeds} seed(s). Whole run {exp.seconds / 60:.1f} min"
        + (f"; one training {min(train_s):.0f}–{max(train_s):.0f} s" if train_s else "") + ".",
        "- Evaluated as shipped: detections of the exported ONNX model (NMS in the graph) run by the torch-free "
        "`infer/run.py`; NMS regret from the raw (pre-NMS) graph.", "",
        "## Do the scores rank boxes by quality? Ranking, accuracy and consistency", "",
        "The ranking metrics come first: Spearman/Kendall between score and IoU over the **true positives** "
        "(one per object, COCO matching at IoU 0.5), and inside **NMS clusters** (each object's pre-NMS "
        "candidates with IoU ≥ 0.5, from the raw graph): the share of objects whose top-scored candidate — "
        "the one NMS keeps — is within 0.05 IoU of the best candidate, and the mean within-object Spearman. "
        "The pooled correlation below them is over every kept box that overlaps an object at all, "
        + _pooled_population(first[BASELINE.label].report) + ".", "",
        f"Δ with a 95 % confidence interval from a paired bootstrap over the {exp.eval_split} images ({args.resamples} "
        "resamples, seeded; the same resampled images for both models"
        + ("; the seeds of each model are resampled too, so training-to-training variation is inside the "
           "interval" if args.seeds > 1 else "") + "). A difference is called significant only when its "
        "interval excludes 0.", "",
        table, "",
        "### Calibration of true positives", "",
        "Mean score of the true positives per IoU bin (mean over seeds): a score that tracks quality rises "
        "with the IoU; scores compressed far below the IoU push good boxes down among the false positives.", "",
        calibration_table({v.label: [r.report for r in exp.runs[v.name]] for v in exp.variants}), "",
        f"![calibration]({pics['calibration'].name})", "",
    ]
    if args.seeds > 1:
        lines += ["### Per seed", "", report.per_seed_table(per_seed), ""]
    lines += [
        "## Pictures", "",
        "Score vs IoU of each kept detection matched to an object (paper Fig. 5): a consistent detector's "
        "points lie along the diagonal.", "", f"![score vs IoU]({pics['scatter'].name})", "",
        "The paper's Fig. 4 per epoch: mean harmonic factors and AIC over positives (logged for the baseline "
        "too, as if its losses were weighted).", "", f"![harmonic factors]({pics['fig4'].name})", "",
        "Mean score of the training positives per IoU bin, per epoch (seed 0): how the loss shapes the "
        "scores while it trains.", "", f"![score per IoU bin]({pics['score_bins'].name})", "",
        "AP at IoU thresholds 0.5…0.9:", "", f"![AP vs IoU]({pics['ap_iou'].name})", "",
        f"{exp.eval_split.capitalize()} images: ground truth in green, each model's top boxes (score ≥ 0.3) with their scores:", "",
        f"![examples]({pics['examples'].name})", "",
    ]
    if benches:
        lines += ["## Latency (ONNX Runtime, this machine, seed 0)", "",
                  "Engine-only is the graph call alone; end-to-end adds decoding, letterboxing and "
                  "post-processing.", "", report.latency_table(benches), ""]
    lines += ["## Runs", "", "| run | seed | folder | train s | export s | infer s | eval s |", "|---|---|---|---|---|---|---|"]
    for v in exp.variants:
        for r in exp.runs[v.name]:
            s = r.seconds
            lines.append(f"| {v.label} | {r.seed} | `{r.run_dir.relative_to(out)}` | "
                         + " | ".join(f"{s[k]:.0f}" if k in s else "reused" for k in ("train", "export", "infer", "eval"))
                         + " |")
    path = report.write_markdown(out / "REPORT.md", lines)
    return path


def _pooled_population(rep: dict) -> str:
    """How many boxes the pooled correlation is over, and the share that overlaps no object by 0.5."""
    c = rep.get("consistency") or {}
    share = c.get("share_iou_below_0.5")
    if share is None:
        return "its population not recorded"
    return f"{c.get('num_used', 0)} boxes for the baseline (seed 0), {100 * share:.0f} % of them with IoU < 0.5"


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


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    t0 = time.perf_counter()
    out, data_yaml, device, recipe = prepare(args)
    exp = run_experiment(out, data_yaml, [BASELINE, HARMONIC], args.seeds, recipe, keep=args.keep)
    boot, per_seed = evaluate_experiment(exp, args.resamples)
    exp.seconds = time.perf_counter() - t0
    table = report.delta_table(boot, (BASELINE.label, HARMONIC.label), per_seed)
    verdict = report.verdict_paragraph(boot, args.seeds, report.floor_failures(per_seed), split=exp.eval_split)
    path = write_report(exp, args, device, recipe, table, verdict, per_seed)
    print()
    print(table)
    print()
    print(verdict)
    print(f"\nReport: {path}")
    print(f"Pictures: {out}/score_iou_side_by_side.png, calibration.png, score_per_iou_bin_per_epoch.png, "
          "harmonic_factors_per_epoch.png, ap_vs_iou.png, examples.png")
    return 0
