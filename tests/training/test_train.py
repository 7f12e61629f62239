"""End-to-end training on tiny synthetic data: checkpoints, exact resume, resume after SIGKILL, NaN stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harmonic.errors import HarmonicError
from harmonic.training import trainer
from harmonic.training.checkpoint import load_checkpoint, model_from_checkpoint
from harmonic.training.cli import main, train
from harmonic.training.logging_utils import read_jsonl

from .training_helpers import IMG, make_args

REPO = Path(__file__).resolve().parents[2]
FAST = "retinanet_resnet18_fpn"


def test_list_models(capsys):
    from harmonic.models import MODELS

    assert main(["--list-models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(MODELS) == 11
    assert [ln.split()[0] for ln in lines] == list(MODELS)


def test_requires_data():
    with pytest.raises(HarmonicError, match="--data is required"):
        main(["--model", FAST])


def test_train_validates_and_writes_checkpoints(synth_yaml, tmp_path):
    out = tmp_path / "run"
    res = train(make_args(synth_yaml, out, "--max-iters-per-epoch", "2", epochs=1))
    assert res["epochs_done"] == 1
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last["epoch"] == 0 and best["epoch"] == 0
    assert last["spec"]["name"] == FAST and last["spec"]["class_names"] == last["spec"]["class_names"][:2]
    assert set(last) >= {"optimizer", "scheduler", "scaler", "rng", "metrics", "args", "versions"}
    val = last["metrics"]["val"]
    assert 0.0 <= val["coco"]["AP"] <= 1.0
    recs = read_jsonl(out / "log.jsonl")
    train_recs = [r for r in recs if r["type"] == "train"]
    assert [r["iter"] for r in train_recs] == [1, 2]
    # the harmonic loss logs its factors (Fig. 4 curves): 1+beta >= 1
    assert all(r["stat_factor_r"] >= 1.0 and r["stat_factor_c"] >= 1.0 for r in train_recs)
    assert any(k.startswith("loss_") for k in train_recs[0])
    epoch_rec = [r for r in recs if r["type"] == "epoch"][0]
    assert epoch_rec["val"]["coco"]["AP"] == pytest.approx(val["coco"]["AP"])
    model, spec, _ = model_from_checkpoint(out / "best.pt")
    assert not model.training and spec.img_size == IMG


def test_resume_is_exact(synth_yaml, tmp_path):
    extra = ("--max-iters-per-epoch", "3", "--seed", "7")
    straight = tmp_path / "straight"
    train(make_args(synth_yaml, straight, *extra, epochs=2))
    split = tmp_path / "split"
    r1 = train(make_args(synth_yaml, split, *extra, epochs=2), stop_after_epoch=0)
    assert r1["epochs_done"] == 1 and load_checkpoint(split / "last.pt")["epoch"] == 0
    r2 = train(make_args(synth_yaml, split, *extra, "--resume", str(split / "last.pt"), epochs=2))
    assert r2["epochs_done"] == 2
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert a["metrics"]["val"]["coco"]["AP"] == b["metrics"]["val"]["coco"]["AP"]


def test_resume_after_sigkill(synth_yaml, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train" / "run.py"), "--data", str(synth_yaml), "--model", FAST,
           "--epochs", "2", "--batch-size", "1", "--img-size", str(IMG), "--out", str(out), "--device", "cpu",
           "--workers", "0", "--log-every", "1", "--val-every", "0", "--warmup-iters", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and any(r.get("type") == "train" and r.get("epoch") == 1 for r in read_jsonl(log)):
                proc.send_signal(signal.SIGKILL)
                killed_at = max(r["iter"] for r in read_jsonl(log) if r.get("type") == "train")
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert killed_at < 16  # epoch 2 (8 iterations each) was in progress
    ckpt = load_checkpoint(out / "last.pt")  # never a partial file
    assert ckpt["epoch"] == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    res = train(make_args(synth_yaml, out, "--resume", str(out / "last.pt"), "--val-every", "0",
                          epochs=2, batch_size=1))
    assert res["epochs_done"] == 2
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1  # no validation: best = last
    epochs = [r["epoch"] for r in read_jsonl(log) if r["type"] == "epoch"]
    assert epochs == [0, 1]


def test_nan_loss_keeps_previous_checkpoint(synth_yaml, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    train(make_args(synth_yaml, out, "--max-iters-per-epoch", "2", "--val-every", "0", epochs=2),
          stop_after_epoch=0)
    before = (out / "last.pt").read_bytes()
    build = trainer._build_model

    def poisoned(*a, **kw):
        model, spec = build(*a, **kw)
        forward = model.forward

        def fwd(images, targets=None):
            out_ = forward(images, targets)
            if model.training:
                out_ = {k: v * float("nan") if k.startswith("loss_") else v for k, v in out_.items()}
            return out_

        model.forward = fwd
        return model, spec

    monkeypatch.setattr(trainer, "_build_model", poisoned)
    with pytest.raises(HarmonicError, match=r"non-finite loss at epoch 1, iteration 0 .*image ids \[\d+, \d+\]"):
        train(make_args(synth_yaml, out, "--max-iters-per-epoch", "2", "--val-every", "0",
                        "--resume", str(out / "last.pt"), epochs=2))
    assert (out / "last.pt").read_bytes() == before


def test_resume_rejects_other_model(synth_yaml, tmp_path):
    out = tmp_path / "r"
    train(make_args(synth_yaml, out, "--max-iters-per-epoch", "1", "--val-every", "0", epochs=1))
    with pytest.raises(HarmonicError, match=r"last\.pt: checkpoint is retinanet_resnet18_fpn/harmonic"):
        train(make_args(synth_yaml, out, "--resume", str(out / "last.pt"), loss="baseline", epochs=2))


ALL_MODELS = [
    ("retinanet_resnet18_fpn", IMG, False),
    ("fcos_resnet18_fpn", IMG, False),
    ("fasterrcnn_resnet18_fpn", IMG, False),
    ("ssdlite320_mobilenet_v3_large", 128, False),
    ("retinanet_resnet50_fpn", IMG, True),
    ("fcos_resnet50_fpn", IMG, True),
    ("fasterrcnn_resnet50_fpn", IMG, True),
    ("ssd300_vgg16", 300, True),
]


@pytest.mark.parametrize("loss", ["harmonic", "baseline"])
@pytest.mark.parametrize(
    "name,size", [pytest.param(n, s, marks=[pytest.mark.slow] if slow else []) for n, s, slow in ALL_MODELS])
def test_every_model_trains_and_checkpoints(synth_yaml, tmp_path, name, size, loss):
    out = tmp_path / f"{name}-{loss}"
    res = train(make_args(synth_yaml, out, "--max-iters-per-epoch", "1", "--val-every", "0",
                          model=name, loss=loss, img_size=size, batch_size=2))
    assert res["epochs_done"] == 1
    model, spec, ckpt = model_from_checkpoint(out / "last.pt")
    assert (spec.name, spec.loss, spec.img_size, spec.num_classes) == (name, loss, size, 2)
    assert not model.training and ckpt["epoch"] == 0
    recs = [r for r in read_jsonl(out / "log.jsonl") if r["type"] == "train"]
    assert len(recs) == 1 and torch.isfinite(torch.tensor(recs[0]["loss"]))
    with torch.no_grad():
        dets = model([torch.rand(3, size, size)])
    assert dets[0]["boxes"].shape[-1] == 4
    json.dumps(ckpt["args"])  # plain types
