"""``harmonic export`` end to end and its error paths (one-line error, exit 2, nothing written)."""

from __future__ import annotations

import sys

import onnx
import pytest
import torch

from harmonic.cli import main


def _export(*args: str) -> int:
    return main(["export", *map(str, args)])


def test_engine_without_tensorrt_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    rc = _export("--checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "m.onnx", "--engine", tmp_path / "m.engine")
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: --engine needs TensorRT") and 'pip install "harmonicdet[trt]"' in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep")
    rc = _export("--checkpoint", tmp_path / "missing.pt", "--out", out)
    assert rc == 2 and "already exists (pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch", "0"], "--batch '0': expected 'dynamic' or a positive integer"),
        (["--batch", "x"], "expected 'dynamic' or a positive integer"),
        (["--conf", "1.5"], "--conf 1.5 must be in [0, 1)"),
        (["--max-det", "0"], "--max-det 0 must be >= 1"),
        (["--nms-topk", "0"], "--nms-topk 0 must be in 1..5000"),
        (["--nms-topk", "5001"], "--nms-topk 5001 must be in 1..5000"),
        (["--int8"], "--int8: needs --calib DIR"),
        (["--calib", "somewhere"], "--calib: only used with --int8"),
    ],
)
def test_bad_flags(tmp_path, capsys, args, message):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    rc = _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", *args)
    assert rc == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_calibration_folder_without_a_readable_image(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "broken.jpg").write_bytes(b"not a jpeg")
    (calib / "notes.txt").write_text("x")
    rc = _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--int8", "--calib", calib)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {calib}: no readable calibration image (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "calib"]


def test_foreign_checkpoint(tmp_path, capsys):
    _models()
    ckpt = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, ckpt)
    rc = _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx")
    assert rc == 2 and "not a HarmonicDet checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt"]


# ------------------------------------------------------------------ with real checkpoints


def _models():
    models = pytest.importorskip("harmonic.models")
    if not hasattr(models, "build_detector") or not hasattr(models, "MODELS"):
        pytest.skip("harmonic.models.build_detector not available yet")
    return models


def _name(models, family: str) -> str:
    names = [n for n in models.MODELS if family in n]
    if not names:
        pytest.skip(f"no {family} model in MODELS")
    return sorted(names, key=len)[0]


def _checkpoint(path, family="retinanet", img_size=64, **overrides):
    from harmonic.training.checkpoint import save_checkpoint

    models = _models()
    name = _name(models, family)
    torch.manual_seed(0)
    opts = {"fpn_channels": 64} if family != "ssd" else {}
    model = models.build_detector(name, 3, loss="harmonic", img_size=img_size, **opts)
    with torch.no_grad():  # spread the scores: a fresh head predicts the prior everywhere (NMS ties)
        for pname, p in model.named_parameters():
            if pname.endswith(("cls_logits.weight", "cls_score.weight")):
                p.normal_(0, 2.0)  # the tiny random-init FPN features need a wide last layer
    spec = models.model_spec(name, 3, ["a", "b", "c"], img_size=img_size, options=opts)
    state = {"spec": spec.to_dict(), "model": model.state_dict(), "epoch": 0, **overrides}
    save_checkpoint(path, state)
    return path, spec


@pytest.mark.slow
def test_export_checkpoint_end_to_end(tmp_path, capsys):
    ckpt, spec = _checkpoint(tmp_path / "best.pt")
    out = tmp_path / "model.onnx"
    rc = _export("--checkpoint", ckpt, "--out", out, "--conf", "0.005", "--max-det", "20", "--raw")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "verify: OK, ONNX Runtime matches PyTorch" in captured.out
    from harmonic.export.metadata import file_sha256, read_metadata

    meta = read_metadata(out)
    assert meta["checkpoint_sha256"] == file_sha256(ckpt) and meta["model"] == spec.name
    assert meta["max_det"] == "20" and meta["score_threshold"] == "0.005" and meta["img_size"] == str(spec.img_size)
    assert (tmp_path / "model.raw.onnx").is_file()
    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(out)).graph.node}
    # again without --overwrite: refused, file untouched
    before = out.read_bytes()
    assert _export("--checkpoint", ckpt, "--out", out) == 2
    assert out.read_bytes() == before


@pytest.mark.slow
def test_int8_export_is_qdq_with_a_float_tail_and_runs_in_onnxruntime(tmp_path, capsys):
    """--int8: <out>.int8.onnx with symmetric Q/DQ in the body only; ONNX Runtime runs it like the FP32 graph."""
    import os
    import stat

    import cv2
    import numpy as np
    from onnx import numpy_helper

    from harmonic.export.metadata import read_metadata
    from harmonic.export.verify import run_onnx

    ckpt, spec = _checkpoint(tmp_path / "best.pt")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # non-square: the calibration letterboxes like inference
        cv2.imwrite(str(calib / f"{i}.jpg"), rng.integers(0, 255, (48 + 16 * i, 80, 3), dtype=np.uint8))
    out = tmp_path / "model.onnx"
    old = os.umask(0o022)
    try:
        rc = _export("--checkpoint", ckpt, "--out", out, "--conf", "0.005", "--max-det", "20", "--int8",
                     "--calib", calib, "--calib-count", "2", "--no-verify")
    finally:
        os.umask(old)
    assert rc == 0, capsys.readouterr().err
    q = tmp_path / "model.int8.onnx"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and stat.S_IMODE(q.stat().st_mode) == 0o644
    meta = read_metadata(q)
    assert meta["quantization"] == "int8-qdq" and meta["calib_images"] == "2" and meta["model"] == spec.name
    proto = onnx.load(str(q))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    qnodes = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert any(n.op_type == "QuantizeLinear" for n in qnodes)
    for n in qnodes:  # symmetric: zero points are int8 zeros
        assert inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any()
    # per-channel weight scales (a vector) on the convolutions
    assert any(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in qnodes if n.input[1] in inits)
    # everything after the head stays float: no Q/DQ reads or feeds a decode/select/NMS node
    producers = {o: n for n in proto.graph.node for o in n.output}
    for n in proto.graph.node:
        if n.name.startswith(("/decode/", "/select/", "/nms_tail/")):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input), n.name
    x = np.random.default_rng(1).random((2, 3, spec.img_size, spec.img_size), dtype=np.float32)
    a, b = run_onnx(out, x), run_onnx(q, x)
    assert b["det_boxes"].shape == a["det_boxes"].shape == (2, 20, 4) and b["num_dets"].dtype == np.int32


@pytest.mark.slow
def test_checkpoint_errors(tmp_path, capsys):
    ckpt, spec = _checkpoint(tmp_path / "best.pt")
    rc = _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--img-size", str(spec.stride * 2 + 1))
    assert rc == 2 and f"is not a positive multiple of the model's stride {spec.stride}" in capsys.readouterr().err
    newer, _ = _checkpoint(tmp_path / "newer.pt", format_version=99)
    assert _export("--checkpoint", newer, "--out", tmp_path / "m.onnx") == 2
    assert "newer" in capsys.readouterr().err
    # weights that do not fit the spec: a 3-class state dict under a 5-class spec
    state = torch.load(ckpt, weights_only=True)
    state["spec"]["num_classes"], state["spec"]["class_names"] = 5, list("abcde")
    torch.save(state, tmp_path / "mismatch.pt")
    assert _export("--checkpoint", tmp_path / "mismatch.pt", "--out", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mismatch.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_unsupported_batch_for_faster_rcnn(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path / "frcnn.pt", family="fasterrcnn")
    rc = _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--batch", "2")
    assert rc == 2 and "exports with batch 1 only, not 2" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_trained_model_exports_and_verifies(tmp_path, capsys):
    """A model trained a few iterations with the training CLI: non-trivial detections verify."""
    import re

    _models()
    synth = pytest.importorskip("harmonic.data.synth")
    pytest.importorskip("harmonic.training.cli")
    data = synth.generate(tmp_path / "data", num_train=8, num_val=4, seed=0, img_size=96, num_classes=3)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", "retinanet_resnet18_fpn", "--img-size", "96",
               "--epochs", "1", "--batch-size", "4", "--max-iters-per-epoch", "4", "--out", str(run),
               "--device", "cpu", "--workers", "0", "--fpn-channels", "64", "--val-every", "0", "--optimizer", "sgd", "--lr", "0.01",
               "--warmup-iters", "1"])
    assert rc == 0, capsys.readouterr().err
    ckpt = run / "last.pt" if (run / "last.pt").exists() else run / "best.pt"
    out = tmp_path / "trained.onnx"
    rc = _export("--checkpoint", ckpt, "--out", out, "--conf", "0.001", "--max-det", "30",
                 "--verify-images", tmp_path / "data" / "images" / "val")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    m = re.search(r"(\d+) images, (\d+) detections match", captured.out)
    assert m and int(m.group(1)) == 4 and int(m.group(2)) > 0, captured.out
