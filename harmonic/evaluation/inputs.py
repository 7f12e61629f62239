"""Load and validate evaluation inputs: ground truth -> one canonical COCO dict, detections -> arrays.

Ground truth may be a COCO json path, a Pascal VOC or YOLO folder (read by
:func:`harmonic.data.readers.load_annotations`, the one loader every command uses), a COCO
dict, a dataset file plus split (``("data.yaml", "val")`` or ``"data.yaml:val"``), or a list of
:class:`harmonic.data.readers.ImageRecord` with ``names``. Detections (and
pre-NMS candidates) are COCO results: a list of dicts, a json file, or a dict
of columns ``{"image_id"[N], "category_id"[N], "bbox"[N, 4] xywh, "score"[N]}``.
Category ids are the ground truth's own, whatever its form: a COCO file's ids (with
``names`` only checked and used to order the report), the ids of a dataset
split's COCO file, ``index + 1`` for VOC / YOLO splits and records (which have no ids).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

PathLike = str | Path


@dataclass
class GroundTruth:
    """Ground truth in one canonical form.

    ``dataset`` is a COCO dict pycocotools can index (fresh dicts; the caller's
    input is never mutated). The arrays describe its annotations: ``ann_image``
    int64[G], ``ann_category`` int64[G], ``ann_boxes`` float64[G, 4] xyxy px,
    ``ann_crowd`` bool[G] (crowd / ignored boxes). ``image_ids`` int64[I] and
    ``category_ids`` int64[C] are sorted; ``names[k]`` names ``category_ids[k]``.
    """

    dataset: dict
    names: list[str]
    source: str
    image_ids: np.ndarray
    category_ids: np.ndarray
    ann_image: np.ndarray
    ann_category: np.ndarray
    ann_boxes: np.ndarray
    ann_crowd: np.ndarray


@dataclass
class Detections:
    """COCO results as columns: ``image_id`` int64[N], ``category_id`` int64[N],
    ``boxes`` float64[N, 4] xyxy px, ``xywh`` float64[N, 4], ``score`` float64[N]."""

    image_id: np.ndarray
    category_id: np.ndarray
    boxes: np.ndarray
    xywh: np.ndarray
    score: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def select(self, mask: np.ndarray) -> Detections:
        return Detections(self.image_id[mask], self.category_id[mask], self.boxes[mask], self.xywh[mask],
                          self.score[mask], self.source)


# ----------------------------------------------------------------------------- ground truth

def _from_annotations(ground_truth: Any, names: Sequence[str] | None) -> tuple[dict, list[str] | None, str]:
    """A path or ``DATA.yaml[:split]`` through the one ground-truth loader
    (:func:`harmonic.data.readers.load_annotations`): ``(COCO dict, names, source)``."""
    from harmonic.data.readers import load_annotations, records_to_coco, split_yaml_spec

    if split_yaml_spec(ground_truth) is not None:
        ann = load_annotations(ground_truth)
        if names is not None and list(names) != ann.names:
            log.warning("%s: --names %s ignored; the dataset file names %s", ann.source, list(names), ann.names)
        return records_to_coco(ann.records, ann.names, ann.category_ids), ann.names, ann.source
    path = Path(ground_truth)
    if path.is_file() and path.suffix.lower() == ".json":  # a COCO file as it is: its areas, crowds and ids
        return _read_json(path, "ground-truth"), (list(names) if names is not None else None), str(path)
    if not path.exists():
        raise HarmonicError(f"{path}: ground-truth file not found")
    ann = load_annotations(path, names)
    return records_to_coco(ann.records, ann.names, ann.category_ids), ann.names, ann.source


def _from_records(records: Sequence[Any], names: Sequence[str] | None) -> tuple[dict, list[str], str]:
    if names is None:
        raise HarmonicError("ground truth given as ImageRecords needs names (the class list)")
    from harmonic.data.readers import records_to_coco

    return records_to_coco(list(records), list(names)), list(names), "records"


def _read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise HarmonicError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarmonicError(f"{path}: not valid JSON ({exc})") from None


def _canonical_coco(data: Any, names: Sequence[str] | None, source: str) -> tuple[dict, list[str]]:
    """Validate a COCO dict and rebuild it with fresh dicts, keeping its category ids; ``names`` (when
    given) must name every category."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise HarmonicError(f"{source}: not a COCO ground-truth file (needs 'images', 'annotations', 'categories')")
    cats = data.get("categories") or []
    anns = data.get("annotations") or []
    try:
        file_cats = {int(c["id"]): str(c["name"]) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise HarmonicError(f"{source}: every category needs an integer 'id' and a 'name'") from None
    if names is not None:
        unknown = sorted({n for n in file_cats.values() if n not in {str(m) for m in names}})
        if unknown:
            raise HarmonicError(f"{source}: {len(unknown)} categor{'y' if len(unknown) == 1 else 'ies'} not in names "
                                f"{[str(n) for n in names]}: {unknown[:5]}")
    # one policy: detections carry the ground truth's own category ids (names only checked)
    out_names = [file_cats[k] for k in sorted(file_cats)]
    remap = {k: k for k in file_cats}
    out_cats = [{"id": k, "name": file_cats[k]} for k in sorted(file_cats)]
    if not out_cats:
        raise HarmonicError(f"{source}: ground truth has no categories")
    try:
        images = [{"id": int(im["id"]), "width": int(im.get("width", 0)), "height": int(im.get("height", 0)),
                   "file_name": str(im.get("file_name", ""))} for im in data["images"]]
    except (KeyError, TypeError, ValueError):
        raise HarmonicError(f"{source}: every image needs an integer 'id'") from None
    image_ids = {im["id"] for im in images}
    if len(image_ids) != len(images):
        seen: set[int] = set()
        dup = next(im["id"] for im in images if im["id"] in seen or seen.add(im["id"]))
        raise HarmonicError(f"{source}: duplicate image id {dup} in 'images'; each image needs its own id")
    out_anns = []
    bad_img = bad_cat = bad_box = 0
    for i, a in enumerate(anns):
        try:
            img, cat = int(a["image_id"]), int(a["category_id"])
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            raise HarmonicError(f"{source}: annotation {i} needs image_id, category_id and bbox [x, y, w, h]") from None
        if img not in image_ids:
            bad_img += 1
            continue
        if cat not in remap:
            bad_cat += 1
            continue
        if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
            bad_box += 1
            continue
        crowd = int(bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)))
        area = float(a["area"]) if "area" in a and a["area"] is not None else w * h
        out_anns.append({"id": len(out_anns) + 1, "image_id": img, "category_id": remap[cat],
                         "bbox": [x, y, w, h], "area": area, "iscrowd": crowd})
    problems = [f"{n} annotation(s) {what}" for n, what in
                ((bad_img, "with an image_id not in 'images'"), (bad_cat, "with an unknown category_id"),
                 (bad_box, "with a NaN/inf or negative-size bbox")) if n]
    if problems:
        raise HarmonicError(f"{source}: " + "; ".join(problems))
    return {"images": images, "annotations": out_anns, "categories": out_cats}, out_names


def load_ground_truth(ground_truth: Any, names: Sequence[str] | None = None) -> GroundTruth:
    """Load any supported ground truth into a :class:`GroundTruth` (see the module docstring)."""
    if isinstance(ground_truth, (str, Path)) or (isinstance(ground_truth, tuple) and len(ground_truth) == 2
                                                 and isinstance(ground_truth[1], str)):
        raw, names, source = _from_annotations(ground_truth, names)
    elif isinstance(ground_truth, dict):
        source, raw = "ground truth", ground_truth
    elif isinstance(ground_truth, (list, tuple)) and all(hasattr(r, "boxes") and hasattr(r, "labels")
                                                       for r in ground_truth):
        raw, names_, source = _from_records(ground_truth, names)
        names = names_
    else:
        raise HarmonicError(f"unsupported ground truth {type(ground_truth).__name__}: give a COCO json, "
                            "a dataset.yaml[:split], a COCO dict or a list of ImageRecord with names")
    dataset, out_names = _canonical_coco(raw, names, source)
    anns = dataset["annotations"]
    crowd = np.array([a["iscrowd"] for a in anns], dtype=bool)
    if not dataset["images"] or not (~crowd).any():
        raise HarmonicError(f"{source}: ground truth has no objects ({len(dataset['images'])} images, "
                            f"{int((~crowd).sum())} boxes, {int(crowd.sum())} ignored): nothing to evaluate")
    xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    return GroundTruth(
        dataset=dataset, names=out_names, source=source,
        image_ids=np.unique(np.array([im["id"] for im in dataset["images"]], dtype=np.int64)),
        category_ids=np.array(sorted(c["id"] for c in dataset["categories"]), dtype=np.int64),
        ann_image=np.array([a["image_id"] for a in anns], dtype=np.int64),
        ann_category=np.array([a["category_id"] for a in anns], dtype=np.int64),
        ann_boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
        ann_crowd=crowd,
    )


# ----------------------------------------------------------------------------- detections

def _columns_from_list(items: list, source: str) -> tuple[np.ndarray, ...]:
    n = len(items)
    cols = []
    for key in ("image_id", "category_id", "bbox", "score"):
        try:
            col = np.array([d[key] for d in items], dtype=np.float64)
        except (KeyError, TypeError) as exc:
            raise HarmonicError(f"{source}: every detection needs image_id, category_id, bbox and score "
                                f"(COCO results format): {type(exc).__name__} {exc}") from None
        except ValueError:
            what = "4 numbers [x, y, w, h]" if key == "bbox" else "a number"
            raise HarmonicError(f"{source}: {key} must be {what} in every detection") from None
        cols.append(col)
    img, cat, bbox, score = cols
    bbox = bbox.reshape(n, -1) if n else np.zeros((0, 4))
    if bbox.shape != (n, 4) or img.shape != (n,) or cat.shape != (n,) or score.shape != (n,):
        raise HarmonicError(f"{source}: each detection needs scalar image_id, category_id, score and a bbox "
                            "of 4 numbers [x, y, w, h]")
    return img, cat, bbox, score


def load_detections(detections: Any, gt: GroundTruth, what: str = "detections") -> Detections:
    """Parse and validate COCO results against ``gt``; raise :class:`HarmonicError` with counts on bad input."""
    if isinstance(detections, (str, Path)):
        source = str(detections)
        detections = _read_json(Path(detections), what)
        if isinstance(detections, dict) and "annotations" in detections:
            detections = detections["annotations"]
    else:
        source = what
    if detections is None:
        detections = []
    if isinstance(detections, dict):
        try:
            img = np.asarray(detections["image_id"], dtype=np.float64).reshape(-1)
            cat = np.asarray(detections["category_id"], dtype=np.float64).reshape(-1)
            score = np.asarray(detections["score"], dtype=np.float64).reshape(-1)
            bbox = np.asarray(detections["bbox"], dtype=np.float64).reshape(-1, 4)
        except (KeyError, ValueError) as exc:
            raise HarmonicError(f"{source}: column dict needs image_id[N], category_id[N], bbox[N,4], score[N] "
                                f"({exc})") from None
        if not (len(img) == len(cat) == len(score) == len(bbox)):
            raise HarmonicError(f"{source}: columns have different lengths")
    elif isinstance(detections, (list, tuple)):
        img, cat, bbox, score = _columns_from_list(list(detections), source)
    else:
        raise HarmonicError(f"{source}: expected a list of COCO results, got {type(detections).__name__}")

    n = len(score)
    problems = []
    nonint = ~np.isfinite(img) | (img != np.round(img)) | ~np.isfinite(cat) | (cat != np.round(cat))
    if nonint.any():
        problems.append(f"{int(nonint.sum())} with a non-integer image_id or category_id")
    img_i = np.where(nonint, -1, img).astype(np.int64)
    cat_i = np.where(nonint, -1, cat).astype(np.int64)
    pos = np.searchsorted(gt.image_ids, img_i).clip(0, len(gt.image_ids) - 1)
    unknown_img = ~nonint & (gt.image_ids[pos] != img_i)
    if unknown_img.any():
        problems.append(f"{int(unknown_img.sum())} with an image_id not in the ground truth "
                        f"(e.g. {int(img_i[unknown_img][0])})")
    cpos = np.searchsorted(gt.category_ids, cat_i).clip(0, len(gt.category_ids) - 1)
    unknown_cat = ~nonint & (gt.category_ids[cpos] != cat_i)
    if unknown_cat.any():
        problems.append(f"{int(unknown_cat.sum())} with a category_id not in the ground truth "
                        f"(e.g. {int(cat_i[unknown_cat][0])}; expected {gt.category_ids.min()}.."
                        f"{gt.category_ids.max()}, the ground truth's own ids)")
    nan_box = ~np.isfinite(bbox).all(axis=1)
    if nan_box.any():
        problems.append(f"{int(nan_box.sum())} with a NaN/inf bbox")
    neg_box = ~nan_box & (bbox[:, 2:] < 0).any(axis=1)
    if neg_box.any():
        problems.append(f"{int(neg_box.sum())} with a negative bbox width or height")
    nan_score = ~np.isfinite(score)
    if nan_score.any():
        problems.append(f"{int(nan_score.sum())} with a NaN/inf score")
    neg_score = ~nan_score & (score < 0)
    if neg_score.any():
        problems.append(f"{int(neg_score.sum())} with a negative score")
    if problems:
        raise HarmonicError(f"{source}: " + "; ".join(problems) + f" (of {n} {what})")
    boxes = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
    boxes, bbox = _clip_to_images(boxes, bbox, pos, gt, source, what)
    return Detections(img_i, cat_i, boxes, bbox, score, source)


def _clip_to_images(boxes: np.ndarray, bbox: np.ndarray, pos: np.ndarray, gt: GroundTruth, source: str,
                    what: str) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``boxes[N, 4]`` (xyxy) to their image (``pos[N]``: its position in ``gt.image_ids``; an image
    without a recorded size is clipped at 0 only) and warn once with the count of boxes that were
    partly outside: another detector's unclipped output is scored, not refused. Returns xyxy and xywh."""
    sizes = {int(im["id"]): (float(im.get("width") or np.inf), float(im.get("height") or np.inf))
             for im in gt.dataset.get("images", [])}
    wh = np.array([sizes.get(int(i), (np.inf, np.inf)) for i in gt.image_ids], np.float64).reshape(-1, 2)
    if not len(boxes) or not len(wh):
        return boxes, bbox
    limit = np.concatenate([wh[pos], wh[pos]], axis=1)
    clipped = np.clip(boxes, 0.0, limit)
    outside = (clipped != boxes).any(axis=1)
    if not outside.any():
        return boxes, bbox
    log.warning("%s: %d of %d %s partly outside their image, clipped to it", source, int(outside.sum()),
                len(boxes), what)
    return clipped, np.concatenate([clipped[:, :2], clipped[:, 2:] - clipped[:, :2]], axis=1)
