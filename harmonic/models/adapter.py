"""The baseline/harmonic loss switch shared by the detector adapters.

torchvision keeps each detector's loss in a different hook (RetinaNet/FCOS head ``compute_loss``,
SSD model ``compute_loss``, Faster R-CNN ``fastrcnn_loss`` in the RoI heads). Each adapter
subclasses the torchvision class together with :class:`LossAdapter`, which takes the ``loss`` and
``loss_options`` keywords and switches between torchvision's loss (``"baseline"``, with the
HarmonicDet stats logged beside it) and :class:`harmonic.losses.HarmonicDetLoss` on the same
positives (``"harmonic"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harmonic.losses import HarmonicDetLoss, PositiveTerms, positive_stats
from harmonic.models.common import check_loss, make_loss_module

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
