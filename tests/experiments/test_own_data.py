"""A user's own dataset through the experiment runner.

The split a comparison reports on (test, or val with a warning), checks before training, stage
records that let a rerun reuse what is finished, and ``harmonic demo --data`` end to end on a
dataset whose val split is a Pascal VOC or a YOLO folder with a stray extra image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from harmonic.cli import main
from harmonic.data.readers import read_coco, write_voc, write_yolo
from harmonic.data.synth import generate
from harmonic.errors import HarmonicError
from harmonic.experiments import runner
from harmonic.experiments.runner import BASELINE, Recipe, StageRecord, evaluation_split


def _own_dataset(root: Path, val_format: str = "coco", test: bool = False, stray: bool = True) -> Path:
    """A small synthetic set rewritten as a user's: COCO train, val as COCO / VOC / YOLO, an optional
    COCO test split and a stray copy of a val image that no annotation lists."""
    src = generate(root / "src", num_train=8, num_val=6, seed=0, img_size=96, num_classes=2, workers=1,
                   num_test=4 if test else 0)
    names = yaml.safe_load(src.read_text())["names"]
    cfg = {"names": names, "train": {"images": "src/images/train", "annotations": "src/annotations/train.json"},
           "val": {"images": "src/images/val", "annotations": "src/annotations/val.json"}}
    val = read_coco(root / "src/annotations/val.json", names)
    if val_format == "voc":
        write_voc(val, names, root / "val_xml")
        cfg["val"]["annotations"] = "val_xml"
    elif val_format == "yolo":
        write_yolo(val, root / "labels" / "val")
        cfg["val"]["annotations"] = "labels/val"
    if test:
        cfg["test"] = {"images": "src/images/test", "annotations": "src/annotations/test.json"}
    if stray:  # the same photo in a second format, as real folders have
        cv2.imwrite(str(root / "src/images/val/000001.png"), cv2.imread(str(root / "src/images/val/000001.jpg")))
    path = root / "own.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_comparison_reports_on_test_and_counts_the_folder_s_other_files(tmp_path):
    data = evaluation_split(_own_dataset(tmp_path, "voc", test=True))
    assert data.split == "test" and len(data.records) == 4 and data.warnings == []
    assert data.images == (tmp_path / "src/images/test").resolve()
    data = evaluation_split(_own_dataset(tmp_path / "b", "voc", test=False))
    assert data.split == "val" and len(data.records) == 6 and data.others == 1
    assert len(data.warnings) == 1 and "no 'test' split; reporting on val" in data.warnings[0]


def test_an_empty_test_split_falls_back_to_val_with_a_warning(tmp_path):
    path = _own_dataset(tmp_path, test=True)
    gt = json.loads((tmp_path / "src/annotations/test.json").read_text())
    gt["annotations"] = []
    (tmp_path / "src/annotations/test.json").write_text(json.dumps(gt))
    data = evaluation_split(path)
    assert data.split == "val" and "has no annotated objects" in data.warnings[0]


def test_test_images_shared_with_train_or_val_are_an_error(tmp_path):
    path = _own_dataset(tmp_path, test=True)
    cfg = yaml.safe_load(path.read_text())
    cfg["test"] = {"images": "src/images/val", "annotations": "src/annotations/val.json"}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(HarmonicError, match="'test' split shares 6 image file\\(s\\) with 'val'"):
        evaluation_split(path)


def test_an_unreadable_evaluation_image_is_named_skipped_and_counted(tmp_path):
    path = _own_dataset(tmp_path, "yolo")
    (tmp_path / "src/images/val/000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = evaluation_split(path)
    # YOLO: the images are the records; the unreadable one and the .png copy of 000001 are left out
    assert data.split == "val" and [r.file_name for r in data.records] == [
        "000001.jpg", "000002.jpg", "000004.jpg", "000005.jpg", "000006.jpg"]
    # a VOC / COCO split keeps its annotated records; the bad one is left out of what is evaluated
    path = _own_dataset(tmp_path / "b", "voc")
    (tmp_path / "b/src/images/val/000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = evaluation_split(path)
    assert len(data.records) == 5 and any("000003.jpg" in w for w in data.warnings)
    for f in (tmp_path / "b/src/images/val").glob("*.jpg"):
        f.write_bytes(b"")
    with pytest.raises(HarmonicError, match="none of the 6 image"):
        evaluation_split(path)


def test_yolo_reader_skips_an_unreadable_image_and_a_second_format_copy(tmp_path, caplog):
    path = _own_dataset(tmp_path, "yolo")
    (tmp_path / "src/images/val/000004.jpg").write_bytes(b"garbage")
    from harmonic.data.readers import load_annotations

    ann = load_annotations(f"{path}:val")
    assert ann.format == "yolo" and [r.file_name for r in ann.records] == [
        "000001.jpg", "000002.jpg", "000003.jpg", "000005.jpg", "000006.jpg"]
    assert "000004.jpg" in caplog.text and "1 of 7 image(s) unreadable" in caplog.text
    assert "000001.png: skipped" in caplog.text


@pytest.mark.parametrize("case,expect", [
    ("val_not_annotations", "holds no .xml (VOC) or .txt (YOLO) files"),
    ("test_overlaps", "must be held out"),
    ("bad_model_option", "unknown option(s) ['no_such_option']"),
    ("missing_weights", "--backbone-weights"),
])
def test_bad_data_or_options_fail_in_seconds_before_training(tmp_path, capsys, case, expect):
    path = _own_dataset(tmp_path, test=True, stray=False)
    cfg = yaml.safe_load(path.read_text())
    args = ["demo", "--data", str(path), "--out", str(tmp_path / "out")]
    if case == "val_not_annotations":
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "readme.md").write_text("x")
        cfg["val"]["annotations"] = "notes"
    elif case == "test_overlaps":
        cfg["test"] = cfg["train"]
    elif case == "bad_model_option":
        args += ["--model-option", "no_such_option=1"]
    else:
        args += ["--backbone-weights", str(tmp_path / "nope.pth")]
    path.write_text(yaml.safe_dump(cfg))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not any((tmp_path / "out").glob("*_s0"))  # nothing trained


def test_disk_space_check(tmp_path, monkeypatch):
    import shutil as sh

    from harmonic.experiments.recipe import check_disk_space

    recipe = Recipe(model="m", epochs=1, img_size=64, batch_size=2, optimizer="adamw")
    monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(10 << 30, (10 << 30) - (1 << 29), 1 << 29))
    check_disk_space(tmp_path, 1_000_000, 2, recipe)  # 2 runs x 32 MB: fits in 512 MiB
    with pytest.raises(HarmonicError, match="GiB free, the 6 run\\(s\\) need about"):
        check_disk_space(tmp_path, 10_000_000, 6, recipe)


# ----------------------------------------------------------------- stage records and resume

def _fake_stages(monkeypatch, fail: set[str], calls: list[str]):
    """Stand-ins for the real commands: each writes its outputs (deterministic bytes) or fails."""

    def run_stage(cmd, name, log_file, train_log=None, hint=None):
        stage = name.split()[0]
        calls.append(stage)
        if stage in fail:
            raise HarmonicError(f"{log_file}: stage '{name}' failed with exit code 2" + (f"; {hint}" if hint else ""))
        cmd = [str(c) for c in cmd]
        if stage == "train":
            run = Path(cmd[cmd.index("--out") + 1])
            run.mkdir(parents=True, exist_ok=True)
            (run / "best.pt").write_bytes(b"weights of " + " ".join(cmd[cmd.index("--loss"):]).encode())
            (run / "log.jsonl").write_text("{}\n")
        elif stage == "export":
            out = Path(cmd[cmd.index("--out") + 1])
            out.write_bytes(Path(cmd[cmd.index("--checkpoint") + 1]).read_bytes())
            out.with_suffix(".raw.onnx").write_bytes(b"raw")
        elif stage == "infer":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "detections.json").write_text("[]")
        elif stage == "evaluate":
            Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps({"coco": {"AP": 0.5}}))
        return 0.1

    def write_candidates(raw, images, ann, out, **kw):
        calls.append("candidates")
        Path(out).write_text("[]")
        return 0

    monkeypatch.setattr(runner, "run_stage", run_stage)
    monkeypatch.setattr(runner, "write_candidates", write_candidates)


def _run(tmp_path, recipe, **kw):
    data = tmp_path / "data.yaml"
    if not data.exists():
        shutil.copy(_own_dataset(tmp_path / "d", test=True, stray=False), data)
        data.write_text(data.read_text().replace("src/", "d/src/"))
    gt, listing = tmp_path / "eval.json", tmp_path / "eval.txt"
    gt.write_text("{}")
    listing.write_text("000001.jpg\n")
    return runner.run_variant(BASELINE, 0, recipe, data, tmp_path / "d" / "src" / "images" / "test", gt, listing,
                              tmp_path / "run", bench=False,
                              save_vis=False, tag="t", **kw)


def test_a_failed_stage_after_training_keeps_the_checkpoint_and_a_rerun_goes_on(tmp_path, monkeypatch):
    recipe = Recipe(model="fcos_resnet10s_fpn", epochs=1, img_size=96, batch_size=2)
    calls: list[str] = []
    _fake_stages(monkeypatch, {"infer"}, calls)
    with pytest.raises(HarmonicError, match="rerun the same command to go on: finished stages are reused"):
        _run(tmp_path, recipe)
    assert calls == ["train", "export", "infer"] and (tmp_path / "run" / "best.pt").exists()
    calls.clear()
    _fake_stages(monkeypatch, set(), calls)
    reused: list[str] = []
    res = _run(tmp_path, recipe, reused=reused)
    assert calls == ["infer", "candidates", "evaluate"]  # no retraining, no re-export
    assert reused == ["train t", "export t"] and res.report == {"coco": {"AP": 0.5}}
    assert set(res.seconds) == {"infer", "eval"}
    calls.clear()
    _run(tmp_path, recipe)  # all finished: nothing runs
    assert calls == []
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert list(stages) == ["train", "export", "infer", "candidates", "eval"]


def test_a_changed_recipe_or_input_redoes_only_what_is_stale(tmp_path, monkeypatch):
    recipe = Recipe(model="fcos_resnet10s_fpn", epochs=1, img_size=96, batch_size=2)
    calls: list[str] = []
    _fake_stages(monkeypatch, set(), calls)
    _run(tmp_path, recipe)
    calls.clear()
    (tmp_path / "run" / "infer" / "detections.json").unlink()  # a lost output: that stage and what reads it
    _run(tmp_path, recipe)
    assert calls == ["infer"]  # same bytes again: the evaluation's inputs are unchanged
    calls.clear()
    recipe.epochs = 2  # a new recipe: everything again
    _run(tmp_path, recipe)
    assert calls == ["train", "export", "infer", "candidates", "evaluate"]
    calls.clear()
    ann = tmp_path / "d" / "src" / "annotations" / "train.json"  # the training data changed
    ann.write_text(ann.read_text() + " ")
    _run(tmp_path, recipe)
    assert calls[0] == "train"
    calls.clear()
    img = tmp_path / "d" / "src" / "images" / "test" / "000001.jpg"  # an evaluated (test) image changed
    img.write_bytes(img.read_bytes() + b"\0")
    _run(tmp_path, recipe)
    assert calls == ["infer", "candidates"]  # identical fake outputs: the evaluation is still valid


def test_stage_record_survives_a_corrupt_file(tmp_path):
    (tmp_path / "stages.json").write_text("{not json")
    rec = StageRecord(tmp_path)
    assert rec.stages == {} and not rec.done("train", "k", [])
    rec.mark("train", "k", 1.0)
    assert StageRecord(tmp_path).done("train", "k", []) and not StageRecord(tmp_path).done("train", "other", [])


# ----------------------------------------------------------------- end to end

TINY = ["--epochs", "1", "--max-iters-per-epoch", "1", "--img-size", "64", "--batch-size", "2",
        "--resamples", "20", "--device", "cpu", "--workers", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("val_format", ["voc", "yolo"])
def test_demo_on_a_users_dataset_with_a_voc_or_yolo_val_split(tmp_path, capsys, val_format):
    path = _own_dataset(tmp_path, val_format)
    out = tmp_path / "out"
    assert main(["demo", "--data", str(path), "--out", str(out), *TINY]) == 0
    captured = capsys.readouterr()
    assert "no 'test' split; reporting on val" in captured.err
    text = (out / "REPORT.md").read_text()
    assert "scored on the `val` split, 6 images" in text
    gt = json.loads((out / "eval" / "val.json").read_text())
    assert len(gt["images"]) == 6 and "000001.png" not in {im["file_name"] for im in gt["images"]}
    assert "000001.png" not in (out / "eval" / "val.images.txt").read_text()
    for run in ("baseline_s0", "harmonic_s0"):
        rep = json.loads((out / run / "report.json").read_text())
        assert rep["counts"]["images"] == 6 and np.isfinite(rep["coco"]["AP"])
        dets = json.loads((out / run / "infer" / "detections.json").read_text())
        # the stray file was not inferred: every detection is on an annotated image
        assert {d["image_id"] for d in dets} <= {im["id"] for im in gt["images"]}
    mtime = (out / "baseline_s0" / "best.pt").stat().st_mtime_ns
    assert main(["demo", "--data", str(path), "--out", str(out), *TINY]) == 0  # rerun: everything reused
    assert "reused 10 finished stage(s)" in capsys.readouterr().out
    assert (out / "baseline_s0" / "best.pt").stat().st_mtime_ns == mtime
