"""Model-construction helpers the detector adapters share: the loss choice, the input size, the
transform settings and the builder options."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harmonic.errors import HarmonicError
from harmonic.losses import HarmonicConfig, HarmonicDetLoss
from harmonic.models.spec import IMAGENET_MEAN, IMAGENET_STD

LOSSES = ("harmonic", "baseline")


def check_loss(loss: str, loss_options: dict[str, Any] | None) -> HarmonicConfig:
    """Validate ``loss`` and ``loss_options``; return the HarmonicDet config (unused for baseline)."""
    if loss not in LOSSES:
        raise HarmonicError(f"unknown loss {loss!r}: expected one of {list(LOSSES)}")
    try:
        return HarmonicConfig.from_options(loss_options)
    except (TypeError, ValueError) as exc:
        raise HarmonicError(f"loss option {exc}") from exc


def make_loss_module(loss: str, loss_options: dict[str, Any] | None) -> HarmonicDetLoss | None:
    """``HarmonicDetLoss`` for ``loss="harmonic"``, ``None`` for ``"baseline"``."""
    config = check_loss(loss, loss_options)
    return HarmonicDetLoss(config) if loss == "harmonic" else None


def check_img_size(name: str, img_size: int, stride: int) -> int:
    """``img_size`` as int; a positive multiple of ``stride`` or ``HarmonicError``."""
    size = int(img_size)
    if size != img_size or size < stride or size % stride:
        raise HarmonicError(f"model {name}: img_size must be a positive multiple of {stride} (got {img_size})")
    return size


def transform_kwargs(
    img_size: int,
    mean: Iterable[float] = IMAGENET_MEAN,
    std: Iterable[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """Keywords for torchvision's ``GeneralizedRCNNTransform``.

    ``min_size = max_size = img_size``: a letterboxed ``img_size`` square is resized by a factor of
    exactly 1 (a no-op), so training and deployment see the same pixels; normalisation by
    ``mean``/``std`` stays inside the model.
    """
    return {"min_size": img_size, "max_size": img_size, "image_mean": list(mean), "image_std": list(std)}


def pop_options(name: str, options: dict[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """Copy of ``options``; unknown keys raise ``HarmonicError`` naming the model."""
    allowed = set(allowed)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise HarmonicError(f"model {name}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(options)
