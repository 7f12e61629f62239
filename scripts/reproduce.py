"""Reproduce the paper's comparison on a real dataset (PASCAL VOC, COCO, or yours), on a GPU machine.

For each model: the demo's experiment (``harmonic.experiments``: the same runner as ``harmonic demo``
and ``harmonic ablate``) on your dataset, with the paper-scale recipe below: train baseline and
HarmonicDet for each seed, export to ONNX with NMS, run the torch-free inference with accuracy,
consistency and benchmark, compute NMS regret from the raw graph, and write one REPORT.md per model
(deltas with paired-bootstrap intervals) plus ``runs/reproduce/SUMMARY.md``.

Example (VOC07+12 trainval -> VOC07 test, the paper's Table 1 protocol):

    python scripts/reproduce.py --data data/voc.yaml --models fasterrcnn_resnet50_fpn retinanet_resnet50_fpn \
        --seeds 3 --epochs 24 --img-size 512 --batch-size 16 --backbone-weights DEFAULT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.cli import run_guarded  # noqa: E402
from harmonic.experiments import demo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset.yaml (train and val splits)")
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
    p.add_argument("--keep", action="store_true", help="reuse finished trainings")
    args = p.parse_args(argv)
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
    Path(args.out, "SUMMARY.md").write_text("\n".join(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
