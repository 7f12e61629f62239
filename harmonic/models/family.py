"""A detector family: everything the rest of the code asks about one kind of torchvision detector.

Each ``harmonic/models/<family>.py`` defines ``FAMILY = Family(...)`` next to its builder and loss
adapter; :mod:`harmonic.models.registry` names the module and imports it only when the family is
used (listing the models imports none). Export (``harmonic.export.wrapper``) and verification
(``harmonic.export.verify``) ask the family instead of branching on its name, so adding a detector
touches its own module and the registry.

This module holds no torch code itself: the family's callables live in its module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harmonic.errors import HarmonicError

#: one image's detections ``(boxes [N,4], scores [N], labels [N])`` -> the same, filtered
DetectionsFn = Callable[[Any, Any, Any], tuple[Any, Any, Any]]


def _itself(model: Any) -> Any:
    return model


def map_dense_detections(out: list[dict[str, Any]], fn: DetectionsFn) -> list[dict[str, Any]]:
    """``fn`` on each image of a one-stage ``postprocess_detections`` output (a list of
    ``{"boxes", "scores", "labels"}`` dicts)."""
    return [dict(zip(("boxes", "scores", "labels"), fn(d["boxes"], d["scores"], d["labels"]))) for d in out]


@dataclass(frozen=True)
class Family:
    """One detector family (RetinaNet, FCOS, SSD, Faster R-CNN): builder, loss adapter, export head,
    operating point and the eager reference the exported graph is verified against.

    Attributes:
        name: the family's name in :data:`harmonic.models.registry.MODELS` (``ModelInfo.family``).
        detector_type: the torchvision class; ``isinstance`` recognises the family, for our
            adapters and for plain torchvision detectors alike.
        build: ``build(name, num_classes, *, loss, img_size, backbone_weights, loss_options,
            **options) -> nn.Module`` (see the registry).
        loss_adapter: the class that carries the loss hook (a head, the model or its RoI heads;
            :class:`harmonic.models.adapter.LossAdapter`).
        export_head: which wrapper of :mod:`harmonic.export.wrapper` exports it (``"dense"`` for
            one-stage heads, ``"rcnn"`` for Faster R-CNN); named, not imported, so the model
            layer never imports export code.
        ranking_scores: one-stage heads: ``head_outputs -> Tensor[B, A, C+1]``, the per-class
            score torchvision's post-processing ranks by (background column included).
        per_class_candidates: torchvision keeps the top-k anchors per class (SSD) rather than the
            top-k (anchor, class) pairs per pyramid level (RetinaNet, FCOS).
        candidate_knob: the post-processor's attribute holding torchvision's per-group pre-NMS
            candidate budget (``topk_candidates``); None where there is none (Faster R-CNN keeps
            every (proposal, class) pair).
        max_batch: the fixed batch of the exported graph, None for a dynamic batch.
        focal_head: sigmoid focal-loss head (the ``quality_focal`` loss option applies).
        centerness: has FCOS's centre-ness branch (the ``iou_centerness`` loss option applies).
        postprocessor: ``model -> module`` holding torchvision's post-processing
            (``postprocess_detections``, ``score_thresh``, ``nms_thresh``, ``detections_per_img``).
        map_detections: ``(postprocess_detections output, fn) -> output`` with ``fn`` applied to
            each image's ``(boxes, scores, labels)``.
        prepare_reference: ``model -> None``: adjust an eval-mode copy so torchvision's own output
            is the exported graph's reference (e.g. never report the background column).
    """

    name: str
    detector_type: type
    build: Callable[..., Any]
    loss_adapter: type
    export_head: str
    ranking_scores: Callable[[dict[str, Any]], Any] | None = None
    per_class_candidates: bool = False
    candidate_knob: str | None = "topk_candidates"
    max_batch: int | None = None
    focal_head: bool = False
    centerness: bool = False
    postprocessor: Callable[[Any], Any] = _itself
    map_detections: Callable[[Any, DetectionsFn], Any] = map_dense_detections
    prepare_reference: Callable[[Any], None] | None = None

    def matches(self, model: Any) -> bool:
        """Whether ``model`` is a detector of this family."""
        return isinstance(model, self.detector_type)

    def apply_operating_point(self, model: Any, score_threshold: float, iou_threshold: float, max_det: int) -> None:
        """Set the post-processing of ``model``: score threshold, NMS IoU, max detections.

        They replace torchvision's ``score_thresh``, ``nms_thresh``, ``detections_per_img`` on the
        family's :attr:`postprocessor`; the export wrapper uses the same three numbers, so
        validation during training sees the operating point that ships.
        """
        target = self.postprocessor(model)
        for attr in ("score_thresh", "nms_thresh", "detections_per_img"):
            if not hasattr(target, attr):
                raise HarmonicError(f"{type(model).__name__}: no {attr} to set the operating point on")
        target.score_thresh = float(score_threshold)
        target.nms_thresh = float(iou_threshold)
        target.detections_per_img = int(max_det)
