"""``harmonic train`` / ``python train/run.py``: parse the flags into a :class:`TrainConfig`, then
``train(config)`` (:mod:`harmonic.training.trainer`).

The same command runs single-process or under ``torchrun --nproc_per_node=N`` (DDP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harmonic.errors import HarmonicError
from harmonic.training.config import TrainConfig
from harmonic.training.trainer import train


def get_args_parser() -> argparse.ArgumentParser:
    """The flags of ``harmonic train``; their defaults are :class:`~harmonic.training.config.TrainConfig`'s."""
    D = TrainConfig()  # noqa: N806
    p = argparse.ArgumentParser(prog="harmonic train", description="Train a detector with the HarmonicDet "
                                "or the baseline loss (single process or under torchrun).")
    p.add_argument("--data", type=Path, help="dataset yaml (docs/data.md; `harmonic synth` writes one)")
    p.add_argument("--model", default=D.model, help="detector name (--list-models)")
    p.add_argument("--loss", default=D.loss, choices=["harmonic", "baseline"])
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--batch-size", type=int, default=D.batch_size, help="images per process")
    p.add_argument("--img-size", type=int, default=D.img_size, help="square input size (default: the model's)")
    p.add_argument("--out", type=Path, default=D.out, help="run directory (default runs/<model>-<loss>)")
    p.add_argument("--device", default=D.device, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; ignored on CPU)")
    p.add_argument("--resume", type=Path, default=D.resume, help="continue from a last.pt")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--workers", type=int, default=D.workers, help="data-loader workers per process")
    p.add_argument("--optimizer", default=D.optimizer, choices=["auto", "sgd", "adamw"],
                   help="auto: AdamW lr 1e-3 when training from scratch (converges in far fewer steps), "
                        "SGD lr 0.01 with --backbone-weights")
    p.add_argument("--lr", type=float, default=D.lr,
                   help="base learning rate (default: 0.01 sgd, 1e-4 adamw, per auto's choice for auto)")
    p.add_argument("--weight-decay", type=float, default=D.weight_decay)
    p.add_argument("--momentum", type=float, default=D.momentum)
    p.add_argument("--warmup-iters", type=int, default=D.warmup_iters,
                   help="linear warm-up iterations (default: --warmup-share of the run, at most 500)")
    p.add_argument("--warmup-share", type=float, default=D.warmup_share,
                   help="default warm-up as a share of all iterations (capped at 500 iterations)")
    p.add_argument("--clip-grad", type=float, default=D.clip_grad, help="max gradient norm (0 disables)")
    p.add_argument("--backbone-weights", default=D.backbone_weights, help="DEFAULT (torchvision ImageNet) or a state-dict path")
    p.add_argument("--fpn-channels", type=int, default=D.fpn_channels, help="FPN width (builder option)")
    p.add_argument("--model-option", action="append", default=list(D.model_option), metavar="KEY=VALUE",
                   help="extra builder option, repeatable (e.g. anchor_size=16, head_norm=gn)")
    p.add_argument("--loss-option", action="append", default=list(D.loss_option), metavar="KEY=VALUE",
                   help="HarmonicDet loss option, repeatable (harmonic_factors, alpha, gamma, margin, tc_mode, "
                        "tc_weight, detach_factors, detach_tc_iou)")
    p.add_argument("--conf", type=float, default=D.conf,
                   help="operating point: score threshold (default 0.001), recorded in the checkpoint; "
                        "validation, export and infer use it")
    p.add_argument("--iou", type=float, default=D.iou, help="operating point: NMS IoU threshold (default 0.6)")
    p.add_argument("--max-det", type=int, default=D.max_det, help="operating point: detections per image (default 100)")
    p.add_argument("--augment", default=D.augment, choices=["full", "flip", "none"],
                   help="training augmentation: full (colour, flip, scale/translate jitter), flip only, none")
    p.add_argument("--max-iters-per-epoch", type=int, default=D.max_iters_per_epoch, help="cap iterations per epoch (quick runs)")
    p.add_argument("--log-every", type=int, default=D.log_every, help="JSONL record every N iterations")
    p.add_argument("--val-every", type=int, default=D.val_every, help="validate every N epochs (0: never; last epoch always)")
    p.add_argument("--find-unused-parameters", action="store_true", help="DDP option, only if a model needs it")
    p.add_argument("--list-models", action="store_true", help="print the detector names and exit")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable or truncated images with a warning (default: stop naming the file)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.list_models:
        from harmonic.models import MODELS

        width = max(len(n) for n in MODELS)
        for name, info in MODELS.items():
            print(f"{name:<{width}}  {getattr(info, 'default_img_size', '')!s:>4}  {getattr(info, 'description', '')}")
        return 0
    if args.data is None:
        raise HarmonicError("--data is required (a dataset yaml; `harmonic synth --out DIR` writes one)")
    result = train(TrainConfig.from_args(args))
    if result.get("is_main", True):
        ap = result.get("best_ap")
        files = [f"{what} {result[what]}" for what in ("last", "best")
                 if result.get(what) is not None and Path(result[what]).is_file()]
        print(f"done: {result['epochs_done']} epochs, {', '.join(files) or 'no checkpoint written'}"
              + (f" (COCO AP {ap:.4f})" if ap is not None and ap >= 0 else ""))
    return 0
