"""train_one_epoch with a tiny stand-in detector: logging windows, clipping, NaN handling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harmonic.errors import HarmonicError
from harmonic.training.logging_utils import JsonlLogger, read_jsonl
from harmonic.training.loop import train_one_epoch
from harmonic.training.optim import build_optimizer, build_scheduler


class ToyDetector(nn.Module):
    """Returns a CONTRACTS-style loss dict; ``nan_at`` makes that call's loss NaN."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, images, targets):
        x = torch.stack([im.mean() for im in images])
        a = ((self.w[0] * x - 0.5) ** 2).mean()
        b = (self.w[1] ** 2) * 0.1
        if self.calls == self.nan_at:
            a = a * float("nan")
        self.calls += 1
        return {"loss_cls": a, "loss_box": b, "stat_factor_r": torch.tensor(1.5), "stat_num_pos": torch.tensor(4.0)}


def _loader(n_batches=5, bs=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n_batches):
        images = torch.rand(bs, 3, 8, 8, generator=g)
        targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                    "image_id": torch.tensor(100 + i * bs + j)} for j in range(bs)]
        out.append((images, targets))
    return out


def test_logs_window_means_and_decreases_loss(tmp_path):
    model = ToyDetector()
    opt = build_optimizer(model, "sgd", lr=0.5, weight_decay=0.0)
    sched = build_scheduler(opt, total_iters=5, warmup_iters=1)
    logger = JsonlLogger(tmp_path / "log.jsonl")
    stats = train_one_epoch(model, opt, sched, _loader(), torch.device("cpu"), 0, None, logger, log_every=2)
    recs = read_jsonl(tmp_path / "log.jsonl")
    assert [r["iter"] for r in recs] == [2, 4, 5]  # two full windows + the remainder
    assert all(r["stat_factor_r"] == pytest.approx(1.5) and r["stat_num_pos"] == 4.0 for r in recs)
    assert all({"loss", "loss_cls", "loss_box", "lr", "epoch"} <= set(r) for r in recs)
    assert recs[0]["loss"] == pytest.approx(recs[0]["loss_cls"] + recs[0]["loss_box"])
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert stats["iters"] == 5 and stats["stat_factor_r"] == pytest.approx(1.5)


def test_max_iters_and_clip(tmp_path):
    model = ToyDetector()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    w0 = model.w.detach().clone()
    stats = train_one_epoch(model, opt, None, _loader(), torch.device("cpu"), 0, max_iters=1, clip_grad=1e-3)
    assert stats["iters"] == 1
    # one SGD step with lr 1 moves the weights by exactly the clipped gradient norm
    assert torch.linalg.vector_norm(model.w.detach() - w0).item() == pytest.approx(1e-3, rel=1e-4)


def test_nan_loss_stops_before_update_and_names_images():
    model = ToyDetector(nan_at=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = _loader()
    with pytest.raises(HarmonicError, match=r"non-finite loss at epoch 3, iteration 2 .*image ids \[104, 105\]"):
        train_one_epoch(model, opt, None, loader, torch.device("cpu"), 3)
    # exactly two updates happened: re-run the first two batches on a fresh model and compare
    ref = ToyDetector()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    train_one_epoch(ref, ref_opt, None, loader, torch.device("cpu"), 0, max_iters=2)
    assert torch.equal(model.w.detach(), ref.w.detach())
