"""Verify an exported graph: ONNX Runtime vs the PyTorch detector's own eval output.

The reference is the torchvision detector itself (``model.eval()(images)``, its own
transform and post-processing), configured for the graph's operating point: the same
score/IoU thresholds and ``detections_per_img``, the transform's resize pinned to the
export size ``S`` (so letterboxed ``S x S`` inputs pass through unchanged), and whatever
the detector's family needs to report what the graph reports (``Family.prepare_reference``:
RetinaNet/FCOS's always-negative background logit forced to -1e4, since the graph drops that
column and torchvision would otherwise report it as label 0 at a tiny threshold).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harmonic.contract import (
    COMMON_IMAGE_SUFFIXES,
    DET_BOXES,
    DET_CLASSES,
    DET_SCORES,
    IMAGE_SUFFIXES,
    INPUT_NAME,
    NUM_DETS,
)
from harmonic.errors import HarmonicError

if TYPE_CHECKING:
    from harmonic.models.family import Family

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    """Outcome of a verification: ``ok`` and, when not, the first difference in words."""

    ok: bool
    num_images: int
    num_detections: int
    message: str


def reference_detector(model, img_size: int, conf: float, iou: float, max_det: int,  # noqa: ANN001, ANN201
                       nms_topk: int | None = None):
    """A deep copy of ``model`` set to the export's operating point (see module docstring).

    ``nms_topk``: the graph's NMS candidate cap; where it binds, the reference applies the same
    cap (:func:`cap_reference`).
    """
    from harmonic.models.registry import family_of

    family = family_of(model)
    ref = copy.deepcopy(model).eval()
    tr = ref.transform
    tr.min_size, tr.max_size = (img_size,), img_size
    if getattr(tr, "fixed_size", None) is not None:
        tr.fixed_size = (img_size, img_size)
    family.apply_operating_point(ref, conf, iou, max_det)
    if family.prepare_reference is not None:
        family.prepare_reference(ref)
    ref.requires_grad_(False)
    cap_reference(ref, family, img_size, conf, iou, max_det, nms_topk)
    return ref


def cap_reference(ref, family: Family, img_size: int, conf: float, iou: float, max_det: int,  # noqa: ANN001
                  nms_topk: int | None) -> None:
    """Make torchvision's post-processing cap the NMS candidates the way the graph does.

    The graph keeps torchvision's budget, then either a global top-``nms_topk`` or (caps above
    3840) a lower per-group k (:func:`harmonic.export.wrapper.group_budget`). A lower per-group
    k is torchvision's own ``topk_candidates`` (the family's ``candidate_knob``); otherwise
    ``postprocess_detections`` runs with NMS switched off (IoU threshold 1, no detection limit),
    and the cap, ``batched_nms`` and the top ``max_det`` are applied to its candidates here.
    """
    import torch
    from torchvision.ops import batched_nms

    from harmonic.export.wrapper import build_wrapper

    wrapper = build_wrapper(ref, img_size, conf, iou, max_det, nms_topk=nms_topk)
    if not wrapper.cap_binds:
        return  # torchvision's own post-processing is the reference
    owner = family.postprocessor(ref)
    if wrapper.global_k is None and family.candidate_knob is not None:
        setattr(owner, family.candidate_knob, max(wrapper.ks))
        return
    per_class = None if wrapper.global_k is not None else wrapper.ks[0]
    orig = owner.postprocess_detections
    owner.nms_thresh, owner.detections_per_img = 1.0, 10**9  # IoU > 1 never happens: NMS keeps everything

    def cap(boxes, scores, labels):  # noqa: ANN001, ANN202
        if per_class is None:
            keep = scores.argsort(descending=True)[: wrapper.global_k]
        else:
            keep = torch.cat([torch.nonzero(labels == c).flatten()[scores[labels == c].argsort(descending=True)[:per_class]]
                              for c in labels.unique()]) if len(labels) else labels
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, iou)[:max_det]
        return boxes[keep], scores[keep], labels[keep]

    def capped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return family.map_detections(orig(*args, **kwargs), cap)

    owner.postprocess_detections = capped


def synthetic_images(num: int, img_size: int, seed: int = 0) -> np.ndarray:
    """Random-shape test images: ``[num,3,S,S]`` float32 in [0,1] (letterbox grey border included)."""
    rng = np.random.default_rng(seed)
    out = np.full((num, 3, img_size, img_size), 114 / 255, dtype=np.float32)
    for i in range(num):
        pad = int(rng.integers(0, img_size // 4))
        out[i, :, pad : img_size - pad] = rng.uniform(0.2, 0.8, size=(3, 1, 1))
        for _ in range(int(rng.integers(2, 6))):
            x1, y1 = rng.integers(0, img_size - 8, size=2)
            w, h = rng.integers(6, img_size // 2, size=2)
            out[i, :, y1 : y1 + h, x1 : x1 + w] = rng.uniform(0, 1, size=(3, 1, 1))
        out[i] += rng.normal(0, 0.02, size=out[i].shape).astype(np.float32)
    return np.clip(out, 0, 1)


def load_images(directory: str | Path, img_size: int, limit: int = 4) -> np.ndarray:
    """Letterbox up to ``limit`` images of ``directory``: ``[N,3,S,S]`` float32 RGB in [0,1]."""
    import cv2

    from harmonic.data.letterbox import letterbox

    directory = Path(directory)
    if not directory.is_dir():
        raise HarmonicError(f"{directory}: --verify-images is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise HarmonicError(f"{directory}: no images ({', '.join(COMMON_IMAGE_SUFFIXES)}) to verify with")
    batch = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise HarmonicError(f"{f}: cannot read image")
        img, _ = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), img_size)
        batch.append(img.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return np.stack(batch)


def compare_detections(
    ort_out: dict[str, np.ndarray],
    ref: list[dict[str, np.ndarray]],
    box_rtol: float = 1e-3,
    box_atol: float = 1e-2,
    score_atol: float = 1e-4,
    tie_atol: float = 1e-6,
) -> VerifyResult:
    """Compare graph outputs with reference detections, image by image.

    Args:
        ort_out: ``num_dets [B,1]``, ``det_boxes [B,K,4]``, ``det_scores [B,K]``, ``det_classes [B,K]``.
        ref: per image ``boxes [N,4]``, ``scores [N]``, ``labels [N]`` (0-based class index).
    Detections are paired greedily in score order (same class, box and score within
    tolerance), so near-equal scores listed in a different order still match. A detection
    whose score ties (within ``tie_atol``) with an unpaired ONNX detection of the same class
    but another box (>= 1 px away) is paired with it and counted in the verdict as a tie; more
    than half of an image's detections matched that way is a failure (nothing was verified).
    """
    total = ties = 0
    for i, r in enumerate(ref):
        n = int(ort_out[NUM_DETS][i, 0])
        if n != len(r["scores"]):
            return VerifyResult(False, len(ref), total, f"image {i}: {n} detections in ONNX, {len(r['scores'])} in PyTorch")
        if np.any(ort_out[DET_SCORES][i, n:] != 0) or np.any(ort_out[DET_BOXES][i, n:] != 0):
            return VerifyResult(False, len(ref), total, f"image {i}: rows past num_dets={n} are not zero")
        boxes, scores = ort_out[DET_BOXES][i, :n], ort_out[DET_SCORES][i, :n]
        classes = ort_out[DET_CLASSES][i, :n]
        used = np.zeros(n, dtype=bool)
        image_ties = 0
        for j in range(n):
            rb, rs, rc = r["boxes"][j], r["scores"][j], r["labels"][j]
            ok = (
                ~used
                & (classes == rc)
                & (np.abs(scores - rs) <= score_atol)
                & np.all(np.abs(boxes - rb) <= box_atol + box_rtol * np.abs(rb), axis=1)
            )
            cand = np.flatnonzero(ok)
            if cand.size == 0:
                # A score tie (identical scores up to float rounding, e.g. from flat image regions):
                # which of the tied boxes top-k/NMS keeps is implementation-defined (sort order);
                # accept an ONNX detection of the same class whose score equals this one.
                other_box = np.max(np.abs(boxes - rb), axis=1) >= 1.0  # another anchor/location, not an error
                cand = np.flatnonzero(~used & (classes == rc) & (np.abs(scores - rs) <= tie_atol) & other_box)
                if cand.size == 0 and n == ort_out[DET_SCORES].shape[1]:
                    # cut at K = max_det: which of several equal scores makes the cut is implementation-defined
                    cand = np.flatnonzero(~used & (np.abs(scores - rs) <= tie_atol) & (scores <= scores[n - 1] + tie_atol))
                ties += int(cand.size > 0)
                image_ties += int(cand.size > 0)
            if cand.size == 0:
                k = min(j, n - 1)
                return VerifyResult(
                    False,
                    len(ref),
                    total,
                    f"image {i} detection {j}: PyTorch class {int(rc)} score {rs:.6f} box "
                    f"{np.round(rb, 3).tolist()} has no match in ONNX (row {k}: class {int(classes[k])} "
                    f"score {scores[k]:.6f} box {np.round(boxes[k], 3).tolist()})",
                )
            err = np.max(np.abs(boxes[cand] - rb), axis=1) + np.abs(scores[cand] - rs)
            used[cand[int(np.argmin(err))]] = True  # the closest, so a near-duplicate doesn't steal a partner
        if image_ties > n // 2:
            return VerifyResult(False, len(ref), total, f"image {i}: {image_ties} of {n} detections only match "
                                "as score ties; scores are too degenerate to verify (an untrained head?)")
        total += n
    note = f" ({ties} matched within exact score ties)" if ties else ""
    return VerifyResult(True, len(ref), total, f"{len(ref)} images, {total} detections match{note}")


def run_reference(ref_model, images: np.ndarray) -> list[dict[str, np.ndarray]]:  # noqa: ANN001
    """Eval-mode torchvision output for ``images [N,3,S,S]``; labels turned into 0-based indices."""
    import torch

    with torch.no_grad():
        out = ref_model(list(torch.from_numpy(images)))
    return [
        {
            "boxes": o["boxes"].numpy(),
            "scores": o["scores"].numpy(),
            "labels": o["labels"].numpy() - 1,
        }
        for o in out
    ]


def run_onnx(onnx_path: str | Path, images: np.ndarray, batch: int | None = None) -> dict[str, np.ndarray]:
    """Run the graph in ONNX Runtime (CPU); ``batch`` > 0 splits ``images`` into fixed-size calls."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    step = batch or len(images)
    parts = [sess.run(None, {INPUT_NAME: images[i : i + step]}) for i in range(0, len(images), step)]
    names = [o.name for o in sess.get_outputs()]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}


def verify_onnx(
    onnx_path: str | Path,
    model,  # noqa: ANN001
    img_size: int,
    conf: float,
    iou: float,
    max_det: int,
    images: np.ndarray | None = None,
    batch: int | None = None,
    nms_topk: int | None = None,
) -> VerifyResult:
    """ONNX Runtime vs the PyTorch detector (see module docstring) on ``images [N,3,S,S]``.

    Without ``images``, four synthetic random-shape images are used. ``batch`` is the
    graph's fixed batch (None for a dynamic one: all images in one call).
    """
    if images is None:
        images = synthetic_images(4, img_size)
    ref = run_reference(reference_detector(model, img_size, conf, iou, max_det, nms_topk), images)
    got = run_onnx(onnx_path, images, batch)
    result = compare_detections(got, ref)
    log.debug("verify: %s", result.message)
    return result
