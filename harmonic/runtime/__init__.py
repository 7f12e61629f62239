"""Torch-free inference: backends (ONNX Runtime, TensorRT), pre/post-processing, pipeline, benchmark.

Nothing here imports torch, torchvision or onnx (the deploy box has numpy, OpenCV
and a runtime only). Backends are imported lazily by :func:`open_backend`.
"""

from harmonic.runtime.backends import Backend, InputSpec, open_backend

__all__ = ["Backend", "InputSpec", "open_backend"]
