"""Reproduce the paper's comparison on a real dataset (PASCAL VOC, COCO, or yours), on a GPU machine.

For each model: the demo's experiment (``harmonic.experiments``: the same runner as ``harmonic demo``
and ``harmonic ablate``) on your dataset, with the paper-scale recipe below: train baseline and
HarmonicDet for each seed, export to ONNX with NMS, run the torch-free inference with accuracy,
consistency and benchmark, compute NMS regret from the raw graph, and write one REPORT.md per model
(deltas with paired-bootstrap intervals) plus ``runs/reproduce/SUMMARY.md``. Training selects
``best.pt`` on ``val``; the reports score the dataset's held-out ``test`` split (``val``, with a
warning, when it has none). Everything that can fail is checked before the first training (the
dataset file and its splits, every model, --out); a rerun with the same --out reuses finished stages.

Example (VOC07+12 trainval -> VOC07 test, the paper's Table 1 protocol):

    python scripts/reproduce.py --data data/voc.yaml --models fasterrcnn_resnet50_fpn retinanet_resnet50_fpn \
        --seeds 3 --epochs 24 --img-size 512 --batch-size 16 --backbone-weights DEFAULT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.atomic import write_text  # noqa: E402
from harmonic.cli import run_guarded  # noqa: E402
from harmonic.experiments import demo  # noqa: E402


def check_all(args: argparse.Namespace) -> int:
    """The checks each model's run would make, for all models at once (one line, exit 2)."""
    from harmonic.errors import HarmonicError
    from harmonic.experiments.runner import check_counts, check_output_dir, evaluation_split
    from harmonic.models import model_info

    check_counts(args.seeds, args.epochs)
    for model in args.models:
        model_info(model)
    if len(set(args.models)) != len(args.models):
        raise HarmonicError(f"--models: a model is named twice in {args.models}")
    check_output_dir(Path(args.out))
    evaluation_split(Path(args.data).resolve())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset.yaml (train, val, and a held-out test split)")
    p.add_argument("--models", nargs="+", default=["retinanet_resnet50_fpn"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=None, help="default: the train command's for the optimizer")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--backbone-weights", default="DEFAULT")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--keep", action="store_true",
                   help="also reuse finished trainings of older runs without a stage record (finished stages "
                        "with unchanged inputs are always reused)")
    args = p.parse_args(argv)
    rc = run_guarded(check_all, args)  # every model and the data, before the first training
    if rc:
        return rc
    summary = ["# Reproduction summary", ""]
    for model in args.models:
        out = Path(args.out) / model
        demo_args = ["--data", args.data, "--model", model, "--seeds", str(args.seeds), "--epochs", str(args.epochs),
                     "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
                     "--workers", str(args.workers), "--fpn-channels", "256", "--optimizer", args.optimizer,
                     "--augment", "full", "--backbone-weights", args.backbone_weights, "--device", args.device,
                     "--out", str(out)]
        if args.lr is not None:
            demo_args += ["--lr", str(args.lr)]
        if args.keep:
            demo_args.append("--keep")
        rc = run_guarded(demo.main, demo_args)
        if rc:
            return rc
        summary.append(f"- `{model}`: [{out / 'REPORT.md'}]({model}/REPORT.md)")
    write_text(Path(args.out, "SUMMARY.md"), "\n".join(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
