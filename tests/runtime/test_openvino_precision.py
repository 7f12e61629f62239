"""The OpenVINO precision rules on plain data (no OpenVINO needed): which precision runs, what is refused
in one line, and which runtime-graph ops count as FP32-scope ops run below FP32."""

from __future__ import annotations

import pytest

from harmonic.errors import HarmonicError, RunFailure
from harmonic.runtime.backends import BACKENDS, backend_for
from harmonic.runtime.backends.openvino_precision import (
    FP32_SCOPES,
    RuntimeOp,
    check_capability,
    check_compiled_hint,
    choose_precision,
    in_fp32_scope,
    scope_violations,
)


def test_openvino_is_a_backend_and_an_ir_picks_it():
    assert BACKENDS["openvino"] == ("harmonic.runtime.backends.openvino_backend", "OpenVinoBackend")
    assert backend_for("model.xml") == "openvino"
    assert backend_for("model.onnx") == "onnxruntime"
    assert backend_for("model.onnx", "openvino") == "openvino"
    with pytest.raises(HarmonicError, match="expected .onnx, .engine/.plan/.trt or an OpenVINO IR .xml"):
        backend_for("model.pb")


def test_scopes_are_the_exporters():
    wrapper = pytest.importorskip("harmonic.export.wrapper")
    assert FP32_SCOPES == wrapper.FP32_SCOPES


@pytest.mark.parametrize("asked,quantised,preferred,expected", [
    (None, False, None, "fp32"),
    (None, False, "bf16", "bf16"),  # an IR exported with --precision bf16
    ("fp32", False, "bf16", "fp32"),
    ("bf16", False, None, "bf16"),
    (None, True, None, "int8"),
    ("int8", True, "int8", "int8"),
])
def test_choose_precision(asked, quantised, preferred, expected):
    assert choose_precision(asked, quantised, preferred, "m.xml") == expected


@pytest.mark.parametrize("asked,quantised,message", [
    ("int8", False, "m.xml: --precision int8 needs an INT8 OpenVINO IR calibrated with NNCF"),
    ("fp32", True, "m.xml: an INT8 (NNCF-quantised) model; --precision fp32 needs the float model"),
    ("bf16", True, "--precision bf16 needs the float model"),
    ("fp16", False, "--precision 'fp16': unknown; choose from fp32, bf16, int8"),
])
def test_choose_precision_refusals(asked, quantised, message):
    with pytest.raises(HarmonicError) as exc:
        choose_precision(asked, quantised, None, "m.xml")
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bf16_without_native_support_is_refused_in_one_line():
    caps = ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]  # what OpenVINO reports on an AVX2-only CPU
    with pytest.raises(HarmonicError) as exc:
        check_capability("bf16", caps, "AMD EPYC", "m.onnx")
    msg = str(exc.value)
    assert msg.startswith("--precision bf16: this CPU (AMD EPYC) has no native bf16") and "\n" not in msg
    assert "BIN, EXPORT_IMPORT, FP32, INT8" in msg
    check_capability("bf16", [*caps, "BF16"], "Xeon", "m.onnx")
    check_capability("fp32", caps, "AMD EPYC", "m.onnx")
    check_capability("int8", caps, "AMD EPYC", "m.onnx")


def test_compiled_hint_must_be_the_one_asked():
    check_compiled_hint("bf16", "bf16", "m.xml")
    check_compiled_hint("int8", "f32", "m.xml")  # INT8 models compile their float layers at f32
    check_compiled_hint("fp32", "float32", "m.xml")
    with pytest.raises(HarmonicError, match="asked OpenVINO for bf16, the compiled model runs f32"):
        check_compiled_hint("bf16", "f32", "m.xml")


def _op(layer, runtime, outs, *original):
    return RuntimeOp(original[0], layer, runtime, tuple(outs), tuple(original))


def test_scope_violations_flag_lowered_fp32_scope_ops_only():
    float_inputs = {"/decode/Exp", "/decode/Mul", "/select/TopK"}
    ops = [
        _op("Convolution", "bf16", ["bf16"], "/head/conv/Conv"),  # the body may run bf16
        _op("Convolution", "u8", ["f32"], "/backbone/conv1/Conv"),  # ... or INT8
        _op("Eltwise", "f32", ["f32"], "/decode/Mul"),
        _op("Eltwise", "u8", ["f32"], "det_boxes"),  # a Select on a boolean mask: u8 is the mask
        _op("Reshape", "u8", ["u8"], "/nms_tail/Unsqueeze_6"),  # a boolean tensor
        _op("Eltwise", "bf16", ["bf16"], "/decode/Exp"),  # lowered: flagged
        _op("FakeQuantize", "f32", ["u8"], "/select/TopK"),  # quantised: flagged
        _op("Eltwise", "u8", ["f32"], "/decode/Mul", "/head/Add"),  # INT8 arithmetic on float inputs: flagged
    ]
    bad = scope_violations(ops, float_inputs)
    assert [b.split(" ")[0] for b in bad] == ["/decode/Exp", "/select/TopK", "/decode/Mul"]
    assert bad[0] == "/decode/Exp (Eltwise, runtime bf16, out bf16)"
    assert in_fp32_scope("/level_mapper/Log") and in_fp32_scope("num_dets") and not in_fp32_scope("/head/x")


def test_a_violation_fails_the_run(monkeypatch):
    from harmonic.runtime.backends import openvino_precision as op

    monkeypatch.setattr(op, "runtime_ops", lambda compiled: [_op("Eltwise", "bf16", ["bf16"], "/decode/Exp")])
    monkeypatch.setattr(op, "float_input_ops", lambda model: {"/decode/Exp"})
    with pytest.raises(RunFailure, match=r"m.xml: 1 op\(s\) of the FP32 decode/NMS scopes run below FP32"):
        op.verify_fp32_scopes(None, None, "m.xml")
