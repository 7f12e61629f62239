"""Training on a full disk: checkpoints and the JSONL log keep the last complete state, leave no
temporary file, and fail in one line naming the file; a run that cannot hold its checkpoints is refused
before the first epoch."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from harmonic.cli import main
from harmonic.errors import RunFailure, WriteFailure
from harmonic.training.checkpoint import (
    check_checkpoint_space,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
)
from harmonic.training.logging_utils import JsonlLogger, read_jsonl
from tests.faults import full_disk, small_tmpfs, snapshot

from .test_train_bad_input import _dataset, _train_cli


def _state(epoch: int) -> dict:
    return {"spec": {"name": "x"}, "model": {"w": torch.arange(20_000.0)}, "epoch": epoch}


def test_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    """torch.save writing into a file whose disk fills part way (the real torch writer, not a stand-in)."""
    p = save_checkpoint(tmp_path / "last.pt", _state(1))
    before = snapshot(tmp_path)
    full_disk(monkeypatch, tmp_path, free=30_000)
    with pytest.raises(WriteFailure) as info:
        save_checkpoint(p, _state(2))
    msg = str(info.value)
    assert msg.startswith(f"{p}: checkpoint not written: no space left on device (filesystem of ")
    assert msg.endswith("; the previous last.pt, if any, is unchanged")
    assert "\n" not in msg and info.value.exit_code == 1
    assert snapshot(tmp_path) == before and load_checkpoint(p)["epoch"] == 1


def test_checkpoint_on_a_real_full_tmpfs(tmp_path):
    with small_tmpfs(tmp_path / "small", "256k") as small:
        p = save_checkpoint(small / "last.pt", {"spec": {}, "model": {"w": torch.zeros(10)}, "epoch": 1})
        before, free = snapshot(small), shutil.disk_usage(small).free
        with pytest.raises(WriteFailure) as info:
            save_checkpoint(p, _state(2) | {"model": {"w": torch.zeros(200_000)}})
        assert str(info.value).startswith(f"{p}: checkpoint not written: no space left on device "
                                          f"(filesystem of {small}: 0 bytes free); ")
        assert snapshot(small) == before and shutil.disk_usage(small).free == free


def test_checkpoint_size_estimate():
    model = torch.nn.Linear(100, 10)  # 1010 float32 parameters, no buffers
    assert checkpoint_bytes(model) == 4040
    assert checkpoint_bytes(model, torch.optim.AdamW(model.parameters())) == 3 * 4040  # exp_avg, exp_avg_sq
    assert checkpoint_bytes(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)) == 2 * 4040
    assert checkpoint_bytes(model, torch.optim.SGD(model.parameters(), lr=0.1)) == 4040


def test_refused_when_the_checkpoints_cannot_fit(tmp_path, monkeypatch):
    model = torch.nn.Linear(100, 10)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 20, 1 << 20, 5000))
    with pytest.raises(RunFailure, match=r"last\.pt: needs at least 7\.9 KiB, the filesystem of .* has 4\.9 KiB free"):
        check_checkpoint_space(tmp_path, model)  # last.pt and best.pt both new: 2 x 4040 bytes
    (tmp_path / "last.pt").write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"x")
    check_checkpoint_space(tmp_path, model)  # a run that replaces both needs room for one at a time


def test_train_refuses_before_the_first_epoch(tmp_path, capsys, monkeypatch):
    data = _dataset(tmp_path / "ds")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    import harmonic.training.loop as loop

    monkeypatch.setattr(loop, "train_one_epoch", lambda *a, **k: pytest.fail("trained on a disk too small"))
    assert _train_cli("--data", str(data), "--out", str(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'run' / 'last.pt'}: needs at least ")
    assert err.strip().endswith("has 1.0 MiB free")
    assert not (tmp_path / "run").exists()


def test_log_on_a_full_disk_keeps_its_complete_lines(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    logger = JsonlLogger(path)
    logger.write({"type": "start", "epoch": 0})
    before = path.read_bytes()
    full_disk(monkeypatch, tmp_path, free=10)
    with pytest.raises(WriteFailure) as info:
        logger.write({"type": "epoch", "epoch": 0, "pad": "x" * 100})
    assert str(info.value).startswith(f"{path}: no space left on device (filesystem of ")
    assert path.read_bytes() == before and read_jsonl(path) == [json.loads(before)]


def test_cli_line_for_a_full_disk_while_training(tmp_path, capsys, monkeypatch):
    """The epoch's checkpoint hits a full disk: exit 1, one line naming last.pt, no temporary file."""
    data = _dataset(tmp_path / "ds")
    run = tmp_path / "run"
    run.mkdir()
    full_disk(monkeypatch, run, free=50_000)  # the start record fits, the checkpoint does not
    assert main(["train", "--device", "cpu", "--img-size", "64", "--batch-size", "2", "--warmup-iters", "1",
                 "--epochs", "1", "--max-iters-per-epoch", "1", "--val-every", "0", "--fpn-channels", "32",
                 "--data", str(data), "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {run / 'last.pt'}: checkpoint not written: no space left")
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl"]
