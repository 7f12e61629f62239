"""Inference backends behind one interface, chosen by file suffix with a lazy import."""

from harmonic.runtime.backends.base import (
    ENGINE_SUFFIXES,
    ONNX_SUFFIXES,
    Backend,
    InputSpec,
    open_backend,
    parse_metadata,
)

__all__ = ["ENGINE_SUFFIXES", "ONNX_SUFFIXES", "Backend", "InputSpec", "open_backend", "parse_metadata"]
