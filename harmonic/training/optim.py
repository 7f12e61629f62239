"""Optimizer and the per-iteration learning-rate schedule (linear warm-up, then cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

from harmonic.errors import HarmonicError

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: no weight decay on biases and norm parameters (1-D)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module, name: str = "sgd", lr: float | None = None, weight_decay: float | None = None,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, momentum) or AdamW; ``lr``/``weight_decay`` default per optimizer."""
    name = name.lower()
    if name not in DEFAULT_LR:
        raise HarmonicError(f"unknown optimizer {name!r}; choose one of {sorted(DEFAULT_LR)}")
    lr = DEFAULT_LR[name] if lr is None else lr
    wd = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
    groups = param_groups(model, wd)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


class WarmupCosine:
    """LR multiplier at iteration ``it``: linear ``warmup_factor -> 1`` over ``warmup_iters``,
    then cosine ``1 -> min_ratio`` until ``total_iters``.

    A callable object with only plain attributes, so ``LambdaLR.state_dict()`` stores it
    (and ``weights_only`` checkpoints can hold it).
    """

    def __init__(self, total_iters: int, warmup_iters: int, warmup_factor: float = 0.001,
                 min_ratio: float = 0.01) -> None:
        self.total_iters = max(1, int(total_iters))
        self.warmup_iters = max(0, min(int(warmup_iters), self.total_iters))
        self.warmup_factor = float(warmup_factor)
        self.min_ratio = float(min_ratio)

    def __call__(self, it: int) -> float:
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            return self.warmup_factor * (1 - alpha) + alpha
        span = max(1, self.total_iters - self.warmup_iters)
        t = min(1.0, (it - self.warmup_iters) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int, warmup_factor: float = 0.001,
    min_ratio: float = 0.01,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR`` (call ``step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total_iters, warmup_iters, warmup_factor, min_ratio))
