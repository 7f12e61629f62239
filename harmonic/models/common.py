"""Helpers shared by the detector adapters: backbones, weights, transform settings, loss selection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from harmonic.errors import HarmonicError
from harmonic.losses import HarmonicConfig, HarmonicDetLoss, PositiveTerms, elementwise_box_iou
from harmonic.models.backbones import resnet10s
from harmonic.models.spec import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

LOSSES = ("harmonic", "baseline")

RESNETS: dict[str, tuple[Callable[..., nn.Module], Any]] = {
    "resnet18": (resnet18, ResNet18_Weights),
    "resnet50": (resnet50, ResNet50_Weights),
    "resnet10s": (resnet10s, None),  # no ImageNet weights: random init or a local state dict
}


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


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a local torchvision state dict saved with ``torch.save(model.state_dict(), path)``."""
    p = Path(path)
    if not p.is_file():
        raise HarmonicError(f"{p}: backbone weights file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, unsupported pickle, ...
        raise HarmonicError(f"{p}: cannot read backbone weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise HarmonicError(f"{p}: backbone weights must be a plain state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resolve_backbone_weights(backbone_weights: str | None, enum: Any) -> tuple[Any, Path | None]:
    """Split ``backbone_weights`` into ``(torchvision weights, local path)``; at most one is set.

    ``None`` -> random init (nothing is downloaded); ``"DEFAULT"`` or a member name of ``enum``
    (e.g. ``"IMAGENET1K_V1"``) -> torchvision's weights, downloaded by torchvision; anything else
    is a path to a local state dict and must exist.
    """
    if backbone_weights is None:
        return None, None
    text = str(backbone_weights)
    if enum is None and text == "DEFAULT":
        raise HarmonicError("this backbone has no torchvision weights: --backbone-weights takes a local "
                            "state-dict path here, or omit it to train from scratch")
    if enum is not None and text == "DEFAULT" or text in getattr(enum, "__members__", {}):
        return enum.verify(text), None
    path = Path(text)
    if not path.is_file():
        raise HarmonicError(
            f"{path}: backbone weights file not found"
            + (f" (use DEFAULT for torchvision's {enum.__name__})" if enum is not None else "")
        )
    return None, path


def resnet_fpn_backbone(
    arch: str,
    backbone_weights: str | None = None,
    fpn_channels: int = 256,
    returned_layers: tuple[int, ...] = (2, 3, 4),
    extra_blocks: ExtraFPNBlock | None = None,
    trainable_layers: int | None = None,
) -> BackboneWithFPN:
    """A torchvision ResNet + FPN for detection.

    Args:
        arch: ``"resnet18"``, ``"resnet50"`` or ``"resnet10s"`` (:mod:`harmonic.models.backbones`).
        backbone_weights: ``None`` (random init: trainable ``nn.BatchNorm2d``, all layers trainable,
            because FrozenBatchNorm2d with identity statistics cannot learn), ``"DEFAULT"``
            (torchvision ImageNet weights: FrozenBatchNorm2d, 3 trainable stages, as torchvision)
            or a path to a local torchvision ResNet state dict (same layout as ``"DEFAULT"``).
        fpn_channels: FPN output channels (a lighter head with fewer channels).
        returned_layers: ResNet stages fed to the FPN (2, 3, 4 = C3-C5 for RetinaNet/FCOS).
        extra_blocks: extra FPN levels; default ``LastLevelP6P7(fpn_channels, fpn_channels)``
            (P6/P7 from P5, as torchvision's RetinaNet/FCOS).
        trainable_layers: 0-5 trainable stages from the top; default 5 from scratch, 3 pretrained.

    Returns:
        ``BackboneWithFPN`` with ``out_channels == fpn_channels``.
    """
    if arch not in RESNETS:
        raise HarmonicError(f"unknown backbone {arch!r}; expected one of {list(RESNETS)}")
    fn, enum = RESNETS[arch]
    weights, path = resolve_backbone_weights(backbone_weights, enum)
    pretrained = backbone_weights is not None
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    body = fn(weights=weights, norm_layer=norm_layer)
    if path is not None:
        state = load_state_dict_file(path)
        try:
            body.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).strip().splitlines()[:2])[:300]
            raise HarmonicError(f"{path}: backbone weights do not fit {arch} ({first})") from exc
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= int(trainable_layers) <= 5:
        raise HarmonicError(f"trainable_backbone_layers must be in [0, 5] (got {trainable_layers})")
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][: int(trainable_layers)]
    if trainable_layers == 5:
        layers.append("bn1")
    for pname, param in body.named_parameters():
        if not any(pname.startswith(layer) for layer in layers):
            param.requires_grad_(False)
    stage1 = body.inplanes // 8  # channels of layer1's output: 64 (resnet18) or 256 (resnet50)
    if extra_blocks is None:
        extra_blocks = LastLevelP6P7(fpn_channels, fpn_channels)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned_layers)},
        in_channels_list=[stage1 * 2 ** (k - 1) for k in returned_layers],
        out_channels=fpn_channels,
        extra_blocks=extra_blocks,
    )


def pop_options(name: str, options: dict[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """Copy of ``options``; unknown keys raise ``HarmonicError`` naming the model."""
    allowed = set(allowed)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise HarmonicError(f"model {name}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(options)


def box_loss_per_positive(
    loss_type: str, box_coder: Any, anchors: Tensor, gt_boxes: Tensor, deltas: Tensor, beta: float = 1.0
) -> tuple[Tensor, Tensor]:
    """A family's own box loss ``L(d)`` per positive, unreduced, and the decoded predicted boxes.

    The same function and encoding as torchvision's ``det_utils._box_loss`` (RetinaNet), SSD's
    ``compute_loss`` and ``fastrcnn_loss``, summed over the 4 coordinates instead of the batch.

    Args:
        loss_type: ``"l1"`` or ``"smooth_l1"`` (on ``box_coder``-encoded deltas) or ``"giou"``
            (on decoded boxes).
        box_coder: torchvision ``BoxCoder`` (``encode_single``/``decode_single``) or
            ``BoxLinearCoder`` (``encode``/``decode``).
        anchors, gt_boxes: ``Tensor[P, 4]`` xyxy (anchors / RoIs and their matched ground truth).
        deltas: ``Tensor[P, 4]`` the head's box regression output.
        beta: SmoothL1 transition point.

    Returns:
        ``(loss[P], pred_boxes[P, 4])``.
    """
    single = hasattr(box_coder, "encode_single")
    pred = box_coder.decode_single(deltas, anchors) if single else box_coder.decode(deltas, anchors)
    if loss_type == "giou":
        return generalized_box_iou_loss(pred, gt_boxes, reduction="none"), pred
    target = box_coder.encode_single(gt_boxes, anchors) if single else box_coder.encode(anchors, gt_boxes)
    if loss_type == "l1":
        return F.l1_loss(deltas, target, reduction="none").sum(dim=1), pred
    if loss_type == "smooth_l1":
        return F.smooth_l1_loss(deltas, target, beta=beta, reduction="none").sum(dim=1), pred
    raise HarmonicError(f"box loss {loss_type!r} is not supported (l1, smooth_l1, giou)")


def matched_positives(
    targets: list[dict[str, Tensor]], matched_idxs: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The positives of a one-stage head's matching, image after image (P in total).

    Args:
        targets: per image ``boxes`` ``Tensor[N_i, 4]``, ``labels`` ``Tensor[N_i]``.
        matched_idxs: per image ``Tensor[A]``: the matched gt index, negative for non-positives.

    Returns:
        ``matched`` ``Tensor[B, A]``, ``image_idx`` and ``anchor_idx`` ``Tensor[P]``, the matched
        ground truth's ``boxes`` ``Tensor[P, 4]`` (float32) and ``labels`` ``Tensor[P]``.
    """
    matched = torch.stack(matched_idxs)
    image_idx, anchor_idx = torch.nonzero(matched >= 0, as_tuple=True)
    gt_boxes = torch.cat([t["boxes"] for t in targets]).float()
    gt_labels = torch.cat([t["labels"] for t in targets])
    counts = torch.tensor([len(t["boxes"]) for t in targets], device=matched.device)
    flat = (counts.cumsum(0) - counts)[image_idx] + matched[image_idx, anchor_idx]
    return matched, image_idx, anchor_idx, gt_boxes[flat], gt_labels[flat]


def focal_positive_terms(
    cls_logits: Tensor,
    image_idx: Tensor,
    anchor_idx: Tensor,
    labels: Tensor,
    negative: Tensor,
    image_weight: Tensor,
    quality: Tensor | None = None,
    qfl_beta: float = 2.0,
) -> dict[str, Tensor]:
    """Classification parts of :class:`PositiveTerms` for a sigmoid focal-loss head.

    torchvision's focal loss (alpha 0.25, gamma 2) summed over the classes of each anchor: the
    positives' sums are ``cls_loss`` (the term ``1+beta_r`` weights), the negatives' sum is
    weighted per image like torchvision's normaliser. ``p_true`` is the sigmoid of the true
    class's logit.

    Args:
        cls_logits: ``Tensor[B, A, K]`` class logits (float32).
        image_idx, anchor_idx: ``Tensor[P]`` the positives; labels: ``Tensor[P]`` their class column.
        negative: ``Tensor[B, A]`` bool, the anchors trained as background.
        image_weight: ``Tensor[B]`` normaliser of each image's terms.
        quality: ``Tensor[P]`` (detached) soft targets of the true classes: with it the loss is GFL's
            quality focal loss ``BCE(sigma, y) * |y - sigma| ** qfl_beta`` (``y`` = quality at the
            positive's true class, 0 elsewhere; no alpha) instead of torchvision's focal loss.
        qfl_beta: QFL's modulation exponent.

    Returns:
        ``cls_loss``, ``p_true``, ``class_probs`` ``[P, K]``, ``labels``, ``weight`` ``[P]``,
        ``neg_cls_loss`` (scalar).
    """
    gt_classes = torch.zeros_like(cls_logits)
    if quality is None:
        gt_classes[image_idx, anchor_idx, labels] = 1.0
        focal = sigmoid_focal_loss(cls_logits, gt_classes, reduction="none").sum(dim=-1)  # [B, A]
    else:
        gt_classes[image_idx, anchor_idx, labels] = quality.detach().to(cls_logits.dtype)
        focal = quality_focal_loss(cls_logits, gt_classes, qfl_beta).sum(dim=-1)  # [B, A]
    neg = (torch.where(negative, focal, torch.zeros_like(focal)).sum(dim=1) * image_weight).sum()
    probs = cls_logits[image_idx, anchor_idx].sigmoid()
    return {
        "cls_loss": focal[image_idx, anchor_idx],
        "p_true": probs.gather(1, labels.view(-1, 1)).squeeze(1),
        "class_probs": probs,
        "labels": labels,
        "weight": image_weight[image_idx],
        "neg_cls_loss": neg,
    }


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """GFL's quality focal loss, elementwise: ``BCE(sigmoid(x), y) * |y - sigmoid(x)| ** beta``.

    ``logits``/``targets`` ``Tensor[...]`` of one shape, targets in ``[0, 1]`` -> ``Tensor[...]``.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce * (targets - logits.sigmoid()).abs().pow(beta)


def softmax_positive_terms(logits_pos: Tensor, labels: Tensor, ce_pos: Tensor) -> dict[str, Tensor]:
    """``p_true``, ``class_probs``, ``score`` of softmax CE heads (the score is the softmax column).

    Args:
        logits_pos: ``Tensor[P, C+1]``; labels: ``Tensor[P]`` columns; ce_pos: ``Tensor[P]`` CE.
    """
    probs = F.softmax(logits_pos, dim=-1)
    p_true = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return {"cls_loss": ce_pos, "p_true": p_true, "class_probs": probs, "labels": labels, "score": p_true}


def quality_target(loss: str, config: HarmonicConfig, pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor | None:
    """The QFL soft target of each positive (``Tensor[P]``, detached IoU of ``pred_boxes[P, 4]`` with
    ``gt_boxes[P, 4]``) when ``config.quality_focal`` is on for the harmonic loss, else None."""
    if loss != "harmonic" or not config.quality_focal:
        return None
    return elementwise_box_iou(pred_boxes.detach(), gt_boxes).clamp(0.0, 1.0)


def make_terms(parts: dict[str, Tensor], box_loss: Tensor, pred_boxes: Tensor, gt_boxes: Tensor) -> PositiveTerms:
    """:class:`PositiveTerms` from the classification ``parts`` and the box loss; ``score`` defaults
    to ``p_true``; the IoU of ``pred_boxes`` with ``gt_boxes`` carries gradient."""
    parts = dict(parts)
    parts.setdefault("score", parts["p_true"])
    return PositiveTerms(box_loss=box_loss, iou=elementwise_box_iou(pred_boxes, gt_boxes), **parts)
