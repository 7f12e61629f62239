"""The model is checked before outputs are touched, outputs are atomic,
partial annotations are evaluated on the inferred images only, and a huge --batch is capped."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from harmonic.cli import main

from .runtime_graphs import NAMES, make_graph, write_images

PREV = '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]\n'


def _prev(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "detections.json").write_text(PREV)
    return out


def _gt(paths: list[Path], path: Path, ids=(1, 2, 3)) -> Path:
    images, anns = [], []
    for i, p in enumerate(paths):
        h, w = cv2.imread(str(p)).shape[:2]
        images.append({"id": 100 + i, "file_name": p.name, "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": 100 + i, "category_id": ids[i % 3], "bbox": [1, 1, w / 2, h / 2],
                     "area": w * h / 4, "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": ids[i], "name": n} for i, n in enumerate(NAMES)]}))
    return path


def test_foreign_onnx_is_refused_before_outputs_are_touched(tmp_path, capsys):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])
    save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g", [x], [y]),
                           opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "classifier.onnx"))
    write_images(tmp_path / "images", 2)
    out = _prev(tmp_path / "out")
    rc = main(["infer", "--engine", str(tmp_path / "classifier.onnx"), "--images", str(tmp_path / "images"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a HarmonicDet detector" in err and "logits" in err
    assert (out / "detections.json").read_text() == PREV
    assert sorted(p.name for p in out.iterdir()) == ["detections.json"]


@pytest.mark.parametrize("failure,rc", [(KeyboardInterrupt, 130), (OSError(28, "No space left on device"), 1)])
def test_interrupted_or_full_disk_keeps_the_last_complete_outputs(tmp_path, capsys, monkeypatch, failure, rc):
    import harmonic.runtime.run_images as infer_cli

    model = make_graph(tmp_path / "model.onnx")
    write_images(tmp_path / "images", 5)
    out = _prev(tmp_path / "out")
    real = infer_cli.coco_results
    calls = []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise failure
        return real(*a, **kw)

    monkeypatch.setattr(infer_cli, "coco_results", flaky)
    got = main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"), "--out", str(out),
                "--batch", "2"])
    err = capsys.readouterr().err
    assert got == rc and err.count("\n") == 1 and err.startswith("error: ")
    assert (out / "detections.json").read_text() == PREV
    assert sorted(p.name for p in out.iterdir()) == ["detections.json"]  # no temporary file left


def test_detections_json_gets_the_usual_file_mode(tmp_path):
    """Streamed through a mkstemp file (0600), detections.json ends with 0666 minus the umask like any output."""
    import os
    import stat

    model = make_graph(tmp_path / "model.onnx")
    write_images(tmp_path / "images", 2)
    old = os.umask(0o022)
    try:
        assert main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"),
                     "--out", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "detections.json").stat().st_mode) == 0o644


def test_report_covers_only_the_inferred_images(tmp_path, capsys):
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    paths = write_images(tmp_path / "images", 4)
    gt = _gt(paths, tmp_path / "gt.json")
    for p in paths[2:]:  # the user runs on half of the split
        p.unlink()
    out = tmp_path / "out"
    assert main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"), "--annotations", str(gt),
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["images"] == 2 and report["counts"]["gt_objects"] == 2
    assert report["subset"]["images_evaluated"] == 2 and report["subset"]["images_annotated"] == 4
    # the same detections scored against a ground truth of just those two images
    data = json.loads(gt.read_text())
    data["images"] = data["images"][:2]
    data["annotations"] = data["annotations"][:2]
    (tmp_path / "gt2.json").write_text(json.dumps(data))
    assert main(["eval", "--annotations", str(tmp_path / "gt2.json"), "--detections", str(out / "detections.json"),
                 "--out", str(tmp_path / "r2.json")]) == 0
    assert json.loads((tmp_path / "r2.json").read_text())["coco"] == report["coco"]


def test_detections_carry_the_annotation_files_own_category_ids(tmp_path):
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    paths = write_images(tmp_path / "images", 3)
    gt = _gt(paths, tmp_path / "gt.json", ids=(7, 1, 40))
    out = tmp_path / "out"
    assert main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"), "--annotations", str(gt),
                 "--out", str(out)]) == 0
    dets = json.loads((out / "detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {7, 1, 40}
    assert main(["eval", "--annotations", str(gt), "--detections", str(out / "detections.json"),
                 "--out", str(tmp_path / "r.json")]) == 0
    assert (json.loads((tmp_path / "r.json").read_text())["coco"]
            == json.loads((out / "report.json").read_text())["coco"])


def test_huge_batch_is_capped_by_the_number_of_images(tmp_path, capsys):
    model = make_graph(tmp_path / "model.onnx")
    write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    # 100000 x 3 x 64 x 64 float32 would be 4.9 GB of warm-up batch before the cap
    assert main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"), "--out", str(out),
                 "--batch", "100000", "--bench", "--warmup", "1", "--iters", "1"]) == 0
    assert json.loads((out / "bench.json").read_text())["batch"] == 2
