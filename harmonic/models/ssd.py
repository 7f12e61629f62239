"""SSD300-VGG16, SSDlite320-MobileNetV3 and SSD-ResNet-10-slim-FPN with the HarmonicDet loss adapter.

torchvision keeps the SSD loss in ``SSD.compute_loss``; :class:`HarmonicSSD` overrides only that
hook. Matching (``SSDMatcher``), hard-negative mining (3:1) and everything outside training are
torchvision's, so ``loss="baseline"`` and ``loss="harmonic"`` models share weights layout and
inference behaviour exactly.
"""

from __future__ import annotations

import logging
import types
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, VGG16_Weights, mobilenet_v3_large
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead, _vgg_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers as vgg_make_layers
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from harmonic.errors import HarmonicError
from harmonic.losses import PositiveTerms
from harmonic.models.adapter import (
    DenseLossAdapter,
    box_loss_per_positive,
    make_terms,
    softmax_positive_terms,
)
from harmonic.models.backbones import load_state_dict_file, resnet_fpn_backbone, resolve_backbone_weights
from harmonic.models.building import check_img_size, check_loss, pop_options
from harmonic.models.family import Family
from harmonic.models.spec import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

SSD_NAMES = ("ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "ssd_resnet10s_fpn")
# Smallest square input for which every VGG extra block still has a 3x3 map (probed: 268 -> 1x1).
SSD300_MIN_SIZE = 268
# Keyword arguments of torchvision's SSD that a user may set through builder options.
_SSD_OPTIONS = frozenset(
    {"score_thresh", "nms_thresh", "detections_per_img", "iou_thresh", "topk_candidates", "positive_fraction"}
)


class HarmonicSSD(DenseLossAdapter, SSD):
    """torchvision ``SSD`` whose ``compute_loss`` is torchvision's (baseline) or HarmonicDet's.

    Per positive default box i (``loss="harmonic"``), on torchvision's own terms:
      * ``cls_i`` = softmax cross-entropy over the C+1 columns (background = 0); negatives are
        torchvision's 3:1 hard-mined negatives with their CE;
      * ``p_i`` = the softmax probability of the true class: ``beta_c`` and the ranking score;
      * ``L(d)_i`` = SmoothL1 (beta 1, as torchvision's SSD) of the encoded deltas summed over the
        4 coords, plus ``alpha * HIoU`` of the decoded box;
      * normaliser: the number of positives in the batch (torchvision's ``N = max(1, num_fg)``).
    With ``harmonic_factors=False, alpha=0, tc_weight=0`` the loss equals the baseline.

    Loss keys: ``loss_classifier``, ``loss_box_reg`` (+ ``loss_tc`` for harmonic) and detached
    ``stat_*`` (the baseline logs the factors it would have had). The loss is computed in float32
    under AMP in both modes.
    """

    def positive_terms(self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                       matched_idxs: list[Tensor]) -> PositiveTerms:
        """The positive default boxes of the batch (P in total, image after image) as :class:`PositiveTerms`."""
        cls_logits = head_outputs["cls_logits"]
        image_idx, anchor_idx, gt_boxes, cls_targets = [], [], [], []
        for i, (tgt, matched) in enumerate(zip(targets, matched_idxs)):
            fg = torch.where(matched >= 0)[0]
            gt_idx = matched[fg]
            image_idx.append(torch.full_like(fg, i))
            anchor_idx.append(fg)
            gt_boxes.append(tgt["boxes"][gt_idx])
            dense = torch.zeros(matched.shape, dtype=tgt["labels"].dtype, device=matched.device)
            dense[fg] = tgt["labels"][gt_idx]
            cls_targets.append(dense)
        b, a = torch.cat(image_idx), torch.cat(anchor_idx)
        cls_targets_t = torch.stack(cls_targets)
        ce = F.cross_entropy(cls_logits.reshape(-1, cls_logits.size(-1)), cls_targets_t.reshape(-1),
                             reduction="none").view(cls_targets_t.shape)
        # Hard-negative mining exactly as torchvision: the top (ratio * #pos) CE among negatives, per image.
        foreground = cls_targets_t > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        negative_loss = ce.detach().clone()
        negative_loss[foreground] = -float("inf")
        _, order = negative_loss.sort(1, descending=True)
        background = order.sort(1)[1] < num_negative
        norm = 1.0 / max(1, int(b.numel()))
        labels = cls_targets_t[b, a]
        parts = softmax_positive_terms(cls_logits[b, a], labels, ce[b, a])
        parts["weight"] = torch.full_like(parts["cls_loss"], norm)
        parts["neg_cls_loss"] = ce[background].sum() * norm
        anchors_pos = torch.stack(anchors)[b, a]
        gt = torch.cat(gt_boxes).to(anchors_pos.dtype)
        box_loss, pred_boxes = box_loss_per_positive(
            "smooth_l1", self.box_coder, anchors_pos, gt, head_outputs["bbox_regression"][b, a], beta=1.0)
        return make_terms(parts, box_loss, pred_boxes, gt)


def _load_into(module: nn.Module, state: dict[str, Tensor], path: Any, what: str) -> None:
    """Strict ``load_state_dict`` with a one-line error naming the file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise HarmonicError(f"{path}: backbone weights do not fit {what} ({first})") from exc


def _ssd_kwargs(
    name: str, options: dict[str, Any], defaults: dict[str, Any], extra: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SSD keyword arguments, backbone options popped from ``options``)."""
    options = pop_options(name, options, _SSD_OPTIONS | {"trainable_backbone_layers"} | extra)
    backbone_opts = {k: options.pop(k) for k in ({"trainable_backbone_layers"} | extra) if k in options}
    kwargs = {**defaults, **options, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    return kwargs, backbone_opts


def _ssdlite_mobilenet(
    num_classes: int, loss: str, img_size: int, backbone_weights: str | None, loss_options: dict, options: dict
) -> HarmonicSSD:
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300, "topk_candidates": 300}
    kwargs, opts = _ssd_kwargs("ssdlite320_mobilenet_v3_large", options, defaults, frozenset({"reduced_tail"}))
    # torchvision halves the tail when training from scratch (MobileNetV3 paper, Table 6). Here it is an
    # explicit option (default off), so the architecture never depends on backbone_weights and a
    # checkpoint rebuilt from its spec (always without backbone weights) has the same layout.
    reduced_tail = bool(opts.get("reduced_tail", False))
    weights, path = resolve_backbone_weights(backbone_weights, MobileNet_V3_Large_Weights)
    if reduced_tail and backbone_weights is not None:
        raise HarmonicError("ssdlite320_mobilenet_v3_large: reduced_tail=True has no pretrained backbone weights")
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = mobilenet_v3_large(weights=weights, norm_layer=norm_layer, reduced_tail=reduced_tail)
    if path is not None:
        _load_into(backbone, load_state_dict_file(path), path, "mobilenet_v3_large")
    if backbone_weights is None:
        _normal_init(backbone)  # torchvision's init for a from-scratch SSDlite backbone
    trainable = opts.get("trainable_backbone_layers")
    backbone = _mobilenet_extractor(backbone, 6 if trainable is None else int(trainable), norm_layer)
    size = (img_size, img_size)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(backbone, size)
    head = SSDLiteHead(out_channels, anchor_generator.num_anchors_per_location(), num_classes + 1, norm_layer)
    return HarmonicSSD(
        backbone, anchor_generator, size, num_classes + 1, head=head, loss=loss, loss_options=loss_options, **kwargs
    )


def _vgg16_features(backbone_weights: str | None) -> nn.Sequential:
    """VGG16 ``features`` as torchvision builds and initialises them, without the 120M-parameter classifier."""
    weights, path = resolve_backbone_weights(backbone_weights, VGG16_Weights)
    if weights is not None:
        from torchvision.models import vgg16

        return vgg16(weights=weights).features
    features = vgg_make_layers(vgg_cfgs["D"], batch_norm=False)
    if path is not None:
        state = load_state_dict_file(path)
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        _load_into(features, state, path, "vgg16 features")
        return features
    for m in features.modules():  # torchvision VGG._initialize_weights for convs
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return features


def _ssd300_vgg16(
    num_classes: int, loss: str, img_size: int, backbone_weights: str | None, loss_options: dict, options: dict
) -> HarmonicSSD:
    if img_size < SSD300_MIN_SIZE:
        raise HarmonicError(f"ssd300_vgg16 needs --img-size >= {SSD300_MIN_SIZE} (got {img_size})")
    defaults = {"score_thresh": 0.01, "nms_thresh": 0.45, "detections_per_img": 200, "topk_candidates": 400}
    kwargs, opts = _ssd_kwargs("ssd300_vgg16", options, defaults)
    features = _vgg16_features(backbone_weights)
    trainable = opts.get("trainable_backbone_layers")
    if trainable is None:
        trainable = 4 if backbone_weights is not None else 5
    # _vgg_extractor only reads ``.features``.
    backbone = _vgg_extractor(types.SimpleNamespace(features=features), False, int(trainable))
    # torchvision's steps are tuned to 300 px; at other sizes tile the default boxes on each feature grid.
    steps = [8, 16, 32, 64, 100, 300] if img_size == 300 else None
    anchor_generator = DefaultBoxGenerator(
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=steps
    )
    return HarmonicSSD(
        backbone, anchor_generator, (img_size, img_size), num_classes + 1, loss=loss, loss_options=loss_options, **kwargs
    )


# ssd_resnet10s_fpn: default-box sizes (fraction of the image side) of P3..P7, linear as in the SSD
# paper (min 0.12, max 0.8, then 1.0 for the last level's extra box). At 128 px the levels are
# 16x16 .. 1x1 and each cell holds 2 squares (s_k, sqrt(s_k * s_k+1)) and 1:2, 2:1, 1:3, 3:1 boxes
# of side s_k: squares from 0.12 to 0.89 of the side, for objects 15-60 % of it (the demo's shapes).
RESNET10S_FPN_SCALES = (0.12, 0.29, 0.46, 0.63, 0.8, 1.0)
RESNET10S_FPN_STRIDE = 32


def _ssd_resnet10s_fpn(
    num_classes: int, loss: str, img_size: int, backbone_weights: str | None, loss_options: dict, options: dict
) -> HarmonicSSD:
    """SSD on ResNet-10-slim + FPN (P3-P7, ``fpn_channels`` wide, P6/P7 by stride-2 convs from P5).

    torchvision's ``SSDHead`` (one 3x3 conv per level for classes, one for boxes), ``DefaultBoxGenerator``
    (6 boxes per cell), ``SSDMatcher`` (IoU 0.5 + each object's best box) and 3:1 hard-negative mining.
    """
    name = "ssd_resnet10s_fpn"
    check_img_size(name, img_size, RESNET10S_FPN_STRIDE)
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.5, "detections_per_img": 100, "topk_candidates": 400}
    kwargs, opts = _ssd_kwargs(name, options, defaults, frozenset({"fpn_channels"}))
    fpn_channels = int(opts.get("fpn_channels", 64))
    if fpn_channels < 1:
        raise HarmonicError(f"model {name}: fpn_channels must be >= 1 (got {fpn_channels})")
    trainable = opts.get("trainable_backbone_layers")
    backbone = resnet_fpn_backbone("resnet10s", backbone_weights, fpn_channels, returned_layers=(2, 3, 4),
                                   extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
                                   trainable_layers=None if trainable is None else int(trainable))
    levels = len(RESNET10S_FPN_SCALES) - 1
    anchor_generator = DefaultBoxGenerator([[2, 3]] * levels, scales=list(RESNET10S_FPN_SCALES))
    head = SSDHead([fpn_channels] * levels, anchor_generator.num_anchors_per_location(), num_classes + 1)
    return HarmonicSSD(
        backbone, anchor_generator, (img_size, img_size), num_classes + 1, head=head, loss=loss,
        loss_options=loss_options, **kwargs
    )


def build_ssd(
    name: str,
    num_classes: int,
    *,
    loss: str,
    img_size: int,
    backbone_weights: str | None,
    loss_options: dict[str, Any] | None,
    **options: Any,
) -> HarmonicSSD:
    """Build ``ssdlite320_mobilenet_v3_large``, ``ssd300_vgg16`` or ``ssd_resnet10s_fpn`` for square inputs.

    The harmonic loss is built on torchvision's SSD terms (see :class:`HarmonicSSD`): softmax CE
    with 3:1 hard-negative mining, SmoothL1 (beta 1) on the encoded deltas (weights 10, 10, 5, 5),
    divided by the number of positives.

    Args:
        name: one of :data:`SSD_NAMES`.
        num_classes: C object classes; the model has C + 1 outputs (0 = background), labels 1..C.
        loss: ``"harmonic"`` or ``"baseline"`` (torchvision's loss, unchanged).
        img_size: square input side S; the transform resizes to (S, S), so letterboxed S x S inputs
            pass unchanged. ssd300_vgg16 needs S >= 268; ssd_resnet10s_fpn a multiple of 32.
        backbone_weights: ``None`` (random init, nothing downloaded), a torchvision weights name
            (``"DEFAULT"`` = ImageNet classification weights, used with ImageNet mean/std), or a
            path to a local torchvision classification state dict (``vgg16`` /
            ``mobilenet_v3_large``, full model; VGG's classifier keys are ignored). resnet10s has no
            torchvision weights: ``None`` or a local state dict of its layout.
        loss_options: keyword arguments of :class:`harmonic.losses.HarmonicConfig`.
        **options: ``trainable_backbone_layers``; ``reduced_tail`` (ssdlite only, default False:
            torchvision's from-scratch MobileNetV3 tail, fewer channels; not with pretrained
            weights); ``fpn_channels`` (ssd_resnet10s_fpn only, default 64: FPN and head width);
            SSD keywords (``score_thresh``, ``nms_thresh``, ``detections_per_img``,
            ``topk_candidates``, ``iou_thresh``, ``positive_fraction``).

    Normalisation is ImageNet mean/std inside the model (``model.transform``) for every name.
    """
    if name == "ssdlite320_mobilenet_v3_large":
        builder = _ssdlite_mobilenet
    elif name == "ssd300_vgg16":
        builder = _ssd300_vgg16
    elif name == "ssd_resnet10s_fpn":
        builder = _ssd_resnet10s_fpn
    else:
        raise HarmonicError(f"unknown SSD model {name!r}; expected one of {list(SSD_NAMES)}")
    if num_classes < 1:
        raise HarmonicError(f"model {name}: num_classes must be >= 1 (got {num_classes})")
    check_loss(loss, loss_options)  # validate before the (slower) network build
    return builder(num_classes, loss, int(img_size), backbone_weights, loss_options or {}, options)


def softmax_scores(head_outputs: dict[str, Tensor]) -> Tensor:
    """SSD's ranking score: the softmax over the C+1 columns, ``Tensor[B, A, C+1]``."""
    return torch.softmax(head_outputs["cls_logits"], dim=-1)


FAMILY = Family("ssd", SSD, build_ssd, HarmonicSSD, export_head="dense", ranking_scores=softmax_scores,
                per_class_candidates=True)
