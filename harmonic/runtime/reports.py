"""What a local ``infer`` run and a ``--triton`` run share: ground truth, image ids and the accuracy report.

Torch-free; :mod:`harmonic.runtime.cli` and :mod:`harmonic.runtime.triton_client` both import it
(neither imports the other's internals).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmonic.errors import HarmonicError, WriteFailure
from harmonic.runtime.sources import ImageList

log = logging.getLogger("harmonic.infer")


def load_annotation_records(annotations: str | Path, names: list[str] | None, split: str,
                      images: Path | None = None) -> tuple[list[Any], list[str], list[int]]:
    """GT records (``harmonic.data.readers.ImageRecord``), the class names they are indexed by (the
    engine's, else the file's) and the dataset's own category id of each class, through the one
    ground-truth loader :func:`harmonic.data.readers.load_annotations` (COCO json, VOC or YOLO
    folder, DATA.yaml[:split]); ``images`` is the images folder of a VOC / YOLO folder."""
    try:
        from harmonic.data.readers import load_annotations
    except ImportError as exc:
        raise HarmonicError(f"--annotations needs harmonic.data.readers, which is not available ({exc})") from exc
    ann = load_annotations(annotations, names, split=split, images=images)
    return ann.records, ann.names, ann.category_ids


def match_image_ids(images: ImageList, records: Sequence[Any]) -> tuple[list[int | None], int]:
    """Image id per input image from GT ``file_name`` (relative path, then a path suffix, then basename).

    Returns ``(ids, n_unmatched)``; an unmatched image gets ``None``.
    """
    by_rel = {str(r.file_name).replace("\\", "/"): int(r.image_id) for r in records}
    by_base: dict[str, int | None] = {}
    for rel, iid in by_rel.items():
        base = rel.rsplit("/", 1)[-1]
        by_base[base] = None if base in by_base else iid  # ambiguous basenames don't match
    ids: list[int | None] = []
    for i, p in enumerate(images.paths):
        rel = images.relative_name(i)
        parts = rel.split("/")
        iid = next((by_rel[s] for s in ("/".join(parts[k:]) for k in range(len(parts))) if s in by_rel), None)
        if iid is None:
            iid = by_base.get(p.name)
        ids.append(iid)
    return ids, sum(1 for x in ids if x is None)


def assign_image_ids(images: Any, records: Sequence[Any], annotations: Any) -> tuple[list[int], set[int]]:
    """Each image's id: its ground-truth id (matched by file name), else a new id past the largest one.

    Returns ``(ids per image path, the ground truth's ids)``; no image in the ground truth is an error
    naming ``annotations``; unmatched images are logged (they are left out of the report).
    """
    ids, unmatched = match_image_ids(images, records)
    if unmatched == len(images.paths):
        raise HarmonicError(f"--annotations {annotations}: none of the {len(images.paths)} image(s) is in it "
                            "(matched by file_name)")
    if unmatched:
        log.warning("%d of %d images are not in %s; they get new ids and are left out of the report",
                    unmatched, len(images.paths), annotations)
    next_id = max((int(r.image_id) for r in records), default=0) + 1
    for i, v in enumerate(ids):
        if v is None:
            ids[i] = next_id
            next_id += 1
    return ids, {int(r.image_id) for r in records}


def evaluate_report(records: list[Any], dets: list[dict[str, Any]], names: list[str],
                    out: Path, title: str, category_ids: list[int] | None = None,
                    subset: dict[str, Any] | None = None) -> dict[str, Any]:
    """``harmonic.evaluation.evaluate`` -> ``report.json`` (+ pairs sidecar) and ``score_iou.png`` under ``out``.

    ``dets`` carry ``category_ids[class]`` (default class + 1); ``subset`` (which annotated images
    were evaluated) goes into the report as ``report["subset"]``.
    """
    try:
        from harmonic.data.readers import records_to_coco
        from harmonic.evaluation import evaluate, save_report
    except ImportError as exc:
        raise HarmonicError(f"--annotations needs harmonic.evaluation, which is not available ({exc})") from exc
    gt = records_to_coco(records, names, category_ids)
    report = evaluate(gt, dets, return_pairs=True)
    if subset is not None:
        report["subset"] = subset
    save_report(report, out / "report.json")
    try:
        from harmonic.evaluation.plots import scatter_score_iou

        scatter_score_iou(report, out / "score_iou.png", title)
    except WriteFailure:  # a full disk fails the run's group of outputs, as any other write does
        raise
    except Exception as exc:  # a plot that cannot be drawn must not lose the report
        log.warning("score-IoU plot not written: %s", exc)
    return report
