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
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
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

log = logging.getLogger(__name__)

RETINANET_NAMES = {"retinanet_resnet10s_fpn": "resnet10s", "retinanet_resnet18_fpn": "resnet18",
                   "retinanet_resnet50_fpn": "resnet50"}
# torchvision RetinaNet keywords a user may set through builder options.
_RETINANET_KWARGS = frozenset(
    {"score_thresh", "nms_thresh", "detections_per_img", "fg_iou_thresh", "bg_iou_thresh", "topk_candidates"}
)
_OPTIONS = _RETINANET_KWARGS | {"fpn_channels", "trainable_backbone_layers", "anchor_size", "head_norm"}


class HarmonicRetinaNetHead(RetinaNetHead):
    """``RetinaNetHead`` whose loss is torchvision's (``"baseline"``) or HarmonicDet's (``"harmonic"``).

    Harmonic, per positive anchor i (matched IoU >= 0.5 or a low-quality best match):
      * ``cls_loss_i`` = sigmoid focal loss (alpha 0.25, gamma 2) summed over the classes of
        anchor i: for this focal-loss head the "CE" of Eq. 2/3 is the focal loss;
      * ``reg_loss_i`` = SmoothL1 (``config.smooth_l1_beta``) between the predicted and the
        ``BoxCoder``-encoded target deltas, summed over the 4 coords; the HIoU term uses the IoU
        of the decoded predicted box with its ground truth;
      * ``class_probs`` = per-class sigmoids of the anchor (column 0 is the always-negative
        background column), ``labels`` = the ground-truth class column (1..C).
    Negatives (IoU < 0.4): focal loss summed over all classes and anchors; anchors between the
    thresholds are ignored. Everything is divided by the number of positives in the batch
    (torchvision divides per image, then averages the images).

    Both modes return ``loss_classifier`` and ``loss_box_reg`` (harmonic adds ``loss_tc``) and
    detached ``stat_*``; baseline values equal torchvision's ``classification`` /
    ``bbox_regression`` exactly.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        norm_layer: Any = None,
        loss: str = "harmonic",
        loss_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer)
        self.loss_kind = loss
        self.harmonic_loss: HarmonicDetLoss | None = make_loss_module(loss, loss_options)

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """Loss hook called by ``RetinaNet.compute_loss`` in training.

        Args:
            targets: per image ``boxes`` ``Tensor[N_i, 4]`` xyxy, ``labels`` ``Tensor[N_i]`` in 1..C.
            head_outputs: ``cls_logits`` ``Tensor[B, A, C+1]``, ``bbox_regression`` ``Tensor[B, A, 4]``.
            anchors: per image ``Tensor[A, 4]`` xyxy.
            matched_idxs: per image ``Tensor[A]``: gt index, -1 (background) or -2 (ignored).
        """
        if self.harmonic_loss is None:
            tv = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
            losses = {"loss_classifier": tv["classification"], "loss_box_reg": tv["bbox_regression"]}
            with torch.no_grad():
                outputs = {k: v.float() for k, v in head_outputs.items()}
                pos = self.gather_positives(targets, outputs, anchors, matched_idxs)
                losses.update(aic_stats(pos["logits"].sigmoid(), pos["labels"], pos["iou"]))
            return losses

        # float32 loss maths under AMP (box decoding and exp overflow in fp16)
        head_outputs = {k: v.float() for k, v in head_outputs.items()}
        config: HarmonicConfig = self.harmonic_loss.config
        cls_logits = head_outputs["cls_logits"]
        pos = self.gather_positives(targets, head_outputs, anchors, matched_idxs)
        matched = torch.stack(matched_idxs)
        gt_classes = torch.zeros_like(cls_logits)
        gt_classes[pos["image_idx"], pos["anchor_idx"], pos["labels"]] = 1.0
        focal = sigmoid_focal_loss(cls_logits, gt_classes, reduction="none").sum(dim=-1)  # [B, A]
        negative = matched == -1  # Matcher.BELOW_LOW_THRESHOLD; -2 (between thresholds) is ignored
        reg = F.smooth_l1_loss(
            pos["deltas"], pos["target_deltas"], beta=config.smooth_l1_beta, reduction="none"
        ).sum(dim=1)
        return self.harmonic_loss(
            focal[pos["image_idx"], pos["anchor_idx"]],
            reg,
            pos["pred_boxes"],
            pos["gt_boxes"],
            pos["logits"].sigmoid(),
            pos["labels"],
            focal[negative].sum(),
            pos["labels"].numel(),
        )

    def gather_positives(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """The positive anchors of the batch, concatenated image after image (P in total).

        Returns:
            ``image_idx``/``anchor_idx`` ``Tensor[P]``; ``logits`` ``Tensor[P, C+1]``; ``labels``
            ``Tensor[P]``; ``deltas``/``target_deltas`` ``Tensor[P, 4]`` (encoded); ``pred_boxes``/
            ``gt_boxes`` ``Tensor[P, 4]`` xyxy; ``iou`` ``Tensor[P]`` (carries gradient to the deltas).
        """
        matched = torch.stack(matched_idxs)
        image_idx, anchor_idx = torch.nonzero(matched >= 0, as_tuple=True)
        gt_index = matched[image_idx, anchor_idx]
        gt_boxes = torch.cat([t["boxes"] for t in targets])
        gt_labels = torch.cat([t["labels"] for t in targets])
        offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets[:-1]], device=matched.device).cumsum(0)
        flat = offsets[image_idx] + gt_index
        box_coder = self.regression_head.box_coder
        pos_anchors = torch.stack(anchors)[image_idx, anchor_idx]
        deltas = head_outputs["bbox_regression"][image_idx, anchor_idx]
        matched_boxes = gt_boxes[flat]
        pred_boxes = box_coder.decode_single(deltas, pos_anchors)
        return {
            "image_idx": image_idx,
            "anchor_idx": anchor_idx,
            "logits": head_outputs["cls_logits"][image_idx, anchor_idx],
            "labels": gt_labels[flat],
            "deltas": deltas,
            "target_deltas": box_coder.encode_single(matched_boxes, pos_anchors),
            "pred_boxes": pred_boxes,
            "gt_boxes": matched_boxes,
            "iou": elementwise_box_iou(pred_boxes, matched_boxes),
        }


class HarmonicRetinaNet(RetinaNet):
    """torchvision ``RetinaNet`` that never reports the background column 0 as a detection.

    Column 0 is trained as always negative (docs/CONTRACTS.md); dropping it before torchvision's
    post-processing keeps eager detections consistent with the exported graph (labels 1..C).
    """

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return super().postprocess_detections(drop_background(head_outputs), anchors, image_shapes)


def drop_background(head_outputs: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
    """Copy of ``head_outputs`` with the class-0 logits (``cls_logits[..., 0]``) set to -inf."""
    out = dict(head_outputs)
    logits = []
    for level in head_outputs["cls_logits"]:
        level = level.clone()
        level[..., 0] = float("-inf")
        logits.append(level)
    out["cls_logits"] = logits
    return out


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

    ``cls_loss`` of the harmonic weighting is the per-anchor focal loss summed over classes (see
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
