"""Inference backends behind one interface, chosen by file suffix with a lazy import."""

from harmonic.runtime.backends.base import BACKENDS, Backend, InputSpec, backend_for, open_backend

__all__ = ["BACKENDS", "Backend", "InputSpec", "backend_for", "open_backend"]
