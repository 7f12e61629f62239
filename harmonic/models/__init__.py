"""Detector builders: one adapter per torchvision detector, selected by name [torch]."""

from harmonic.models.family import Family
from harmonic.models.registry import (
    MODELS,
    ModelInfo,
    build_detector,
    build_from_spec,
    family_of,
    get_family,
    model_info,
    model_spec,
)
from harmonic.models.spec import ModelSpec

__all__ = ["MODELS", "Family", "ModelInfo", "ModelSpec", "build_detector", "build_from_spec", "family_of",
           "get_family", "model_info", "model_spec"]
