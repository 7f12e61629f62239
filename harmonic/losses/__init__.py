"""HarmonicDet loss terms: pure functions and the ``HarmonicDetLoss`` module [torch]."""

from harmonic.losses.functional import (
    classification_entropy,
    elementwise_box_iou,
    harmonic_factors,
    harmonic_iou_loss,
    harmonic_loss,
    task_contrastive_loss,
)
from harmonic.losses.harmonic_det import HarmonicConfig, HarmonicDetLoss, positive_stats

__all__ = [
    "HarmonicConfig",
    "HarmonicDetLoss",
    "classification_entropy",
    "elementwise_box_iou",
    "harmonic_factors",
    "harmonic_iou_loss",
    "harmonic_loss",
    "positive_stats",
    "task_contrastive_loss",
]
