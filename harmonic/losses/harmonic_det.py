"""The HarmonicDet objective (Eq. 11-13) as a small module shared by every detector adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from harmonic.losses.functional import (
    elementwise_box_iou,
    harmonic_factors,
    harmonic_iou_loss,
    task_contrastive_loss,
)


@dataclass
class HarmonicConfig:
    """Settings of the HarmonicDet loss (``ModelSpec.loss_options`` holds them as a dict).

    Attributes:
        alpha: weight of the Harmonic IoU loss inside ``L_loc`` (Eq. 11).
        gamma: HIoU focusing parameter (Eq. 10), ``<= 1``.
        margin: task-contrastive margin (Eq. 8).
        tc_mode: ``"hinge"`` or ``"step"``, see ``task_contrastive_loss``.
        tc_weight: multiplier of the TC term (0 disables it).
        detach_factors: stop gradient through ``1+beta_r``, ``1+beta_c`` (the paper keeps it).
        smooth_l1_beta: transition point of the SmoothL1 on encoded box deltas that the
            adapters compute; 1/9 as in torchvision's ``_box_loss("smooth_l1")`` and
            Detectron's RetinaNet.
        detach_tc_iou: use a detached IoU as the TC target (default): TC then only pulls
            the score towards the localisation quality, never the box towards the score.
    """

    alpha: float = 1.5
    gamma: float = 0.8
    margin: float = 0.2
    tc_mode: str = "hinge"
    tc_weight: float = 1.0
    detach_factors: bool = False
    smooth_l1_beta: float = 1.0 / 9.0
    detach_tc_iou: bool = True

    def __post_init__(self) -> None:
        if self.gamma > 1.0:
            raise ValueError(f"HarmonicConfig: gamma={self.gamma} must be <= 1 (HIoU monotonicity)")
        if self.tc_mode not in ("hinge", "step"):
            raise ValueError(f"HarmonicConfig: tc_mode must be 'hinge' or 'step', got {self.tc_mode!r}")
        if self.alpha < 0 or self.tc_weight < 0 or self.margin < 0 or self.smooth_l1_beta < 0:
            raise ValueError("HarmonicConfig: alpha, tc_weight, margin and smooth_l1_beta must be >= 0")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> HarmonicConfig:
        """Build from a ``loss_options`` dict; unknown keys raise ``ValueError``."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown HarmonicDet loss options {unknown}; known: {sorted(known)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HarmonicDetLoss(nn.Module):
    """Eq. 11-13 over the positives of a batch, plus the negatives' classification loss.

    ``forward`` returns ``loss_classifier``, ``loss_box_reg``, ``loss_tc`` (summed into the
    objective) and detached ``stat_factor_r``, ``stat_factor_c``, ``stat_aic``,
    ``stat_num_pos`` (docs/CONTRACTS.md)::

        L_loc_i = reg_i + alpha * HIoU(IoU_i)                 (Eq. 11)
        loss_classifier = (sum_i (1 + exp(-L_loc_i)) * cls_i + cls_neg_sum) / N
        loss_box_reg    =  sum_i (1 + exp(-cls_i)) * L_loc_i / N
        loss_tc         = tc_weight * sum_i TC_i / N          (Eq. 8, 12, 13)

    ``IoU_i`` is computed between the decoded predicted and ground-truth boxes and carries
    gradient to ``pred_boxes`` through HIoU; the TC target uses it detached unless
    ``config.detach_tc_iou`` is False.
    """

    def __init__(self, config: HarmonicConfig | None = None) -> None:
        super().__init__()
        self.config = config or HarmonicConfig()

    def forward(
        self,
        cls_loss_pos: Tensor,
        reg_loss_pos: Tensor,
        pred_boxes: Tensor,
        gt_boxes: Tensor,
        class_probs: Tensor,
        labels: Tensor,
        cls_loss_neg_sum: Tensor,
        normalizer: Tensor | float,
    ) -> dict[str, Tensor]:
        """Compute the loss terms.

        Args:
            cls_loss_pos: ``Tensor[P]`` classification loss of each positive (CE for softmax
                heads, focal loss summed over classes for focal heads).
            reg_loss_pos: ``Tensor[P]`` SmoothL1 on the encoded deltas, summed over the 4 coords.
            pred_boxes: ``Tensor[P, 4]`` decoded predicted boxes, x1,y1,x2,y2.
            gt_boxes: ``Tensor[P, 4]`` matched ground-truth boxes, x1,y1,x2,y2.
            class_probs: ``Tensor[P, C]`` class probabilities (see ``task_contrastive_loss``).
            labels: ``Tensor[P]`` column of the true class in ``class_probs``.
            cls_loss_neg_sum: scalar, summed classification loss of the negatives.
            normalizer: number of positives (clamped to >= 1).

        Returns:
            dict of scalar tensors.
        """
        cfg = self.config
        if not torch.is_tensor(normalizer):
            normalizer = torch.as_tensor(float(normalizer), device=cls_loss_pos.device)
        norm = normalizer.to(cls_loss_pos.dtype).clamp_min(1.0)

        iou = elementwise_box_iou(pred_boxes, gt_boxes)
        loc = reg_loss_pos + cfg.alpha * harmonic_iou_loss(iou, cfg.gamma)
        factor_r, factor_c = harmonic_factors(cls_loss_pos, loc)
        if cfg.detach_factors:
            factor_r, factor_c = factor_r.detach(), factor_c.detach()

        tc_target = iou.detach() if cfg.detach_tc_iou else iou
        tc = task_contrastive_loss(class_probs, labels, tc_target, cfg.margin, cfg.tc_mode)

        # Sums, not means: with no positives every positive term is an exact 0 that still
        # depends on the box branch, so gradients are zero rather than NaN.
        losses = {
            "loss_classifier": ((factor_r * cls_loss_pos).sum() + cls_loss_neg_sum) / norm,
            "loss_box_reg": (factor_c * loc).sum() / norm,
            "loss_tc": cfg.tc_weight * tc.sum() / norm,
        }
        losses.update(positive_stats(cls_loss_pos, loc, class_probs, labels, iou))
        return losses


@torch.no_grad()
def positive_stats(
    cls_loss_pos: Tensor, loc_loss_pos: Tensor, class_probs: Tensor, labels: Tensor, iou: Tensor
) -> dict[str, Tensor]:
    """Detached logging stats over positives: mean ``1+beta_r``, ``1+beta_c``, AIC, count.

    Means over zero positives are reported as 0 (``stat_num_pos`` says there were none).
    """
    num = cls_loss_pos.numel()
    zero = cls_loss_pos.new_zeros(())
    if num == 0:
        return {"stat_factor_r": zero, "stat_factor_c": zero, "stat_aic": zero, "stat_num_pos": zero}
    factor_r, factor_c = harmonic_factors(cls_loss_pos.detach(), loc_loss_pos.detach())
    p_true = class_probs.detach().gather(1, labels.long().view(-1, 1)).squeeze(1)
    return {
        "stat_factor_r": factor_r.mean(),
        "stat_factor_c": factor_c.mean(),
        "stat_aic": (p_true - iou.detach()).abs().mean(),
        "stat_num_pos": zero + num,
    }
