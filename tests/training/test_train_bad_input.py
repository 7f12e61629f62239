"""Bad training input stops with one line naming the file,
resume never repeats log records, never reports files that don't exist, never litters the folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from harmonic.cli import main, run_guarded
from harmonic.errors import HarmonicError
from harmonic.training.checkpoint import load_checkpoint
from harmonic.training.cli import train
from harmonic.training.logging_utils import read_jsonl

from .training_helpers import IMG, make_args


def _dataset(root: Path, n_boxes: int = 1, truncated: str | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        name = f"{i}.jpg"
        data = cv2.imencode(".jpg", rng.integers(0, 255, (IMG, IMG, 3), dtype=np.uint8))[1].tobytes()
        if name == truncated:
            data = data[: len(data) // 2]
        (root / "images" / name).write_bytes(data)
        images.append({"id": i + 1, "file_name": name, "width": IMG, "height": IMG})
        for _k in range(n_boxes):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 8, 30, 30],
                         "area": 900, "iscrowd": 0})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "a"}]}))
    (root / "data.yaml").write_text("names: [a]\ntrain: {images: images, annotations: ann.json}\n"
                                    "val: {images: images, annotations: ann.json}\n")
    return root / "data.yaml"


def _train_cli(*argv: str) -> int:
    return main(["train", "--device", "cpu", "--img-size", str(IMG), "--batch-size", "2", "--warmup-iters", "1",
                 "--epochs", "1", "--max-iters-per-epoch", "1", "--val-every", "0", "--fpn-channels", "32", *argv])


def test_train_split_without_objects_is_an_error(tmp_path, capsys):
    data = _dataset(tmp_path / "ds", n_boxes=0)
    assert _train_cli("--data", str(data), "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ann.json: the train split has no objects (4 images, 0 boxes)" in err
    assert not (tmp_path / "run").exists()


def test_truncated_image_is_an_error_naming_it_even_with_workers(tmp_path, capsys):
    data = _dataset(tmp_path / "ds", truncated="2.jpg")
    assert _train_cli("--data", str(data), "--out", str(tmp_path / "run"), "--workers", "2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2.jpg: truncated JPEG" in err and "--skip-bad-images" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_skip_bad_images_trains_without_them_and_logs_the_count(tmp_path, capsys):
    data = _dataset(tmp_path / "ds", truncated="2.jpg")
    assert _train_cli("--data", str(data), "--out", str(tmp_path / "run"), "--workers", "0",
                      "--skip-bad-images") == 0
    start = read_jsonl(tmp_path / "run" / "log.jsonl")[0]
    assert start["type"] == "start" and start["skipped_images"] == 1  # val is not read with --val-every 0
    assert not any(r.get("type") == "epoch" and r["train"]["iters"] != 1 for r in read_jsonl(tmp_path / "run" / "log.jsonl"))


def test_dataloader_worker_error_is_one_line(capsys):
    from torch._utils import ExceptionWrapper

    def worker_fails(argv):
        try:
            raise HarmonicError("/data/images/7.jpg: truncated JPEG (no end-of-image marker)")
        except HarmonicError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()

    assert run_guarded(worker_fails, []) == 2
    assert capsys.readouterr().err == "error: /data/images/7.jpg: truncated JPEG (no end-of-image marker)\n"


def test_pickled_module_checkpoint_message(tmp_path):
    import torch

    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(HarmonicError) as info:
        load_checkpoint(tmp_path / "model.pt")
    msg = str(info.value)
    assert "holds pickled Python objects" in msg and "\x1b[" not in msg and "\n" not in msg


def test_resume_of_a_finished_run_is_an_error_and_writes_nothing(synth_yaml, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train(make_args(synth_yaml, run, "--max-iters-per-epoch", "1", "--val-every", "0", epochs=1))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    rc = main(["train", "--data", str(synth_yaml), "--resume", str(run / "last.pt"), "--epochs", "1",
               "--img-size", str(IMG), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "already finished 1 of --epochs 1" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert list(work.iterdir()) == []  # no runs/<model>-<loss>/ created


def test_resume_log_holds_each_epoch_once_and_other_out_gets_best(synth_yaml, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    extra = ("--max-iters-per-epoch", "2", "--val-every", "0")
    train(make_args(synth_yaml, run, *extra, epochs=2), stop_after_epoch=0)
    log = run / "log.jsonl"
    with log.open("a") as f:  # a run killed in epoch 1 logged part of it
        f.write(json.dumps({"type": "train", "epoch": 1, "iter": 3, "loss": 1.0}) + "\n" + '{"type": "tr')
    train(make_args(synth_yaml, run, *extra, "--resume", str(run / "last.pt"), epochs=2))
    recs = read_jsonl(log)
    train_iters = [(r["epoch"], r["iter"]) for r in recs if r["type"] == "train"]
    assert train_iters == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert [r["epoch"] for r in recs if r["type"] == "epoch"] == [0, 1]

    # resuming into another folder: best.pt is there at the end even when validation never improves on
    # the source run's best; without --out it continues in the checkpoint's folder, not runs/
    other = tmp_path / "other"
    validated = ("--max-iters-per-epoch", "1", "--val-every", "1")
    train(make_args(synth_yaml, tmp_path / "src", *validated, epochs=2), stop_after_epoch=0)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", str(synth_yaml), "--resume", str(tmp_path / "src" / "last.pt"), "--epochs", "3",
            "--img-size", str(IMG), "--device", "cpu", "--workers", "0", "--batch-size", "2", *validated]
    assert main([*argv, "--out", str(other)]) == 0
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert (other / "best.pt").is_file() and str(other / "best.pt") in done
    assert main(argv) == 0
    assert not (tmp_path / "runs").exists()
    assert load_checkpoint(tmp_path / "src" / "last.pt")["epoch"] == 2
