"""Torch-free inference: backends (ONNX Runtime, TensorRT), pre/post-processing, pipeline, benchmark,
and the application API :class:`Detector` (imported on first use).

Nothing here imports torch, torchvision or onnx (the deploy box has numpy, OpenCV
and a runtime only). Backends are imported lazily by :func:`open_backend`.
"""

from __future__ import annotations

from typing import Any

from harmonic.runtime.backends import Backend, InputSpec, open_backend

__all__ = ["Backend", "Detections", "Detector", "InputSpec", "open_backend"]

_LAZY = {"Detector": "harmonic.runtime.detector", "Detections": "harmonic.runtime.postprocess"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harmonic.runtime' has no attribute {name!r}")
