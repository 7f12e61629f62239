"""The backend interface every runtime implements and :func:`open_backend` (the contract: :mod:`harmonic.contract`).

A backend runs the exported graph (docs/design.md, "Exported graph"): input ``images``
float32 ``[B, 3, S, S]`` RGB in ``[0, 1]``, letterboxed; outputs ``num_dets``
int32 ``[B, 1]``, ``det_boxes`` float32 ``[B, K, 4]`` (letterboxed input pixels),
``det_scores`` float32 ``[B, K]``, ``det_classes`` int32 ``[B, K]`` (0-based).
A raw-head graph (``graph == "raw"``) returns ``boxes [B, A, 4]`` and
``scores [B, A, C]`` instead; :mod:`harmonic.runtime.postprocess` turns those
into the four outputs with numpy NMS.
"""

from __future__ import annotations

import importlib
import logging
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import ENGINE_SUFFIXES, IR_SUFFIXES, ONNX_SUFFIXES, MetadataClasses, is_ours
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """The graph input: ``shape`` is ``(B, 3, S, S)`` with ``-1`` for a dynamic dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux, else :mod:`platform`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def check_batch_range(batch: int, lo: int, hi: int | None, path: str | Path) -> None:
    """Raise :class:`HarmonicError` when ``batch`` is outside the engine's allowed ``[lo, hi]``."""
    if batch < 1:
        raise HarmonicError(f"--batch must be >= 1, got {batch}")
    if hi is not None and not lo <= batch <= hi:
        allowed = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise HarmonicError(
            f"{path}: --batch {batch} is outside the engine's batch range {allowed}; "
            f"use --batch <= {hi} or re-export with a larger max batch")


class Backend(MetadataClasses, ABC):
    """One runtime behind one interface. Subclasses fill the attributes in ``__init__``."""

    name: str = "?"
    path: Path
    input_spec: InputSpec
    metadata: dict[str, Any]
    device: str = "cpu"
    #: ``None`` when the batch dimension is dynamic without a known limit.
    max_batch: int | None = None
    min_batch: int = 1
    #: GPU time of the last :meth:`infer` in ms (CUDA events), ``None`` where not measured.
    last_engine_ms: float | None = None
    #: whether :meth:`infer` may be called from several threads at once (else callers serialise it)
    thread_safe: bool = False

    @abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` float32 ``[B, 3, S, S]`` -> outputs by name (numpy arrays owned by the caller)."""

    @property
    def versions(self) -> dict[str, str]:
        return {}

    @property
    def has_metadata(self) -> bool:
        return is_ours(self.metadata)

    @property
    def img_size(self) -> int:
        return int(self.metadata["img_size"])

    @property
    def graph(self) -> str:
        return str(self.metadata.get("graph", "nms"))

    @property
    def score_threshold(self) -> float | None:
        value = self.metadata.get("score_threshold")
        return float(value) if value is not None else None

    @property
    def fixed_batch(self) -> int | None:
        """The batch a static-batch graph/engine requires, else ``None``."""
        b = self.input_spec.shape[0]
        if b > 0:
            return int(b)
        if self.max_batch is not None and self.max_batch == self.min_batch:
            return self.max_batch
        return None

    def check_batch(self, batch: int) -> None:
        """Raise :class:`HarmonicError` naming the allowed range when ``batch`` can't run."""
        fixed = self.input_spec.shape[0]
        # batches below a fixed size or a profile minimum are padded, so the lower bound is 1
        check_batch_range(batch, 1, fixed if fixed > 0 else self.max_batch, self.path)

    def close(self) -> None:
        """Release runtime resources (device memory, sessions)."""
        return None

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fallback_metadata(path: Path, input_shape: tuple[int, ...], img_size: int | None) -> dict[str, Any]:
    """Metadata for a graph exported without ours: img size from a static input, else ``img_size``."""
    h, w = (input_shape[2], input_shape[3]) if len(input_shape) == 4 else (-1, -1)
    if img_size is None:
        if h > 0 and h == w:
            img_size = int(h)
        else:
            raise HarmonicError(f"{path}: no HarmonicDet metadata and no static square input size; "
                                "pass --img-size")
    log.warning("%s: no HarmonicDet metadata; using input size %d and class names class0.., "
                "thresholds unknown", path, img_size)
    return {"img_size": int(img_size), "graph": "nms"}


#: backend name -> (module, class); ``auto`` picks one from the file suffix (:func:`backend_for`).
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("harmonic.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "tensorrt": ("harmonic.runtime.backends.tensorrt_backend", "TensorRTBackend"),
    "openvino": ("harmonic.runtime.backends.openvino_backend", "OpenVinoBackend"),
}


def backend_for(path: str | Path, backend: str = "auto") -> str:
    """The backend that opens ``path``: ``backend`` itself, or for ``auto`` the one its suffix names
    (``.onnx`` -> ``onnxruntime``, ``.engine/.plan/.trt`` -> ``tensorrt``, ``.xml`` (an OpenVINO IR) ->
    ``openvino``). One line naming the problem for an unknown backend or file type."""
    path = Path(path)
    if backend != "auto":
        if backend not in BACKENDS:
            raise HarmonicError(f"--backend {backend!r}: unknown; choose from auto, {', '.join(BACKENDS)}")
        return backend
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix in IR_SUFFIXES:
        return "openvino"
    raise HarmonicError(f"{path}: unknown model file type {suffix!r}; expected .onnx, "
                        f"{'/'.join(ENGINE_SUFFIXES)} or an OpenVINO IR {'/'.join(IR_SUFFIXES)}")


def open_backend(path: str | Path, backend: str = "auto", **opts: Any) -> Backend:
    """Open ``path`` with ``backend`` (``auto``: the one its suffix names, :func:`backend_for`).

    ``opts`` go to the backend: ``provider`` (cpu|cuda|tensorrt), ``device`` (``cpu`` or
    ``cuda:N``), ``threads``, ``img_size`` (only used when the file has no metadata),
    ``max_batch`` (TensorRT: buffers are allocated for this batch), ``precision`` (OpenVINO:
    ``fp32``/``bf16``/``int8``, default the model's own).
    """
    path = Path(path)
    module, cls = BACKENDS[backend_for(path, backend)]
    if not path.is_file():
        raise HarmonicError(f"{path}: model file not found")
    return getattr(importlib.import_module(module), cls)(path, **opts)
