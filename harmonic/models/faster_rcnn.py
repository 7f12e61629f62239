"""Faster R-CNN ResNet-18/50-FPN with the HarmonicDet loss adapter on the box head.

torchvision keeps the box-head loss in ``roi_heads.fastrcnn_loss``, called from
``RoIHeads.forward``. :class:`HarmonicRoIHeads` reimplements only the training branch of that
forward (sampling, RoI pooling and the box head are torchvision's methods) and swaps the loss;
evaluation is ``RoIHeads.forward`` untouched. The RPN loss (objectness + box) is torchvision's in
both modes.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from harmonic.errors import HarmonicError
from harmonic.losses import PositiveTerms
from harmonic.models.adapter import LossAdapter, box_loss_per_positive, make_terms, softmax_positive_terms
from harmonic.models.backbones import resnet_fpn_backbone
from harmonic.models.building import check_loss, pop_options, transform_kwargs
from harmonic.models.family import Family

log = logging.getLogger(__name__)

FASTER_RCNN_NAMES = ("fasterrcnn_resnet18_fpn", "fasterrcnn_resnet50_fpn")
_ARCH = {"fasterrcnn_resnet18_fpn": "resnet18", "fasterrcnn_resnet50_fpn": "resnet50"}
# FasterRCNN keywords a user may set through builder options (transform/backbone ones are ours).
_FRCNN_OPTIONS = frozenset(
    {
        "rpn_pre_nms_top_n_train",
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test",
        "rpn_nms_thresh",
        "rpn_fg_iou_thresh",
        "rpn_bg_iou_thresh",
        "rpn_batch_size_per_image",
        "rpn_positive_fraction",
        "rpn_score_thresh",
        "box_score_thresh",
        "box_nms_thresh",
        "box_detections_per_img",
        "box_fg_iou_thresh",
        "box_bg_iou_thresh",
        "box_batch_size_per_image",
        "box_positive_fraction",
    }
)


class SampledRoIs(NamedTuple):
    """The box head's outputs on the R sampled RoIs of a batch, and what they were sampled against
    (the arguments of :meth:`HarmonicRoIHeads.box_loss`)."""

    class_logits: Tensor
    box_regression: Tensor
    proposals: list[Tensor]
    matched_idxs: list[Tensor]
    labels: list[Tensor]
    regression_targets: list[Tensor]
    targets: list[dict[str, Tensor]]


class HarmonicRoIHeads(LossAdapter, RoIHeads):
    """``RoIHeads`` (box only) whose training loss is torchvision's ``fastrcnn_loss`` or HarmonicDet's.

    Per sampled positive RoI i (``loss="harmonic"``), on ``fastrcnn_loss``'s own terms:
      * ``cls_i`` = softmax cross-entropy over the C+1 columns (background = 0); the sampled
        background RoIs keep their CE;
      * ``p_i`` = the softmax probability of the true class: ``beta_c`` and the ranking score;
      * ``L(d)_i`` = SmoothL1 (beta 1/9, as ``fastrcnn_loss``) of the class-specific encoded
        deltas summed over the 4 coords, plus ``alpha * HIoU`` of the decoded box;
      * normaliser: the number of sampled RoIs (positives + negatives), exactly like
        ``fastrcnn_loss`` (mean CE, box sum / #sampled); Eq. 13's 1/#positives would scale the
        box-head loss by #sampled/#positives (>= 4 with the default 1:3 sampling).
    With ``harmonic_factors=False, alpha=0, tc_weight=0`` the loss equals the baseline. The loss
    is computed in float32 under AMP in both modes.
    """

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, loss: str, loss_options: dict[str, Any] | None) -> HarmonicRoIHeads:
        """The same modules and hyper-parameters as torchvision's ``heads``, with the loss adapter."""
        return cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            loss=loss,
            loss_options=loss_options,
        )

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training mode")
        for t in targets:
            if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
                raise TypeError(f"target boxes must of float type, instead got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must of int64 type, instead got {t['labels'].dtype}")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        return [], self.box_loss(class_logits, box_regression, proposals, matched_idxs, labels, regression_targets, targets)

    def box_loss(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        matched_idxs: list[Tensor],
        labels: list[Tensor],
        regression_targets: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The box-head loss over the R sampled RoIs of the batch.

        Args:
            class_logits: Tensor[R, C+1]; box_regression: Tensor[R, (C+1)*4] class-specific deltas.
            proposals: per image Tensor[R_i, 4] xyxy sampled RoIs (sum R_i = R).
            matched_idxs: per image Tensor[R_i] matched gt index (0 for background/empty images).
            labels: per image Tensor[R_i] int64, 0 = background, 1..C.
            regression_targets: per image Tensor[R_i, 4] encoded deltas to the matched gt.
            targets: per image ``boxes`` Tensor[N_i, 4] (transformed coordinates).
        """
        # float32 under AMP
        rois = SampledRoIs(class_logits.float(), box_regression.float(), proposals, matched_idxs, labels,
                           regression_targets, targets)
        return self.adapted_loss(rois)

    def baseline_loss(self, rois: SampledRoIs) -> dict[str, Tensor]:
        """torchvision's ``fastrcnn_loss``."""
        loss_classifier, loss_box_reg = fastrcnn_loss(rois.class_logits, rois.box_regression, rois.labels,
                                                      rois.regression_targets)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def positive_terms(self, rois: SampledRoIs) -> PositiveTerms:
        """The sampled positive RoIs of the batch as :class:`PositiveTerms`."""
        class_logits, box_regression, proposals = rois.class_logits, rois.box_regression, rois.proposals
        labels_all = torch.cat(rois.labels)
        pos = torch.where(labels_all > 0)[0]
        labels_pos = labels_all[pos]
        num_rois = class_logits.shape[0]
        ce = F.cross_entropy(class_logits, labels_all, reduction="none")
        norm = 1.0 / max(1, num_rois)
        parts = softmax_positive_terms(class_logits[pos], labels_pos, ce[pos])
        parts["weight"] = torch.full_like(parts["cls_loss"], norm)
        parts["neg_cls_loss"] = ce[labels_all == 0].sum() * norm
        gt_pos = self._matched_gt(proposals, rois.matched_idxs, rois.targets)[pos]
        deltas = box_regression.reshape(num_rois, -1, 4)[pos, labels_pos]
        box_loss, pred_boxes = box_loss_per_positive(
            "smooth_l1", self.box_coder, torch.cat(proposals)[pos].float(), gt_pos.float(), deltas, beta=1.0 / 9.0)
        return make_terms(parts, box_loss, pred_boxes, gt_pos.float())

    @staticmethod
    def _matched_gt(
        proposals: list[Tensor], matched_idxs: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> Tensor:
        """Tensor[R, 4]: each sampled RoI's matched gt box (zeros for images without objects)."""
        out = []
        for props, idx, tgt in zip(proposals, matched_idxs, targets):
            gt = tgt["boxes"].to(props.dtype)
            if gt.numel() == 0:
                gt = props.new_zeros((1, 4))
            out.append(gt[idx])
        return torch.cat(out)


def build_faster_rcnn(
    name: str,
    num_classes: int,
    *,
    loss: str,
    img_size: int,
    backbone_weights: str | None,
    loss_options: dict[str, Any] | None,
    **options: Any,
) -> FasterRCNN:
    """Build ``fasterrcnn_resnet18_fpn`` or ``fasterrcnn_resnet50_fpn`` for square ``img_size`` inputs.

    The harmonic loss of the box head is built on ``fastrcnn_loss``'s terms (softmax CE,
    SmoothL1 beta 1/9 on the class-specific deltas, divided by the number of sampled RoIs; see
    :class:`HarmonicRoIHeads`). The RPN keeps torchvision's objectness + box loss in both modes.

    Args:
        name: one of :data:`FASTER_RCNN_NAMES`.
        num_classes: C object classes; the model has C + 1 outputs (0 = background), labels 1..C.
        loss: ``"harmonic"`` or ``"baseline"`` (torchvision's loss, unchanged).
        img_size: square input side S (``min_size = max_size = S``): letterboxed S x S inputs are
            not resized; they are padded to a multiple of 32 inside the model if S is not one.
        backbone_weights: ``None`` (random init, trainable BatchNorm, nothing downloaded), a
            torchvision weights name (``"DEFAULT"``), or a path to a local torchvision ResNet
            state dict; pretrained backbones use FrozenBatchNorm2d and 3 trainable stages.
        loss_options: keyword arguments of :class:`harmonic.losses.HarmonicConfig`.
        **options: ``fpn_channels`` (default 256), ``trainable_backbone_layers`` (0-5) and
            FasterRCNN keywords (``box_score_thresh``, ``box_batch_size_per_image``, ``rpn_*``, ...).

    Normalisation is ImageNet mean/std inside the model (``model.transform``).
    """
    if name not in _ARCH:
        raise HarmonicError(f"unknown Faster R-CNN model {name!r}; expected one of {list(FASTER_RCNN_NAMES)}")
    if num_classes < 1:
        raise HarmonicError(f"model {name}: num_classes must be >= 1 (got {num_classes})")
    options = pop_options(name, options, _FRCNN_OPTIONS | {"fpn_channels", "trainable_backbone_layers"})
    fpn_channels = int(options.pop("fpn_channels", 256))
    trainable = options.pop("trainable_backbone_layers", None)
    check_loss(loss, loss_options)  # validate before the (slower) network build
    # From scratch: trainable BatchNorm2d, all stages trainable; pretrained: FrozenBN, 3 stages (torchvision).
    backbone = resnet_fpn_backbone(
        _ARCH[name],
        backbone_weights,
        fpn_channels=fpn_channels,
        returned_layers=(1, 2, 3, 4),  # P2-P5 + max-pool P6, torchvision's Faster R-CNN FPN
        extra_blocks=LastLevelMaxPool(),
        trainable_layers=trainable,
    )
    model = FasterRCNN(backbone, num_classes=num_classes + 1, **transform_kwargs(int(img_size)), **options)
    model.roi_heads = HarmonicRoIHeads.from_roi_heads(model.roi_heads, loss, loss_options)
    return model


def roi_heads(model: FasterRCNN) -> RoIHeads:
    """Where Faster R-CNN keeps its post-processing (thresholds, ``postprocess_detections``)."""
    return model.roi_heads


def map_rcnn_detections(out: tuple[list[Tensor], list[Tensor], list[Tensor]], fn: Any) -> tuple[list[Tensor], ...]:
    """``fn`` on each image of ``RoIHeads.postprocess_detections``'s ``(boxes, scores, labels)`` lists."""
    res = [fn(b, s, lab) for b, s, lab in zip(*out)]
    return [r[0] for r in res], [r[1] for r in res], [r[2] for r in res]


# max_batch 1: the exported RPN + RoIAlign graph is batch-1 only
FAMILY = Family("faster_rcnn", FasterRCNN, build_faster_rcnn, HarmonicRoIHeads, export_head="rcnn",
                candidate_knob=None, max_batch=1, postprocessor=roi_heads, map_detections=map_rcnn_detections)
