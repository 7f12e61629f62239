"""``train(config)``: a training run in visible steps, in the style of torchvision's
``references/detection/train.py``: check the resume, build the data, the model and the optimiser,
restore a ``--resume`` checkpoint, then the loop (train an epoch, validate, checkpoint).

The same run is single-process or DDP under ``torchrun``; ``harmonic.training.cli`` is the command line.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonic.errors import HarmonicError
from harmonic.training.config import TrainConfig

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- the steps of train(), in order: resume check, data, model, optimiser, (resume), loop, checkpoint --


def _check_resume(cfg: TrainConfig) -> tuple[dict[str, Any] | None, int]:
    """``(the --resume checkpoint or None, img_size)``; a checkpoint of another model, loss or size, or of
    a finished run, is an error before anything is created or written."""
    from harmonic.models import MODELS
    from harmonic.training.checkpoint import load_checkpoint, spec_from_checkpoint

    resume_ckpt = load_checkpoint(cfg.resume) if cfg.resume is not None else None
    if cfg.model not in MODELS:
        raise HarmonicError(f"unknown model {cfg.model!r}; choose one of: {', '.join(MODELS)}")
    img_size = cfg.img_size or MODELS[cfg.model].default_img_size
    if resume_ckpt is not None:
        rspec = spec_from_checkpoint(resume_ckpt, cfg.resume)
        if rspec.name != cfg.model or rspec.loss != cfg.loss or rspec.img_size != img_size:
            raise HarmonicError(
                f"{cfg.resume}: checkpoint is {rspec.name}/{rspec.loss}/{rspec.img_size}px, "
                f"but the command asks for {cfg.model}/{cfg.loss}/{img_size}px")
        done = int(resume_ckpt.get("epoch", -1)) + 1
        if done >= cfg.epochs:
            raise HarmonicError(f"{cfg.resume}: the run already finished {done} of --epochs {cfg.epochs}; "
                                f"nothing to resume (pass --epochs > {done} to train on)")
    return resume_ckpt, img_size


@dataclass
class TrainData:
    """What :func:`_build_data` makes: class names, loaders (val only on the main process), the train
    sampler (DDP) and the generator that fixes the data order per epoch."""

    names: list[str]
    train_loader: Any
    sampler: Any
    generator: torch.Generator
    val_loader: Any
    val_records: list[Any] | None
    skipped: list[Any]
    category_ids: list[int] | None


def _build_data(cfg: TrainConfig, img_size: int, dist_info, seed: int) -> TrainData:
    """Datasets and loaders of the dataset yaml's ``train`` and (if any) ``val`` splits."""
    from torch.utils.data import DataLoader, DistributedSampler

    from harmonic.data.checks import check_split_images
    from harmonic.data.dataset import DetectionDataset, collate
    from harmonic.data.dataset_file import load_dataset_config
    from harmonic.data.readers import read_split, read_split_with_ids
    from harmonic.data.transforms import build_train_transforms

    data_cfg = load_dataset_config(cfg.data)
    if "train" not in data_cfg.splits:
        raise HarmonicError(f"{cfg.data}: no 'train' split")
    names = list(data_cfg.names)
    train_records, category_ids = read_split_with_ids(data_cfg.splits["train"], names)
    if not train_records:
        raise HarmonicError(f"{cfg.data}: the train split has no images")
    # checked here, in the main process: a DataLoader worker can only fail with its own traceback
    skip_bad = bool(cfg.skip_bad_images)
    train_records, skipped = check_split_images(train_records, data_cfg.splits["train"].images, "train", skip_bad)
    if not any(int((~r.ignore).sum()) for r in train_records):
        raise HarmonicError(f"{data_cfg.splits['train'].annotations}: the train split has no objects "
                            f"({len(train_records)} images, 0 boxes): nothing to learn")
    train_ds = DetectionDataset(train_records, data_cfg.splits["train"].images, img_size, train=True,
                                augment=cfg.augment != "none",
                                transforms=(build_train_transforms(img_size, scale=(1.0, 1.0), translate=0.0,
                                                                   color=False)
                                            if cfg.augment == "flip" else None))
    gen = torch.Generator()
    gen.manual_seed(seed)
    sampler = None
    if dist_info.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=seed, drop_last=True)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, generator=gen,
        num_workers=cfg.workers, collate_fn=collate, drop_last=len(train_ds) > cfg.batch_size,
        pin_memory=torch.cuda.is_available(), persistent_workers=False)
    val_loader, val_records = None, None
    if "val" in data_cfg.splits and dist_info.is_main and cfg.val_every > 0:
        val_records = read_split(data_cfg.splits["val"], names)
        val_records, val_skipped = check_split_images(val_records, data_cfg.splits["val"].images, "val", skip_bad)
        skipped += val_skipped
        if val_records:
            val_ds = DetectionDataset(val_records, data_cfg.splits["val"].images, img_size, train=False)
            val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False,
                                    num_workers=cfg.workers, collate_fn=collate)
    return TrainData(names, train_loader, sampler, gen, val_loader, val_records, skipped, category_ids)


def _build_model(cfg: TrainConfig, num_classes: int, names: list[str], img_size: int):
    """``(model, ModelSpec)`` for a fresh run."""
    from harmonic.models import MODELS, build_detector, model_spec

    if cfg.model not in MODELS:
        raise HarmonicError(f"unknown model {cfg.model!r}; choose one of: {', '.join(MODELS)}")
    options = cfg.model_options()
    loss_options = cfg.loss_options()
    point = cfg.operating_point()
    model = build_detector(cfg.model, num_classes, loss=cfg.loss, img_size=img_size,
                           backbone_weights=cfg.backbone_weights, loss_options=loss_options,
                           operating_point=point, **options)
    spec = model_spec(cfg.model, num_classes, names, img_size=img_size, loss=cfg.loss,
                      loss_options=loss_options, options=options, operating_point=point)
    return model, spec


@dataclass
class Optimization:
    """The optimiser, its per-iteration schedule, the AMP scaler and the schedule's length."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    iters_per_epoch: int


def _build_optimization(cfg: TrainConfig, model: torch.nn.Module, train_loader: Any, dist_info,
                        amp: bool) -> Optimization:
    from harmonic.training.optim import build_optimizer, build_scheduler

    iters_per_epoch = len(train_loader)
    if iters_per_epoch == 0:
        raise HarmonicError(f"{cfg.data}: the train split has fewer images than one batch per process "
                            f"(--batch-size {cfg.batch_size} x {dist_info.world_size} processes)")
    if cfg.max_iters_per_epoch is not None:
        iters_per_epoch = min(iters_per_epoch, cfg.max_iters_per_epoch)
    opt_name, lr = resolve_optimizer(cfg.optimizer, cfg.lr, cfg.backbone_weights)
    optimizer = build_optimizer(model, opt_name, lr, cfg.weight_decay, cfg.momentum)
    total_iters = cfg.epochs * iters_per_epoch
    warmup = warmup_iters(total_iters, cfg.warmup_iters, cfg.warmup_share)
    if dist_info.is_main:
        warn_short_schedule(total_iters, warmup, cfg.backbone_weights is not None)
    scheduler = build_scheduler(optimizer, total_iters, warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    return Optimization(optimizer, scheduler, scaler, iters_per_epoch)


@dataclass
class Progress:
    """Where the run stands: the first epoch to train, the best validation AP so far (-1: none), the
    per-epoch history stored in checkpoints."""

    start_epoch: int = 0
    best_ap: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _restore(cfg: TrainConfig, ckpt: dict[str, Any], model: torch.nn.Module, opt: Optimization,
             amp: bool) -> Progress:
    """Load a ``--resume`` checkpoint's model, optimiser, schedule, scaler and RNG state."""
    from harmonic.training.checkpoint import set_rng_state

    model.load_state_dict(ckpt["model"])
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    if amp and ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"]) + 1
    metrics = ckpt.get("metrics") or {}
    best_ap = float(metrics.get("best_ap", -1.0) if metrics.get("best_ap") is not None else -1.0)
    history = list(metrics.get("history", []))
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    log.info("resumed from %s at epoch %d", cfg.resume, start_epoch)
    return Progress(start_epoch, best_ap, history)


def _save_epoch(cfg: TrainConfig, out: Path, epoch: int, train_stats: dict[str, Any],
                report: dict[str, Any] | None, progress: Progress, model: torch.nn.Module, spec,
                opt: Optimization, amp: bool, logger) -> float | None:
    """After an epoch (main process): update the best AP and the history, write ``last.pt`` (and
    ``best.pt`` when the AP improved, or while nothing was validated) and the epoch record; returns the AP."""
    from harmonic.training.checkpoint import rng_state, save_checkpoint, versions
    from harmonic.training.logging_utils import to_plain
    from harmonic.training.loop import coco_ap

    ap = coco_ap(report) if report is not None else None
    improved = ap is not None and ap > progress.best_ap
    if improved:
        progress.best_ap = ap
    best_ap = progress.best_ap
    val_summary = _summary(report)
    if val_summary is not None:  # the post-processing these numbers were measured at
        val_summary["operating_point"] = spec.operating_point()
    progress.history.append({"epoch": epoch, "train": train_stats, "val": val_summary})
    metrics = {"epoch": epoch, "train": train_stats, "val": val_summary,
               "best_ap": best_ap if best_ap >= 0 else None, "history": progress.history}
    state = {
        "spec": spec.to_dict(), "model": model.state_dict(), "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict() if amp else None,
        "epoch": epoch, "rng": rng_state(), "metrics": to_plain(metrics), "args": to_plain(cfg.record()),
        "versions": versions(),
    }
    last_path = out / "last.pt"
    save_checkpoint(last_path, state)
    if improved or (report is None and best_ap < 0):  # never validated: best = last
        save_checkpoint(out / "best.pt", state)
    logger.write({"type": "epoch", "epoch": epoch, "train": train_stats, "val": val_summary,
                  "best_ap": best_ap if best_ap >= 0 else None, "checkpoint": str(last_path)})
    return ap


def train(config: TrainConfig | argparse.Namespace, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Run training as configured (a :class:`TrainConfig`, or the parsed flags of ``get_args_parser``).

    ``stop_after_epoch`` (Python API only) ends the run after that 0-based epoch as if it had been
    interrupted there (the schedule still spans ``--epochs``). Returns ``{"last", "best", "best_ap",
    "epochs_done", "history", "model", "is_main"}``.
    """
    from harmonic.models.building import check_loss
    from harmonic.training.distributed import cleanup, init_distributed

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_args(config)
    cfg.check()
    check_loss(cfg.loss, cfg.loss_options())  # bad options: fail before data
    device_name = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise HarmonicError("--device cuda requested but CUDA is not available")
    dist_info, device = init_distributed(device_name)
    try:
        return _train(cfg, dist_info, device, stop_after_epoch)
    finally:
        cleanup(dist_info)


def _use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    """``--amp`` where it applies (CUDA); cuDNN autotuning on CUDA."""
    amp = bool(cfg.amp)
    if amp and device.type != "cuda":
        log.warning("--amp needs CUDA; training in float32 on %s", device)
        amp = False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return amp


def _train(cfg: TrainConfig, dist_info, device: torch.device, stop_after_epoch: int | None) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from harmonic.training.distributed import barrier
    from harmonic.training.logging_utils import JsonlLogger
    from harmonic.training.loop import evaluate_model, train_one_epoch

    out = cfg.out_dir()
    amp = _use_amp(cfg, device)
    resume_ckpt, img_size = _check_resume(cfg)

    # data, model, optimiser (in this order: the seed fixes the data order and the initial weights)
    seed_everything(cfg.seed)
    data = _build_data(cfg, img_size, dist_info, cfg.seed)
    names = data.names
    model, spec = _build_model(cfg, len(names), names, img_size)
    spec.category_ids = data.category_ids
    if resume_ckpt is not None and list(resume_ckpt["spec"].get("class_names", names)) != names:
        raise HarmonicError(f"{cfg.resume}: checkpoint classes {resume_ckpt['spec'].get('class_names')} "
                            f"differ from {cfg.data} names {names}")
    model.to(device)
    opt = _build_optimization(cfg, model, data.train_loader, dist_info, amp)
    progress = _restore(cfg, resume_ckpt, model, opt, amp) if resume_ckpt is not None else Progress()
    train_model = model
    if dist_info.enabled:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=cfg.find_unused_parameters)

    if dist_info.is_main:  # before the first epoch (and before the run folder is made), not after it
        from harmonic.training.checkpoint import check_checkpoint_space

        check_checkpoint_space(out, model, opt.optimizer)
    logger = JsonlLogger(out / "log.jsonl", enabled=dist_info.is_main)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_ckpt is not None:
            _prepare_resume_dir(Path(cfg.resume), out, progress.start_epoch)
        logger.write({"type": "start", "time": time.time(), "resume_epoch": progress.start_epoch,
                      "world_size": dist_info.world_size, "args": cfg.record(), "spec": spec.to_dict(),
                      "iters_per_epoch": opt.iters_per_epoch, "total_iters": cfg.epochs * opt.iters_per_epoch,
                      "skipped_images": data.skipped})

    # the loop: train an epoch, validate (main process), checkpoint
    epoch = progress.start_epoch - 1
    for epoch in range(progress.start_epoch, cfg.epochs):
        data.generator.manual_seed(cfg.seed + epoch)  # data order (and worker seeds) fixed per epoch
        if data.sampler is not None:
            data.sampler.set_epoch(epoch)
        train_stats = train_one_epoch(
            train_model, opt.optimizer, opt.scheduler, data.train_loader, device, epoch, opt.scaler, logger,
            amp=amp, clip_grad=cfg.clip_grad, max_iters=cfg.max_iters_per_epoch,
            log_every=cfg.log_every, start_iter=epoch * opt.iters_per_epoch, dist_info=dist_info)
        if dist_info.is_main:
            last_epoch = epoch == cfg.epochs - 1
            validate = (data.val_loader is not None and cfg.val_every > 0
                        and ((epoch + 1) % cfg.val_every == 0 or last_epoch))
            report = (evaluate_model(model, data.val_loader, data.val_records, names, device, img_size)
                      if validate else None)
            ap = _save_epoch(cfg, out, epoch, train_stats, report, progress, model, spec, opt, amp, logger)
            log.info("epoch %d: loss %.4f%s", epoch, train_stats.get("loss", float("nan")),
                     f", val AP {ap:.4f}" if ap is not None else "")
        barrier(dist_info)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    best_ap = progress.best_ap
    return {"last": last_path, "best": best_path if best_path.is_file() else None,
            "best_ap": best_ap if best_ap >= 0 else None,
            "epochs_done": epoch + 1, "history": progress.history, "model": model, "is_main": dist_info.is_main}


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
