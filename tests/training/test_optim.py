"""Optimizer groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harmonic.errors import HarmonicError
from harmonic.training.optim import WarmupCosine, build_optimizer, build_scheduler


def test_warmup_then_cosine_values():
    f = WarmupCosine(total_iters=110, warmup_iters=10, warmup_factor=0.001, min_ratio=0.01)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.01)
    assert f(500) == pytest.approx(0.01)  # clamps past the end


def test_scheduler_steps_per_iteration_and_state_roundtrip():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1 and len(opt.param_groups[1]["params"]) == 3
    sched = build_scheduler(opt, total_iters=20, warmup_iters=4)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[2] == pytest.approx(0.1 * (0.001 * 0.25 + 0.75))
    assert lrs[3] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 * 0.01)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[3:], lrs[4:]))
    # state dict survives a weights_only round trip and restores the position
    opt2 = build_optimizer(model, "sgd", lr=0.1)
    sched2 = build_scheduler(opt2, total_iters=20, warmup_iters=4)
    state = sched.state_dict()
    torch.save(state, buf := __import__("io").BytesIO())
    buf.seek(0)
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    assert sched2.last_epoch == 20 and math.isclose(sched2.get_last_lr()[0], lrs[-1])


def test_adamw_and_unknown():
    opt = build_optimizer(nn.Linear(2, 2), "adamw")
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-4
    with pytest.raises(HarmonicError, match="unknown optimizer 'lamb'"):
        build_optimizer(nn.Linear(2, 2), "lamb")


def test_parse_key_values_yaml_scalars():
    from harmonic.errors import HarmonicError
    from harmonic.training.config import parse_key_values

    assert parse_key_values(["anchor_size=16", "head-norm=gn", "detach_factors=true", "alpha=1.5"], "--x") == {
        "anchor_size": 16, "head_norm": "gn", "detach_factors": True, "alpha": 1.5}
    with pytest.raises(HarmonicError, match="--x expects KEY=VALUE"):
        parse_key_values(["oops"], "--x")
