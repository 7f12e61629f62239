"""The detector names: a plain dict of ``ModelInfo``, no import-time registration.

Each name belongs to a detector family (:class:`harmonic.models.family.Family`), whose module
defines its builder, loss adapter, export head and reference post-processing. Every builder has
the signature ``build_<family>(name, num_classes, *, loss, img_size,
backbone_weights, loss_options, **options) -> nn.Module`` with ``num_classes`` = C object classes
(the torchvision module gets C + 1, docs/CONTRACTS.md). Families are imported lazily, so listing
the names costs no family import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from harmonic.errors import HarmonicError
from harmonic.models.building import check_loss
from harmonic.models.family import Family
from harmonic.models.spec import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MAX_DET,
    DEFAULT_SCORE_THRESHOLD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    check_operating_point,
)

#: the detector families; family ``f`` is the module ``harmonic.models.f``, which defines ``FAMILY``
#: (a :class:`Family`) and is imported on first use.
FAMILIES = ("retinanet", "fcos", "ssd", "faster_rcnn")


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name`` (one of :data:`FAMILIES`)."""
    if name not in FAMILIES:
        raise HarmonicError(f"unknown detector family {name!r}; expected one of {list(FAMILIES)}")
    return importlib.import_module(f"harmonic.models.{name}").FAMILY


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a built detector (ours or a plain torchvision one)."""
    for name in FAMILIES:
        family = get_family(name)
        if family.matches(model):
            return family
    raise HarmonicError(f"unsupported model type {type(model).__name__} "
                        f"(supported families: {', '.join(FAMILIES)})")


@dataclass(frozen=True)
class ModelInfo:
    """One detector name: its family (one of :data:`FAMILIES`), default square input, input
    stride, a description."""

    family: str
    default_img_size: int
    stride: int
    description: str

    def detector_family(self) -> Family:
        """The :class:`Family` object (imports the family's module)."""
        return get_family(self.family)


MODELS: dict[str, ModelInfo] = {
    "fcos_resnet10s_fpn": ModelInfo(
        "fcos", 128, 32, "FCOS, ResNet-10-slim-FPN (1.2M-param backbone); the CPU demo's"),
    "retinanet_resnet10s_fpn": ModelInfo(
        "retinanet", 128, 32, "RetinaNet, ResNet-10-slim-FPN; CPU-sized"),
    "retinanet_resnet18_fpn": ModelInfo(
        "retinanet", 320, 32, "RetinaNet, ResNet-18-FPN (P3-P7), focal loss; small/CPU"),
    "retinanet_resnet50_fpn": ModelInfo(
        "retinanet", 640, 32, "RetinaNet, ResNet-50-FPN (P3-P7), focal loss; the paper's"),
    "fcos_resnet18_fpn": ModelInfo(
        "fcos", 320, 32, "FCOS, ResNet-18-FPN (P3-P7), anchor-free; small/CPU"),
    "fcos_resnet50_fpn": ModelInfo(
        "fcos", 640, 32, "FCOS, ResNet-50-FPN (P3-P7), anchor-free"),
    "ssdlite320_mobilenet_v3_large": ModelInfo(
        "ssd", 320, 1, "SSDlite, MobileNetV3-Large, softmax CE + hard-negative mining; edge"),
    "ssd300_vgg16": ModelInfo(
        "ssd", 300, 1, "SSD300, VGG-16, softmax CE + hard-negative mining (input >= 268)"),
    "ssd_resnet10s_fpn": ModelInfo(
        "ssd", 128, 32, "SSD, ResNet-10-slim-FPN (P3-P7), softmax CE + hard-negative mining; CPU-sized"),
    "fasterrcnn_resnet18_fpn": ModelInfo(
        "faster_rcnn", 320, 32, "Faster R-CNN, ResNet-18-FPN, two-stage; small/CPU"),
    "fasterrcnn_resnet50_fpn": ModelInfo(
        "faster_rcnn", 640, 32, "Faster R-CNN, ResNet-50-FPN, two-stage; the paper's"),
}


def model_info(name: str) -> ModelInfo:
    """``MODELS[name]`` or a ``HarmonicError`` listing the names."""
    try:
        return MODELS[name]
    except KeyError:
        raise HarmonicError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def _check_common(name: str, num_classes: int, loss: str, img_size: int | None,
                  loss_options: dict[str, Any] | None) -> tuple[ModelInfo, int]:
    info = model_info(name)
    if int(num_classes) != num_classes or num_classes < 1:
        raise HarmonicError(f"model {name}: num_classes must be a positive integer (got {num_classes})")
    config = check_loss(loss, loss_options)
    if config.quality_focal and not info.detector_family().focal_head:
        focal = ", ".join(f for f in FAMILIES if get_family(f).focal_head)
        raise HarmonicError(f"model {name}: loss option quality_focal needs a sigmoid focal head "
                            f"({focal}), not {info.family}")
    if config.iou_centerness and not info.detector_family().centerness:
        raise HarmonicError(f"model {name}: loss option iou_centerness is for FCOS only, not {info.family}")
    size = info.default_img_size if img_size is None else img_size
    if int(size) != size or size < info.stride or size % info.stride:
        raise HarmonicError(f"model {name}: img_size must be a positive multiple of {info.stride} (got {size})")
    return info, int(size)


def build_detector(
    name: str,
    num_classes: int,
    loss: str = "harmonic",
    img_size: int | None = None,
    backbone_weights: str | None = None,
    loss_options: dict[str, Any] | None = None,
    operating_point: dict[str, Any] | None = None,
    **options: Any,
) -> nn.Module:
    """Build detector ``name`` for ``num_classes`` object classes (no background).

    Args:
        name: a key of :data:`MODELS`.
        num_classes: C; labels fed to the model are 1..C.
        loss: ``"harmonic"`` (HarmonicDet) or ``"baseline"`` (torchvision's loss unchanged).
        img_size: square letterboxed input side; default the model's ``default_img_size``.
        backbone_weights: ``None`` (random init; nothing is ever downloaded by default),
            ``"DEFAULT"`` (torchvision's ImageNet weights) or a local torchvision state-dict path.
        loss_options: :class:`harmonic.losses.HarmonicConfig` fields.
        operating_point: ``score_threshold``, ``iou_threshold``, ``max_det`` of the eval-mode
            post-processing (default 0.001 / 0.6 / 100, as export); they replace the family's own
            ``score_thresh`` / ``nms_thresh`` / ``detections_per_img``.
        **options: builder options (e.g. ``fpn_channels``); see each family's builder.

    Returns:
        The torchvision detector with its loss adapter; in training mode its forward returns
        ``loss_*`` and ``stat_*`` entries (docs/CONTRACTS.md).
    """
    info, size = _check_common(name, num_classes, loss, img_size, loss_options)
    point = _operating_point(operating_point)
    family = info.detector_family()
    model = family.build(name, int(num_classes), loss=loss, img_size=size, backbone_weights=backbone_weights,
                         loss_options=dict(loss_options or {}), **options)
    family.apply_operating_point(model, *point)
    return model


def _operating_point(point: dict[str, Any] | None) -> tuple[float, float, int]:
    point = dict(point or {})
    unknown = sorted(set(point) - {"score_threshold", "iou_threshold", "max_det"})
    if unknown:
        raise HarmonicError(f"operating point: unknown key(s) {unknown}")
    return check_operating_point(point.get("score_threshold", DEFAULT_SCORE_THRESHOLD),
                                 point.get("iou_threshold", DEFAULT_IOU_THRESHOLD),
                                 point.get("max_det", DEFAULT_MAX_DET))


def model_spec(
    name: str,
    num_classes: int,
    class_names: list[str] | None = None,
    loss: str = "harmonic",
    img_size: int | None = None,
    loss_options: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    operating_point: dict[str, Any] | None = None,
) -> ModelSpec:
    """The :class:`ModelSpec` of a detector built by ``build_detector`` with the same arguments.

    ``class_names`` defaults to ``class0..class{C-1}``; it must have ``num_classes`` entries.
    ``operating_point`` as in ``build_detector``.
    """
    info, size = _check_common(name, num_classes, loss, img_size, loss_options)
    names = [f"class{i}" for i in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise HarmonicError(f"model {name}: {len(names)} class names for num_classes={num_classes}")
    score, iou, max_det = _operating_point(operating_point)
    return ModelSpec(
        name=name,
        num_classes=int(num_classes),
        class_names=names,
        img_size=size,
        loss=loss,
        loss_options=dict(loss_options or {}),
        options=dict(options or {}),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stride=info.stride,
        score_threshold=score,
        iou_threshold=iou,
        max_det=max_det,
    )


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Rebuild the detector described by ``spec`` (random weights; load the state dict after).

    The backbone is built without pretrained weights; a state dict trained from a pretrained
    (FrozenBatchNorm2d) backbone loads into the BatchNorm2d layout too, with identical eval outputs.
    The spec's ``mean``/``std`` replace the transform's normalisation; its operating point sets the
    eval-mode post-processing.
    """
    model = build_detector(spec.name, spec.num_classes, loss=spec.loss, img_size=spec.img_size,
                           backbone_weights=None, loss_options=spec.loss_options,
                           operating_point=spec.operating_point(), **spec.options)
    transform = getattr(model, "transform", None)
    if transform is not None:
        transform.image_mean = list(spec.mean)
        transform.image_std = list(spec.std)
    return model
