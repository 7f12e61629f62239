"""Export: checkpoint -> ONNX with NMS in the graph -> TensorRT engine [torch, onnx].

Public API (imported lazily so ``import harmonic.export`` stays cheap):
``export_onnx``, ``export_model``, ``verify_onnx``, ``build_engine``; ``cli.main(argv)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_engine", "export_model", "export_onnx", "verify_onnx"]

_WHERE = {
    "export_onnx": "harmonic.export.onnx_export",
    "export_model": "harmonic.export.onnx_export",
    "verify_onnx": "harmonic.export.verify",
    "build_engine": "harmonic.export.tensorrt",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
