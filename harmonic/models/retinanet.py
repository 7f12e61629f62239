"""RetinaNet (ResNet-18/50 + FPN) with a HarmonicDet loss adapter on the head's ``compute_loss``.

torchvision keeps RetinaNet's loss in ``RetinaNetHead.compute_loss``; :class:`HarmonicRetinaNetHead`
overrides only that hook. Anchors, matching (IoU 0.5 / 0.4 with low-quality matches), the network
and inference are torchvision's, so both losses share the state-dict layout and post-processing.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from harmonic.errors import HarmonicError
from harmonic.losses import PositiveTerms
from harmonic.models.adapter import (
    DenseLossAdapter,
    box_loss_per_positive,
    focal_positive_terms,
    make_terms,
    matched_positives,
    quality_target,
)
from harmonic.models.backbones import resnet_fpn_backbone
from harmonic.models.building import check_img_size, make_loss_module, pop_options, transform_kwargs
from harmonic.models.family import Family

log = logging.getLogger(__name__)

RETINANET_NAMES = {"retinanet_resnet10s_fpn": "resnet10s", "retinanet_resnet18_fpn": "resnet18",
                   "retinanet_resnet50_fpn": "resnet50"}
# torchvision RetinaNet keywords a user may set through builder options.
_RETINANET_KWARGS = frozenset(
    {"score_thresh", "nms_thresh", "detections_per_img", "fg_iou_thresh", "bg_iou_thresh", "topk_candidates"}
)
_OPTIONS = _RETINANET_KWARGS | {"fpn_channels", "trainable_backbone_layers", "anchor_size", "head_norm"}


class HarmonicRetinaNetHead(DenseLossAdapter, RetinaNetHead):
    """``RetinaNetHead`` whose loss is torchvision's (``"baseline"``) or HarmonicDet's (``"harmonic"``).

    Harmonic, per positive anchor i (matched IoU >= 0.5 or a low-quality best match), on
    torchvision's own terms:
      * ``cls_i`` = sigmoid focal loss (alpha 0.25, gamma 2) summed over the classes of anchor i
        (the classification loss ``1 + beta_r`` weights); negatives (IoU < 0.4) keep their focal
        loss, anchors between the thresholds are ignored;
      * ``p_i`` = sigmoid of the true class's logit: ``beta_c`` and the ranking score (TC, AIC);
      * ``L(d)_i`` = the regression head's own box loss (torchvision's ``_loss_type``, L1 on the
        ``BoxCoder``-encoded deltas for this head), plus ``alpha * HIoU`` of the decoded box;
      * normaliser: each image's terms divided by its number of positives, then the mean over
        the images, as torchvision.
    With ``harmonic_factors=False, alpha=0, tc_weight=0`` the loss equals the baseline.

    Both modes return ``loss_classifier`` and ``loss_box_reg`` (harmonic adds ``loss_tc``) and
    detached ``stat_*`` (the baseline logs the factors it would have had).
    """

    def positive_terms(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                       matched_idxs: list[Tensor]) -> PositiveTerms:
        """The positive anchors of the batch (P in total, image after image) as :class:`PositiveTerms`."""
        matched, image_idx, anchor_idx, matched_boxes, labels = matched_positives(targets, matched_idxs)
        num_fg = (matched >= 0).sum(dim=1).clamp_min(1).float()
        image_weight = 1.0 / (num_fg * len(targets))
        box_loss, pred_boxes = box_loss_per_positive(
            self.regression_head._loss_type, self.regression_head.box_coder,
            torch.stack(anchors)[image_idx, anchor_idx], matched_boxes,
            head_outputs["bbox_regression"][image_idx, anchor_idx])
        quality = quality_target(self.loss_kind, self.loss_config, pred_boxes, matched_boxes)
        parts = focal_positive_terms(head_outputs["cls_logits"], image_idx, anchor_idx, labels,
                                     matched == -1, image_weight,  # -1: Matcher.BELOW_LOW_THRESHOLD
                                     quality=quality, qfl_beta=self.loss_config.qfl_beta)
        return make_terms(parts, box_loss, pred_boxes, matched_boxes)


class HarmonicRetinaNet(RetinaNet):
    """torchvision ``RetinaNet`` that never reports the background column 0 as a detection.

    Column 0 is trained as always negative (docs/CONTRACTS.md); dropping it before torchvision's
    post-processing keeps eager detections consistent with the exported graph (labels 1..C).
    """

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return super().postprocess_detections(without_background(head_outputs), anchors, image_shapes)


def without_background(head_outputs: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
    """Copy of ``head_outputs`` with the class-0 logits (``cls_logits[..., 0]``) set to -inf."""
    out = dict(head_outputs)
    logits = []
    for level in head_outputs["cls_logits"]:
        level = level.clone()
        level[..., 0] = float("-inf")
        logits.append(level)
    out["cls_logits"] = logits
    return out


def silence_background_logit(model: nn.Module) -> None:
    """Make a sigmoid-head detector (RetinaNet, FCOS; ours or plain torchvision) never report column 0.

    The verification reference: a forward hook on the classification head forces the always-negative
    background logit to -1e4 (the exported graph drops that column; torchvision would otherwise
    report it as label 0 at a tiny score threshold).
    """

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:  # noqa: ARG001
        output = output.clone()
        output[..., 0] = -1e4
        return output

    model.head.classification_head.register_forward_hook(hook)


def sigmoid_scores(head_outputs: dict[str, Tensor]) -> Tensor:
    """RetinaNet's ranking score: the sigmoid of each class logit, ``Tensor[B, A, C+1]``."""
    return torch.sigmoid(head_outputs["cls_logits"])


def anchor_generator(base_size: float = 32.0) -> AnchorGenerator:
    """torchvision's RetinaNet anchors (3 scales x 3 ratios on P3-P7) with P3's size ``base_size``."""
    sizes = tuple(tuple(base_size * 2**lvl * 2 ** (k / 3.0) for k in range(3)) for lvl in range(5))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def build_retinanet(
    name: str,
    num_classes: int,
    *,
    loss: str,
    img_size: int,
    backbone_weights: str | None,
    loss_options: dict[str, Any] | None,
    **options: Any,
) -> HarmonicRetinaNet:
    """Build ``retinanet_resnet18_fpn`` or ``retinanet_resnet50_fpn`` for square ``img_size`` inputs.

    The harmonic loss is built on torchvision's focal + L1 terms (see
    :class:`HarmonicRetinaNetHead`); ``loss="baseline"`` is torchvision's loss unchanged.

    Args:
        name: one of :data:`RETINANET_NAMES`.
        num_classes: C object classes; the model has C + 1 logits (column 0 never positive), labels 1..C.
        loss: ``"harmonic"`` or ``"baseline"``.
        img_size: square input side, a multiple of 32; ``min_size = max_size = img_size``.
        backbone_weights: ``None`` (random init, trainable BatchNorm, nothing downloaded),
            ``"DEFAULT"`` (torchvision ImageNet weights) or a path to a local ResNet state dict.
        loss_options: keyword arguments of :class:`harmonic.losses.HarmonicConfig`.
        **options: ``fpn_channels`` (256), ``trainable_backbone_layers`` (0-5), ``anchor_size``
            (P3 anchor size, 32 as torchvision; smaller for small objects), ``head_norm``
            (``"none"`` as torchvision's v1 head, or ``"gn"``: GroupNorm(32) in the head convs),
            and RetinaNet keywords ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
            ``fg_iou_thresh``, ``bg_iou_thresh``, ``topk_candidates``.
    """
    if name not in RETINANET_NAMES:
        raise HarmonicError(f"unknown RetinaNet model {name!r}; expected one of {list(RETINANET_NAMES)}")
    if num_classes < 1:
        raise HarmonicError(f"model {name}: num_classes must be >= 1 (got {num_classes})")
    img_size = check_img_size(name, img_size, 32)
    options = pop_options(name, options, _OPTIONS)
    fpn_channels = int(options.pop("fpn_channels", 256))
    trainable = options.pop("trainable_backbone_layers", None)
    anchors = anchor_generator(float(options.pop("anchor_size", 32.0)))
    head_norm = options.pop("head_norm", "none")
    if head_norm not in ("none", "gn"):
        raise HarmonicError(f"model {name}: head_norm must be 'none' or 'gn' (got {head_norm!r})")
    if head_norm == "gn" and fpn_channels % 32:
        raise HarmonicError(f"model {name}: head_norm 'gn' needs fpn_channels divisible by 32")
    make_loss_module(loss, loss_options)  # validate before the (slower) network build
    backbone = resnet_fpn_backbone(RETINANET_NAMES[name], backbone_weights, fpn_channels,
                                   trainable_layers=trainable)
    head = HarmonicRetinaNetHead(
        fpn_channels,
        anchors.num_anchors_per_location()[0],
        num_classes + 1,
        norm_layer=partial(nn.GroupNorm, 32) if head_norm == "gn" else None,
        loss=loss,
        loss_options=loss_options,
    )
    return HarmonicRetinaNet(backbone, num_classes + 1, anchor_generator=anchors, head=head,
                     **transform_kwargs(img_size), **options)


FAMILY = Family("retinanet", RetinaNet, build_retinanet, HarmonicRetinaNetHead, export_head="dense",
                ranking_scores=sigmoid_scores, focal_head=True, prepare_reference=silence_background_logit)
