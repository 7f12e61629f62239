"""The recipe shared by ``harmonic demo`` and ``harmonic ablate``: its flags, the demo model and
synthetic task, and the checks (:func:`prepare`) that run before any training."""

from __future__ import annotations

import argparse
from pathlib import Path

from harmonic.errors import HarmonicError
from harmonic.experiments.runner import (
    Recipe,
    check_counts,
    check_output_dir,
    evaluation_split,
    prepare_synthetic,
    resolve_device,
)

# The CPU demo's recipe (measured on a 2-core CPU: see docs/results.md, "The demo, one seed").
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


def recipe_from_args(args: argparse.Namespace, device: str) -> Recipe:
    options = args.model_option
    if options is None:
        options = DEMO_MODEL_OPTIONS.get(args.model, [])
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adamw" else None)
    return Recipe(model=args.model, epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size,
                  optimizer=args.optimizer, lr=lr, fpn_channels=args.fpn_channels, model_options=list(options),
                  backbone_weights=args.backbone_weights, augment=args.augment, workers=args.workers,
                  device=device, max_iters_per_epoch=args.max_iters_per_epoch)


def prepare(args: argparse.Namespace, num_variants: int) -> tuple[Path, Path, str, Recipe]:
    """Check everything that can fail before any training, in seconds, each problem one line (exit 2):
    counts, --out writable, the dataset file and every split the experiment uses (train, val, and the
    test split it reports on, which the evaluator must load), the model and its options, and the
    disk space for the checkpoints of ``num_variants`` variants x ``--seeds``. Generates (or reuses) the synthetic set when there is no --data."""
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
    check_disk_space(out, params, args.seeds * num_variants, recipe)
    if data_yaml is None:
        data_yaml = prepare_synthetic(out, args.num_train, args.num_val, args.img_size, classes=SYNTH["classes"],
                                      scale=SYNTH["scale"], max_objects=SYNTH["max_objects"], keep=args.keep,
                                      num_test=args.num_test)
        evaluation_split(data_yaml)
    return out, data_yaml, device, recipe


def check_model(recipe: Recipe, num_classes: int) -> int:
    """Build the recipe's detector once (unknown model, option or size: one line); returns its parameter count."""
    from harmonic.models import build_detector, model_info
    from harmonic.training.config import parse_key_values

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
