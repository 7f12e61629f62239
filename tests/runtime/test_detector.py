"""``from harmonic import Detector``: one image as an array, a path or bytes, a list; gray and 4-channel
input; the same detections ``infer`` writes; the operating point; thread safety; one-line errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from harmonic import Detections, Detector
from harmonic.cli import main
from harmonic.data.images import ImageDecodeError
from harmonic.errors import HarmonicError
from harmonic.runtime.backends import base as backends_base

from .runtime_graphs import NAMES, default_metadata, make_graph, write_images


def _same(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.classes, b.classes)


@pytest.fixture
def det(nms_graph: Path) -> Detector:
    with Detector(nms_graph, provider="cpu", threads=1) as d:
        yield d


def _bgr(seed: int = 3, h: int = 45, w: int = 70) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    img[5:30, 10:40] = rng.integers(0, 256, 3)
    return img


def test_array_path_bytes_and_list_give_the_same_detections(det, tmp_path):
    bgr = _bgr()
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), bgr)
    ref = det(bgr)
    assert isinstance(ref, Detections) and len(ref) > 0
    assert ref.boxes.dtype == np.float32 and ref.boxes.shape == (len(ref), 4)
    assert (ref.boxes[:, [0, 2]] <= 70).all() and (ref.boxes[:, [1, 3]] <= 45).all() and (ref.boxes >= 0).all()
    assert list(ref.scores) == sorted(ref.scores, reverse=True)
    assert ref.names == [NAMES[c] for c in ref.classes] and list(ref.category_ids) == list(ref.classes + 1)
    _same(det(png), ref)
    _same(det(str(png)), ref)
    _same(det(png.read_bytes()), ref)
    _same(det(bytearray(png.read_bytes())), ref)
    _same(det(np.ascontiguousarray(bgr[:, :, ::-1]), rgb=True), ref)
    many = det([bgr, png, png.read_bytes(), _bgr(4)])
    assert isinstance(many, list) and len(many) == 4
    for d in many[:3]:
        _same(d, ref)
    _same(many[3], det(_bgr(4)))
    assert det([]) == []
    # the BGR frame is not the RGB one: channel order matters to the model
    assert not np.array_equal(det(bgr, rgb=True).scores, ref.scores)


def test_gray_rgba_and_16_bit_input(det, tmp_path):
    gray = cv2.cvtColor(_bgr(), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    ref = det(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    _same(det(gray), ref)
    _same(det(gray[:, :, None]), ref)
    _same(det(tmp_path / "g.png"), ref)
    bgr = _bgr()
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])
    _same(det(bgra), det(bgr))
    _same(det(np.ascontiguousarray(bgra[:, :, [2, 1, 0, 3]]), rgb=True), det(bgr))
    _same(det(bgr.astype(np.uint16) * 257), det(bgr))  # 16-bit: the high byte, as the file decoder does
    _same(det(bgr[:, :, ::-1].astype(np.uint16) * 257, rgb=True), det(bgr))


def test_detector_gives_what_infer_writes_to_detections_json(nms_graph, tmp_path):
    paths = write_images(tmp_path / "images", 7)
    out = tmp_path / "out"
    assert main(["infer", "--engine", str(nms_graph), "--images", str(tmp_path / "images"), "--out", str(out)]) == 0
    written = json.loads((out / "detections.json").read_text())
    with Detector(nms_graph) as det:
        dets = det(paths)
        one_by_one = [det(p) for p in paths]
    mine = [e for i, d in enumerate(dets) for e in d.to_coco(i + 1, paths[i].name)]
    assert json.loads(json.dumps(mine)) == written and len(written) > 7
    for a, b in zip(dets, one_by_one):
        _same(a, b)


def test_conf_max_det_and_a_stricter_iou(nms_graph, tmp_path):
    img = _bgr(7)
    with Detector(nms_graph) as det:
        full = det(img)
    assert len(full) >= 3
    with Detector(nms_graph, conf=float(full.scores[1])) as det:
        _same(det(img), Detections(full.boxes[:2], full.scores[:2], full.classes[:2]))
    with Detector(nms_graph, max_det=2) as det:
        _same(det(img), Detections(full.boxes[:2], full.scores[:2], full.classes[:2]))
    # the graph's NMS ran at 0.9 (candidates 0 and 1, IoU 0.68, both kept): iou=0.5 gives the 0.5 graph's output
    loose = make_graph(tmp_path / "loose.onnx", iou_threshold=0.9, max_det=12)
    tight = make_graph(tmp_path / "tight.onnx", iou_threshold=0.5, max_det=12)
    with Detector(loose) as a, Detector(loose, iou=0.5) as b, Detector(tight) as c:
        assert len(a(img)) > len(b(img)) > 0
        _same(b(img), c(img))
    raw = make_graph(tmp_path / "raw.onnx", raw=True)
    with Detector(raw, iou=0.5) as a, Detector(raw, iou=0.99) as b:
        assert len(b(img)) >= len(a(img))  # a raw graph's NMS runs here, at the asked threshold


def test_concurrent_calls_equal_sequential_ones(det):
    imgs = [_bgr(s) for s in range(16)]
    ref = [det(im) for im in imgs]
    got: dict[int, Detections] = {}

    def work(k: int) -> None:
        for i in range(k, 16, 4):
            got[i] = det(imgs[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(16):
        _same(got[i], ref[i])


def test_category_ids_to_coco_and_draw(tmp_path):
    meta = default_metadata()
    meta["category_ids"] = json.dumps([7, 1, 40])
    graph = make_graph(tmp_path / "m.onnx", metadata=meta)
    img = _bgr()
    with Detector(graph) as det:
        assert det.names == NAMES and det.category_ids == [7, 1, 40] and det.img_size == 64
        d = det(img)
    table = np.array([7, 1, 40])
    assert list(d.category_ids) == list(table[d.classes])
    coco = d.to_coco(5, "x.png")
    assert [e["category_id"] for e in coco] == list(table[d.classes])
    assert coco[0]["image_id"] == 5 and coco[0]["file_name"] == "x.png"
    x1, y1, x2, y2 = d.boxes[0].tolist()
    assert coco[0]["bbox"] == [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
    drawn = d.draw(img)
    assert drawn.shape == img.shape and not np.array_equal(drawn, img) and img.sum() == _bgr().sum()
    np.testing.assert_array_equal(d.draw(img[:, :, ::-1], rgb=True), drawn[:, :, ::-1])


class _RecordingBackend:
    """Stands in for a backend registered in BACKENDS (e.g. OpenVINO): records the options it gets."""

    seen: dict = {}

    def __new__(cls, path, **opts):
        from harmonic.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        cls.seen = dict(opts)
        return OnnxRuntimeBackend(path, **{k: v for k, v in opts.items() if k != "precision"})


def test_backend_options_pass_through_unchanged(nms_graph, monkeypatch):
    monkeypatch.setitem(backends_base.BACKENDS, "recording", (__name__, "_RecordingBackend"))
    with Detector(nms_graph, backend="recording", device="cpu", threads=1, precision="bf16") as det:
        assert det.backend == "onnxruntime" and len(det(_bgr())) > 0
    assert _RecordingBackend.seen == {"device": "cpu", "threads": 1, "precision": "bf16"}


@pytest.mark.parametrize("call,exc,message", [
    (lambda d: d(np.zeros((4, 4, 2), np.uint8)), HarmonicError, r"image 0: expected an \[H, W\].*got shape \[4, 4, 2\]"),
    (lambda d: d(np.zeros((0, 4, 3), np.uint8)), HarmonicError, "got shape"),
    (lambda d: d(b"not an image"), ImageDecodeError, "image 0: not an image OpenCV can decode"),
    (lambda d: d([np.zeros((8, 8, 3), np.uint8), b""]), ImageDecodeError, "image 1: empty bytes"),
    (lambda d: d("nope/missing.jpg"), ImageDecodeError, "missing.jpg: cannot read"),
    (lambda d: d(3.5), HarmonicError, "expected a numpy image, a path or encoded bytes, got float"),
])
def test_bad_input_is_one_line(det, call, exc, message):
    with pytest.raises(exc, match=message) as info:
        call(det)
    assert "\n" not in str(info.value)


def test_bad_model_arguments(nms_graph, tmp_path):
    with pytest.raises(HarmonicError, match="nope.onnx: model file not found"):
        Detector(tmp_path / "nope.onnx")
    with pytest.raises(HarmonicError, match=r"conf: must be in \[0, 1\]"):
        Detector(nms_graph, conf=2)
    with pytest.raises(HarmonicError, match="model_name: only for a served model"):
        Detector(nms_graph, model_name="x")
    with pytest.raises(HarmonicError, match="device: not used with a served model"):
        Detector("grpc://127.0.0.1:1/m", device="cpu")
    with pytest.raises(HarmonicError, match="name the served model"):
        Detector("http://127.0.0.1:1")
