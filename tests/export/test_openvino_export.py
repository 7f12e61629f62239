"""``export/run.py --openvino DIR --precision fp32|bf16|int8``: the IR pair, its metadata and FP32-scope marks,
NNCF INT8 with the scopes left float, and the bad-input and failure paths (one line, nothing half-written)."""

from __future__ import annotations

import sys

import pytest

ov = pytest.importorskip("openvino", reason='no openvino wheel for this platform (pip install "harmonicdet[openvino]")')

from harmonic.cli import main  # noqa: E402
from harmonic.errors import RunFailure  # noqa: E402
from harmonic.export import openvino as ovx  # noqa: E402
from harmonic.runtime.backends import open_backend  # noqa: E402
from harmonic.runtime.backends.openvino_backend import read_rt_metadata  # noqa: E402
from harmonic.runtime.backends.openvino_precision import in_fp32_scope, runtime_ops  # noqa: E402
from tests.runtime import openvino_models as tiny  # noqa: E402

HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return tiny.export_tiny(tmp_path_factory.mktemp("tiny") / "model.onnx")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return tiny.write_images(tmp_path_factory.mktemp("calib"), 6)


def _export(*args) -> int:
    return main(["export", *map(str, args)])


def test_fp32_ir_carries_metadata_and_marks_and_matches_onnxruntime(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "ir"
    assert _export("--onnx", tiny_onnx, "--openvino", out) == 0
    stdout = capsys.readouterr().out
    assert "verify: OK, the fp32 IR reproduces 1.000 of ONNX Runtime's" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]  # no staged leftovers
    model = ov.Core().read_model(str(out / "model.xml"))
    meta = read_rt_metadata(model)
    assert meta["precision"] == "fp32" and meta["img_size"] == str(tiny.S) and meta["harmonic.format"]
    assert '"openvino"' in meta["versions"] and "quantization" not in meta
    marked = set(ovx.iter_scope_ops(model))
    scoped = {op.get_friendly_name() for op in model.get_ordered_ops() if in_fp32_scope(op.get_friendly_name())}
    assert marked == scoped and any(n.startswith("/select/") for n in marked)
    with open_backend(out / "model.xml") as be:  # .xml -> openvino, precision from the IR
        assert be.name == "openvino" and be.precision == "fp32" and be.names == tiny.NAMES
    assert _export("--onnx", tiny_onnx, "--openvino", out) == 2
    assert "model.xml: already exists (pass --overwrite" in capsys.readouterr().err


def test_int8_ir_quantises_the_body_only(tiny_onnx, calib, tmp_path, capsys):
    out = tmp_path / "ir8"
    assert _export("--onnx", tiny_onnx, "--openvino", out, "--precision", "int8", "--calib", calib,
                   "--calib-count", "4") == 0
    assert "verify: OK, the int8 IR reproduces" in capsys.readouterr().out
    model = ov.Core().read_model(str(out / "model.xml"))
    meta = read_rt_metadata(model)
    assert (meta["precision"], meta["quantization"], meta["calib_images"]) == ("int8", "int8-nncf", "4")
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fq) >= 4 and not any(in_fp32_scope(op.get_friendly_name()) for op in fq)
    with open_backend(out / "model.xml") as be:
        assert be.precision == "int8" and be.inference_precision == "f32" and be.fp32_ops_checked > 20
        ops = runtime_ops(be.compiled)
    convs = [op for op in ops if op.layer_type == "Convolution"]
    assert convs and all(op.runtime_precision in ("u8", "i8") for op in convs)  # the body runs INT8


def test_bf16_ir_is_the_fp32_one_meant_for_bf16(tiny_onnx, calib, tmp_path, capsys):
    out = tmp_path / "irb"
    assert _export("--onnx", tiny_onnx, "--openvino", out, "--precision", "bf16") == 0
    assert "verify: OK, the fp32 IR reproduces 1.000" in capsys.readouterr().out  # checked at FP32 weights
    assert read_rt_metadata(ov.Core().read_model(str(out / "model.xml")))["precision"] == "bf16"
    with open_backend(out / "model.xml", precision="fp32") as be:
        assert be.precision == "fp32"
    if not HAS_BF16:  # the IR asks for bf16 by default: refused in one line here
        rc = main(["infer", "--engine", str(out / "model.xml"), "--images", str(calib), "--out",
                   str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "no native bf16" in err


def test_bad_openvino_flags(tiny_onnx, tmp_path, capsys):
    assert _export("--onnx", tiny_onnx, "--openvino", tmp_path / "ir", "--precision", "int8") == 2
    assert capsys.readouterr().err.strip() == "error: --precision int8: needs --calib DIR (calibration images)"
    with pytest.raises(SystemExit) as exc:
        _export("--onnx", tiny_onnx, "--openvino", tmp_path / "ir", "--precision", "fp16")
    assert exc.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert _export("--onnx", tiny_onnx, "--openvino", tmp_path / "file") == 2
    assert "--openvino " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_precision_without_openvino_and_calib_folder_without_images(tiny_onnx, tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    assert _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--precision", "int8") == 2
    assert capsys.readouterr().err.strip() == "error: --precision: only used with --openvino DIR (the OpenVINO IR's precision)"
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "broken.jpg").write_bytes(b"not a jpeg")
    assert _export("--onnx", tiny_onnx, "--openvino", tmp_path / "ir", "--precision", "int8", "--calib", empty) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {empty}: no readable calibration image (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff)"
    assert not (tmp_path / "ir").exists()


def test_missing_openvino_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    assert _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--openvino", tmp_path / "ir") == 2
    assert capsys.readouterr().err.strip() == ('error: openvino is not installed, needed for --openvino DIR: '
                                               'pip install "harmonicdet[openvino]" (openvino and nncf)')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_missing_nncf_names_the_extra(tiny_onnx, calib, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert _export("--onnx", tiny_onnx, "--openvino", tmp_path / "ir", "--precision", "int8", "--calib", calib) == 2
    assert capsys.readouterr().err.strip() == ('error: --precision int8 quantises with NNCF, which is not installed: '
                                               'pip install "harmonicdet[openvino]" (openvino and nncf)')


def test_failed_check_keeps_the_earlier_ir_and_leaves_no_temporary_files(tiny_onnx, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ir"
    assert _export("--onnx", tiny_onnx, "--openvino", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def differs(*args):
        raise RunFailure("the OpenVINO IR differs from ONNX Runtime (test)")

    monkeypatch.setattr(ovx, "check_ir", differs)
    assert _export("--onnx", tiny_onnx, "--openvino", out, "--precision", "bf16", "--overwrite") == 1
    assert "error: the OpenVINO IR differs" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier pair, nothing else
    assert _export("--onnx", tiny_onnx, "--openvino", tmp_path / "new") == 1
    assert not (tmp_path / "new").exists()  # the folder it made is removed again
