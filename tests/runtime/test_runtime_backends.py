import logging

import numpy as np
import pytest

from harmonic.contract import read_sidecar
from harmonic.errors import HarmonicError
from harmonic.runtime import open_backend
from harmonic.runtime.backends.onnxruntime_backend import choose_providers
from harmonic.runtime.backends.tensorrt_backend import (
    BufferPlan,
    TensorInfo,
    check_batch_range,
    check_sidecar,
    plan_buffers,
)
from harmonic.runtime.pipeline import run_engine
from harmonic.runtime.postprocess import split_outputs

from .runtime_graphs import NAMES, S, make_graph


def _batch(n, seed=0):
    return np.random.default_rng(seed).random((n, 3, S, S), dtype=np.float32)


def test_onnx_backend_reads_metadata_and_runs(nms_graph):
    with open_backend(nms_graph, provider="cpu", threads=1) as be:
        assert be.name == "onnxruntime"
        assert be.input_spec.name == "images" and be.input_spec.shape == (-1, 3, S, S)
        assert be.img_size == S and be.names == NAMES and be.score_threshold == pytest.approx(0.05)
        assert be.max_batch is None and be.fixed_batch is None and be.graph == "nms"
        out = be.infer(_batch(3))
    assert set(out) == {"num_dets", "det_boxes", "det_scores", "det_classes"}
    assert out["num_dets"].shape == (3, 1) and out["det_boxes"].shape == (3, 6, 4)
    assert out["num_dets"].dtype == np.int32 and out["det_classes"].dtype == np.int32


def test_raw_graph_plus_numpy_nms_equals_nms_graph(tmp_path, nms_graph):
    x = _batch(4, seed=3)
    with open_backend(nms_graph, provider="cpu") as be:
        ref = split_outputs(run_engine(be, x), 4)
    raw_path = make_graph(tmp_path / "raw.onnx", raw=True)
    with open_backend(raw_path, provider="cpu") as be:
        assert be.graph == "raw"
        got = split_outputs(run_engine(be, x), 4)
    for a, b in zip(ref, got):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(a.boxes, b.boxes)


def test_missing_metadata_falls_back_with_warning(tmp_path, caplog):
    path = make_graph(tmp_path / "bare.onnx", metadata={})
    with caplog.at_level(logging.WARNING), open_backend(path, provider="cpu") as be:
        assert be.img_size == S and be.names is None and not be.has_metadata
        assert be.infer(_batch(1))["num_dets"].shape == (1, 1)
    assert "no HarmonicDet metadata" in caplog.text


def test_missing_metadata_and_dynamic_size_needs_img_size(tmp_path):
    import onnx

    path = make_graph(tmp_path / "dyn.onnx", metadata={})
    m = onnx.load(str(path))
    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    onnx.save(m, str(path))
    with pytest.raises(HarmonicError, match="--img-size"):
        open_backend(path, provider="cpu")
    with open_backend(path, provider="cpu", img_size=S) as be:
        assert be.img_size == S


def test_fixed_batch_graph_rejects_larger_batch_and_pads_smaller(tmp_path):
    path = make_graph(tmp_path / "fixed.onnx", batch=2)
    with open_backend(path, provider="cpu") as be:
        assert be.fixed_batch == 2 and be.max_batch == 2
        with pytest.raises(HarmonicError, match=r"--batch 3 is outside the engine's batch range 1..2"):
            be.check_batch(3)
        be.check_batch(1)
        out = run_engine(be, _batch(1))  # padded to 2
        assert out["num_dets"].shape == (2, 1)


def test_missing_engine_and_unknown_suffix_and_corrupt_file(tmp_path):
    with pytest.raises(HarmonicError, match="model file not found"):
        open_backend(tmp_path / "nope.onnx")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(HarmonicError, match="unknown model file type"):
        open_backend(tmp_path / "m.pt")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(HarmonicError, match="junk.onnx: onnxruntime cannot load"):
        open_backend(tmp_path / "junk.onnx", provider="cpu")


def test_provider_choice_and_unavailable_provider():
    cpu_only = ["CPUExecutionProvider"]
    assert choose_providers(None, None, cpu_only) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, None, gpu)[0][0] == "CUDAExecutionProvider"
    chain = choose_providers("tensorrt", "cuda:1", gpu)
    assert [c[0] if isinstance(c, tuple) else c for c in chain] == gpu and chain[0][1]["device_id"] == 1
    with pytest.raises(HarmonicError, match="CUDAExecutionProvider is not available"):
        choose_providers("cuda", None, cpu_only)
    with pytest.raises(HarmonicError, match="no CUDA provider"):
        choose_providers(None, "cuda:0", cpu_only)
    with pytest.raises(HarmonicError, match="--device"):
        choose_providers(None, "gpu0", cpu_only)


def test_engine_without_tensorrt_installed_gives_install_hint(tmp_path):
    pytest.importorskip("harmonic")  # always true; documents the point: tensorrt is absent here
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    (tmp_path / "m.engine").write_bytes(b"plan")
    with pytest.raises(HarmonicError, match=r'pip install "harmonicdet\[trt\]"'):
        open_backend(tmp_path / "m.engine")


# --- TensorRT pure functions (no library needed) ---

SIDE = {"tensorrt": "10.13.2", "gpu": "NVIDIA T4", "compute_capability": "7.5"}


def test_sidecar_version_mismatch_names_both_and_says_rebuild():
    with pytest.raises(HarmonicError) as e:
        check_sidecar(SIDE, "10.14.1.48", "NVIDIA T4", "7.5", "m.engine")
    msg = str(e.value)
    assert "TensorRT 10.13.2" in msg and "TensorRT 10.14.1.48" in msg
    assert "rebuild the engine on this device" in msg and "export/run.py" in msg and "--engine m.engine" in msg


def test_sidecar_gpu_mismatch_names_both_gpus():
    with pytest.raises(HarmonicError) as e:
        check_sidecar(SIDE, "10.13.2.6", "NVIDIA H100 80GB HBM3", "9.0", "m.engine")
    msg = str(e.value)
    assert "NVIDIA T4 (compute capability 7.5)" in msg and "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in msg
    # same TensorRT patch version (build number differs) and same GPU: fine, no warnings
    assert check_sidecar(SIDE, "10.13.2.6", "NVIDIA T4", "7.5", "m.engine") == []
    # same architecture, another board: a warning, not an error
    assert len(check_sidecar(SIDE, "10.13.2", "NVIDIA T4G", "7.5", "m.engine")) == 1
    # the exporter writes "unknown" when it could not query the GPU: nothing to compare
    assert check_sidecar({**SIDE, "gpu": "unknown", "compute_capability": "unknown"}, "10.13.2", "X", "9.0",
                         "m.engine") == []


def test_read_sidecar(tmp_path, caplog):
    eng = tmp_path / "m.engine"
    with caplog.at_level(logging.WARNING):
        assert read_sidecar(eng) is None
    assert "no sidecar" in caplog.text
    (tmp_path / "m.engine.json").write_text('{"img_size": "64", "names": "[\\"a\\"]", "profile": {"min": 1, "opt": 4, "max": 8}}')
    side = read_sidecar(eng)
    assert side["img_size"] == 64 and side["names"] == ["a"] and side["profile"]["max"] == 8
    (tmp_path / "m.engine.json").write_text("{broken")
    with pytest.raises(HarmonicError, match="m.engine.json: unreadable"):
        read_sidecar(eng)


def test_plan_buffers_from_shapes():
    tensors = [TensorInfo("images", (-1, 3, 640, 640), "float32", True),
               TensorInfo("num_dets", (-1, 1), "int32", False),
               TensorInfo("det_boxes", (-1, 100, 4), "float32", False),
               TensorInfo("det_scores", (-1, 100), "float16", False)]
    plans = plan_buffers(tensors, 8)
    assert plans[0] == BufferPlan("images", (8, 3, 640, 640), "float32", True, 8 * 3 * 640 * 640 * 4)
    assert [p.nbytes for p in plans[1:]] == [8 * 4, 8 * 100 * 4 * 4, 8 * 100 * 2]
    # a static engine keeps its shapes
    assert plan_buffers([TensorInfo("x", (2, 3), "int32", True)], 8)[0].nbytes == 24
    with pytest.raises(HarmonicError, match="dynamic non-batch"):
        plan_buffers([TensorInfo("x", (-1, 3, -1, -1), "float32", True)], 8)


def test_batch_above_profile_max_names_allowed_range():
    check_batch_range(8, 1, 8, "m.engine")
    check_batch_range(100, 1, None, "m.onnx")
    with pytest.raises(HarmonicError, match=r"m.engine: --batch 16 is outside the engine's batch range 1..8"):
        check_batch_range(16, 1, 8, "m.engine")
    with pytest.raises(HarmonicError, match=">= 1"):
        check_batch_range(0, 1, 8, "m.engine")


def test_topk_batched_nms_equals_batched_nms_prefix():
    from harmonic.boxes import batched_nms
    from harmonic.runtime.postprocess import topk_batched_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (400, 2))], 1).astype(np.float32)
    scores = rng.random(400).astype(np.float32)
    classes = rng.integers(0, 3, 400)
    full = batched_nms(boxes, scores, classes, 0.5)
    for k in (1, 7, 50, 1000):
        np.testing.assert_array_equal(topk_batched_nms(boxes, scores, classes, 0.5, k), full[:k])
    assert topk_batched_nms(boxes[:0], scores[:0], classes[:0], 0.5, 5).size == 0
