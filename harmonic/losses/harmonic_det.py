"""The HarmonicDet objective (Eq. 11-13) as a small module shared by every detector adapter.

Each adapter gathers :class:`PositiveTerms` from its own head with its own (torchvision) loss
functions, encoding and normaliser; this module only adds the paper's three parts on top:
the harmonic factors, the HIoU term inside ``L_loc`` and the task-contrastive term. With all
three switched off (``harmonic_factors=False, alpha=0, tc_weight=0``) it returns the baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from harmonic.losses.functional import harmonic_factors, harmonic_iou_loss, task_contrastive_loss

_TRUE = ("true", "yes", "on", "1")
# IoU bins of the per-bin score stats (``stat_score_iou50`` = mean score of positives with IoU in [0.5, 0.6))
SCORE_IOU_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_FALSE = ("false", "no", "off", "0")


@dataclass
class HarmonicConfig:
    """Settings of the HarmonicDet loss (``ModelSpec.loss_options`` holds them as a dict).

    Attributes:
        harmonic_factors: weight the positives' losses by ``1+beta_r`` / ``1+beta_c`` (Eq. 2-5).
        alpha: weight of the Harmonic IoU loss inside ``L_loc`` (Eq. 11); 0 leaves ``L(d)`` alone.
        gamma: HIoU focusing parameter (Eq. 10), ``<= 1``.
        margin: task-contrastive margin (Eq. 8).
        tc_mode: ``"hinge"`` or ``"step"``, see ``task_contrastive_loss``.
        tc_weight: multiplier of the TC term (0 disables it).
        detach_factors: stop gradient through ``1+beta_r``, ``1+beta_c`` (the paper keeps it:
            its Eq. 4-7 rely on the gradient through ``beta_c = p_i``).
        detach_tc_iou: use a detached IoU as the TC target (default): TC then only pulls
            the score towards the localisation quality, never the box towards the score.

    Mechanism variants (``harmonic ablate``; the defaults are the paper's setting):
        beta_c: ``"p"`` (Eq. 5, ``beta_c = p_i``) or ``"exp_ce"`` (``beta_c = exp(-cls_i)``, the
            paper's identity ``exp(-CE) = p`` carried to focal heads, where it does not hold).
        detach_beta_c: stop gradient through ``1+beta_c`` only (``1+beta_r`` keeps it).
        factor_mode: ``"harmonic"`` (the dynamic factors) or ``"constant"``: both factors are the
            fixed ``constant_factor``, which separates "more weight on positives" from the coupling.
        constant_factor: the fixed weight of ``factor_mode="constant"``.

    Beyond the paper (a positive control of the ranking harness, GFL's quality focal loss):
        quality_focal: focal heads only: the classification loss is QFL, ``BCE(sigma, y) |y - sigma|^qfl_beta``
            with the true class's target ``y`` = the positive's IoU (detached), 0 elsewhere.
        qfl_beta: QFL's modulation exponent.
        iou_centerness: FCOS only: the centre-ness target is the positive's IoU (detached) instead
            of the geometric centre-ness.
    """

    harmonic_factors: bool = True
    alpha: float = 1.5
    gamma: float = 0.8
    margin: float = 0.2
    tc_mode: str = "hinge"
    tc_weight: float = 1.0
    detach_factors: bool = False
    detach_tc_iou: bool = True
    beta_c: str = "p"
    detach_beta_c: bool = False
    factor_mode: str = "harmonic"
    constant_factor: float = 1.5
    quality_focal: bool = False
    qfl_beta: float = 2.0
    iou_centerness: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), type(f.default)))
        if self.gamma > 1.0:
            raise ValueError(f"gamma={self.gamma}: must be <= 1 (HIoU is monotonic in IoU only then)")
        if self.tc_mode not in ("hinge", "step"):
            raise ValueError(f"tc_mode={self.tc_mode!r}: must be 'hinge' or 'step'")
        if self.beta_c not in ("p", "exp_ce"):
            raise ValueError(f"beta_c={self.beta_c!r}: must be 'p' or 'exp_ce'")
        if self.factor_mode not in ("harmonic", "constant"):
            raise ValueError(f"factor_mode={self.factor_mode!r}: must be 'harmonic' or 'constant'")
        for name in ("alpha", "tc_weight", "margin", "constant_factor", "qfl_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> HarmonicConfig:
        """Build from a ``loss_options`` dict; unknown keys or bad values raise ``ValueError``.

        Values may be strings as given on a command line (``"false"``, ``"0.5"``).
        """
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: unknown (known: {', '.join(known)})")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (bool, float or str); CLI strings accepted; ``ValueError`` otherwise."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"{name}={value!r}: expected true or false")
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r}: expected a number") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ValueError(f"{name}={value!r}: expected a finite number")
        return out
    return str(value)


@dataclass
class PositiveTerms:
    """Per-positive inputs of the loss, gathered by a detector adapter (``P`` positives).

    Attributes:
        cls_loss: ``Tensor[P]`` the family's own classification loss of each positive (focal
            loss summed over the classes for focal heads, softmax CE for SSD / Faster R-CNN):
            the term ``1+beta_r`` weights.
        p_true: ``Tensor[P]`` the head's probability of the true class: ``beta_c`` (Eq. 5).
        box_loss: ``Tensor[P]`` the family's own box loss ``L(d)`` (same function, encoding).
        iou: ``Tensor[P]`` IoU of the decoded predicted box with its ground truth (carries
            gradient to the box branch, for HIoU).
        score: ``Tensor[P]`` the score the detector ranks boxes by after post-processing, for
            the true class (TC aligns it with the IoU; AIC is measured on it).
        class_probs: ``Tensor[P, C]`` class probabilities (TC's entropy weight).
        labels: ``Tensor[P]`` int64, the true class's column in ``class_probs``.
        weight: ``Tensor[P]`` the family's normaliser per positive (e.g. ``1 / num_pos``).
        neg_cls_loss: scalar, the negatives' classification loss, already normalised.
    """

    cls_loss: Tensor
    p_true: Tensor
    box_loss: Tensor
    iou: Tensor
    score: Tensor
    class_probs: Tensor
    labels: Tensor
    weight: Tensor
    neg_cls_loss: Tensor


class HarmonicDetLoss(nn.Module):
    """Eq. 11-13 over the positives of a batch, plus the negatives' classification loss.

    ``forward`` returns ``loss_classifier``, ``loss_box_reg``, ``loss_tc`` (summed into the
    objective) and detached ``stat_factor_r``, ``stat_factor_c``, ``stat_aic``,
    ``stat_num_pos`` (docs/CONTRACTS.md). With ``w_i`` the family's normaliser::

        L_loc_i         = L(d)_i + alpha * HIoU(IoU_i)                      (Eq. 11)
        loss_classifier = sum_i w_i (1 + exp(-L_loc_i)) cls_i + negatives   (Eq. 2-3)
        loss_box_reg    = sum_i w_i (1 + p_i) L_loc_i                       (Eq. 5)
        loss_tc         = tc_weight * sum_i w_i TC(score_i, IoU_i)          (Eq. 8, 12-13)

    ``harmonic_factors=False`` replaces both factors by 1; ``alpha=0, tc_weight=0`` as well
    gives the family's baseline loss exactly.
    """

    def __init__(self, config: HarmonicConfig | None = None) -> None:
        super().__init__()
        self.config = config or HarmonicConfig()

    def forward(self, terms: PositiveTerms) -> dict[str, Tensor]:
        """Loss terms and stats (all scalars) from the adapter's :class:`PositiveTerms`."""
        cfg = self.config
        t = terms
        loc = localisation_loss(t, cfg)
        if cfg.harmonic_factors:
            factor_r, factor_c = loss_factors(t, cfg, loc)
            cls_pos, loc_pos = factor_r * t.cls_loss, factor_c * loc
        else:
            cls_pos, loc_pos = t.cls_loss, loc
        # Sums, not means: with no positives every positive term is an exact 0 that still
        # depends on the box branch, so gradients are zero rather than NaN.
        losses = {
            "loss_classifier": (t.weight * cls_pos).sum() + t.neg_cls_loss,
            "loss_box_reg": (t.weight * loc_pos).sum(),
        }
        if cfg.tc_weight > 0:
            target = t.iou.detach() if cfg.detach_tc_iou else t.iou
            tc = task_contrastive_loss(t.class_probs, t.labels, target, cfg.margin, cfg.tc_mode, score=t.score)
            losses["loss_tc"] = cfg.tc_weight * (t.weight * tc).sum()
        else:
            losses["loss_tc"] = t.cls_loss.new_zeros(())
        losses.update(positive_stats(t, cfg, loc))
        return losses


def loss_factors(terms: PositiveTerms, config: HarmonicConfig, loc: Tensor) -> tuple[Tensor, Tensor]:
    """``(1+beta_r, 1+beta_c)`` per positive (``Tensor[P]`` each) under ``config``'s variant.

    The paper: ``1+exp(-L_loc)`` and ``1+p`` with gradient through both; ``beta_c="exp_ce"`` uses
    ``exp(-cls)``; ``detach_factors`` / ``detach_beta_c`` stop gradients; ``factor_mode="constant"``
    gives both the fixed ``constant_factor`` (no coupling at all).
    """
    if config.factor_mode == "constant":
        const = torch.full_like(loc, config.constant_factor)
        return const, const
    beta_c = terms.p_true if config.beta_c == "p" else torch.exp(-terms.cls_loss)
    factor_r, factor_c = harmonic_factors(beta_c, loc)
    if config.detach_factors:
        return factor_r.detach(), factor_c.detach()
    if config.detach_beta_c:
        factor_c = factor_c.detach()
    return factor_r, factor_c


def localisation_loss(terms: PositiveTerms, config: HarmonicConfig) -> Tensor:
    """``L_loc = L(d) + alpha * HIoU(IoU)`` per positive (Eq. 11) -> ``Tensor[P]``."""
    if config.alpha == 0:
        return terms.box_loss
    return terms.box_loss + config.alpha * harmonic_iou_loss(terms.iou, config.gamma)


@torch.no_grad()
def positive_stats(
    terms: PositiveTerms, config: HarmonicConfig, loc: Tensor | None = None
) -> dict[str, Tensor]:
    """Detached logging stats over positives: mean ``1+beta_r``, ``1+beta_c``, AIC, count.

    A loss with ``harmonic_factors`` logs the factors it applies (:func:`loss_factors`: the
    constant of ``factor_mode="constant"``, ``1+exp(-cls)`` for ``beta_c="exp_ce"``); a loss
    without them (the baseline, QFL) logs the paper's ``1+exp(-L_loc)``, ``1+p`` it would have had,
    with ``config``'s ``alpha``, so the paper's Fig. 4 can be drawn for every run. AIC is
    ``mean |score - IoU|`` on the ranking score. Means over zero positives are reported as 0.
    """
    num = terms.cls_loss.numel()
    zero = terms.cls_loss.new_zeros((), dtype=torch.float32)
    score, iou = terms.score.detach().float(), terms.iou.detach().float()
    bins = score_per_iou_bin(score, iou)
    if num == 0:
        return {"stat_factor_r": zero, "stat_factor_c": zero, "stat_aic": zero, "stat_num_pos": zero.clone(), **bins}
    if loc is None:
        loc = localisation_loss(terms, config)
    if config.harmonic_factors:  # the factors this variant applies (constant, exp(-cls), ...)
        factor_r, factor_c = (f.float() for f in loss_factors(terms, config, loc.detach()))
    else:  # a loss without factors logs the paper's, the ones it would have had
        factor_r, factor_c = harmonic_factors(terms.p_true.detach().float(), loc.detach().float())
    return {
        "stat_factor_r": factor_r.mean(),
        "stat_factor_c": factor_c.mean(),
        "stat_aic": (score - iou).abs().mean(),
        "stat_num_pos": zero + num,
        **bins,
    }


def score_per_iou_bin(score: Tensor, iou: Tensor) -> dict[str, Tensor]:
    """Score sum and count of the positives in each IoU bin of :data:`SCORE_IOU_BINS`.

    ``score[P]``, ``iou[P]`` (detached) -> ``{"stat_score_sum_iou50": sum of scores over IoU in [0.5, 0.6),
    "stat_count_iou50": their count, ..., ..._iou90 over [0.9, 1.0]}`` (finite, 0 for an empty bin).
    The training log averages both over the same iterations, so their ratio is the exact mean score of
    the positives in that bin over a window or an epoch (``harmonic.experiments.pictures.score_per_iou_bin``).
    Positives with
    IoU < 0.5 are not binned. This shows the score compression the paper's Fig. 4 would show: positives
    settling at an IoU-dependent score far below 1.
    """
    out = {}
    edges = SCORE_IOU_BINS
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == len(edges) - 2
        mask = (iou >= lo) & ((iou <= hi) if last else (iou < hi))
        name = round(lo * 100)
        out[f"stat_score_sum_iou{name}"] = score[mask].sum()
        out[f"stat_count_iou{name}"] = mask.sum().to(score.dtype)
    return out

