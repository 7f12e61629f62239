"""The training loop (one visible ``train_one_epoch``) and per-epoch validation.

Models follow docs/CONTRACTS.md: in train mode ``model(images, targets)`` returns a loss dict whose
``loss_*`` entries are summed into the objective and whose ``stat_*`` entries are detached
scalars logged as-is (harmonic factors ``1+beta_r``, ``1+beta_c``, AIC, number of positives).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harmonic.errors import HarmonicError
from harmonic.training.distributed import DistInfo, all_true
from harmonic.training.logging_utils import JsonlLogger, MeanWindow

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, list[dict[str, torch.Tensor]]]


def _to_device(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], device: torch.device):
    images = images.to(device, non_blocking=True)
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def _image_ids(targets: list[dict[str, Any]]) -> list[int]:
    return [int(t["image_id"]) for t in targets if "image_id" in t]


def _progress(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> tqdm:
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: Iterable[Batch],
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    log: JsonlLogger | None = None,
    *,
    amp: bool = False,
    clip_grad: float = 0.0,
    max_iters: int | None = None,
    log_every: int = 20,
    start_iter: int = 0,
    dist_info: DistInfo | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader`` (at most ``max_iters`` batches).

    ``loader`` yields ``(images[B,3,S,S], targets)`` with ``targets[i] = {boxes[N,4], labels[N],
    image_id}``. Every ``log_every`` iterations one JSONL record holds the window means of each
    ``loss_*`` / ``stat_*`` term, the total loss and the learning rate; ``start_iter`` is the global
    iteration at the start of the epoch. A non-finite loss raises ``HarmonicError`` naming the
    batch's image ids before any parameter update. Returns the epoch means of every term.
    """
    dist_info = dist_info or DistInfo(False, 0, 1, 0)
    model.train()
    use_amp = amp and device.type == "cuda"
    window, epoch_means = MeanWindow(), MeanWindow()
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_iters is not None:
        total = max_iters if total is None else min(total, max_iters)
    bar = _progress(loader, total, f"epoch {epoch}", dist_info.is_main)
    it = start_iter
    t0 = time.perf_counter()
    n_done = 0
    for i, (images, targets) in enumerate(bar):
        if max_iters is not None and i >= max_iters:
            break
        images, targets = _to_device(images, targets, device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss_dict = model(list(images), targets)
        losses = {k: v for k, v in loss_dict.items() if k.startswith("loss_")}
        if not losses:
            raise HarmonicError(f"model returned no loss_* terms in training mode (got {sorted(loss_dict)})")
        loss = sum(v.float() for v in losses.values())
        finite = bool(torch.isfinite(loss.detach()).item())
        if not all_true(finite, dist_info, device):
            if finite:
                raise HarmonicError(f"non-finite loss on another rank at epoch {epoch}, iteration {i}; "
                                    "stopped before the update")
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise HarmonicError(
                f"non-finite loss at epoch {epoch}, iteration {i} (global {it}): {terms}; "
                f"batch image ids {_image_ids(targets)}; stopped before the update, no checkpoint written")

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()

        values = {k: float(v.detach()) for k, v in loss_dict.items()
                  if k.startswith(("loss_", "stat_")) and torch.is_tensor(v)}
        values["loss"] = float(loss.detach())
        window.update(values)
        epoch_means.update(values)
        it += 1
        n_done += 1
        if dist_info.is_main:
            bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in values.items()
                             if k.startswith("loss")}, refresh=False)
        if log is not None and log_every > 0 and it % log_every == 0:
            _emit(log, window, epoch, it, optimizer)
    if log is not None and len(window):
        _emit(log, window, epoch, it, optimizer)
    bar.close()
    out = epoch_means.means()
    out["iters"] = n_done
    out["time_s"] = time.perf_counter() - t0
    return out


def _emit(log: JsonlLogger, window: MeanWindow, epoch: int, it: int, optimizer: torch.optim.Optimizer) -> None:
    record = {"type": "train", "epoch": epoch, "iter": it, "lr": optimizer.param_groups[0]["lr"]}
    record.update(window.means())
    log.write(record)
    window.reset()


@torch.inference_mode()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device, show_progress: bool = True
) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Run ``model`` in eval mode: ``[(image_id, boxes[K,4] letterboxed px, scores[K], labels[K] index+1)]``."""
    model.eval()
    out = []
    for images, targets in _progress(loader, None, "val", show_progress):
        images = images.to(device)
        dets = model(list(images))
        for t, d in zip(targets, dets):
            out.append((int(t["image_id"]), d["boxes"].float().cpu().numpy(),
                        d["scores"].float().cpu().numpy(), d["labels"].cpu().numpy()))
    return out


def detections_to_coco(
    predictions: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], records: list[Any], img_size: int
) -> list[dict[str, Any]]:
    """Letterboxed predictions -> COCO results in original pixels (``category_id`` = index+1, bbox xywh)."""
    from harmonic.data.letterbox import letterbox_params, unletterbox_boxes

    by_id = {int(r.image_id): r for r in records}
    results = []
    for image_id, boxes, scores, labels in predictions:
        rec = by_id.get(image_id)
        if rec is None:
            raise HarmonicError(f"validation produced image id {image_id} that is not in the val records")
        info, _ = letterbox_params(int(rec.width), int(rec.height), img_size)
        orig = unletterbox_boxes(boxes, info)
        for b, s, c in zip(orig, scores, labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            if w <= 0 or h <= 0:
                continue
            results.append({"image_id": image_id, "category_id": int(c),
                            "bbox": [float(b[0]), float(b[1]), w, h], "score": float(s)})
    return results


def evaluate_model(
    model: nn.Module, loader: Iterable[Batch], records: list[Any], names: list[str], device: torch.device,
    img_size: int, show_progress: bool = True,
) -> dict[str, Any]:
    """Validate: predictions on ``loader`` -> original pixels -> ``harmonic.evaluation.evaluate``.

    Returns the evaluation report (``report["coco"]["AP"]`` is the model-selection metric).
    """
    from harmonic.evaluation import evaluate

    preds = predict(model, loader, device, show_progress)
    detections = detections_to_coco(preds, records, img_size)
    return evaluate(records, detections, names=names)


def coco_ap(report: dict[str, Any] | None) -> float:
    """COCO AP of an evaluation report, ``-1`` when missing/non-finite."""
    try:
        ap = float(report["coco"]["AP"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return -1.0
    return ap if math.isfinite(ap) else -1.0
