"""A stand-in ``tensorrt`` module whose engine runs real CUDA copies: the TensorRT backend's CUDA side
checked without TensorRT."""

from __future__ import annotations

import types
from typing import Any


def fake_tensorrt_for_cuda(cudart: Any, S: int, K: int) -> types.ModuleType:  # noqa: N803
    """A stand-in ``tensorrt`` whose 'engine' is computed with real CUDA copies on the backend's stream:
    out = per-image mean of the input (num_dets = 1..B, det_scores = mean, boxes fixed, class 2)."""
    import numpy as np

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, lvl: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT=0, OUTPUT=1)
    trt.nptype = lambda dt: dt
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    tensors = [("images", 0, (-1, 3, S, S), np.float32), ("num_dets", 1, (-1, 1), np.int32),
               ("det_boxes", 1, (-1, K, 4), np.float32), ("det_scores", 1, (-1, K), np.float32),
               ("det_classes", 1, (-1, K), np.int32)]
    by = {t[0]: t for t in tensors}
    seen: dict[str, Any] = {"streams": []}
    trt.seen = seen

    def ok(r: Any) -> Any:
        if r[0] != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error {r[0]}")
        return r[1] if len(r) == 2 else None

    class Context:
        def __init__(self) -> None:
            self.addr: dict[str, int] = {}
            self.shape: tuple[int, ...] = ()

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shape = tuple(shape)
            return 1 <= shape[0] <= 4

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addr[name] = int(ptr)

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.shape[0], *by[name][2][1:])

        def execute_async_v3(self, stream: int) -> bool:
            seen["streams"].append(stream)
            b = self.shape[0]
            d2h, h2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            x = np.empty((b, 3, S, S), np.float32)
            ok(cudart.cudaMemcpyAsync(x.ctypes.data, self.addr["images"], x.nbytes, d2h, stream))
            ok(cudart.cudaStreamSynchronize(stream))
            outs = {"num_dets": np.arange(1, b + 1, dtype=np.int32)[:, None],
                    "det_scores": np.repeat(x.mean(axis=(1, 2, 3))[:, None], K, 1).astype(np.float32),
                    "det_boxes": np.tile(np.array([1, 1, 4, 4], np.float32), (b, K, 1)),
                    "det_classes": np.full((b, K), 2, np.int32)}
            seen["host_outputs"] = outs  # kept alive until the copies ran (synchronised below)
            for name, arr in outs.items():
                ok(cudart.cudaMemcpyAsync(self.addr[name], arr.ctypes.data, arr.nbytes, h2d, stream))
            ok(cudart.cudaStreamSynchronize(stream))
            return True

    class Engine:
        num_io_tensors = len(tensors)

        def get_tensor_name(self, i: int) -> str:
            return tensors[i][0]

        def get_tensor_mode(self, name: str) -> int:
            return by[name][1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return by[name][2]

        def get_tensor_dtype(self, name: str) -> Any:
            return by[name][3]

        def get_tensor_profile_shape(self, name: str, idx: int) -> list[tuple[int, ...]]:
            return [(1, 3, S, S), (2, 3, S, S), (4, 3, S, S)]

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            return Engine() if blob == b"FAKE-PLAN" else None

    trt.Runtime = Runtime
    return trt
