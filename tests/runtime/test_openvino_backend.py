"""The OpenVINO backend on real graphs: parity with ONNX Runtime, the FP32 scopes checked on the compiled
model's runtime graph, bf16 refused (or run) as the CPU allows, and the bad-input paths in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason='no openvino wheel for this platform (pip install "harmonicdet[openvino]")')

from harmonic.cli import main  # noqa: E402
from harmonic.contract import FORMAT_VERSION_KEY, OUTPUT_NAMES  # noqa: E402
from harmonic.errors import HarmonicError  # noqa: E402
from harmonic.export.openvino import reproduced_share  # noqa: E402
from harmonic.runtime.backends import open_backend  # noqa: E402
from harmonic.runtime.backends import openvino_backend as ovb  # noqa: E402
from harmonic.runtime.backends.openvino_precision import runtime_ops, scope_violations  # noqa: E402
from harmonic.runtime.pipeline import run_engine  # noqa: E402
from harmonic.runtime.postprocess import split_outputs  # noqa: E402

from . import openvino_models as tiny  # noqa: E402
from .runtime_graphs import make_graph, write_images  # noqa: E402
from .test_runtime_cli import run_infer  # noqa: E402

HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The tiny RetinaNet exported by the project's exporter (NMS graph, real FP32 scopes)."""
    pytest.importorskip("torch")
    return tiny.export_tiny(tmp_path_factory.mktemp("tiny") / "model.onnx")


def _dets(path, x, **opts):
    with open_backend(path, **opts) as be:
        return split_outputs(run_engine(be, x), len(x)), be


def test_fp32_reproduces_onnxruntime_on_the_exported_graph(tiny_onnx):
    x = tiny.batch(4)
    ref, _ = _dets(tiny_onnx, x, backend="onnxruntime", provider="cpu")
    got, be = _dets(tiny_onnx, x, backend="openvino", threads=2)
    assert [len(d) for d in got] == [len(d) for d in ref] and sum(len(d) for d in ref) > 20
    share, n = reproduced_share(ref, got, score_min=0.0)
    assert share == 1.0 and n == sum(len(d) for d in ref)
    for r, g in zip(ref, got):  # same scores, rank by rank (ties aside)
        np.testing.assert_allclose(np.sort(g.scores), np.sort(r.scores), atol=1e-5)
    assert be.name == "openvino" and be.precision == "fp32" and be.inference_precision == "f32"
    assert be.img_size == tiny.S and be.names == tiny.NAMES and be.max_batch is None
    assert be.versions["openvino"] == ov.get_version().split("-")[0]


def test_fp32_scopes_run_fp32_on_the_runtime_graph(tiny_onnx):
    with open_backend(tiny_onnx, backend="openvino") as be:
        ops = runtime_ops(be.compiled)
        assert be.fp32_ops_checked > 20  # decode, select and the NMS tail are there and were checked
        assert scope_violations(ops, set()) == []
        tail = [op for op in ops if any(n.startswith("/decode/") for n in op.original)]
        assert tail and all(op.output_precisions[0] == "f32" for op in tail if op.layer_type == "Eltwise")


def test_raw_graph_runs_with_numpy_nms(tmp_path):
    pytest.importorskip("torch")
    raw = tiny.export_tiny(tmp_path / "model.raw.onnx", raw=True)
    x = tiny.batch(2)
    ref, _ = _dets(raw, x, backend="onnxruntime", provider="cpu")
    got, be = _dets(raw, x, backend="openvino")
    assert be.graph == "raw" and be.output_names == ["boxes", "scores"]
    assert reproduced_share(ref, got, 0.0) == (1.0, sum(len(d) for d in ref))


def test_hand_built_graph_and_foreign_onnx(tmp_path):
    """A contract graph from onnx.helper runs the same; one without our metadata falls back as on ORT."""
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    ours = make_graph(tmp_path / "m.onnx")
    a, b = open_backend(ours, backend="openvino"), open_backend(ours, provider="cpu")
    ra, rb = a.infer(x), b.infer(x)
    assert list(ra) == list(OUTPUT_NAMES)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(ra[k], rb[k], atol=1e-5)
    foreign = open_backend(make_graph(tmp_path / "f.onnx", metadata={}), backend="openvino")
    assert foreign.img_size == 64 and not foreign.has_metadata


@pytest.mark.skipif(HAS_BF16, reason="this CPU has native bf16")
def test_bf16_is_refused_without_native_support(tiny_onnx):
    with pytest.raises(HarmonicError) as exc:
        open_backend(tiny_onnx, backend="openvino", precision="bf16")
    assert "--precision bf16: this CPU" in str(exc.value) and "no native bf16" in str(exc.value)


def test_bf16_sets_the_hint_marks_the_scopes_and_checks_the_compiled_model(tiny_onnx, monkeypatch):
    """The bf16 path end to end: capability query, the hint passed to compile_model, the FP32 scopes marked
    with OpenVINO's typed attribute, then the compiled model's reported precision. Without native bf16 the
    capability is faked: OpenVINO then compiles f32, which the backend must refuse instead of running."""
    real_get, real_compile = ov.Core.get_property, ov.Core.compile_model
    seen = {}

    def get_property(self, *args):
        value = real_get(self, *args)
        return [*value, "BF16"] if args[-1] == "OPTIMIZATION_CAPABILITIES" and "BF16" not in value else value

    def compile_model(self, model, device, config):
        seen["hint"] = config["INFERENCE_PRECISION_HINT"]
        seen["marked"] = sorted(op.get_friendly_name() for op in model.get_ordered_ops()  # the typed attribute
                                if any(k.startswith(("DisablePrecisionConversion", "precise")) for k in
                                       op.get_rt_info().keys()))
        return real_compile(self, model, device, config)

    monkeypatch.setattr(ov.Core, "get_property", get_property)
    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    if HAS_BF16:
        with open_backend(tiny_onnx, backend="openvino", precision="bf16") as be:
            assert be.inference_precision == "bf16" and be.fp32_ops_checked > 20
    else:
        with pytest.raises(HarmonicError, match="asked OpenVINO for bf16, the compiled model runs f32"):
            open_backend(tiny_onnx, backend="openvino", precision="bf16")
    assert seen["hint"] == "bf16"
    assert any(n.startswith("/decode/") for n in seen["marked"]) and any(n.startswith("/nms_tail/") for n in seen["marked"])
    assert "det_scores" in seen["marked"] and not any(n.startswith(("/backbone/", "/head/")) for n in seen["marked"])


def _ir(tmp_path, onnx_path, meta=None):
    model = ovb.shared_core().read_model(str(onnx_path))
    if meta is not None:
        ovb.write_rt_metadata(model, meta)  # over the graph's own
    xml = tmp_path / "ir" / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def test_ir_without_metadata_or_from_a_newer_format_is_refused(tmp_path):
    foreign = _ir(tmp_path / "a", make_graph(tmp_path / "f.onnx", metadata={}))
    with pytest.raises(HarmonicError, match="no HarmonicDet metadata in the IR's runtime info"):
        open_backend(foreign)
    newer = _ir(tmp_path / "b", make_graph(tmp_path / "m.onnx"), {FORMAT_VERSION_KEY: "99"})
    with pytest.raises(HarmonicError, match="metadata version 99 is newer than this HarmonicDet reads"):
        open_backend(newer)
    (newer.with_suffix(".bin")).unlink()
    with pytest.raises(HarmonicError, match=r"the IR's weights model.bin are not beside it"):
        open_backend(newer)


def test_missing_openvino_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    model = make_graph(tmp_path / "m.onnx")
    write_images(tmp_path / "images", 2)
    rc = main(["infer", "--engine", str(model), "--backend", "openvino", "--images", str(tmp_path / "images"),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err == 'error: openvino is not installed, needed for --backend openvino: pip install ' \
                  '"harmonicdet[openvino]" (openvino and nncf)'


def test_infer_cli_openvino_bench_torch_free(tmp_path):
    model = make_graph(tmp_path / "model.onnx")
    write_images(tmp_path / "images", 5)
    out = tmp_path / "out"
    proc = run_infer("--engine", model, "--backend", "openvino", "--precision", "fp32", "--images",
                     tmp_path / "images", "--out", out, "--bench", "--warmup", "1", "--iters", "3", "--threads", "1",
                     check_rc=0)
    assert "backend openvino on" in proc.stdout and "engine-only" in proc.stdout
    bench = json.loads((out / "bench.json").read_text())
    assert bench["backend"] == "openvino" and bench["versions"]["precision"] == "fp32"
    assert len(json.loads((out / "detections.json").read_text())) > 0
    bad = run_infer("--engine", model, "--precision", "bf16", "--images", tmp_path / "images", "--out", out)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "error: --precision: only used with --backend openvino (or an OpenVINO IR .xml)"
    if not HAS_BF16:
        bad = run_infer("--engine", model, "--backend", "openvino", "--precision", "bf16", "--images",
                        tmp_path / "images", "--out", out)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        assert "no native bf16" in bad.stderr


def test_each_batch_size_runs_a_static_compile_that_matches(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ovb, "MAX_STATIC", 2)
    x = tiny.batch(5, seed=3)
    with open_backend(tiny_onnx, backend="openvino") as be, open_backend(tiny_onnx, provider="cpu") as ref:
        assert be.input_spec.shape[0] == -1 and list(be._static) == [1]  # batch 1 compiled up front
        for n in (3, 5, 1):
            got, want = be.infer(x[:n]), ref.infer(x[:n])
            assert got["num_dets"].shape == (n, 1)
            np.testing.assert_array_equal(got["num_dets"], want["num_dets"])
            np.testing.assert_allclose(np.sort(got["det_scores"], 1), np.sort(want["det_scores"], 1), atol=1e-5)
        assert list(be._static) == [5, 1] and be.compiled.inputs[0].get_partial_shape().is_static


def test_models_closed_in_any_order_leave_ctrl_c_working(tmp_path):
    """OpenVINO's CPU plugin swaps the running thread's alternate signal stack per Core and puts the old one
    back when that Core goes: two Cores closed first-in-first-out left the thread on freed memory, and
    Ctrl-C then killed the process with SIGSEGV (exit -11). With one Core per process it is a
    KeyboardInterrupt. A fresh interpreter, so no Core of this test process is involved."""
    graph = make_graph(tmp_path / "m.onnx")
    script = textwrap.dedent(f"""
        import gc, os, signal
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
        import numpy as np
        from harmonic.runtime.backends import open_backend
        from harmonic.runtime.pipeline import run_engine
        x = np.zeros((1, 3, 64, 64), np.float32)
        first = open_backend({str(graph)!r}, backend="openvino"); run_engine(first, x)
        second = open_backend({str(graph)!r}, backend="openvino"); run_engine(second, x)
        first.close(); del first; gc.collect()
        second.close(); del second; gc.collect()
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root)
    assert (done.returncode, done.stdout.strip()) == (0, "KeyboardInterrupt"), done.stderr[-2000:]
