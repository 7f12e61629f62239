"""Export wrappers: a torchvision detector -> the fixed ``num_dets/det_boxes/det_scores/det_classes`` graph.

The wrapper re-implements torchvision's inference post-processing with batched tensor
ops so the traced graph is vectorised over a dynamic batch (no per-image loop unrolled
at the export batch):

- normalisation (the detector's own ``transform.image_mean/std``) in the graph;
- backbone + head of the detector, unchanged;
- anchors precomputed for the fixed square input size ``S`` (a buffer);
- FP16-safe box decoding (``exp`` clamped at ``log(1000/16)`` as torchvision does);
- torchvision's pre-NMS candidate cap, reproduced in-graph: per-level top-k over
  (anchor, class) pairs for RetinaNet/FCOS (``topk_candidates``, 1000 by default),
  per-class top-k over anchors for SSD (400); entries outside the cap get score -1 so
  the NMS score threshold drops them;
- the standard ONNX ``NonMaxSuppression`` op, class-aware through its class dimension
  (``boxes [B,A,4]``, ``scores [B,C,A]``), then gather, top-K over all classes per
  image and zero padding.

Class column 0 (background / always-negative logit, docs/CONTRACTS.md) is dropped, so
``det_classes`` is the 0-based class index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harmonic.errors import HarmonicError

OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")
RAW_OUTPUT_NAMES = ("boxes", "scores")
DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)
FAMILIES = ("retinanet", "fcos", "ssd", "fasterrcnn")


def detector_family(model: nn.Module) -> str:
    """Name the torchvision detector family of ``model`` (one of ``FAMILIES``)."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for cls, name in ((RetinaNet, "retinanet"), (FCOS, "fcos"), (SSD, "ssd"), (FasterRCNN, "fasterrcnn")):
        if isinstance(model, cls):
            return name
    raise HarmonicError(f"unsupported model type {type(model).__name__} (export supports {', '.join(FAMILIES)})")


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


def cap_topk(scores: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries per row of ``scores [B,M]``; the others become -1."""
    if scores.shape[1] <= k:
        return scores
    idx = scores.topk(k, dim=1).indices
    mask = torch.zeros_like(scores).scatter(1, idx, 1.0) > 0.5
    return torch.where(mask, scores, torch.full_like(scores, -1.0))


def nms_tail(boxes: Tensor, scores: Tensor, max_det: int, iou: float, conf: float) -> tuple[Tensor, ...]:
    """NMS + per-image top-K + zero padding, vectorised over a dynamic batch.

    Args:
        boxes: ``[B,A,4]`` candidate boxes (x1,y1,x2,y2, input pixels).
        scores: ``[B,C,A]`` class scores (entries < 0 are never kept).
    Returns:
        ``num_dets int32 [B,1]``, ``det_boxes float32 [B,K,4]``, ``det_scores float32 [B,K]``,
        ``det_classes int32 [B,K]`` with ``K = max_det``; rows past ``num_dets`` are zero.
    """
    num_classes, num_anchors = scores.shape[1], scores.shape[2]
    sel = onnx_nms(boxes, scores, max_det, iou, conf)  # [N,3]
    b, c, a = sel[:, 0], sel[:, 1], sel[:, 2]
    sel_scores = scores.reshape(-1)[(b * num_classes + c) * num_anchors + a]  # [N]
    sel_boxes = boxes.reshape(-1, 4)[b * num_anchors + a]  # [N,4]
    # Batch ids [B] without baking the export batch into the graph.
    batch_ids = torch.ones_like(scores[:, 0, 0], dtype=torch.int64).cumsum(0) - 1
    dense = torch.where(b[None, :] == batch_ids[:, None], sel_scores[None, :], torch.full_like(sel_scores, -1.0))
    pad = torch.zeros_like(scores[:, 0, :1]).expand(-1, max_det) - 1.0  # [B,K] of -1
    vals, idx = torch.cat([dense, pad], dim=1).topk(max_det, dim=1)  # [B,K]
    valid = vals >= 0
    zeros4 = torch.zeros_like(boxes[0, :1]).expand(max_det, 4)
    all_boxes = torch.cat([sel_boxes, zeros4], dim=0)
    all_classes = torch.cat([c, torch.zeros_like(zeros4[:, 0], dtype=torch.int64)], dim=0)
    det_boxes = torch.where(valid[..., None], all_boxes[idx], torch.zeros_like(all_boxes[idx]))
    det_scores = torch.where(valid, vals, torch.zeros_like(vals))
    det_classes = torch.where(valid, all_classes[idx], torch.zeros_like(idx)).to(torch.int32)
    num_dets = valid.to(torch.int32).sum(dim=1, keepdim=True).to(torch.int32)
    return num_dets, det_boxes, det_scores, det_classes


class DenseDetectorExport(nn.Module):
    """Export wrapper for one-stage torchvision detectors (RetinaNet, FCOS, SSD / SSDlite).

    ``forward(images [B,3,S,S] float32 in [0,1])`` returns the four contract outputs, or with
    ``raw=True`` the pre-NMS ``boxes [B,A,4]`` and ``scores [B,A,C]`` (background dropped,
    no candidate cap).
    """

    def __init__(
        self,
        detector: nn.Module,
        img_size: int,
        conf: float = 0.001,
        iou: float = 0.6,
        max_det: int = 100,
        raw: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.family = detector_family(detector)
        if self.family == "fasterrcnn":
            raise HarmonicError("Faster R-CNN export is not supported by DenseDetectorExport")
        self.backbone = detector.backbone
        self.head = detector.head
        self.img_size, self.conf, self.iou, self.max_det, self.raw = img_size, conf, iou, max_det, raw
        self.topk = int(detector.topk_candidates)
        tr = detector.transform
        self.register_buffer("mean", torch.tensor(tr.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(tr.image_std, dtype=torch.float32).view(1, 3, 1, 1))
        if self.family != "fcos":
            coder = detector.box_coder
            self.weights = tuple(float(w) for w in coder.weights)
            self.clip = float(getattr(coder, "bbox_xform_clip", DEFAULT_XFORM_CLIP))
        with torch.no_grad():
            x = torch.zeros(1, 3, img_size, img_size)
            feats = self._features(x)
            anchors = detector.anchor_generator(ImageList(x, [(img_size, img_size)]), feats)[0]
        self.register_buffer("anchors", anchors.to(torch.float32))
        locations = [f.shape[-2] * f.shape[-1] for f in feats]
        per_loc = anchors.shape[0] // sum(locations)
        self.level_sizes = [n * per_loc for n in locations]

    def _features(self, x: Tensor) -> list[Tensor]:
        feats = self.backbone(x)
        return [feats] if isinstance(feats, Tensor) else list(feats.values())

    def candidates(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns boxes ``[B,A,4]`` (clipped to the image), scores ``[B,A,C]`` and capped scores ``[B,C,A]``."""
        x = (images - self.mean) / self.std
        out = self.head(self._features(x))
        s = self.img_size
        if self.family == "retinanet":
            scores = torch.sigmoid(out["cls_logits"])[..., 1:]
            boxes = decode_deltas(out["bbox_regression"], self.anchors, self.weights, self.clip)
        elif self.family == "fcos":
            scores = torch.sqrt(torch.sigmoid(out["cls_logits"]) * torch.sigmoid(out["bbox_ctrness"]))[..., 1:]
            boxes = decode_linear(out["bbox_regression"], self.anchors)
        else:  # ssd
            scores = torch.softmax(out["cls_logits"], dim=-1)[..., 1:]
            boxes = decode_deltas(out["bbox_regression"], self.anchors, self.weights, self.clip)
        boxes = boxes.clamp(min=0.0, max=float(s))
        if self.raw:
            return boxes, scores, scores
        num_classes = scores.shape[-1]
        if self.family == "ssd":  # torchvision: top-k anchors per class
            capped = scores.transpose(1, 2)
            capped = cap_topk(capped.reshape(-1, capped.shape[2]), self.topk).reshape(capped.shape)
        else:  # torchvision: top-k (anchor, class) pairs per level
            levels = []
            for lvl in scores.split(self.level_sizes, dim=1):
                n = lvl.shape[1]
                levels.append(cap_topk(lvl.reshape(lvl.shape[0], n * num_classes), self.topk).reshape(lvl.shape))
            capped = torch.cat(levels, dim=1).transpose(1, 2)
        return boxes, scores, capped

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        boxes, scores, capped = self.candidates(images)
        if self.raw:
            return boxes, scores
        return nms_tail(boxes, capped.contiguous(), self.max_det, self.iou, self.conf)


class FasterRCNNExport(nn.Module):
    """Export wrapper for torchvision Faster R-CNN (FPN): batch 1 only.

    RPN (per-level top-k on the objectness logits, decode, clip, small boxes dropped, NMS per
    level through the op's class dimension, best ``post_nms_top_n``), RoIAlign on the FPN
    level each proposal maps to (ONNX ``RoiAlign``, one per level, selected with ``Where``),
    box head, class-specific decoding and softmax. The final class-aware NMS sees every
    (proposal, class) pair as its own box (``boxes [1,N*C,4]``; class ``c``'s score row is -1
    outside its own pairs), since the ONNX op shares boxes across classes.
    The graph is exported with a fixed batch of 1 (``max_batch`` 1 in the metadata).
    """

    def __init__(
        self, detector: nn.Module, img_size: int, conf: float = 0.001, iou: float = 0.6, max_det: int = 100,
        raw: bool = False,
    ) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        if raw:
            raise HarmonicError("--raw is not supported for Faster R-CNN (its pre-NMS stage is the RPN)")
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
        self.post_nms_top_n = int(self.rpn._post_nms_top_n["testing"])
        self.rpn_clip = float(self.rpn.box_coder.bbox_xform_clip)
        self.box_weights = tuple(float(w) for w in self.roi_heads.box_coder.weights)
        self.box_clip = float(self.roi_heads.box_coder.bbox_xform_clip)

    def proposals(self, feats: list[Tensor]) -> Tensor:
        """RPN proposals ``[N,4]`` (N <= post_nms_top_n), score-descending, for the single image."""
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
        boxes = decode_deltas(deltas[idx][None], self.anchors[idx], (1.0, 1.0, 1.0, 1.0), self.rpn_clip)
        boxes = boxes.clamp(min=0.0, max=float(self.img_size))  # [1,M,4]
        prob = torch.sigmoid(obj[idx])
        wh = boxes[0, :, 2:] - boxes[0, :, :2]
        big = (wh[:, 0] >= self.rpn.min_size) & (wh[:, 1] >= self.rpn.min_size) & (prob >= self.rpn.score_thresh)
        prob = torch.where(big, prob, torch.full_like(prob, -1.0))
        levels = torch.arange(len(self.level_sizes), dtype=torch.int64)
        scores = torch.where(lvl[None, :] == levels[:, None], prob[None, :], torch.full_like(prob, -1.0)[None, :])
        sel = onnx_nms(boxes, scores[None], self.post_nms_top_n, float(self.rpn.nms_thresh), -0.5)
        keep = sel[:, 2]
        order = prob[keep].argsort(descending=True)[: self.post_nms_top_n]
        return boxes[0][keep[order]]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        from torchvision.ops import roi_align

        x = (images - self.mean) / self.std
        feat_dict = self.backbone(x)
        feats = list(feat_dict.values())
        props = self.proposals(feats)  # [N,4]
        pool = self.roi_heads.box_roi_pool
        rois = torch.cat([torch.zeros_like(props[:, :1]), props], dim=1)
        levels = pool.map_levels([props])
        pooled = None
        for lvl, (name, scale) in enumerate(zip(pool.featmap_names, pool.scales)):
            out = roi_align(feat_dict[name], rois, pool.output_size, spatial_scale=scale,
                            sampling_ratio=pool.sampling_ratio, aligned=False)
            pick = (levels == lvl)[:, None, None, None]
            pooled = torch.where(pick, out, torch.zeros_like(out)) if pooled is None else torch.where(pick, out, pooled)
        logits, deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        num_k = logits.shape[-1]
        deltas = deltas.reshape(-1, num_k, 4).transpose(0, 1)  # [K,N,4]
        boxes = decode_deltas(deltas, props, self.box_weights, self.box_clip).transpose(0, 1)  # [N,K,4]
        boxes = boxes.clamp(min=0.0, max=float(self.img_size))[:, 1:]  # [N,C,4]
        scores = torch.softmax(logits, dim=-1)[:, 1:]  # [N,C]
        c = scores.shape[1]
        wh = boxes[..., 2:] - boxes[..., :2]
        scores = torch.where((wh[..., 0] >= 1e-2) & (wh[..., 1] >= 1e-2), scores, torch.full_like(scores, -1.0))
        flat = scores.reshape(-1)  # [N*C], pair n*C + c
        col_class = (torch.ones_like(flat, dtype=torch.int64).cumsum(0) - 1) % c
        classes = torch.arange(c, dtype=torch.int64)
        dense = torch.where(col_class[None, :] == classes[:, None], flat[None, :], torch.full_like(flat, -1.0)[None, :])
        return nms_tail(boxes.reshape(1, -1, 4), dense[None], self.max_det, self.iou, self.conf)


def build_wrapper(
    detector: nn.Module, img_size: int, conf: float, iou: float, max_det: int, raw: bool = False
) -> nn.Module:
    """The export wrapper for ``detector``'s family (eval mode, no grad needed)."""
    if detector_family(detector) == "fasterrcnn":
        return FasterRCNNExport(detector, img_size, conf, iou, max_det, raw=raw).eval()
    return DenseDetectorExport(detector, img_size, conf, iou, max_det, raw=raw).eval()
