"""The model spec: everything needed to rebuild a detector from a checkpoint, and to deploy it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harmonic.errors import HarmonicError

# Bump when the checkpoint layout changes incompatibly.
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "harmonicdet-checkpoint"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The default operating point (post-processing) of training validation, export and inference.
DEFAULT_SCORE_THRESHOLD = 0.001
DEFAULT_IOU_THRESHOLD = 0.6
DEFAULT_MAX_DET = 100

#: what each operating-point field must be, in words (the message of :class:`OperatingPointError`)
_OPERATING_POINT_RULES = {
    "score_threshold": "score threshold {}: must be in [0, 1)",
    "iou_threshold": "NMS IoU threshold {}: must be in (0, 1]",
    "max_det": "max detections {}: must be a positive integer",
}


class OperatingPointError(HarmonicError):
    """An operating-point value out of range: ``field`` (``"score_threshold"``, ``"iou_threshold"`` or
    ``"max_det"``) and the ``value`` given; the message is the field's rule. A command line words it
    after its own flags."""

    def __init__(self, field: str, value: Any) -> None:
        super().__init__(_OPERATING_POINT_RULES[field].format(value))
        self.field, self.value = field, value


def check_operating_point(score_threshold: float | None, iou_threshold: float | None,
                          max_det: int | None) -> tuple[float | None, float | None, int | None]:
    """Validated ``(score_threshold, iou_threshold, max_det)`` as ``(float, float, int)``, or
    :class:`OperatingPointError`: score threshold in [0, 1), NMS IoU threshold in (0, 1], max_det a
    positive integer.

    A ``None`` (not given: the caller takes a default or the checkpoint's) passes through unchecked.
    """
    if score_threshold is not None and not 0.0 <= float(score_threshold) < 1.0:
        raise OperatingPointError("score_threshold", score_threshold)
    if iou_threshold is not None and not 0.0 < float(iou_threshold) <= 1.0:
        raise OperatingPointError("iou_threshold", iou_threshold)
    if max_det is not None and (int(max_det) != max_det or max_det < 1):
        raise OperatingPointError("max_det", max_det)
    return (None if score_threshold is None else float(score_threshold),
            None if iou_threshold is None else float(iou_threshold), None if max_det is None else int(max_det))


@dataclass
class ModelSpec:
    """Architecture, pre-processing and operating point of a trained detector.

    ``num_classes`` counts object classes (no background); torchvision modules are
    built with ``num_classes + 1`` (see docs/CONTRACTS.md). ``score_threshold``,
    ``iou_threshold`` (NMS) and ``max_det`` are the one operating point that validation
    during training, ``export`` and ``infer`` use unless overridden.
    """

    name: str
    num_classes: int
    class_names: list[str]
    img_size: int
    loss: str = "harmonic"
    loss_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # builder options, e.g. fpn_channels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stride: int = 32
    #: the dataset's own category id of each class (COCO files may use any ids); ``None`` = index + 1
    category_ids: list[int] | None = None
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    max_det: int = DEFAULT_MAX_DET

    def operating_point(self) -> dict[str, float | int]:
        """``{"score_threshold", "iou_threshold", "max_det"}``."""
        return {"score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "max_det": self.max_det}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model spec keys {sorted(unknown)}")
        d = dict(d)
        d["mean"], d["std"] = tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD))
        return cls(**d)
