"""Every command with bad input: the expected exit code, one ``error:`` line, no traceback, and every
file that existed before (earlier outputs, inputs) byte-identical afterwards, with nothing new written.

Cases run in-process through ``harmonic.cli.main`` (the same path as ``harmonic <cmd>`` and
``python <stage>/run.py``); a few run the real entry points as subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from harmonic.cli import main

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ctx:
    """What a case may use: its own folder ``tmp`` and the session's tiny dataset, run and model."""

    tmp: Path
    data: Path
    run: Path
    onnx: Path

    @property
    def val_images(self) -> Path:
        return self.data.parent / "images" / "val"

    @property
    def val_json(self) -> Path:
        return self.data.parent / "annotations" / "val.json"

    def prev(self) -> Path:
        """An output folder holding complete files of an earlier run."""
        p = self.tmp / "prev"
        p.mkdir(exist_ok=True)
        (p / "detections.json").write_text('[{"image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 0.5}]\n')
        (p / "report.json").write_text('{"format": "harmonicdet-eval", "earlier": true}\n')
        return p

    def file(self, name: str, data: bytes | str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def coco_set(self, images: dict[str, bytes], anns: list[dict], categories=None, image_entries=None,
                 names=("circle", "triangle")) -> Path:
        """A one-split (train = val) COCO dataset yaml in ``tmp/ds`` with the given encoded images."""
        root = self.tmp / "ds"
        (root / "images").mkdir(parents=True, exist_ok=True)
        entries = []
        for i, (name, data) in enumerate(images.items(), start=1):
            (root / "images" / name).write_bytes(data)
            entries.append({"id": i, "file_name": name, "width": 64, "height": 48})
        cats = categories or [{"id": i + 1, "name": n} for i, n in enumerate(names)]
        (root / "ann.json").write_text(json.dumps({"images": image_entries or entries, "annotations": anns,
                                                   "categories": cats}))
        (root / "data.yaml").write_text(f"names: {list(names)}\n"
                                        "train: {images: images, annotations: ann.json}\n"
                                        "val: {images: images, annotations: ann.json}\n")
        return root / "data.yaml"


def jpeg(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def ann(i: int, image_id: int = 1, cat: int = 1) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}


def foreign_onnx(path: Path) -> Path:
    """A valid ONNX model that is not a detector (no metadata, one output ``y``)."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["y"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def pickled_module(path: Path) -> Path:
    import torch

    torch.save(torch.nn.Linear(2, 2), path)
    return path


def truncated_jpeg(seed: int = 1) -> bytes:
    data = jpeg(seed=seed)
    return data[: len(data) // 2]


# name -> (command, argv builder, expected exit code, expected text in the error line)
Case = tuple[str, Callable[[Ctx], list[str]], int, str]
CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- synth
    "synth-negative-count": ("synth", lambda c: ["--out", str(c.tmp / "s"), "--num-train", "-1"], 2, ">= 0"),
    "synth-out-is-file": ("synth", lambda c: ["--out", str(c.file("f", "x"))], 2, "is not a folder"),
    "synth-workers-0": ("synth", lambda c: ["--out", str(c.tmp / "s"), "--workers", "0"], 2, "--workers"),
    "synth-too-many-classes": ("synth", lambda c: ["--out", str(c.tmp / "s"), "--classes", "99"], 2, "classes"),
    # ---------------------------------------------------------------- train
    "train-no-data": ("train", lambda c: [], 2, "--data is required"),
    "train-epochs-0": ("train", lambda c: ["--data", str(c.data), "--epochs", "0"], 2, "--epochs"),
    "train-workers-neg": ("train", lambda c: ["--data", str(c.data), "--workers", "-1"], 2, "--workers"),
    "train-lr-neg": ("train", lambda c: ["--data", str(c.data), "--lr", "-1"], 2, "--lr"),
    "train-momentum-2": ("train", lambda c: ["--data", str(c.data), "--momentum", "2"], 2, "--momentum"),
    "train-missing-data": ("train", lambda c: ["--data", str(c.tmp / "nope.yaml")], 2, "not found"),
    "train-garbage-yaml": ("train", lambda c: ["--data", str(c.file("d.yaml", "names: [a\n: :"))], 2,
                           "not valid YAML"),
    "train-out-is-file": ("train", lambda c: ["--data", str(c.data), "--out", str(c.file("o", "x"))], 2,
                          "is not a folder"),
    "train-unknown-model": ("train", lambda c: ["--data", str(c.data), "--model", "yolo99", "--device", "cpu",
                                                "--out", str(c.tmp / "r")], 2, "unknown model"),
    "train-resume-finished": ("train", lambda c: ["--data", str(c.data), "--resume", str(c.run / "last.pt"),
                                                  "--epochs", "1", "--img-size", "64", "--device", "cpu"], 2,
                              "already finished 1 of --epochs 1"),
    "train-resume-pickled-module": ("train", lambda c: ["--data", str(c.data), "--img-size", "64", "--device", "cpu",
                                                        "--resume", str(pickled_module(c.tmp / "m.pt"))], 2,
                                    "holds pickled Python objects"),
    "train-resume-zero-byte": ("train", lambda c: ["--data", str(c.data), "--device", "cpu",
                                                   "--resume", str(c.file("z.pt", b""))], 2, "z.pt"),
    "train-zero-objects": ("train", lambda c: ["--data", str(c.coco_set({"a.jpg": jpeg()}, [])), "--device", "cpu",
                                               "--out", str(c.tmp / "r")], 2, "no objects"),
    "train-truncated-jpeg": ("train", lambda c: ["--data", str(c.coco_set({"a.jpg": jpeg(), "b.jpg": truncated_jpeg()},
                                                                          [ann(1), ann(2, 2)])),
                                                 "--device", "cpu", "--workers", "2", "--out", str(c.tmp / "r")], 2,
                             "b.jpg: truncated JPEG"),
    "train-zero-byte-image": ("train", lambda c: ["--data", str(c.coco_set({"a.jpg": jpeg(), "z.jpg": b""},
                                                                           [ann(1)])),
                                                  "--device", "cpu", "--out", str(c.tmp / "r")], 2, "z.jpg: empty file"),
    "train-size-mismatch": ("train", lambda c: ["--data", str(c.coco_set({"a.jpg": jpeg(h=50)}, [ann(1)])),
                                                "--device", "cpu", "--out", str(c.tmp / "r")], 2,
                            "a.jpg: image is 64x50 but its annotations say 64x48"),
    "train-duplicate-image-ids": ("train", lambda c: [
        "--data", str(c.coco_set({"a.jpg": jpeg(), "b.jpg": jpeg(seed=2)}, [ann(1)], image_entries=[
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 1, "file_name": "b.jpg", "width": 64, "height": 48}])),
        "--device", "cpu", "--out", str(c.tmp / "r")], 2, "duplicate image id 1"),
    "train-unknown-category": ("train", lambda c: ["--data", str(c.coco_set({"a.jpg": jpeg()}, [ann(1, cat=9)])),
                                                   "--device", "cpu", "--out", str(c.tmp / "r")], 2,
                               "unknown category id 9"),
    "train-yolo-class-out-of-range": ("train", lambda c: ["--data", str(_yolo_set(c, "5 0.5 0.5 0.2 0.2\n")),
                                                          "--device", "cpu", "--out", str(c.tmp / "r")], 2,
                                      "unknown class id 5"),
    "train-bad-model-option": ("train", lambda c: ["--data", str(c.data), "--model-option", "novalue", "--device",
                                                   "cpu", "--img-size", "64", "--out", str(c.tmp / "r")], 2,
                               "KEY=VALUE"),
    # ---------------------------------------------------------------- export
    "export-opset-5": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out", str(c.tmp / "m.onnx"),
                                            "--opset", "5"], 2, "--opset: must be in 11.."),
    "export-opset-99": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out", str(c.tmp / "m.onnx"),
                                             "--opset", "99"], 2, "--opset: must be in 11.."),
    "export-conf-2": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out", str(c.tmp / "m.onnx"),
                                           "--conf", "2"], 2, "--conf"),
    "export-img-size-not-stride": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out",
                                                        str(c.tmp / "m.onnx"), "--img-size", "70"], 2, "stride"),
    "export-pickled-module": ("export", lambda c: ["--checkpoint", str(pickled_module(c.tmp / "m.pt")), "--out",
                                                   str(c.tmp / "m.onnx")], 2, "holds pickled Python objects"),
    "export-truncated-checkpoint": ("export", lambda c: [
        "--checkpoint", str(c.file("t.pt", (c.run / "best.pt").read_bytes()[:4096])), "--out", str(c.tmp / "m.onnx")],
        2, "corrupt or truncated checkpoint"),
    "export-garbage-checkpoint": ("export", lambda c: ["--checkpoint", str(c.file("g.pt", b"not a checkpoint" * 20)),
                                                       "--out", str(c.tmp / "m.onnx")], 2,
                                  "corrupt or truncated checkpoint"),
    "export-zero-byte-checkpoint": ("export", lambda c: ["--checkpoint", str(c.file("z.pt", b"")), "--out",
                                                         str(c.tmp / "m.onnx")], 2, "z.pt"),
    "export-out-exists": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out",
                                               str(c.file("m.onnx", b"earlier"))], 2, "already exists"),
    "export-overwrite-bad-opset": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out",
                                                        str(c.file("m.onnx", b"earlier")), "--overwrite",
                                                        "--opset", "99"], 2, "--opset"),
    "export-out-is-folder": ("export", lambda c: ["--checkpoint", str(c.run / "best.pt"), "--out", str(c.tmp)], 2,
                             "is a folder"),
    "export-checkpoint-is-folder": ("export", lambda c: ["--checkpoint", str(c.tmp), "--out", str(c.tmp / "m.onnx")],
                                    2, "is a folder"),
    # ---------------------------------------------------------------- infer
    "infer-batch-0": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.val_images), "--out",
                                          str(c.prev()), "--batch", "0"], 2, "--batch: must be >= 1"),
    "infer-conf-2": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.val_images), "--out",
                                         str(c.prev()), "--conf", "2"], 2, "--conf: must be in [0, 1]"),
    "infer-workers-neg": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.val_images), "--out",
                                              str(c.prev()), "--workers", "-1"], 2, "--workers"),
    "infer-warmup-neg": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.val_images), "--out",
                                             str(c.prev()), "--warmup", "-1", "--bench"], 2, "--warmup"),
    "infer-out-is-file": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.val_images), "--out",
                                              str(c.file("o.txt", "x"))], 2, "is not a folder"),
    "infer-foreign-onnx": ("infer", lambda c: ["--engine", str(foreign_onnx(c.tmp / "f.onnx")), "--images",
                                               str(c.val_images), "--out", str(c.prev())], 2,
                           "not a HarmonicDet detector"),
    "infer-truncated-onnx": ("infer", lambda c: ["--engine", str(c.file("t.onnx", c.onnx.read_bytes()[:5000])),
                                                 "--images", str(c.val_images), "--out", str(c.prev())], 2,
                             "cannot load the model"),
    "infer-unknown-suffix": ("infer", lambda c: ["--engine", str(c.file("m.pt", "x")), "--images", str(c.val_images),
                                                 "--out", str(c.prev())], 2, "unknown model file type"),
    "infer-empty-dir": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(_mkdir(c.tmp / "e")),
                                            "--out", str(c.prev())], 2, "no images"),
    "infer-only-unreadable": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.file("i/z.jpg", b"")),
                                                  str(c.file("i/t.jpg", truncated_jpeg())), "--out", str(c.prev())], 1,
                              "none of the 2 image(s) could be read"),
    "infer-annotations-missing": ("infer", lambda c: ["--engine", str(c.onnx), "--images", str(c.val_images),
                                                      "--annotations", str(c.tmp / "gt.json"), "--out",
                                                      str(c.prev())], 2, "not found"),
    "infer-annotations-other-images": ("infer", lambda c: [
        "--engine", str(c.onnx), "--images", str(c.file("x/other.jpg", jpeg())), "--annotations", str(c.val_json),
        "--out", str(c.prev())], 2, "none of the 1 image(s) is in it"),
    "infer-annotations-duplicate-ids": ("infer", lambda c: [
        "--engine", str(c.onnx), "--images", str(c.val_images), "--out", str(c.prev()), "--annotations",
        str(c.file("gt.json", json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4},
                                                     {"id": 1, "file_name": "b.jpg", "width": 4, "height": 4}],
                                          "annotations": [], "categories": [{"id": 7, "name": "circle"}]})))],
        2, "duplicate image id 1"),
    "infer-batch-above-fixed": ("infer", lambda c: ["--engine", str(_fixed_graph(c)), "--images", str(c.val_images),
                                                    "--out", str(c.prev()), "--batch", "3"], 2,
                                "outside the engine's batch range 1..2"),
    # ---------------------------------------------------------------- eval
    "eval-missing-annotations": ("eval", lambda c: ["--annotations", str(c.tmp / "gt.json"), "--detections",
                                                    str(c.prev() / "detections.json")], 2, "not found"),
    "eval-malformed-detections": ("eval", lambda c: ["--annotations", str(c.val_json), "--detections",
                                                     str(c.file("d.json", "[{")), "--out",
                                                     str(c.prev() / "report.json")], 2, "not valid JSON"),
    "eval-unknown-category": ("eval", lambda c: ["--annotations", str(c.val_json), "--detections", str(c.file(
        "d.json", json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))),
        "--out", str(c.prev() / "report.json")], 2, "category_id not in the ground truth"),
    "eval-duplicate-image-ids": ("eval", lambda c: ["--annotations", str(c.file("gt.json", json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
        "annotations": [ann(1)], "categories": [{"id": 1, "name": "a"}]}))),
        "--detections", str(c.prev() / "detections.json")], 2, "duplicate image id 1"),
    "eval-score-min-2": ("eval", lambda c: ["--annotations", str(c.val_json), "--detections",
                                            str(c.prev() / "detections.json"), "--score-min", "2"], 2, "--score-min"),
    "eval-out-is-folder": ("eval", lambda c: ["--annotations", str(c.val_json), "--detections",
                                              str(c.prev() / "detections.json"), "--out", str(c.prev())], 2,
                           "is a folder"),
    "eval-names-missing-class": ("eval", lambda c: ["--annotations", str(c.val_json), "--detections",
                                                    str(c.prev() / "detections.json"), "--names", "circle"], 2,
                                 "not in names"),
    "eval-yaml-no-split": ("eval", lambda c: ["--annotations", f"{c.data}:test", "--detections",
                                              str(c.prev() / "detections.json")], 2, "no split 'test'"),
    # ---------------------------------------------------------------- compare
    "compare-missing-report": ("compare", lambda c: [str(c.tmp / "r.json")], 2, "report not found"),
    "compare-labels-mismatch": ("compare", lambda c: [str(c.prev() / "report.json"), "--labels", "a", "b"], 2,
                                "--labels gives 2 labels for 1 reports"),
    "compare-not-json": ("compare", lambda c: [str(c.file("r.json", "nope"))], 2, "not valid JSON"),
    # ---------------------------------------------------------------- demo (its flags reach argparse only)
    "demo-epochs-not-a-number": ("demo", lambda c: ["--epochs", "x", "--out", str(c.tmp / "d")], 2,
                                 "invalid int value"),
}


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _fixed_graph(c: Ctx) -> Path:
    from tests.runtime.runtime_graphs import make_graph

    return make_graph(c.tmp / "fixed.onnx", batch=2)


def _yolo_set(c: Ctx, label: str) -> Path:
    root = c.tmp / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "images" / "a.jpg").write_bytes(jpeg())
    (root / "labels" / "a.txt").write_text(label)
    (root / "data.yaml").write_text("names: [circle, triangle]\ntrain: {images: images, annotations: labels}\n"
                                    "val: {images: images, annotations: labels}\n")
    return root / "data.yaml"


def _snapshot(*roots: Path) -> dict[str, object]:
    """Content hash of every file (size and mtime for large ones such as checkpoints: fast)."""
    out: dict[str, object] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = ((st.st_size, st.st_mtime_ns) if st.st_size > 1 << 20
                               else hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tiny_data, tiny_run, tiny_onnx, tmp_path, capsys, monkeypatch):
    cmd, build, rc_expected, text = CASES[name]
    monkeypatch.chdir(tmp_path)  # a command must not litter the working folder (e.g. runs/)
    case = tmp_path / "case"
    case.mkdir()
    ctx = Ctx(case, tiny_data, tiny_run, tiny_onnx)
    argv = build(ctx)
    shared = (tiny_data.parent, tiny_run, tiny_onnx.parent)
    before = _snapshot(tmp_path, *shared)
    capsys.readouterr()
    rc = _run([cmd, *argv])
    err = capsys.readouterr().err
    assert rc == rc_expected, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith("usage:"):  # argparse: usage, then "<prog>: error: ..."
        lines = lines[-1:]
    assert len(lines) == 1 and "error: " in lines[0], err
    assert text in lines[0], lines[0]
    assert "\x1b[" not in lines[0]
    assert _snapshot(tmp_path, *shared) == before  # earlier outputs and inputs byte-identical, nothing new


@pytest.mark.parametrize("stage,argv,rc,text", [
    ("infer", ["--batch", "0"], 2, "--batch: must be >= 1"),
    ("export", ["--opset", "99"], 2, "--opset: must be in 11.."),
    ("train", ["--epochs", "0"], 2, "--epochs must be >= 1"),
])
def test_real_entry_points(stage, argv, rc, text, tiny_data, tiny_run, tiny_onnx, tmp_path):
    """``python <stage>/run.py`` as a user types it: same exit code and one line."""
    base = {"infer": ["--engine", str(tiny_onnx), "--images", str(tiny_data.parent / "images" / "val"),
                      "--out", str(tmp_path / "o")],
            "export": ["--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "m.onnx")],
            "train": ["--data", str(tiny_data)]}[stage]
    proc = subprocess.run([sys.executable, str(REPO / stage / "run.py"), *base, *argv], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == rc, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and text in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_the_fixture_model_round_trips_category_ids(tiny_data, tiny_run, tiny_onnx, tmp_path, capsys):
    """Item 3: the dataset's ids {circle: 7, triangle: 3} go train -> checkpoint -> ONNX -> detections.json,
    and ``harmonic eval`` of that file against the user's own annotations equals infer's report."""
    from harmonic.export.metadata import read_metadata
    from harmonic.training.checkpoint import load_checkpoint

    assert load_checkpoint(tiny_run / "best.pt")["spec"]["category_ids"] == [7, 3]
    assert json.loads(read_metadata(tiny_onnx)["category_ids"]) == [7, 3]
    out = tmp_path / "out"
    val_json = tiny_data.parent / "annotations" / "val.json"
    assert main(["infer", "--engine", str(tiny_onnx), "--images", str(tiny_data.parent / "images" / "val"),
                 "--annotations", str(val_json), "--out", str(out)]) == 0
    dets = json.loads((out / "detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {7, 3}
    infer_report = json.loads((out / "report.json").read_text())
    assert main(["eval", "--annotations", str(val_json), "--detections", str(out / "detections.json"),
                 "--out", str(tmp_path / "eval.json")]) == 0
    for gt in (f"{tiny_data}:val", str(val_json)):
        assert main(["eval", "--annotations", gt, "--detections", str(out / "detections.json"),
                     "--names", "circle", "triangle", "--out", str(tmp_path / "eval2.json")]) == 0
        assert json.loads((tmp_path / "eval2.json").read_text())["coco"] == infer_report["coco"]
    assert json.loads((tmp_path / "eval.json").read_text())["coco"] == infer_report["coco"]
    # without --annotations the ids come from the model's metadata
    assert main(["infer", "--engine", str(tiny_onnx), "--images", str(tiny_data.parent / "images" / "val"),
                 "--out", str(tmp_path / "plain")]) == 0
    assert {d["category_id"] for d in json.loads((tmp_path / "plain" / "detections.json").read_text())} <= {7, 3}
    shutil.rmtree(tmp_path / "plain")
