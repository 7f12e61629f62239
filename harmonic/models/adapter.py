"""The baseline/harmonic loss switch shared by the detector adapters.

torchvision keeps each detector's loss in a different hook (RetinaNet/FCOS head ``compute_loss``,
SSD model ``compute_loss``, Faster R-CNN ``fastrcnn_loss`` in the RoI heads). Each adapter
subclasses the torchvision class together with :class:`LossAdapter`, which takes the ``loss`` and
``loss_options`` keywords and switches between torchvision's loss (``"baseline"``, with the
HarmonicDet stats logged beside it) and :class:`harmonic.losses.HarmonicDetLoss` on the same
positives (``"harmonic"``).

The adapters' ``positive_terms`` gather those positives with the functions below: the matched
positives of a one-stage head (:func:`matched_positives`), a family's own box loss per positive
(:func:`box_loss_per_positive`), the classification parts of a focal or softmax head
(:func:`focal_positive_terms`, :func:`softmax_positive_terms`), QFL's soft target
(:func:`quality_target`), assembled into :class:`~harmonic.losses.PositiveTerms` by :func:`make_terms`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from harmonic.errors import HarmonicError
from harmonic.losses import (
    HarmonicConfig,
    HarmonicDetLoss,
    PositiveTerms,
    elementwise_box_iou,
    positive_stats,
    quality_focal_loss,
)
from harmonic.models.building import check_loss, make_loss_module

# torchvision's loss keys -> ours, in the order the losses are reported (and summed by the trainer).
_TORCHVISION_KEYS = (("classification", "loss_classifier"), ("bbox_regression", "loss_box_reg"),
                     ("bbox_ctrness", "loss_bbox_ctrness"))


class LossAdapter:
    """Mixin before a torchvision class: ``loss="harmonic"`` or ``"baseline"`` for its loss hook.

    A subclass implements ``baseline_loss(*inputs)`` (torchvision's loss, our keys) and
    ``positive_terms(*inputs)``, and calls :meth:`adapted_loss` from the hook. ``positive_terms``
    may return more than the :class:`PositiveTerms` (FCOS's centre-ness inputs); such a subclass
    overrides :meth:`terms` and :meth:`harmonic_losses`.

    Attributes:
        loss_kind: ``"harmonic"`` or ``"baseline"``.
        loss_config: the validated :class:`harmonic.losses.HarmonicConfig` (the baseline's stats
            use its ``alpha``).
        harmonic_loss: the :class:`HarmonicDetLoss`, None for the baseline.
    """

    def __init__(self, *args: Any, loss: str = "harmonic", loss_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_kind = loss
        self.loss_config = check_loss(loss, loss_options)
        self.harmonic_loss: HarmonicDetLoss | None = make_loss_module(loss, loss_options)

    def adapted_loss(self, *inputs: Any) -> dict[str, Tensor]:
        """torchvision's loss plus detached ``stat_*`` (baseline), or HarmonicDet's loss (harmonic)."""
        if self.harmonic_loss is None:
            losses = self.baseline_loss(*inputs)
            with torch.no_grad():
                losses.update(positive_stats(self.terms(self.positive_terms(*inputs)), self.loss_config))
            return losses
        return self.harmonic_losses(self.positive_terms(*inputs))

    def baseline_loss(self, *inputs: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def positive_terms(self, *inputs: Any) -> Any:
        raise NotImplementedError

    def terms(self, positives: Any) -> PositiveTerms:
        """The :class:`PositiveTerms` in what ``positive_terms`` returned."""
        return positives

    def harmonic_losses(self, positives: Any) -> dict[str, Tensor]:
        """HarmonicDet's loss terms and stats from what ``positive_terms`` returned."""
        return self.harmonic_loss(positives)


class DenseLossAdapter(LossAdapter):
    """:class:`LossAdapter` on torchvision's one-stage ``compute_loss(targets, head_outputs, anchors,
    matched_idxs)`` hook (RetinaNet and FCOS heads, the SSD model)."""

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """Loss hook called by torchvision in training.

        Args:
            targets: per image ``boxes`` ``Tensor[N_i, 4]`` xyxy (transformed), ``labels`` ``Tensor[N_i]`` in 1..C.
            head_outputs: ``cls_logits`` ``Tensor[B, A, C+1]``, ``bbox_regression`` ``Tensor[B, A, 4]``
                (FCOS: also ``bbox_ctrness`` ``Tensor[B, A, 1]``).
            anchors: per image ``Tensor[A, 4]`` xyxy anchors / default boxes / locations.
            matched_idxs: per image ``Tensor[A]``: gt index, -1 (background) or -2 (ignored, RetinaNet).
        """
        # float32 loss maths under AMP (box decoding and exp overflow in fp16), both modes
        head_outputs = {k: v.float() for k, v in head_outputs.items()}
        return self.adapted_loss(targets, head_outputs, anchors, matched_idxs)

    def baseline_loss(self, *inputs: Any) -> dict[str, Tensor]:
        """torchvision's own ``compute_loss``, renamed to our keys."""
        tv = super().compute_loss(*inputs)
        return {ours: tv[theirs] for theirs, ours in _TORCHVISION_KEYS if theirs in tv}


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
