"""Checkpoint files: atomic writes, validation of foreign/newer/corrupt files, RNG round trip."""

from __future__ import annotations

import errno
import os
import random

import numpy as np
import pytest
import torch

from harmonic.errors import HarmonicError, RunFailure
from harmonic.models.spec import CHECKPOINT_FORMAT, FORMAT_VERSION
from harmonic.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _state(**kw):
    s = {"spec": {"name": "x"}, "model": {"w": torch.arange(4.0)}, "epoch": 3, "rng": rng_state(),
         "metrics": {"best_ap": 0.5, "history": [{"epoch": 0, "ap": 0.25}]}}
    s.update(kw)
    return s


def test_save_load_roundtrip_weights_only(tmp_path):
    p = save_checkpoint(tmp_path / "a" / "last.pt", _state())
    ckpt = load_checkpoint(p)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["format_version"] == FORMAT_VERSION
    assert torch.equal(ckpt["model"]["w"], torch.arange(4.0))
    assert ckpt["epoch"] == 3 and ckpt["metrics"]["history"][0]["ap"] == 0.25
    # plain torch.load with weights_only=True reads it too, and no temp file is left behind
    assert torch.load(p, weights_only=True)["epoch"] == 3
    assert sorted(os.listdir(p.parent)) == ["last.pt"]


def test_save_is_atomic_on_failure(tmp_path):
    p = save_checkpoint(tmp_path / "last.pt", _state(epoch=1))
    before = p.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint(p, _state(epoch=2, extra=Boom()))
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(p)["epoch"] == 1


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 71951872 vs 71951760"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EIO, "Input/output error"),
])
def test_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, error):
    p = save_checkpoint(tmp_path / "last.pt", _state(epoch=1))
    before = p.read_bytes()

    def short_write(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise error

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(RunFailure) as info:  # a failed run (exit 1), not bad input
        save_checkpoint(p, _state(epoch=2))
    msg = str(info.value)
    assert msg.startswith(f"{p}: checkpoint not written: ")
    assert msg.endswith("; the previous last.pt, if any, is unchanged")
    # a full disk or an unexplained short write names the filesystem and its free space
    assert (" (filesystem of " in msg and " free)" in msg) == (getattr(error, "errno", None) != errno.EIO)
    if isinstance(error, OSError):
        assert error.strerror.lower() in msg
    else:
        assert "the write stopped short" in msg
    assert "\n" not in msg
    assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_rejects_foreign_newer_and_corrupt(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(HarmonicError, match=r"foreign\.pt: not a HarmonicDet checkpoint"):
        load_checkpoint(foreign)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(HarmonicError, match="not a HarmonicDet checkpoint"):
        load_checkpoint(tensor_only)
    newer = save_checkpoint(tmp_path / "newer.pt", _state(format_version=FORMAT_VERSION + 1))
    with pytest.raises(HarmonicError, match=rf"newer\.pt: .*format_version {FORMAT_VERSION + 1}"):
        load_checkpoint(newer)
    good = save_checkpoint(tmp_path / "good.pt", _state())
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(HarmonicError, match=r"trunc\.pt: corrupt or truncated"):
        load_checkpoint(trunc)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(HarmonicError, match=r"garbage\.pt: corrupt or truncated"):
        load_checkpoint(garbage)
    with pytest.raises(HarmonicError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    p = save_checkpoint(tmp_path / "r.pt", _state(rng=rng_state()))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(p)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
