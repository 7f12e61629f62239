"""HarmonicDet loss terms: pure functions and the ``HarmonicDetLoss`` module [torch]."""

from harmonic.losses.functional import (
    classification_entropy,
    elementwise_box_iou,
    harmonic_factors,
    harmonic_iou_loss,
    quality_focal_loss,
    task_contrastive_loss,
)
from harmonic.losses.harmonic_det import (
    HarmonicConfig,
    HarmonicDetLoss,
    PositiveTerms,
    localisation_loss,
    positive_stats,
)

__all__ = [
    "HarmonicConfig",
    "HarmonicDetLoss",
    "PositiveTerms",
    "classification_entropy",
    "elementwise_box_iou",
    "harmonic_factors",
    "harmonic_iou_loss",
    "localisation_loss",
    "positive_stats",
    "quality_focal_loss",
    "task_contrastive_loss",
]
