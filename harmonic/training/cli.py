"""``harmonic train`` / ``python train/run.py``: parse the flags, then ``train(args)``.

The same command runs single-process or under ``torchrun --nproc_per_node=N`` (DDP).
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic train", description="Train a detector with the HarmonicDet "
                                "or the baseline loss (single process or under torchrun).")
    p.add_argument("--data", type=Path, help="dataset yaml (see DESIGN.md; `harmonic synth` writes one)")
    p.add_argument("--model", default="retinanet_resnet18_fpn", help="detector name (--list-models)")
    p.add_argument("--loss", default="harmonic", choices=["harmonic", "baseline"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8, help="images per process")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<model>-<loss>)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; ignored on CPU)")
    p.add_argument("--resume", type=Path, default=None, help="continue from a last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="data-loader workers per process")
    p.add_argument("--optimizer", default="auto", choices=["auto", "sgd", "adamw"],
                   help="auto: AdamW lr 1e-3 when training from scratch (converges in far fewer steps), "
                        "SGD lr 0.01 with --backbone-weights")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate (default: 0.01 sgd, 1e-4 adamw, per auto's choice for auto)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--warmup-iters", type=int, default=None,
                   help="linear warm-up iterations (default: --warmup-share of the run, at most 500)")
    p.add_argument("--warmup-share", type=float, default=0.1,
                   help="default warm-up as a share of all iterations (capped at 500 iterations)")
    p.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0 disables)")
    p.add_argument("--backbone-weights", default=None, help="DEFAULT (torchvision ImageNet) or a state-dict path")
    p.add_argument("--fpn-channels", type=int, default=None, help="FPN width (builder option)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra builder option, repeatable (e.g. anchor_size=16, head_norm=gn)")
    p.add_argument("--loss-option", action="append", default=[], metavar="KEY=VALUE",
                   help="HarmonicDet loss option, repeatable (harmonic_factors, alpha, gamma, margin, tc_mode, "
                        "tc_weight, detach_factors, detach_tc_iou)")
    p.add_argument("--conf", type=float, default=None,
                   help="operating point: score threshold (default 0.001), recorded in the checkpoint; "
                        "validation, export and infer use it")
    p.add_argument("--iou", type=float, default=None, help="operating point: NMS IoU threshold (default 0.6)")
    p.add_argument("--max-det", type=int, default=None, help="operating point: detections per image (default 100)")
    p.add_argument("--augment", default="full", choices=["full", "flip", "none"],
                   help="training augmentation: full (colour, flip, scale/translate jitter), flip only, none")
    p.add_argument("--max-iters-per-epoch", type=int, default=None, help="cap iterations per epoch (quick runs)")
    p.add_argument("--log-every", type=int, default=20, help="JSONL record every N iterations")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (0: never; last epoch always)")
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
    result = train(args)
    if result.get("is_main", True):
        ap = result.get("best_ap")
        files = [f"{what} {result[what]}" for what in ("last", "best")
                 if result.get(what) is not None and Path(result[what]).is_file()]
        print(f"done: {result['epochs_done']} epochs, {', '.join(files) or 'no checkpoint written'}"
              + (f" (COCO AP {ap:.4f})" if ap is not None and ap >= 0 else ""))
    return 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_args(args: argparse.Namespace) -> None:
    from harmonic.validate import check_float, check_in_file, check_int, check_out_dir

    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise HarmonicError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.img_size is not None and args.img_size < 32:
        raise HarmonicError("--img-size must be >= 32")
    if args.max_iters_per_epoch is not None and args.max_iters_per_epoch < 1:
        raise HarmonicError("--max-iters-per-epoch must be >= 1")
    check_int(args.workers, "--workers", 0)
    check_int(args.warmup_iters, "--warmup-iters", 0)
    check_int(args.log_every, "--log-every", 0)
    check_int(args.val_every, "--val-every", 0)
    check_float(args.lr, "--lr", 0, None, lo_open=True)
    check_float(args.weight_decay, "--weight-decay", 0)
    check_float(args.momentum, "--momentum", 0, 1)
    check_float(args.clip_grad, "--clip-grad", 0)
    check_in_file(args.data, "--data")
    check_in_file(args.resume, "--resume")
    check_out_dir(args.out)
    check_float(getattr(args, "warmup_share", None), "--warmup-share", 0, 1, hi_open=True)
    _operating_point(args)


def _operating_point(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--conf/--iou/--max-det`` given (validated); the spec's defaults fill the rest."""
    from harmonic.models.registry import check_operating_point
    from harmonic.models.spec import DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_DET, DEFAULT_SCORE_THRESHOLD

    conf = DEFAULT_SCORE_THRESHOLD if getattr(args, "conf", None) is None else args.conf
    iou = DEFAULT_IOU_THRESHOLD if getattr(args, "iou", None) is None else args.iou
    max_det = DEFAULT_MAX_DET if getattr(args, "max_det", None) is None else args.max_det
    try:
        conf, iou, max_det = check_operating_point(conf, iou, max_det)
    except HarmonicError as exc:
        raise HarmonicError(f"--conf/--iou/--max-det: {exc}") from None
    return {"score_threshold": conf, "iou_threshold": iou, "max_det": max_det}


def _build_data(args: argparse.Namespace, img_size: int, dist_info, seed: int):
    """Datasets and loaders: ``(names, train_loader, train_sampler, generator, val_loader, val_records,
    images skipped, the dataset's category id of each class)``."""
    from torch.utils.data import DataLoader, DistributedSampler

    from harmonic.data.checks import check_split_images
    from harmonic.data.dataset import DetectionDataset, collate
    from harmonic.data.dataset_file import load_dataset_config
    from harmonic.data.readers import read_split, read_split_with_ids
    from harmonic.data.transforms import build_train_transforms

    cfg = load_dataset_config(args.data)
    if "train" not in cfg.splits:
        raise HarmonicError(f"{args.data}: no 'train' split")
    names = list(cfg.names)
    train_records, category_ids = read_split_with_ids(cfg.splits["train"], names)
    if not train_records:
        raise HarmonicError(f"{args.data}: the train split has no images")
    # checked here, in the main process: a DataLoader worker can only fail with its own traceback
    skip_bad = bool(getattr(args, "skip_bad_images", False))
    train_records, skipped = check_split_images(train_records, cfg.splits["train"].images, "train", skip_bad)
    if not any(int((~r.ignore).sum()) for r in train_records):
        raise HarmonicError(f"{cfg.splits['train'].annotations}: the train split has no objects "
                            f"({len(train_records)} images, 0 boxes): nothing to learn")
    train_ds = DetectionDataset(train_records, cfg.splits["train"].images, img_size, train=True,
                                augment=args.augment != "none",
                                transforms=(build_train_transforms(img_size, scale=(1.0, 1.0), translate=0.0,
                                                                   color=False)
                                            if args.augment == "flip" else None))
    gen = torch.Generator()
    gen.manual_seed(seed)
    sampler = None
    if dist_info.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=seed, drop_last=True)
    train_loader = DataLoader(
        train_ds, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler, generator=gen,
        num_workers=args.workers, collate_fn=collate, drop_last=len(train_ds) > args.batch_size,
        pin_memory=torch.cuda.is_available(), persistent_workers=False)
    val_loader, val_records = None, None
    if "val" in cfg.splits and dist_info.is_main and args.val_every > 0:
        val_records = read_split(cfg.splits["val"], names)
        val_records, val_skipped = check_split_images(val_records, cfg.splits["val"].images, "val", skip_bad)
        skipped += val_skipped
        if val_records:
            val_ds = DetectionDataset(val_records, cfg.splits["val"].images, img_size, train=False)
            val_loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=False,
                                    num_workers=args.workers, collate_fn=collate)
    return names, train_loader, sampler, gen, val_loader, val_records, skipped, category_ids


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=true", "c=gn"]`` -> ``{"a": 1, "b": True, "c": "gn"}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarmonicError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def _build_model(args: argparse.Namespace, num_classes: int, names: list[str], img_size: int):
    """``(model, ModelSpec)`` for a fresh run."""
    from harmonic.models import MODELS, build_detector, model_spec

    if args.model not in MODELS:
        raise HarmonicError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    options = parse_key_values(args.model_option, "--model-option")
    if args.fpn_channels is not None:
        options["fpn_channels"] = args.fpn_channels
    loss_options = parse_key_values(args.loss_option, "--loss-option")
    point = _operating_point(args)
    model = build_detector(args.model, num_classes, loss=args.loss, img_size=img_size,
                           backbone_weights=args.backbone_weights, loss_options=loss_options,
                           operating_point=point, **options)
    spec = model_spec(args.model, num_classes, names, img_size=img_size, loss=args.loss,
                      loss_options=loss_options, options=options, operating_point=point)
    return model, spec


def train(args: argparse.Namespace, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Run training as configured by ``args`` (the flags of ``get_args_parser``).

    ``stop_after_epoch`` (Python API only) ends the run after that 0-based epoch as if it had been
    interrupted there (the schedule still spans ``--epochs``). Returns ``{"last", "best", "best_ap",
    "epochs_done", "history", "model", "is_main"}``.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from harmonic.models import MODELS
    from harmonic.training.checkpoint import (
        load_checkpoint,
        rng_state,
        save_checkpoint,
        set_rng_state,
        versions,
    )
    from harmonic.training.distributed import barrier, cleanup, init_distributed
    from harmonic.training.logging_utils import JsonlLogger, to_plain
    from harmonic.training.loop import coco_ap, evaluate_model, train_one_epoch
    from harmonic.training.optim import build_optimizer, build_scheduler

    _check_args(args)
    from harmonic.models.common import check_loss

    check_loss(args.loss, parse_key_values(args.loss_option, "--loss-option"))  # bad options: fail before data
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise HarmonicError("--device cuda requested but CUDA is not available")
    dist_info, device = init_distributed(device_name)
    try:
        # a resumed run continues in its own folder unless --out says otherwise
        default_out = Path(args.resume).parent if args.resume is not None else Path("runs") / f"{args.model}-{args.loss}"
        out = Path(args.out or default_out)
        amp = bool(args.amp)
        if amp and device.type != "cuda":
            log.warning("--amp needs CUDA; training in float32 on %s", device)
            amp = False
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        resume_ckpt = load_checkpoint(args.resume) if args.resume is not None else None
        if args.model not in MODELS:
            raise HarmonicError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
        img_size = args.img_size or MODELS[args.model].default_img_size
        if resume_ckpt is not None:
            from harmonic.training.checkpoint import spec_from_checkpoint

            rspec = spec_from_checkpoint(resume_ckpt, args.resume)
            if rspec.name != args.model or rspec.loss != args.loss or rspec.img_size != img_size:
                raise HarmonicError(
                    f"{args.resume}: checkpoint is {rspec.name}/{rspec.loss}/{rspec.img_size}px, "
                    f"but the command asks for {args.model}/{args.loss}/{img_size}px")
            done = int(resume_ckpt.get("epoch", -1)) + 1
            if done >= args.epochs:  # before anything is created or written
                raise HarmonicError(f"{args.resume}: the run already finished {done} of --epochs {args.epochs}; "
                                    f"nothing to resume (pass --epochs > {done} to train on)")

        seed_everything(args.seed)
        names, train_loader, sampler, gen, val_loader, val_records, skipped, category_ids = _build_data(
            args, img_size, dist_info, args.seed)
        model, spec = _build_model(args, len(names), names, img_size)
        spec.category_ids = category_ids
        if resume_ckpt is not None and list(resume_ckpt["spec"].get("class_names", names)) != names:
            raise HarmonicError(f"{args.resume}: checkpoint classes {resume_ckpt['spec'].get('class_names')} "
                                f"differ from {args.data} names {names}")
        model.to(device)

        iters_per_epoch = len(train_loader)
        if iters_per_epoch == 0:
            raise HarmonicError(f"{args.data}: the train split has fewer images than one batch per process "
                                f"(--batch-size {args.batch_size} x {dist_info.world_size} processes)")
        if args.max_iters_per_epoch is not None:
            iters_per_epoch = min(iters_per_epoch, args.max_iters_per_epoch)
        opt_name, lr = resolve_optimizer(args.optimizer, args.lr, args.backbone_weights)
        optimizer = build_optimizer(model, opt_name, lr, args.weight_decay, args.momentum)
        total_iters = args.epochs * iters_per_epoch
        warmup = warmup_iters(total_iters, args.warmup_iters, args.warmup_share)
        if dist_info.is_main:
            warn_short_schedule(total_iters, warmup, args.backbone_weights is not None)
        scheduler = build_scheduler(optimizer, total_iters, warmup)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)

        start_epoch, best_ap, history = 0, -1.0, []
        if resume_ckpt is not None:
            model.load_state_dict(resume_ckpt["model"])
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
            if amp and resume_ckpt.get("scaler"):
                scaler.load_state_dict(resume_ckpt["scaler"])
            start_epoch = int(resume_ckpt["epoch"]) + 1
            metrics = resume_ckpt.get("metrics") or {}
            best_ap = float(metrics.get("best_ap", -1.0) if metrics.get("best_ap") is not None else -1.0)
            history = list(metrics.get("history", []))
            if "rng" in resume_ckpt:
                set_rng_state(resume_ckpt["rng"])
            log.info("resumed from %s at epoch %d", args.resume, start_epoch)

        train_model = model
        if dist_info.enabled:
            train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                              find_unused_parameters=args.find_unused_parameters)

        logger = JsonlLogger(out / "log.jsonl", enabled=dist_info.is_main)
        last_path, best_path = out / "last.pt", out / "best.pt"
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if resume_ckpt is not None:
                _prepare_resume_dir(Path(args.resume), out, start_epoch)
            logger.write({"type": "start", "time": time.time(), "resume_epoch": start_epoch,
                          "world_size": dist_info.world_size, "args": vars(args), "spec": spec.to_dict(),
                          "iters_per_epoch": iters_per_epoch, "total_iters": args.epochs * iters_per_epoch,
                          "skipped_images": skipped})
        epoch = start_epoch - 1
        for epoch in range(start_epoch, args.epochs):
            gen.manual_seed(args.seed + epoch)  # data order (and worker seeds) fixed per epoch
            if sampler is not None:
                sampler.set_epoch(epoch)
            train_stats = train_one_epoch(
                train_model, optimizer, scheduler, train_loader, device, epoch, scaler, logger,
                amp=amp, clip_grad=args.clip_grad, max_iters=args.max_iters_per_epoch,
                log_every=args.log_every, start_iter=epoch * iters_per_epoch, dist_info=dist_info)

            report = None
            last_epoch = epoch == args.epochs - 1
            validate = (val_loader is not None and args.val_every > 0
                        and ((epoch + 1) % args.val_every == 0 or last_epoch))
            if dist_info.is_main:
                if validate:
                    report = evaluate_model(model, val_loader, val_records, names, device, img_size)
                ap = coco_ap(report) if report is not None else None
                improved = ap is not None and ap > best_ap
                if improved:
                    best_ap = ap
                val_summary = _summary(report)
                if val_summary is not None:  # the post-processing these numbers were measured at
                    val_summary["operating_point"] = spec.operating_point()
                history.append({"epoch": epoch, "train": train_stats, "val": val_summary})
                metrics = {"epoch": epoch, "train": train_stats, "val": val_summary,
                           "best_ap": best_ap if best_ap >= 0 else None, "history": history}
                state = {
                    "spec": spec.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if amp else None,
                    "epoch": epoch, "rng": rng_state(), "metrics": to_plain(metrics), "args": to_plain(vars(args)),
                    "versions": versions(),
                }
                save_checkpoint(last_path, state)
                if improved or (report is None and best_ap < 0):  # never validated: best = last
                    save_checkpoint(best_path, state)
                logger.write({"type": "epoch", "epoch": epoch, "train": train_stats, "val": val_summary,
                              "best_ap": best_ap if best_ap >= 0 else None, "checkpoint": str(last_path)})
                log.info("epoch %d: loss %.4f%s", epoch, train_stats.get("loss", float("nan")),
                         f", val AP {ap:.4f}" if ap is not None else "")
            barrier(dist_info)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
        return {"last": last_path, "best": best_path if best_path.is_file() else None,
                "best_ap": best_ap if best_ap >= 0 else None,
                "epochs_done": epoch + 1, "history": history, "model": model, "is_main": dist_info.is_main}
    finally:
        cleanup(dist_info)


# Below this many optimizer steps a detector rarely converges (measured on the demo's synthetic shapes:
# FCOS-ResNet10s from scratch reaches AP 30 after ~900 steps of batch 8, AP 40 after ~1500).
MIN_STEPS = {"scratch": 1500, "pretrained": 500}
MAX_WARMUP = 500


def resolve_optimizer(name: str, lr: float | None, backbone_weights: str | None) -> tuple[str, float | None]:
    """``--optimizer auto`` -> AdamW lr 1e-3 from scratch, SGD (its default lr) with pretrained weights."""
    if name != "auto":
        return name, lr
    if backbone_weights is None:
        return "adamw", 1e-3 if lr is None else lr
    return "sgd", lr


def warmup_iters(total_iters: int, requested: int | None, share: float) -> int:
    """Warm-up length: ``requested``, else ``share`` of the run capped at :data:`MAX_WARMUP`; never
    more than a third of the run (a warning says when ``requested`` is cut)."""
    if not 0 <= share < 1:
        raise HarmonicError(f"--warmup-share must be in [0, 1), got {share}")
    if requested is not None and requested < 0:
        raise HarmonicError(f"--warmup-iters must be >= 0, got {requested}")
    limit = max(1, total_iters // 3)
    if requested is None:
        return min(MAX_WARMUP, limit, max(1, round(share * total_iters)))
    if requested > limit:
        log.warning("--warmup-iters %d is more than a third of the run's %d iterations: warming up for %d",
                    requested, total_iters, limit)
        return limit
    return requested


def warn_short_schedule(total_iters: int, warmup: int, pretrained: bool) -> None:
    """Log a warning when the run has fewer optimizer steps than a detector needs to converge."""
    need = MIN_STEPS["pretrained" if pretrained else "scratch"]
    if total_iters < need:
        log.warning("this run has only %d optimizer steps (%d of them warm-up); a detector trained %s usually "
                    "needs at least %d: raise --epochs or lower --batch-size, or expect a low AP",
                    total_iters, warmup, "from pretrained weights" if pretrained else "from scratch", need)


def _prepare_resume_dir(resume: Path, out: Path, start_epoch: int) -> None:
    """Before a resumed run writes into ``out``: drop log records of epochs it will redo (a killed epoch
    logged part of itself) and, in a new folder, start from the source run's ``best.pt``."""
    import shutil

    from harmonic.atomic import atomic_path
    from harmonic.training.logging_utils import truncate_log

    truncate_log(out / "log.jsonl", start_epoch)
    src_best, best = resume.parent / "best.pt", out / "best.pt"
    if not best.exists() and src_best.is_file():
        with atomic_path(best) as tmp:
            shutil.copyfile(src_best, tmp)


def _summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of an evaluation report stored in checkpoints and logs (plain types)."""
    if report is None:
        return None
    from harmonic.training.logging_utils import to_plain

    keep = {k: report[k] for k in ("coco", "voc", "consistency") if k in report}
    return to_plain(keep)
