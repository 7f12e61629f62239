"""FCOS (ResNet-18/50 + FPN) with a HarmonicDet loss adapter on the head's ``compute_loss``.

torchvision keeps FCOS's loss in ``FCOSHead.compute_loss``; :class:`HarmonicFCOSHead` overrides only
that hook. Location assignment (centre sampling, scale ranges), the network and inference are
torchvision's, so both losses share the state-dict layout and post-processing.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from harmonic.errors import HarmonicError
from harmonic.losses import PositiveTerms, elementwise_box_iou
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
from harmonic.models.retinanet import silence_background_logit, without_background

log = logging.getLogger(__name__)

FCOS_NAMES = {"fcos_resnet10s_fpn": "resnet10s", "fcos_resnet18_fpn": "resnet18",
              "fcos_resnet50_fpn": "resnet50"}
_FCOS_KWARGS = frozenset(
    {"score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "center_sampling_radius"}
)
_OPTIONS = _FCOS_KWARGS | {"fpn_channels", "trainable_backbone_layers", "num_convs"}


class HarmonicFCOSHead(DenseLossAdapter, FCOSHead):
    """``FCOSHead`` whose loss is torchvision's (``"baseline"``) or HarmonicDet's (``"harmonic"``).

    Harmonic, per positive location i (inside its matched box, centre-sampled, right FPN level),
    on torchvision's own terms:
      * ``cls_i`` = sigmoid focal loss summed over the classes of location i (the classification
        loss ``1 + beta_r`` weights); every other location is a negative with its focal loss;
      * ``p_i`` = sigmoid of the true class's logit: ``beta_c``;
      * ``L(d)_i`` = torchvision's GIoU loss of the decoded box, plus ``alpha * HIoU``;
      * TC and AIC use the score FCOS ranks by after post-processing,
        ``sqrt(sigmoid(cls) * sigmoid(centerness))`` (TC's gradient reaches both branches);
      * the centre-ness BCE stays torchvision's ``loss_bbox_ctrness``; everything is divided by
        the number of positives in the batch, as torchvision.
    With ``harmonic_factors=False, alpha=0, tc_weight=0`` the loss equals the baseline.

    Both modes return ``loss_classifier``, ``loss_box_reg``, ``loss_bbox_ctrness`` (harmonic adds
    ``loss_tc``) and detached ``stat_*`` (the baseline logs the factors it would have had).
    """

    def terms(self, positives: tuple[PositiveTerms, dict[str, Tensor]]) -> PositiveTerms:
        return positives[0]

    def harmonic_losses(self, positives: tuple[PositiveTerms, dict[str, Tensor]]) -> dict[str, Tensor]:
        """HarmonicDet's terms plus the centre-ness BCE (torchvision's, or on the IoU with ``iou_centerness``)."""
        terms, ctrness = positives
        losses = self.harmonic_loss(terms)
        losses["loss_bbox_ctrness"] = centerness_loss(ctrness["logits"], ctrness["target_ltrb"],
                                                      ctrness["target"]) * ctrness["norm"]
        return losses

    def positive_terms(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                       matched_idxs: list[Tensor]) -> tuple[PositiveTerms, dict[str, Tensor]]:
        """The positive locations of the batch (P in total, image after image) as :class:`PositiveTerms`,
        and what the centre-ness term needs: ``logits`` ``[P]``, ``target_ltrb`` ``[P, 4]`` (encoded
        l, t, r, b of the matched box) and ``norm`` (``1 / max(1, P)``)."""
        matched, image_idx, anchor_idx, matched_boxes, labels = matched_positives(targets, matched_idxs)
        norm = 1.0 / max(1, int(image_idx.numel()))
        image_weight = torch.full((len(targets),), norm, device=matched.device)
        pos_anchors = torch.stack(anchors)[image_idx, anchor_idx]
        box_loss, pred_boxes = box_loss_per_positive(
            "giou", self.box_coder, pos_anchors, matched_boxes, head_outputs["bbox_regression"][image_idx, anchor_idx])
        quality = quality_target(self.loss_kind, self.loss_config, pred_boxes, matched_boxes)
        parts = focal_positive_terms(head_outputs["cls_logits"], image_idx, anchor_idx, labels,
                                     matched < 0, image_weight, quality=quality, qfl_beta=self.loss_config.qfl_beta)
        ctrness = head_outputs["bbox_ctrness"][image_idx, anchor_idx, 0]
        parts["score"] = torch.sqrt(parts["p_true"] * torch.sigmoid(ctrness))  # torchvision's ranking score
        target_ltrb = self.box_coder.encode(pos_anchors, matched_boxes)
        ctr_target = None
        if self.loss_kind == "harmonic" and self.loss_config.iou_centerness:  # the detached IoU, as QFL's target
            ctr_target = quality if quality is not None else (
                elementwise_box_iou(pred_boxes.detach(), matched_boxes).clamp(0.0, 1.0))
        return make_terms(parts, box_loss, pred_boxes, matched_boxes), {
            "logits": ctrness, "target_ltrb": target_ltrb, "norm": norm, "target": ctr_target}


class HarmonicFCOS(FCOS):
    """torchvision ``FCOS`` that never reports the background column 0 as a detection."""

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return super().postprocess_detections(without_background(head_outputs), anchors, image_shapes)


def centerness_scores(head_outputs: dict[str, Tensor]) -> Tensor:
    """FCOS's ranking score ``sqrt(sigmoid(cls) * sigmoid(centerness))`` per class, ``Tensor[B, A, C+1]``."""
    return torch.sqrt(torch.sigmoid(head_outputs["cls_logits"]) * torch.sigmoid(head_outputs["bbox_ctrness"]))


def centerness_loss(ctrness_logits: Tensor, target_ltrb: Tensor, target: Tensor | None = None) -> Tensor:
    """Summed BCE of FCOS centre-ness, as torchvision.

    Args:
        ctrness_logits: ``Tensor[P]`` predicted centre-ness logits of the positives.
        target_ltrb: ``Tensor[P, 4]`` encoded (l, t, r, b) targets (all > 0 for positives).
        target: ``Tensor[P]`` in ``[0, 1]`` to use instead of the geometric centre-ness (the
            ``iou_centerness`` option passes the detached IoU of the predicted box).
    """
    if target_ltrb.numel() == 0:
        return ctrness_logits.sum() * 0.0
    if target is None:
        lr, tb = target_ltrb[:, [0, 2]], target_ltrb[:, [1, 3]]
        target = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
    return F.binary_cross_entropy_with_logits(ctrness_logits, target, reduction="sum")


def build_fcos(
    name: str,
    num_classes: int,
    *,
    loss: str,
    img_size: int,
    backbone_weights: str | None,
    loss_options: dict[str, Any] | None,
    **options: Any,
) -> HarmonicFCOS:
    """Build ``fcos_resnet18_fpn`` or ``fcos_resnet50_fpn`` for square ``img_size`` inputs.

    The harmonic loss is built on torchvision's focal + GIoU + centre-ness terms (see
    :class:`HarmonicFCOSHead`); ``loss="baseline"`` is torchvision's loss unchanged.

    Args:
        name: one of :data:`FCOS_NAMES`.
        num_classes: C object classes; the model has C + 1 logits (column 0 never positive), labels 1..C.
        loss: ``"harmonic"`` or ``"baseline"``.
        img_size: square input side, a multiple of 32; ``min_size = max_size = img_size``.
        backbone_weights: ``None`` (random init, trainable BatchNorm, nothing downloaded),
            ``"DEFAULT"`` (torchvision ImageNet weights) or a path to a local ResNet state dict.
        loss_options: keyword arguments of :class:`harmonic.losses.HarmonicConfig`.
        **options: ``fpn_channels`` (256, divisible by 32 for the head's GroupNorm),
            ``trainable_backbone_layers`` (0-5), ``num_convs`` (head depth, 4), and FCOS keywords
            ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates``,
            ``center_sampling_radius``.
    """
    if name not in FCOS_NAMES:
        raise HarmonicError(f"unknown FCOS model {name!r}; expected one of {list(FCOS_NAMES)}")
    if num_classes < 1:
        raise HarmonicError(f"model {name}: num_classes must be >= 1 (got {num_classes})")
    img_size = check_img_size(name, img_size, 32)
    options = pop_options(name, options, _OPTIONS)
    fpn_channels = int(options.pop("fpn_channels", 256))
    if fpn_channels % 32:
        raise HarmonicError(f"model {name}: fpn_channels must be divisible by 32 (got {fpn_channels})")
    trainable = options.pop("trainable_backbone_layers", None)
    num_convs = int(options.pop("num_convs", 4))
    make_loss_module(loss, loss_options)  # validate before the (slower) network build
    backbone = resnet_fpn_backbone(FCOS_NAMES[name], backbone_weights, fpn_channels, trainable_layers=trainable)
    # One anchor per location with the level's stride as size, as torchvision's FCOS.
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    head = HarmonicFCOSHead(fpn_channels, 1, num_classes + 1, num_convs, loss=loss, loss_options=loss_options)
    return HarmonicFCOS(backbone, num_classes + 1, anchor_generator=anchors, head=head,
                **transform_kwargs(img_size), **options)


FAMILY = Family("fcos", FCOS, build_fcos, HarmonicFCOSHead, export_head="dense",
                ranking_scores=centerness_scores, focal_head=True, centerness=True,
                prepare_reference=silence_background_logit)
