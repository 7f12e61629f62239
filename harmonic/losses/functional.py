"""HarmonicDet loss terms as pure functions (paper Sections 3.1-3.2), and GFL's quality focal loss.

The HarmonicDet terms work per positive sample and return unreduced ``Tensor[P]``; the
caller sums and normalises. Shapes: ``P`` positives, ``C`` classification columns.
:func:`quality_focal_loss` (the ``quality_focal`` option's classification loss) is elementwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Probabilities are clamped to [_EPS, 1] inside logarithms so that p -> 0 stays finite.
_EPS = 1e-12


def harmonic_iou_loss(iou: Tensor, gamma: float = 0.8, allow_gamma_above_one: bool = False) -> Tensor:
    """Harmonic IoU loss, Eq. 10: ``(1 + iou) ** gamma * (1 - iou)``.

    Args:
        iou: ``Tensor[P]`` IoU of each positive's predicted box with its ground truth;
            clamped to ``[0, 1]``.
        gamma: focusing parameter. The loss is monotonically decreasing in the IoU only
            for ``gamma <= 1`` (paper, supplementary), so larger values are rejected.
        allow_gamma_above_one: explicit override of that check.

    Returns:
        ``Tensor[P]`` in ``[0, 1]``.
    """
    if gamma > 1.0 and not allow_gamma_above_one:
        raise ValueError(
            f"harmonic_iou_loss: gamma={gamma} > 1 makes the loss non-monotonic in IoU "
            "(pass allow_gamma_above_one=True to override)"
        )
    iou = iou.clamp(0.0, 1.0)
    return (1.0 + iou).pow(gamma) * (1.0 - iou)


def harmonic_factors(p_true: Tensor, loc_loss: Tensor) -> tuple[Tensor, Tensor]:
    """The harmonic weights of Eq. 3-5: ``(1 + beta_r, 1 + beta_c)``.

    ``beta_r = exp(-loc_loss)`` weights the classification loss and ``beta_c = p_true`` weights
    the localisation loss. ``p_true`` is the head's probability of the true class (Eq. 5:
    ``exp(-CE(p, y)) = p_y``): the softmax column for CE heads, the sigmoid of the true class's
    logit for focal-loss heads.

    Args:
        p_true: ``Tensor[P]`` probability of each positive's true class, in ``[0, 1]``.
        loc_loss: ``Tensor[P]`` per-positive localisation loss (>= 0).

    Returns:
        ``(factor_r, factor_c)``, each ``Tensor[P]`` in ``[1, 2]``.
    """
    return 1.0 + torch.exp(-loc_loss), 1.0 + p_true


def classification_entropy(class_probs: Tensor) -> Tensor:
    """``H = -sum_k p_k log p_k`` over the columns of ``class_probs[P, C]`` -> ``Tensor[P]``.

    ``p log p`` is taken as 0 at ``p = 0`` with a finite gradient (the log's argument is
    clamped). For sigmoid heads the columns are independent per-class probabilities,
    not a distribution; the same formula is applied to them unchanged.
    """
    return -(class_probs * torch.log(class_probs.clamp_min(_EPS))).sum(dim=1)


def task_contrastive_loss(
    class_probs: Tensor,
    labels: Tensor,
    iou: Tensor,
    margin: float = 0.2,
    mode: str = "hinge",
    detach_weight: bool = True,
    score: Tensor | None = None,
) -> Tensor:
    """Task-contrastive loss, Eq. 8: ``max(0, |s - IoU| - margin) / (1 + exp(H))``.

    ``s`` is ``score`` when given (the score the detector ranks its boxes by after
    post-processing, e.g. FCOS's ``sqrt(p_y * centerness)``), else ``p_y`` from ``class_probs``.

    Args:
        class_probs: ``Tensor[P, C]`` class probabilities of each positive. Softmax heads
            (SSD, Faster R-CNN) pass the softmax over all columns (background included);
            sigmoid/focal heads (RetinaNet, FCOS) pass the per-class sigmoids, which are
            not normalised; the entropy ``H`` is computed on them the same way.
        labels: ``Tensor[P]`` int64, the column of the true class in ``class_probs``.
        iou: ``Tensor[P]`` the IoU target; pass it detached unless the IoU should be
            pulled towards the score too (``HarmonicDetLoss`` detaches it).
        margin: distances below it are not penalised.
        mode: ``"hinge"`` (``|p - IoU| - margin`` above the margin) or ``"step"``
            (``|p - IoU|`` above the margin, 0 below).
        detach_weight: treat the entropy weight ``1 / (1 + exp(H))`` as a constant
            (default), so TC does not also push every class column towards 0 or 1.
        score: ``Tensor[P]`` ranking score aligned with the IoU; default ``p_y``.

    Returns:
        ``Tensor[P]``.
    """
    if mode not in ("hinge", "step"):
        raise ValueError(f"task_contrastive_loss: mode must be 'hinge' or 'step', got {mode!r}")
    if class_probs.numel() == 0 or labels.numel() == 0:
        return class_probs.new_zeros(labels.shape[0])
    if score is None:
        score = class_probs.gather(1, labels.long().view(-1, 1)).squeeze(1)
    gap = (score - iou).abs()
    if mode == "hinge":
        contrast = (gap - margin).clamp_min(0.0)
    else:
        contrast = gap * (gap > margin).to(gap.dtype)
    probs = class_probs.detach() if detach_weight else class_probs
    # 1 / (1 + exp(H)) == sigmoid(-H): numerically safe for any H.
    weight = torch.sigmoid(-classification_entropy(probs))
    return weight * contrast


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]``, differentiable.

    Args:
        boxes1: ``Tensor[P, 4]`` x1,y1,x2,y2 (e.g. decoded predictions).
        boxes2: ``Tensor[P, 4]`` x1,y1,x2,y2 (e.g. matched ground truth).

    Returns:
        ``Tensor[P]`` in ``[0, 1]``; degenerate (inverted) boxes count as empty.
    """
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp_min(0.0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp_min(0.0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp_min(0.0).prod(dim=1)
    return inter / (area1 + area2 - inter + eps)


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """GFL's quality focal loss, elementwise: ``BCE(sigmoid(x), y) * |y - sigmoid(x)| ** beta``.

    ``logits``/``targets`` ``Tensor[...]`` of one shape, targets in ``[0, 1]`` -> ``Tensor[...]``.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce * (targets - logits.sigmoid()).abs().pow(beta)
