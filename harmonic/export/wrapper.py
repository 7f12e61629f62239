"""Export wrappers: a torchvision detector -> the fixed ``num_dets/det_boxes/det_scores/det_classes`` graph.

The wrapper re-implements torchvision's inference post-processing with batched tensor
ops so the traced graph is vectorised over a dynamic batch (no per-image loop unrolled
at the export batch):

- normalisation (the detector's own ``transform.image_mean/std``) in the graph;
- backbone + head of the detector, unchanged;
- anchors precomputed for the fixed square input size ``S`` (a buffer);
- FP16-safe box decoding (``exp`` clamped at ``log(1000/16)`` as torchvision does);
- torchvision's pre-NMS candidate budget, reproduced in-graph with constant-K ``TopK``s:
  per-level top-k over (anchor, class) pairs for RetinaNet/FCOS (``topk_candidates``,
  1000 by default), per-class top-k over anchors for SSD (400), every (proposal, class)
  pair for Faster R-CNN; the selected candidates are *gathered*, so the NMS really sees
  only them, and a constant cap ``nms_topk`` (<= 5000, TensorRT's ``INMSLayer`` limit)
  bounds their number (:func:`select_candidates`);
- the standard ONNX ``NonMaxSuppression`` op, class-aware through its class dimension
  (``boxes [B,N,4]``, ``scores [B,C,N]`` with each candidate scored only in its own class
  row), then gather, top-K over all classes per image and zero padding.

Every ``TopK`` has a constant K <= 3840 (TensorRT's limit). Box decoding, candidate
selection, the NMS tail and Faster R-CNN's FPN level mapper run inside named sub-modules
(``FP32_SCOPES``), so their ONNX nodes are named ``/<scope>/...`` and the TensorRT build
keeps exactly them in FP32 when the rest runs in FP16.

Class column 0 (background / always-negative logit, docs/CONTRACTS.md) is dropped, so
``det_classes`` is the 0-based class index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harmonic.errors import HarmonicError

DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)
TRT_MAX_TOPK = 3840  # TensorRT's ITopKLayer: K <= 3840
TRT_MAX_NMS = 5000  # TensorRT's INMSLayer considers at most 5000 candidates per image
#: sub-module names whose ONNX nodes must stay FP32 in an FP16 engine (node names start with ``/<scope>/``)
FP32_SCOPES = ("decode", "select", "nms_tail", "level_mapper")


class _ONNXNonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: eager semantics in ``forward``, the standard op in the graph.

    Args: boxes ``[B,A,4]`` (x1,y1,x2,y2), scores ``[B,C,A]``. Returns ``[N,3]`` int64 rows
    ``(batch, class, box)``, grouped by batch then class, score-descending within a group.
    Suppression is IoU > ``iou`` and kept scores are > ``score`` (as onnxruntime and torchvision).
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_out: Tensor, iou: Tensor, score: Tensor) -> Tensor:  # type: ignore[override]
        from torchvision.ops import nms

        if torch.onnx.is_in_onnx_export():  # tracing only needs a well-formed [N,3]; skip the python loop
            return torch.zeros((1, 3), dtype=torch.int64)
        rows = []
        k = int(max_out.item())
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                s = scores[b, c]
                idx = torch.nonzero(s > score.item()).flatten()
                if idx.numel() == 0:
                    continue
                keep = idx[nms(boxes[b, idx], s[idx], float(iou.item()))][:k]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_out, iou, score):  # noqa: ANN001, ANN205 - TorchScript exporter hook
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, score, center_point_box_i=0)


def onnx_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score: float) -> Tensor:
    """Class-aware NMS as the ONNX op: boxes ``[B,A,4]``, scores ``[B,C,A]`` -> ``[N,3]`` int64."""
    return _ONNXNonMaxSuppression.apply(
        boxes,
        scores,
        torch.tensor([max_per_class], dtype=torch.int64),
        torch.tensor([iou], dtype=torch.float32),
        torch.tensor([score], dtype=torch.float32),
    )


def decode_deltas(deltas: Tensor, anchors: Tensor, weights: tuple[float, float, float, float], clip: float) -> Tensor:
    """torchvision ``BoxCoder.decode_single``, broadcast over the batch.

    Args: deltas ``[B,A,4]`` (dx,dy,dw,dh), anchors ``[A,4]`` xyxy. Returns boxes ``[B,A,4]``.
    ``dw``/``dh`` are clamped at ``clip`` so ``exp`` stays finite in FP16.
    """
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    pcx = dx * widths + ctr_x
    pcy = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack((pcx - half_w, pcy - half_h, pcx + half_w, pcy + half_h), dim=-1)


def decode_linear(rel: Tensor, anchors: Tensor) -> Tensor:
    """torchvision ``BoxLinearCoder(normalize_by_size=True).decode`` (FCOS): ``[B,A,4]``, ``[A,4]`` -> ``[B,A,4]``."""
    ctr_x = 0.5 * (anchors[:, 0] + anchors[:, 2])
    ctr_y = 0.5 * (anchors[:, 1] + anchors[:, 3])
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    rel = rel * torch.stack((w, h, w, h), dim=-1)
    return torch.stack((ctr_x - rel[..., 0], ctr_y - rel[..., 1], ctr_x + rel[..., 2], ctr_y + rel[..., 3]), dim=-1)


class Scope(nn.Module):
    """Runs ``fn`` as a named sub-module, so the traced ONNX nodes are named ``/<attribute name>/...``."""

    def __init__(self, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn

    def forward(self, *args):  # noqa: ANN002, ANN201
        return self.fn(*args)


def group_budget(group_sizes: list[int], per_group: int, nms_topk: int) -> tuple[list[int], bool]:
    """Top-k per candidate group (pyramid level or class) and whether a global top-``nms_topk`` follows.

    Each group keeps ``min(size, per_group)`` candidates (torchvision's budget). When their
    total exceeds ``nms_topk``: a global ``TopK(nms_topk)`` follows if ``nms_topk`` <= 3840,
    else every group's k is lowered to the largest common ``t`` that fits (``min(k, t)``:
    the same as running torchvision with ``topk_candidates = t``), since K > 3840 is not
    allowed in TensorRT.
    """
    ks = [min(n, per_group) for n in group_sizes]
    if sum(ks) <= nms_topk:
        return ks, False
    if nms_topk <= TRT_MAX_TOPK:
        return ks, True
    t = max(k for k in ks)
    while sum(min(k, t) for k in ks) > nms_topk:
        t -= 1
    return [min(k, t) for k in ks], False


def gather_boxes(boxes: Tensor, idx: Tensor) -> Tensor:
    """``boxes [B,A,4]``, ``idx [B,N]`` -> ``[B,N,4]``; one gather per coordinate keeps N a static dim in ONNX."""
    return torch.stack([boxes[..., j].gather(1, idx) for j in range(4)], dim=-1)


def select_candidates(
    boxes: Tensor, scores: Tensor, groups: list[int], ks: list[int], global_k: int | None, by_class: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Gather the NMS candidates: top-``ks[g]`` per group, then optionally a global top-``global_k``.

    Args:
        boxes: ``[B,A,4]``; scores: ``[B,A,C]``.
        groups: sizes along A of consecutive anchor groups (pyramid levels), when ``by_class`` is False;
            with ``by_class`` the groups are the C classes (top-k anchors per class, as SSD does).
    Returns:
        boxes ``[B,N,4]``, scores ``[B,N]``, classes ``[B,N]`` int64 with ``N = sum(ks)`` or ``global_k``.
    """
    num_classes = scores.shape[2]
    vals, anchors, classes = [], [], []
    if by_class:
        per_class = scores.transpose(1, 2)  # [B,C,A]
        for c, k in enumerate(ks):
            v, i = per_class[:, c].topk(k, dim=1)
            vals.append(v)
            anchors.append(i)
            classes.append(torch.full_like(i, c))
    else:
        start = 0
        for n, k in zip(groups, ks):
            flat = scores[:, start : start + n].reshape(-1, n * num_classes)
            v, i = flat.topk(k, dim=1)
            vals.append(v)
            anchors.append(torch.div(i, num_classes, rounding_mode="floor") + start)
            classes.append(i % num_classes)
            start += n
    v, a, c = torch.cat(vals, dim=1), torch.cat(anchors, dim=1), torch.cat(classes, dim=1)
    if global_k is not None:
        v, i = v.topk(global_k, dim=1)
        a, c = a.gather(1, i), c.gather(1, i)
    return gather_boxes(boxes, a), v, c


def nms_tail(
    boxes: Tensor, scores: Tensor, classes: Tensor, num_classes: int, max_det: int, iou: float, conf: float
) -> tuple[Tensor, ...]:
    """Class-aware NMS of gathered candidates + per-image top-K + zero padding, vectorised over the batch.

    Args:
        boxes: ``[B,N,4]`` candidate boxes (x1,y1,x2,y2, input pixels).
        scores: ``[B,N]`` candidate scores (entries < 0 are never kept).
        classes: ``[B,N]`` int64 class of each candidate (``0..num_classes-1``).
    Returns:
        ``num_dets int32 [B,1]``, ``det_boxes float32 [B,K,4]``, ``det_scores float32 [B,K]``,
        ``det_classes int32 [B,K]`` with ``K = max_det``; rows past ``num_dets`` are zero.
    """
    n = scores.shape[1]
    rows = torch.arange(num_classes, dtype=torch.int64)
    # the ONNX op shares boxes across classes: a candidate is scored only in its own class row
    dense = torch.where(classes[:, None, :] == rows[None, :, None], scores[:, None, :], torch.full_like(scores, -1.0)[:, None, :])
    sel = onnx_nms(boxes, dense, max_det, iou, conf)  # [M,3]
    b, c, a = sel[:, 0], sel[:, 1], sel[:, 2]
    sel_scores = scores.reshape(-1)[b * n + a]  # [M]
    sel_boxes = boxes.reshape(-1, 4)[b * n + a]  # [M,4]
    # Batch ids [B] without baking the export batch into the graph.
    batch_ids = torch.ones_like(scores[:, 0], dtype=torch.int64).cumsum(0) - 1
    per_image = torch.where(b[None, :] == batch_ids[:, None], sel_scores[None, :], torch.full_like(sel_scores, -1.0))
    pad = torch.zeros_like(scores[:, :1]).expand(-1, max_det) - 1.0  # [B,K] of -1
    vals, idx = torch.cat([per_image, pad], dim=1).topk(max_det, dim=1)  # [B,K]
    valid = vals >= 0
    zeros4 = torch.zeros_like(boxes[0, :1]).expand(max_det, 4)
    all_boxes = torch.cat([sel_boxes, zeros4], dim=0)
    all_classes = torch.cat([c, torch.zeros_like(zeros4[:, 0], dtype=torch.int64)], dim=0)
    det_boxes = torch.where(valid[..., None], all_boxes[idx], torch.zeros_like(all_boxes[idx]))
    det_scores = torch.where(valid, vals, torch.zeros_like(vals))
    det_classes = torch.where(valid, all_classes[idx], torch.zeros_like(idx)).to(torch.int32)
    num_dets = valid.to(torch.int32).sum(dim=1, keepdim=True).to(torch.int32)
    return num_dets, det_boxes, det_scores, det_classes


def check_nms_topk(nms_topk: int | None) -> None:
    """``--nms-topk`` must be in 1..5000 (TensorRT's NMS limit) when given."""
    if nms_topk is not None and not 1 <= nms_topk <= TRT_MAX_NMS:
        raise HarmonicError(f"--nms-topk {nms_topk} must be in 1..{TRT_MAX_NMS} (TensorRT's NMS candidate limit)")


class DenseDetectorExport(nn.Module):
    """Export wrapper for one-stage torchvision detectors (RetinaNet, FCOS, SSD / SSDlite).

    ``forward(images [B,3,S,S] float32 in [0,1])`` returns the four contract outputs, or with
    ``raw=True`` the pre-NMS ``boxes [B,A,4]`` and ``scores [B,A,C]`` (background dropped,
    no candidate cap). ``nms_topk``: the most candidates the NMS sees per image (default
    :attr:`budget`, torchvision's own, at most 5000).
    """

    def __init__(
        self,
        detector: nn.Module,
        img_size: int,
        conf: float = 0.001,
        iou: float = 0.6,
        max_det: int = 100,
        raw: bool = False,
        nms_topk: int | None = None,
    ) -> None:
        super().__init__()
        from torchvision.models.detection._utils import BoxLinearCoder
        from torchvision.models.detection.image_list import ImageList

        from harmonic.models.registry import family_of

        check_nms_topk(nms_topk)
        self.family = family_of(detector)
        if self.family.ranking_scores is None:
            raise HarmonicError(f"{self.family.name} export is not supported by DenseDetectorExport")
        self.backbone = detector.backbone
        self.head = detector.head
        self.img_size, self.conf, self.iou, self.max_det, self.raw = img_size, conf, iou, max_det, raw
        self.topk = int(detector.topk_candidates)
        tr = detector.transform
        self.register_buffer("mean", torch.tensor(tr.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(tr.image_std, dtype=torch.float32).view(1, 3, 1, 1))
        coder = detector.box_coder
        if isinstance(coder, BoxLinearCoder):  # FCOS
            if not coder.normalize_by_size:
                raise HarmonicError("export decodes BoxLinearCoder(normalize_by_size=True) only")
            self.decode = Scope(decode_linear)
        else:
            weights = tuple(float(w) for w in coder.weights)
            clip = float(getattr(coder, "bbox_xform_clip", DEFAULT_XFORM_CLIP))
            self.decode = Scope(lambda d, a: decode_deltas(d, a, weights, clip))
        with torch.no_grad():
            x = torch.zeros(1, 3, img_size, img_size)
            feats = self._features(x)
            anchors = detector.anchor_generator(ImageList(x, [(img_size, img_size)]), feats)[0]
            head = self.head(feats)
        self.register_buffer("anchors", anchors.to(torch.float32))
        locations = [f.shape[-2] * f.shape[-1] for f in feats]
        per_loc = anchors.shape[0] // sum(locations)
        self.level_sizes = [n * per_loc for n in locations]
        self.num_classes = int(head["cls_logits"].shape[-1]) - 1
        if self.family.per_class_candidates:  # torchvision's SSD: top-k anchors per class
            group_sizes = [anchors.shape[0]] * self.num_classes
        else:  # torchvision: top-k (anchor, class) pairs per level
            group_sizes = [n * self.num_classes for n in self.level_sizes]
        self.budget = min(sum(min(n, self.topk) for n in group_sizes), TRT_MAX_NMS)
        self.nms_topk = int(nms_topk or self.budget)
        self.ks, global_cap = group_budget(group_sizes, self.topk, self.nms_topk)
        self.global_k = self.nms_topk if global_cap else None
        self.cap_binds = global_cap or self.ks != [min(n, self.topk) for n in group_sizes]
        self.select = Scope(self._select)
        self.nms_tail = Scope(lambda b, s, c: nms_tail(b, s, c, self.num_classes, max_det, iou, conf))

    def _features(self, x: Tensor) -> list[Tensor]:
        feats = self.backbone(x)
        return [feats] if isinstance(feats, Tensor) else list(feats.values())

    def _select(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return select_candidates(boxes, scores, self.level_sizes, self.ks, self.global_k,
                                 self.family.per_class_candidates)

    def head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Returns boxes ``[B,A,4]`` (clipped to the image) and scores ``[B,A,C]`` for every anchor."""
        x = (images - self.mean) / self.std
        out = self.head(self._features(x))
        scores = self.family.ranking_scores(out)[..., 1:]  # the family's score, background dropped
        boxes = self.decode(out["bbox_regression"], self.anchors)
        # constant reshapes: the head's own reshapes leave A and C symbolic in ONNX shape inference
        num_anchors = self.anchors.shape[0]
        boxes = boxes.clamp(min=0.0, max=float(self.img_size)).reshape(-1, num_anchors, 4)
        return boxes, scores.reshape(-1, num_anchors, self.num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        boxes, scores = self.head_outputs(images)
        if self.raw:
            return boxes, scores
        return self.nms_tail(*self.select(boxes, scores))


class FasterRCNNExport(nn.Module):
    """Export wrapper for torchvision Faster R-CNN (FPN): batch 1 only.

    RPN (per-level top-k on the objectness logits, decode, clip, small boxes dropped, NMS per
    level through the op's class dimension, best ``post_nms_top_n`` as a fixed-size proposal
    set: a constant-K ``TopK``, unused slots masked out), RoIAlign on the FPN level each
    proposal maps to (ONNX ``RoiAlign``, one per level, selected with ``Where``; the level
    mapper's ``sqrt(w*h)`` runs in the FP32 scope ``level_mapper``), box head,
    class-specific decoding and softmax. The final class-aware NMS sees the (proposal,
    class) pairs gathered by :func:`select_candidates` (top-``nms_topk`` when there are more).
    The graph is exported with a fixed batch of 1 (``max_batch`` 1 in the metadata).
    """

    def __init__(
        self, detector: nn.Module, img_size: int, conf: float = 0.001, iou: float = 0.6, max_det: int = 100,
        raw: bool = False, nms_topk: int | None = None,
    ) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        from harmonic.models.registry import family_of

        if raw:
            raise HarmonicError("--raw is not supported for Faster R-CNN (its pre-NMS stage is the RPN)")
        check_nms_topk(nms_topk)
        self.family = family_of(detector)
        self.backbone, self.rpn, self.roi_heads = detector.backbone, detector.rpn, detector.roi_heads
        self.img_size, self.conf, self.iou, self.max_det = img_size, conf, iou, max_det
        tr = detector.transform
        self.register_buffer("mean", torch.tensor(tr.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(tr.image_std, dtype=torch.float32).view(1, 3, 1, 1))
        pool = self.roi_heads.box_roi_pool
        with torch.no_grad():
            x = torch.zeros(1, 3, img_size, img_size)
            feats = self.backbone(x)
            anchors = self.rpn.anchor_generator(ImageList(x, [(img_size, img_size)]), list(feats.values()))[0]
            pool(feats, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], [(img_size, img_size)])  # sets scales/mapper
        self.register_buffer("anchors", anchors.to(torch.float32))
        self.level_sizes = [f.shape[-2] * f.shape[-1] * self.rpn.head.cls_logits.out_channels for f in feats.values()]
        self.pre_nms_top_n = int(self.rpn._pre_nms_top_n["testing"])
        self.post_nms_top_n = min(int(self.rpn._post_nms_top_n["testing"]), sum(self.level_sizes), TRT_MAX_TOPK)
        rpn_clip = float(self.rpn.box_coder.bbox_xform_clip)
        box_weights = tuple(float(w) for w in self.roi_heads.box_coder.weights)
        box_clip = float(self.roi_heads.box_coder.bbox_xform_clip)
        self.rpn_decode = Scope(lambda d, a: decode_deltas(d, a, (1.0, 1.0, 1.0, 1.0), rpn_clip))
        self.decode = Scope(lambda d, a: decode_deltas(d, a, box_weights, box_clip))
        self.level_mapper = Scope(lambda props: pool.map_levels([props]))
        self.num_classes = int(self.roi_heads.box_predictor.cls_score.out_features) - 1
        group_sizes = [self.post_nms_top_n] * self.num_classes  # a (proposal, class) pair per candidate
        self.budget = min(self.post_nms_top_n * self.num_classes, TRT_MAX_NMS)
        self.nms_topk = int(nms_topk or self.budget)
        self.ks, global_cap = group_budget(group_sizes, self.post_nms_top_n, self.nms_topk)
        self.global_k = self.nms_topk if global_cap else None
        self.cap_binds = global_cap or self.ks[0] < self.post_nms_top_n
        self.select = Scope(self._select)
        self.nms_tail = Scope(lambda b, s, c: nms_tail(b, s, c, self.num_classes, max_det, iou, conf))

    def _select(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(proposal, class) pairs ``boxes [P,C,4]``, ``scores [P,C]`` -> NMS candidates ``[1,N,4]``, ``[1,N]``, ``[1,N]``."""
        p, c = scores.shape
        classes = torch.arange(c, dtype=torch.int64)
        if self.ks[0] < p:  # lowered per-class budget (nms_topk > 3840): top-t proposals per class
            v, i = scores.t().topk(self.ks[0], dim=1)  # [C,t]
            b = gather_boxes(boxes.transpose(0, 1), i)
            return b.reshape(1, -1, 4), v.reshape(1, -1), classes[:, None].expand_as(i).reshape(1, -1)
        b, v, cls = boxes.reshape(1, -1, 4), scores.reshape(1, -1), classes[None, :].expand(p, c).reshape(1, -1)
        if self.global_k is not None:
            v, i = v.topk(self.global_k, dim=1)
            b, cls = gather_boxes(b, i), cls.gather(1, i)
        return b, v, cls

    def proposals(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """RPN proposals ``[P,4]`` (``P = post_nms_top_n``, score-descending) and their validity ``[P]`` bool."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        objectness, deltas = self.rpn.head(feats)
        obj, deltas = concat_box_prediction_layers(objectness, deltas)  # [A,1], [A,4]
        obj = obj.reshape(-1)
        idx, lvl_ids = [], []
        start = 0
        for lvl, n in enumerate(self.level_sizes):
            k = min(self.pre_nms_top_n, n)
            idx.append(obj[start : start + n].topk(k).indices + start)
            lvl_ids.append(torch.full((k,), lvl, dtype=torch.int64))
            start += n
        idx, lvl = torch.cat(idx), torch.cat(lvl_ids)
        boxes = self.rpn_decode(deltas[idx][None], self.anchors[idx])
        boxes = boxes.clamp(min=0.0, max=float(self.img_size))  # [1,M,4]
        prob = torch.sigmoid(obj[idx])
        wh = boxes[0, :, 2:] - boxes[0, :, :2]
        big = (wh[:, 0] >= self.rpn.min_size) & (wh[:, 1] >= self.rpn.min_size) & (prob >= self.rpn.score_thresh)
        prob = torch.where(big, prob, torch.full_like(prob, -1.0))
        levels = torch.arange(len(self.level_sizes), dtype=torch.int64)
        scores = torch.where(lvl[None, :] == levels[:, None], prob[None, :], torch.full_like(prob, -1.0)[None, :])
        sel = onnx_nms(boxes, scores[None], self.post_nms_top_n, float(self.rpn.nms_thresh), -0.5)
        keep = sel[:, 2]
        # best post_nms_top_n of the kept boxes as a fixed-size set: a constant-K TopK over kept + padding
        p = self.post_nms_top_n
        kept = torch.cat([prob[keep], torch.full_like(prob[:1], -1.0).expand(p)])
        vals, order = kept.topk(p)
        props = torch.cat([boxes[0][keep], torch.zeros_like(boxes[0, :1]).expand(p, 4)])[order]
        return props, vals > -0.5

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        from torchvision.ops import roi_align

        x = (images - self.mean) / self.std
        feat_dict = self.backbone(x)
        feats = list(feat_dict.values())
        props, valid = self.proposals(feats)  # [P,4], [P]
        pool = self.roi_heads.box_roi_pool
        rois = torch.cat([torch.zeros_like(props[:, :1]), props], dim=1)
        levels = self.level_mapper(props)
        pooled = None
        for lvl, (name, scale) in enumerate(zip(pool.featmap_names, pool.scales)):
            out = roi_align(feat_dict[name], rois, pool.output_size, spatial_scale=scale,
                            sampling_ratio=pool.sampling_ratio, aligned=False)
            pick = (levels == lvl)[:, None, None, None]
            pooled = torch.where(pick, out, torch.zeros_like(out)) if pooled is None else torch.where(pick, out, pooled)
        logits, deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        num_k = logits.shape[-1]
        deltas = deltas.reshape(-1, num_k, 4).transpose(0, 1)  # [K,P,4]
        boxes = self.decode(deltas, props).transpose(0, 1)  # [P,K,4]
        boxes = boxes.clamp(min=0.0, max=float(self.img_size))[:, 1:]  # [P,C,4]
        scores = torch.softmax(logits, dim=-1)[:, 1:]  # [P,C]
        wh = boxes[..., 2:] - boxes[..., :2]
        ok = (wh[..., 0] >= 1e-2) & (wh[..., 1] >= 1e-2) & valid[:, None]
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        return self.nms_tail(*self.select(boxes, scores))


#: ``Family.export_head`` -> the wrapper class that exports it
EXPORT_HEADS: dict[str, type[nn.Module]] = {"dense": DenseDetectorExport, "rcnn": FasterRCNNExport}


def build_wrapper(
    detector: nn.Module, img_size: int, conf: float, iou: float, max_det: int, raw: bool = False,
    nms_topk: int | None = None,
) -> nn.Module:
    """The export wrapper for ``detector``'s family (eval mode, no grad needed)."""
    from harmonic.models.registry import family_of

    head = EXPORT_HEADS[family_of(detector).export_head]
    return head(detector, img_size, conf, iou, max_det, raw=raw, nms_topk=nms_topk).eval()
