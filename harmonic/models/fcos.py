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
from torchvision.ops import sigmoid_focal_loss

from harmonic.errors import HarmonicError
from harmonic.losses import HarmonicConfig, HarmonicDetLoss
from harmonic.losses.functional import elementwise_box_iou
from harmonic.models.common import (
    aic_stats,
    check_img_size,
    make_loss_module,
    pop_options,
    resnet_fpn_backbone,
    transform_kwargs,
)
from harmonic.models.retinanet import drop_background

log = logging.getLogger(__name__)

FCOS_NAMES = {"fcos_resnet10s_fpn": "resnet10s", "fcos_resnet18_fpn": "resnet18",
              "fcos_resnet50_fpn": "resnet50"}
_FCOS_KWARGS = frozenset(
    {"score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "center_sampling_radius"}
)
_OPTIONS = _FCOS_KWARGS | {"fpn_channels", "trainable_backbone_layers", "num_convs"}


class HarmonicFCOSHead(FCOSHead):
    """``FCOSHead`` whose loss is torchvision's (``"baseline"``) or HarmonicDet's (``"harmonic"``).

    Harmonic, per positive location i (inside its matched box, centre-sampled, right FPN level):
      * ``cls_loss_i`` = sigmoid focal loss summed over the classes of location i (the "CE" of
        Eq. 2/3 is the focal loss for this focal-loss head);
      * ``reg_loss_i`` = SmoothL1 (``config.smooth_l1_beta``) between the predicted and the
        ``BoxLinearCoder``-encoded (size-normalised l, t, r, b) targets, summed over the 4 coords;
        the HIoU term uses the IoU of the decoded box with its ground truth. torchvision's GIoU
        loss is replaced by this ``SmoothL1 + alpha * HIoU`` (Eq. 11), not added to it;
      * ``class_probs`` = per-class sigmoids of the location (without centre-ness), ``labels`` =
        the ground-truth class column (1..C).
    Negatives: focal loss summed over all classes and locations. The centre-ness BCE of the
    positives is kept as its own term ``loss_bbox_ctrness``. Division by the number of positives,
    as torchvision.

    Both modes return ``loss_classifier``, ``loss_box_reg``, ``loss_bbox_ctrness`` (harmonic adds
    ``loss_tc``) and detached ``stat_*``; baseline values equal torchvision's exactly.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        loss: str = "harmonic",
        loss_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, num_convs)
        self.loss_kind = loss
        self.harmonic_loss: HarmonicDetLoss | None = make_loss_module(loss, loss_options)

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """Loss hook called by ``FCOS.compute_loss`` in training.

        Args:
            targets: per image ``boxes`` ``Tensor[N_i, 4]`` xyxy, ``labels`` ``Tensor[N_i]`` in 1..C.
            head_outputs: ``cls_logits`` ``Tensor[B, A, C+1]``, ``bbox_regression`` ``Tensor[B, A, 4]``,
                ``bbox_ctrness`` ``Tensor[B, A, 1]``.
            anchors: per image ``Tensor[A, 4]`` (one square anchor per location).
            matched_idxs: per image ``Tensor[A]``: gt index or -1.
        """
        if self.harmonic_loss is None:
            tv = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
            losses = {
                "loss_classifier": tv["classification"],
                "loss_box_reg": tv["bbox_regression"],
                "loss_bbox_ctrness": tv["bbox_ctrness"],
            }
            with torch.no_grad():
                outputs = {k: v.float() for k, v in head_outputs.items()}
                pos = self.gather_positives(targets, outputs, anchors, matched_idxs)
                losses.update(aic_stats(pos["logits"].sigmoid(), pos["labels"], pos["iou"]))
            return losses

        # float32 loss maths under AMP (box decoding and exp overflow in fp16)
        head_outputs = {k: v.float() for k, v in head_outputs.items()}
        pos = self.gather_positives(targets, head_outputs, anchors, matched_idxs)
        config: HarmonicConfig = self.harmonic_loss.config
        cls_logits = head_outputs["cls_logits"]
        image_idx, anchor_idx = pos["image_idx"], pos["anchor_idx"]
        num_pos = image_idx.numel()
        gt_classes = torch.zeros_like(cls_logits)
        gt_classes[image_idx, anchor_idx, pos["labels"]] = 1.0
        focal = sigmoid_focal_loss(cls_logits, gt_classes, reduction="none").sum(dim=-1)  # [B, A]
        negative = torch.ones_like(focal, dtype=torch.bool)
        negative[image_idx, anchor_idx] = False
        reg = F.smooth_l1_loss(
            pos["deltas"], pos["target_deltas"], beta=config.smooth_l1_beta, reduction="none"
        ).sum(dim=1)
        losses = self.harmonic_loss(
            focal[image_idx, anchor_idx],
            reg,
            pos["pred_boxes"],
            pos["gt_boxes"],
            pos["logits"].sigmoid(),
            pos["labels"],
            focal[negative].sum(),
            num_pos,
        )
        losses["loss_bbox_ctrness"] = centerness_loss(
            head_outputs["bbox_ctrness"][image_idx, anchor_idx, 0], pos["target_deltas"]
        ) / max(1, num_pos)
        return losses

    def gather_positives(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """The positive locations of the batch, image after image (P in total).

        Returns:
            ``image_idx``/``anchor_idx`` ``Tensor[P]``; ``logits`` ``Tensor[P, C+1]``; ``labels``
            ``Tensor[P]``; ``deltas``/``target_deltas`` ``Tensor[P, 4]`` (encoded ltrb);
            ``pred_boxes``/``gt_boxes`` ``Tensor[P, 4]`` xyxy; ``iou`` ``Tensor[P]``.
        """
        matched = torch.stack(matched_idxs)
        image_idx, anchor_idx = torch.nonzero(matched >= 0, as_tuple=True)
        gt_boxes = torch.cat([t["boxes"] for t in targets])
        gt_labels = torch.cat([t["labels"] for t in targets])
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets[:-1]], device=matched.device).cumsum(0)
        flat = offsets[image_idx] + matched[image_idx, anchor_idx]
        pos_anchors = torch.stack(anchors)[image_idx, anchor_idx]
        deltas = head_outputs["bbox_regression"][image_idx, anchor_idx]
        matched_boxes = gt_boxes[flat]
        pred_boxes = self.box_coder.decode(deltas, pos_anchors)
        return {
            "image_idx": image_idx,
            "anchor_idx": anchor_idx,
            "logits": head_outputs["cls_logits"][image_idx, anchor_idx],
            "labels": gt_labels[flat],
            "deltas": deltas,
            "target_deltas": self.box_coder.encode(pos_anchors, matched_boxes),
            "pred_boxes": pred_boxes,
            "gt_boxes": matched_boxes,
            "iou": elementwise_box_iou(pred_boxes, matched_boxes),
        }


class HarmonicFCOS(FCOS):
    """torchvision ``FCOS`` that never reports the background column 0 as a detection."""

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return super().postprocess_detections(drop_background(head_outputs), anchors, image_shapes)


def centerness_loss(ctrness_logits: Tensor, target_ltrb: Tensor) -> Tensor:
    """Summed BCE of FCOS centre-ness, as torchvision.

    Args:
        ctrness_logits: ``Tensor[P]`` predicted centre-ness logits of the positives.
        target_ltrb: ``Tensor[P, 4]`` encoded (l, t, r, b) targets (all > 0 for positives).
    """
    if target_ltrb.numel() == 0:
        return ctrness_logits.sum() * 0.0
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

    ``cls_loss`` of the harmonic weighting is the per-location focal loss summed over classes
    (see :class:`HarmonicFCOSHead`); ``loss="baseline"`` is torchvision's loss unchanged.

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
