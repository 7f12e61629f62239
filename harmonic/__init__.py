"""HarmonicDet: detectors whose scores rank their boxes by quality.

This top-level package imports nothing heavy: the deploy side (``harmonic.runtime``,
``harmonic.evaluation``, the annotation readers) must work without torch.
``from harmonic import Detector`` (torch-free inference, :mod:`harmonic.runtime.detector`) is
imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detections", "Detector", "__version__"]

_LAZY = {"Detector": "harmonic.runtime.detector", "Detections": "harmonic.runtime.postprocess"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harmonic' has no attribute {name!r}")
