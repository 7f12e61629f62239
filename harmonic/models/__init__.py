"""Detector builders: one adapter per torchvision detector, selected by name [torch]."""

from harmonic.models.registry import (
    MODELS,
    ModelInfo,
    build_detector,
    build_from_spec,
    model_info,
    model_spec,
)
from harmonic.models.spec import ModelSpec

__all__ = ["MODELS", "ModelInfo", "ModelSpec", "build_detector", "build_from_spec", "model_info", "model_spec"]
