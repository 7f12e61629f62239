"""Inference backends behind one interface, chosen by file suffix with a lazy import."""

from harmonic.runtime.backends.base import Backend, InputSpec, open_backend

__all__ = ["Backend", "InputSpec", "open_backend"]
