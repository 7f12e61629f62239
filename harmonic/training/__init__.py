"""Training: the loop, checkpoints, distributed launch [torch].

Public API: ``train(config) -> dict`` (a ``TrainConfig``), ``train_one_epoch(...)``, ``evaluate_model(...)``,
``get_args_parser()``; checkpoints in ``harmonic.training.checkpoint``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train": "harmonic.training.trainer",
    "TrainConfig": "harmonic.training.config",
    "get_args_parser": "harmonic.training.cli",
    "main": "harmonic.training.cli",
    "train_one_epoch": "harmonic.training.loop",
    "evaluate_model": "harmonic.training.loop",
    "save_checkpoint": "harmonic.training.checkpoint",
    "load_checkpoint": "harmonic.training.checkpoint",
    "model_from_checkpoint": "harmonic.training.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:  # lazy: importing the package does not build the whole stack
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harmonic.training' has no attribute {name!r}")
