"""The TensorRT backend's own logic (sidecar check before deserialising, buffers allocated once for the
max batch, copies, shapes, profile range) against fake ``tensorrt`` and ``cuda.bindings.runtime`` modules.

This checks our bookkeeping, not NVIDIA's API: the real calls are unverified without a GPU.
"""

import ctypes
import json
import sys
import types

import numpy as np
import pytest

from harmonic.errors import HarmonicError
from harmonic.runtime import open_backend
from harmonic.runtime.pipeline import run_engine

S, K = 8, 5


def _fake_cudart(log):
    rt = types.ModuleType("cuda.bindings.runtime")
    keep = {}

    def alloc(n):
        a = np.zeros(n, np.uint8)
        keep[a.ctypes.data] = a
        log.append(("alloc", n))
        return 0, a.ctypes.data

    def memcpy(dst, src, n, kind, stream):
        ctypes.memmove(int(dst), int(src), int(n))
        log.append(("memcpy", kind, int(n)))
        return (0,)

    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")
    rt.cudaSetDevice = lambda i: (0,)
    rt.cudaGetDeviceProperties = lambda i: (0, types.SimpleNamespace(name=b"Fake GPU\x00\x00", major=8, minor=6))
    rt.cudaMallocHost = alloc
    rt.cudaMalloc = alloc
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamCreate = lambda: (0, 77)
    rt.cudaEventCreate = lambda: (0, object())
    rt.cudaEventRecord = lambda ev, st: (0,)
    rt.cudaStreamSynchronize = lambda st: (0,)
    rt.cudaEventElapsedTime = lambda a, b: (0, 1.25)
    rt.cudaGetErrorString = lambda e: (0, b"fake error")
    for name in ("cudaFreeHost", "cudaFree", "cudaEventDestroy", "cudaStreamDestroy"):
        setattr(rt, name, lambda *a: (0,))
    return rt


TENSORS = [("images", 0, (-1, 3, S, S), np.float32), ("num_dets", 1, (-1, 1), np.int32),
           ("det_boxes", 1, (-1, K, 4), np.float32), ("det_scores", 1, (-1, K), np.float32),
           ("det_classes", 1, (-1, K), np.int32)]


class FakeContext:
    def __init__(self, log):
        self.addr, self.shape, self.log = {}, None, log

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return 1 <= shape[0] <= 4

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def get_tensor_shape(self, name):
        shape = dict((t[0], t[2]) for t in TENSORS)[name]
        return (self.shape[0], *shape[1:])

    def _arr(self, name, dtype, shape):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_uint8 * n).from_address(self.addr[name]), dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream):
        assert isinstance(stream, int)
        b = self.shape[0]
        x = self._arr("images", np.float32, (b, 3, S, S))
        means = x.mean(axis=(1, 2, 3))
        self._arr("num_dets", np.int32, (b, 1))[:, 0] = np.arange(1, b + 1)
        self._arr("det_scores", np.float32, (b, K))[:] = means[:, None]
        self._arr("det_boxes", np.float32, (b, K, 4))[:] = np.array([1, 1, 4, 4], np.float32)
        self._arr("det_classes", np.int32, (b, K))[:] = 2
        self.log.append(("execute", b))
        return True


def _fake_trt(log, version="10.13.2.6"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, lvl: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT=0, OUTPUT=1)
    trt.nptype = lambda dt: dt
    trt.init_libnvinfer_plugins = lambda logger, ns: log.append(("init_libnvinfer_plugins", ns)) or True
    trt.profile_min = 1

    class Engine:
        num_io_tensors = len(TENSORS)

        def get_tensor_name(self, i):
            return TENSORS[i][0]

        def _t(self, name):
            return next(t for t in TENSORS if t[0] == name)

        def get_tensor_mode(self, name):
            return self._t(name)[1]

        def get_tensor_shape(self, name):
            return self._t(name)[2]

        def get_tensor_dtype(self, name):
            return self._t(name)[3]

        def get_tensor_profile_shape(self, name, idx):
            return [(trt.profile_min, 3, S, S), (max(2, trt.profile_min), 3, S, S), (4, 3, S, S)]

        def create_execution_context(self):
            return FakeContext(log)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            log.append(("deserialize",))
            return Engine() if blob == b"PLAN" else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    log = []
    rt = _fake_cudart(log)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt),
                      ("tensorrt", _fake_trt(log))):
        monkeypatch.setitem(sys.modules, name, mod)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    side = {"harmonic.format": "harmonicdet-onnx", "names": ["a", "b", "c"], "img_size": S, "graph": "nms",
            "score_threshold": 0.001, "tensorrt": "10.13.2", "gpu": "Fake GPU", "compute_capability": "8.6",
            "profile": {"min": 1, "opt": 2, "max": 4}}
    (tmp_path / "m.engine.json").write_text(json.dumps(side))
    return engine, log


def test_buffers_allocated_once_and_outputs_copied_back(fake_trt):
    engine, log = fake_trt
    with open_backend(engine) as be:
        assert be.name == "tensorrt" and be.device == "cuda:0 (Fake GPU)" and be.img_size == S
        assert (be.min_batch, be.max_batch, be.fixed_batch) == (1, 4, None)
        allocs = [e for e in log if e[0] == "alloc"]
        # pinned host + device buffer per tensor, sized for the profile max batch (4)
        assert sorted(n for _, n in allocs) == sorted(2 * [4 * 3 * S * S * 4, 4 * 4, 4 * K * 16, 4 * K * 4, 4 * K * 4])
        rng = np.random.default_rng(0)
        for b in (3, 1, 4):
            x = rng.random((b, 3, S, S), dtype=np.float32)
            out = be.infer(x)
            assert out["num_dets"][:, 0].tolist() == list(range(1, b + 1))
            np.testing.assert_allclose(out["det_scores"][:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-6)
            assert out["det_boxes"].shape == (b, K, 4) and (out["det_classes"] == 2).all()
            assert be.last_engine_ms == 1.25
        # copies are sized to the actual batch, no new allocations
        assert [e for e in log if e[0] == "alloc"] == allocs
        h2d = [n for e in log if e[0] == "memcpy" and e[1] == "h2d" for n in [e[2]]]
        assert h2d == [b * 3 * S * S * 4 for b in (3, 1, 4)]
        with pytest.raises(HarmonicError, match=r"--batch 5 is outside the engine's batch range 1..4"):
            be.check_batch(5)
        assert run_engine(be, np.zeros((2, 3, S, S), np.float32))["num_dets"].shape == (2, 1)


def test_plugins_initialised_before_deserialising(fake_trt):
    engine, log = fake_trt
    with open_backend(engine):
        pass
    assert log.index(("init_libnvinfer_plugins", "")) < log.index(("deserialize",))


def test_buffers_cover_the_profile_minimum_when_batch_is_smaller(fake_trt, monkeypatch):
    """--batch 1 on a profile with min batch 3: run_engine pads to 3 rows, so 3 rows are allocated."""
    engine, log = fake_trt
    monkeypatch.setattr(sys.modules["tensorrt"], "profile_min", 3, raising=False)
    with open_backend(engine, max_batch=1) as be:
        assert (be.min_batch, be.max_batch) == (3, 4)
        assert be.plans["images"].shape[0] == 3
        out = run_engine(be, np.full((1, 3, S, S), 0.5, np.float32))
        assert out["num_dets"].shape == (3, 1) and out["det_scores"][0, 0] == pytest.approx(0.5)
    assert [e for e in log if e[0] == "execute"] == [("execute", 3)]


def test_version_mismatch_is_caught_before_deserialising(fake_trt, monkeypatch):
    engine, log = fake_trt
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", "10.14.1.48")
    with pytest.raises(HarmonicError, match=r"built with TensorRT 10.13.2, this is TensorRT 10.14.1.48; rebuild"):
        open_backend(engine)
    assert ("deserialize",) not in log


def test_undeserialisable_engine_and_too_large_max_batch(fake_trt):
    engine, log = fake_trt
    with pytest.raises(HarmonicError, match="--batch 8 is outside the engine's batch range 1..4"):
        open_backend(engine, max_batch=8)
    engine.write_bytes(b"garbage")
    with pytest.raises(HarmonicError, match="cannot deserialize this engine"):
        open_backend(engine)
