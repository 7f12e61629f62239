"""TensorRT backend (TensorRT 10.x Python API, 11.x compatible) with cuda-python for memory and streams.

Order matters: the sidecar ``<engine>.json`` is checked against this TensorRT and
this GPU *before* deserialising, because a plan from another TensorRT version or
GPU fails deep inside the library (or worse). Host buffers are pinned
(``cudaMallocHost``), device buffers are allocated once for the max batch and
reused; copies are async on one stream, and CUDA events time the engine.

The pure functions (:func:`check_sidecar`,
:func:`plan_buffers`, :func:`check_batch_range`) need neither library and are
unit-tested; the class itself needs a GPU. The sidecar's path and reading are
:mod:`harmonic.contract`'s.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import read_sidecar
from harmonic.errors import HarmonicError
from harmonic.runtime.backends.base import (
    Backend,
    InputSpec,
    check_batch_range,
    fallback_metadata,
)

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "harmonicdet[trt]" (tensorrt and cuda-python)'
__all__ = ["BufferPlan", "TensorInfo", "TensorRTBackend", "check_batch_range", "check_sidecar", "plan_buffers"]


@dataclass(frozen=True)
class TensorInfo:
    """An engine I/O tensor as TensorRT reports it: ``shape`` has ``-1`` for dynamic dims."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    is_input: bool


@dataclass(frozen=True)
class BufferPlan:
    """One buffer allocated once for the max batch: ``shape`` is concrete, ``nbytes`` its size."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    is_input: bool
    nbytes: int


def _version_key(version: str, parts: int = 3) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:parts])


def check_sidecar(sidecar: dict[str, Any], trt_version: str, gpu_name: str,
                  compute_capability: str, engine: str | Path) -> list[str]:
    """Raise :class:`HarmonicError` when the engine was built for another TensorRT or GPU architecture.

    A plan is only valid for the TensorRT version (major.minor.patch) and the
    compute capability it was built with. A different GPU name with the same
    compute capability usually loads but may be slower: that is returned as a
    warning string instead.
    """
    hint = f"rebuild the engine on this device with: python export/run.py --checkpoint CKPT --engine {engine}"
    built_trt = sidecar.get("tensorrt")
    if built_trt and built_trt != "unknown" and _version_key(built_trt) != _version_key(trt_version):
        raise HarmonicError(f"{engine}: built with TensorRT {built_trt}, this is TensorRT {trt_version}; {hint}")
    known = lambda v: v not in (None, "", "unknown")  # noqa: E731 - the exporter writes "unknown" when it can't tell
    built_cc = sidecar.get("compute_capability") if known(sidecar.get("compute_capability")) else None
    built_gpu = sidecar.get("gpu") if known(sidecar.get("gpu")) else None
    if built_cc and str(built_cc) != str(compute_capability):
        raise HarmonicError(f"{engine}: built for {built_gpu or '?'} (compute capability {built_cc}), "
                            f"this GPU is {gpu_name} (compute capability {compute_capability}); {hint}")
    warnings = []
    if built_gpu and str(built_gpu) != gpu_name:
        warnings.append(f"{engine}: built on {built_gpu}, running on {gpu_name} (same compute capability "
                        f"{compute_capability}); it loads, but rebuild on this GPU for best speed")
    return warnings


def plan_buffers(tensors: list[TensorInfo], max_batch: int) -> list[BufferPlan]:
    """Concrete buffer shapes and sizes for ``max_batch``: a dynamic leading dim becomes ``max_batch``.

    Any other dynamic dimension can't be sized up-front -> :class:`HarmonicError`.
    """
    plans = []
    for t in tensors:
        shape = list(t.shape)
        if shape and shape[0] < 0:
            shape[0] = max_batch
        if any(d < 0 for d in shape):
            raise HarmonicError(f"tensor {t.name!r} has dynamic non-batch dims {t.shape}; "
                                "only the batch dimension may be dynamic")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
        plans.append(BufferPlan(t.name, tuple(shape), t.dtype, t.is_input, nbytes))
    return plans


def _import_trt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise HarmonicError(f"tensorrt is not installed, needed for .engine files: {INSTALL_HINT}") from exc
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise HarmonicError(f"cuda-python is not installed, needed for .engine files: {INSTALL_HINT}") from exc
    return trt, cudart


def _check(result: Any, cudart: Any) -> Any:
    """cuda-python returns ``(err, *values)``: raise on error, return the values."""
    err, rest = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        _, msg = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {err}: {msg.decode() if isinstance(msg, bytes) else msg}")
    return rest[0] if len(rest) == 1 else (rest or None)


_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


def _np_dtype(trt: Any, dt: Any) -> str:
    """TensorRT ``DataType`` -> numpy dtype name (``trt.nptype`` where it exists)."""
    try:
        return np.dtype(trt.nptype(dt)).name
    except (AttributeError, TypeError, KeyError):
        key = str(dt).rsplit(".", 1)[-1]
        if key not in _TRT_DTYPES:
            raise HarmonicError(f"unsupported TensorRT tensor dtype {dt}") from None
        return _TRT_DTYPES[key]


class TensorRTBackend(Backend):
    """A serialized TensorRT plan (``.engine``/``.plan``/``.trt``) with its JSON sidecar."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str | None = None, img_size: int | None = None,
                 max_batch: int | None = None, **_: Any) -> None:
        trt, cudart = _import_trt()
        self._trt, self._cudart = trt, cudart
        self.path = Path(path)
        self._allocated: list[tuple[str, int]] = []
        index = 0
        if device:
            kind, _, idx = device.partition(":")
            if kind != "cuda":
                raise HarmonicError(f"{self.path}: a TensorRT engine runs on a GPU, not --device {device}")
            index = int(idx or 0)
        _check(cudart.cudaSetDevice(index), cudart)
        props = _check(cudart.cudaGetDeviceProperties(index), cudart)
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        gpu = gpu.rstrip("\x00")
        cc = f"{props.major}.{props.minor}"
        self.device = f"cuda:{index} ({gpu})"
        sidecar = read_sidecar(self.path)
        if sidecar is not None:
            for w in check_sidecar(sidecar, trt.__version__, gpu, cc, self.path):
                log.warning(w)
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            raise HarmonicError(f"{self.path}: cannot read engine ({exc})") from exc
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # an engine with plugin layers (RoiAlign) needs the registry
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise HarmonicError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine "
                                "(corrupt, or built by another TensorRT/GPU); rebuild it on this device "
                                f"with: python export/run.py --checkpoint CKPT --engine {self.path}")
        self.context = self.engine.create_execution_context()
        tensors = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            dtype = _np_dtype(trt, self.engine.get_tensor_dtype(name))
            tensors.append(TensorInfo(name, shape, dtype, is_input))
        inputs = [t for t in tensors if t.is_input]
        if len(inputs) != 1:
            raise HarmonicError(f"{self.path}: expected one input tensor, found {len(inputs)}")
        self.input_spec = InputSpec(inputs[0].name, inputs[0].shape, inputs[0].dtype)
        self.tensors = tensors
        # batch range from the optimisation profile (dynamic) or the static shape
        if inputs[0].shape[0] < 0:
            lo, _opt, hi = self.engine.get_tensor_profile_shape(inputs[0].name, 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        else:
            self.min_batch = self.max_batch = inputs[0].shape[0]
        if max_batch is not None:
            check_batch_range(max_batch, 1, self.max_batch, self.path)
        # run_engine pads a batch up to the profile's minimum: the buffers must hold that many rows
        alloc_batch = max(max_batch or self.max_batch, self.min_batch)
        meta = dict(sidecar or {})
        if "img_size" not in meta:
            meta.update(fallback_metadata(self.path, inputs[0].shape, img_size))
        self.metadata = meta
        self._allocate(plan_buffers(tensors, alloc_batch))

    def _allocate(self, plans: list[BufferPlan]) -> None:
        cudart = self._cudart
        self.stream = _check(cudart.cudaStreamCreate(), cudart)
        self._ev_start = _check(cudart.cudaEventCreate(), cudart)
        self._ev_end = _check(cudart.cudaEventCreate(), cudart)
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, int] = {}
        self.plans = {p.name: p for p in plans}
        for p in plans:
            host_ptr = _check(cudart.cudaMallocHost(p.nbytes), cudart)
            self._allocated.append(("host", host_ptr))
            raw = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctypes.c_uint8)), (p.nbytes,))
            self.host[p.name] = raw.view(np.dtype(p.dtype)).reshape(p.shape)  # float16 has no ctypes type
            dev_ptr = _check(cudart.cudaMalloc(p.nbytes), cudart)
            self._allocated.append(("dev", dev_ptr))
            self.dev[p.name] = int(dev_ptr)
            self.context.set_tensor_address(p.name, int(dev_ptr))

    @property
    def versions(self) -> dict[str, str]:
        return {"tensorrt": self._trt.__version__}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` float32 ``[B, 3, S, S]`` (B <= allocated max) -> outputs by name (copies)."""
        cudart = self._cudart
        name = self.input_spec.name
        b = batch.shape[0]
        cap = self.plans[name].shape[0]
        if b > cap:
            raise HarmonicError(f"{self.path}: batch {b} exceeds the allocated max batch {cap}")
        host_in = self.host[name][:b]
        np.copyto(host_in, batch, casting="same_kind")
        nbytes_in = host_in.nbytes
        if not self.context.set_input_shape(name, tuple(batch.shape)):
            raise HarmonicError(f"{self.path}: input shape {tuple(batch.shape)} is outside the engine's profile")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self.dev[name], host_in.ctypes.data, nbytes_in, h2d, self.stream), cudart)
        _check(cudart.cudaEventRecord(self._ev_start, self.stream), cudart)
        if not self.context.execute_async_v3(int(self.stream)):  # TensorRT takes the raw handle
            raise RuntimeError(f"{self.path}: TensorRT execute_async_v3 failed")
        _check(cudart.cudaEventRecord(self._ev_end, self.stream), cudart)
        outs: dict[str, np.ndarray] = {}
        for t in self.tensors:
            if t.is_input:
                continue
            shape = tuple(self.context.get_tensor_shape(t.name))
            view = self.host[t.name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
            _check(cudart.cudaMemcpyAsync(view.ctypes.data, self.dev[t.name], view.nbytes, d2h, self.stream), cudart)
            outs[t.name] = view
        _check(cudart.cudaStreamSynchronize(self.stream), cudart)
        self.last_engine_ms = float(_check(cudart.cudaEventElapsedTime(self._ev_start, self._ev_end), cudart))
        return {k: v.copy() for k, v in outs.items()}

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for kind, ptr in self._allocated:
            (cudart.cudaFreeHost if kind == "host" else cudart.cudaFree)(ptr)
        self._allocated = []
        for attr in ("_ev_start", "_ev_end"):
            if getattr(self, attr, None) is not None:
                cudart.cudaEventDestroy(getattr(self, attr))
                setattr(self, attr, None)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA runtime may already be gone
            pass
