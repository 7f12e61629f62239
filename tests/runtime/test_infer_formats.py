"""One ground-truth loader for every command. ``infer --annotations`` and ``harmonic eval``
take a COCO json, a Pascal VOC folder, a YOLO labels folder or DATA.yaml:split and give the same AP;
``--image-list`` infers exactly the listed images and counts the folder's other files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import pytest
import yaml

from harmonic.cli import main
from harmonic.data.readers import read_coco, write_voc, write_yolo

from .runtime_graphs import NAMES, make_graph, write_images


def _dataset(tmp_path: Path, stray: bool = False) -> tuple[Path, Path]:
    """Images (with ``stray``, plus a copy no annotation lists) and their ground truth as COCO, VOC and YOLO."""
    paths = write_images(tmp_path / "images", 5)
    images, anns = [], []
    for i, p in enumerate(paths):
        h, w = cv2.imread(str(p)).shape[:2]
        images.append({"id": i + 1, "file_name": p.name, "width": w, "height": h})
        for k, (x, y, bw, bh) in enumerate([(1, 1, w // 2, h // 2), (w // 3, h // 4, w // 2, h // 2)]):
            anns.append({"id": 2 * i + k + 1, "image_id": i + 1, "category_id": 1 + (i + k) % 3,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]}))
    records = read_coco(gt, NAMES)
    write_voc(records, NAMES, tmp_path / "voc")
    write_yolo(records, tmp_path / "labels")
    if stray:
        cv2.imwrite(str(tmp_path / "images" / "stray_copy.png"), cv2.imread(str(paths[0])))  # not annotated
    return tmp_path / "images", gt


@pytest.mark.slow
def test_infer_and_eval_give_the_same_ap_with_every_annotation_format(tmp_path):
    images, gt = _dataset(tmp_path)
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"names": NAMES, "val": {"images": "images",
                                                                                 "annotations": "labels"}}))
    forms = {"coco": gt, "voc": tmp_path / "voc", "yolo": tmp_path / "labels", "yaml_yolo": f"{tmp_path / 'data.yaml'}:val"}
    reports = {}
    for name, ann in forms.items():
        out = tmp_path / f"out_{name}"
        assert main(["infer", "--engine", str(model), "--images", str(images), "--annotations", str(ann),
                     "--out", str(out)]) == 0, name
        reports[name] = json.loads((out / "report.json").read_text())
    ref = reports["coco"]
    assert ref["counts"]["images"] == 5 and ref["counts"]["gt_objects"] == 10
    assert 0 < ref["coco"]["AP50"] <= 1
    for name, rep in reports.items():
        assert rep["counts"] == ref["counts"], name
        for key, value in ref["coco"].items():
            assert rep["coco"][key] == pytest.approx(value, abs=1e-9), (name, key)
    # harmonic eval of the same detections with each form of the ground truth
    (tmp_path / "dets.json").write_text((tmp_path / "out_coco" / "detections.json").read_text())
    for name, ann in forms.items():
        args = ["eval", "--annotations", str(ann), "--detections", str(tmp_path / "dets.json"),
                "--out", str(tmp_path / f"eval_{name}.json")]
        if name in ("voc", "yolo"):
            args += ["--names", *NAMES, "--images", str(images)]
        assert main(args) == 0, name
        got = json.loads((tmp_path / f"eval_{name}.json").read_text())["coco"]
        for key, value in ref["coco"].items():
            assert got[key] == pytest.approx(value, abs=1e-9), (name, key)


def test_image_list_infers_exactly_the_listed_images(tmp_path, caplog):
    images, gt = _dataset(tmp_path, stray=True)
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{im['file_name']}\n" for im in json.loads(gt.read_text())["images"]))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert main(["infer", "--engine", str(model), "--images", str(images), "--image-list", str(listing),
                     "--annotations", str(gt), "--out", str(out)]) == 0
    assert "1 other image file(s)" in caplog.text
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {1, 2, 3, 4, 5}  # the stray file got no id
    # so harmonic eval takes the detections as they are
    assert main(["eval", "--annotations", str(gt), "--detections", str(out / "detections.json")]) == 0


@pytest.mark.parametrize("case", ["yolo_without_names", "not_annotations", "list_with_two_folders"])
def test_bad_ground_truth_is_one_line(tmp_path, capsys, case):
    images, gt = _dataset(tmp_path)
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    if case == "yolo_without_names":
        args = ["eval", "--annotations", str(tmp_path / "labels"), "--detections", str(gt)]
        expect = "has no class list"
    elif case == "not_annotations":
        (tmp_path / "empty").mkdir()
        args = ["infer", "--engine", str(model), "--images", str(images), "--annotations", str(tmp_path / "empty"),
                "--out", str(tmp_path / "o")]
        expect = "no .xml (VOC) or .txt (YOLO)"
    else:
        (tmp_path / "l.txt").write_text("img_000.jpg\n")
        args = ["infer", "--engine", str(model), "--images", str(images), str(images), "--image-list",
                str(tmp_path / "l.txt"), "--out", str(tmp_path / "o")]
        expect = "exactly one --images folder"
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err


def _absurd_png(path: Path, w: int = 100000, h: int = 100000) -> Path:
    """A PNG whose header claims ``w x h`` pixels: OpenCV's decoder raises its own exception on it."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


def test_a_file_the_decoder_refuses_is_named_skipped_and_counted(tmp_path, caplog, capsys):
    from harmonic.data.checks import image_problem
    from harmonic.data.images import ImageDecodeError, decode_image

    write_images(tmp_path / "images", 3)
    bad = _absurd_png(tmp_path / "images" / "huge.png")
    with pytest.raises(ImageDecodeError, match="huge.png: image too large for the decoder"):
        decode_image(bad)
    assert "absurd image size 100000x100000" in image_problem(bad)
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    assert main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "out")]) == 0
    assert "3 processed, 1 skipped (1 unreadable" in capsys.readouterr().out
    assert "huge.png" in caplog.text
    for f in (tmp_path / "images").glob("*.jpg"):
        _absurd_png(f)  # nothing readable: one error
    assert main(["infer", "--engine", str(model), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 4 image(s) could be read" in err[0]
