"""Annotation readers and writers for COCO json, Pascal VOC xml and YOLO txt (numpy only, no torch).

Every reader returns ``list[ImageRecord]`` with boxes as ``x1, y1, x2, y2`` in
absolute pixels and labels as 0-based indices into ``names``. Boxes partly
outside the image are clipped, boxes with zero area after clipping are dropped;
both are counted and reported in one warning per annotation file / directory.
COCO ``iscrowd`` and VOC ``difficult`` objects are kept with ``ignore=True``:
ignored regions, never positives.
"""

from __future__ import annotations

import json
import logging
import struct
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import IMAGE_SUFFIXES
from harmonic.data.exif import oriented_size, read_jpeg_header
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

_TOL = 1e-2  # px: coordinates this far outside the image are rounding, not a bad box


@dataclass(eq=False)
class ImageRecord:
    """One image and its objects.

    ``boxes`` float32[N, 4] xyxy in absolute pixels, ``labels`` int64[N] (0-based
    index into ``names``), ``ignore`` bool[N] (crowd / difficult regions).
    ``file_name`` is relative to the split's images directory.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.ignore)):
            raise ValueError(f"{self.file_name}: boxes, labels and ignore differ in length")


class _BoxStats:
    """Counts clipped / dropped boxes of one source and reports them once."""

    def __init__(self, source: Path | str) -> None:
        self.source = source
        self.clipped = 0
        self.dropped = 0

    def sanitize(self, boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """``boxes[N, 4]`` -> (clipped boxes[N, 4] float32, keep bool[N]) for a ``width x height`` image."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        lo = np.zeros(4)
        hi = np.array([width, height, width, height], dtype=np.float64)
        outside = ((boxes < lo - _TOL) | (boxes > hi + _TOL)).any(axis=1)
        clipped = np.clip(boxes, lo, hi)
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        self.clipped += int((outside & keep).sum())
        self.dropped += int((~keep).sum())
        return clipped.astype(np.float32), keep

    def report(self) -> None:
        if self.clipped or self.dropped:
            log.warning("%s: %d box(es) partly outside the image clipped, %d box(es) with zero area "
                        "(after clipping) dropped", self.source, self.clipped, self.dropped)


def _make_record(stats: _BoxStats, image_id: int, file_name: str, width: int, height: int,
                 boxes: list[list[float]], labels: list[int], ignore: list[bool]) -> ImageRecord:
    b, keep = stats.sanitize(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), width, height)
    return ImageRecord(image_id, file_name, int(width), int(height), b[keep],
                       np.asarray(labels, np.int64).reshape(-1)[keep],
                       np.asarray(ignore, bool).reshape(-1)[keep])


# ---------------------------------------------------------------- image sizes

def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (EXIF orientation applied, see :mod:`harmonic.data.exif`),
    from the PNG/JPEG header when possible (no decode), else OpenCV.

    Raises :class:`HarmonicError` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(26)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return int(w), int(h)
            if head[:2] == b"\xff\xd8":
                size, orientation = read_jpeg_header(f)
                if size is not None:
                    return oriented_size(*size, orientation)
    except OSError as exc:
        raise HarmonicError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    from harmonic.data.images import decode_image

    img = decode_image(path)  # ImageDecodeError (a HarmonicError) names the file
    return int(img.shape[1]), int(img.shape[0])


def _list_images(images_dir: Path) -> list[Path]:
    return sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _class_index(names: Sequence[str]) -> dict[str, int]:
    return {str(n): i for i, n in enumerate(names)}


# ---------------------------------------------------------------- COCO

def read_coco(json_path: str | Path, names: Sequence[str] | None = None) -> list[ImageRecord]:
    """Read a COCO detection json.

    Category ids of the file are mapped to indices **by name** through ``names``;
    with ``names=None`` the file's categories sorted by id define the order.
    Records come in the file's image order; ``image_id`` is the file's id (each must be unique).
    """
    return read_coco_with_ids(json_path, names)[0]


def read_coco_with_ids(json_path: str | Path, names: Sequence[str] | None = None
                       ) -> tuple[list[ImageRecord], list[int]]:
    """:func:`read_coco` and the file's category id of each class in ``names`` order
    (an id the file does not use for a name it does not list)."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarmonicError(f"{json_path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarmonicError(f"{json_path}: malformed json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise HarmonicError(f"{json_path}: not a COCO detection file (no 'images' list)")
    cats = data.get("categories") or []
    try:
        cat_names = {int(c["id"]): str(c["name"]) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise HarmonicError(f"{json_path}: malformed 'categories' (each needs 'id' and 'name')") from None
    if names is None:
        names = [cat_names[k] for k in sorted(cat_names)]
    index = _class_index(names)
    id_of_name: dict[str, int] = {}
    for cid in sorted(cat_names):
        id_of_name.setdefault(cat_names[cid], cid)
    spare = iter(range(max(cat_names, default=0) + 1, 1 << 62))  # a class the file lacks: an unused id
    category_ids = [id_of_name[str(n)] if str(n) in id_of_name else next(spare) for n in names]

    stats = _BoxStats(json_path)
    per_image: dict[int, tuple[list, list, list]] = {}
    for ann in data.get("annotations") or []:
        try:
            iid = int(ann["image_id"])
            cid = int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise HarmonicError(f"{json_path}: malformed annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r}"
                                " (needs image_id, category_id, bbox [x, y, w, h])") from None
        if cid not in cat_names:
            raise HarmonicError(f"{json_path}: annotation {ann.get('id', '?')} has unknown category id {cid}")
        cname = cat_names[cid]
        if cname not in index:
            raise HarmonicError(f"{json_path}: unknown class {cname!r} (category id {cid}); "
                                f"expected one of {list(names)}")
        ignore = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
        b, lab, ig = per_image.setdefault(iid, ([], [], []))
        b.append([x, y, x + w, y + h])
        lab.append(index[cname])
        ig.append(ignore)

    records = []
    known_ids = set()
    for img in data["images"]:
        try:
            iid, fname, width, height = int(img["id"]), str(img["file_name"]), int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError):
            raise HarmonicError(f"{json_path}: malformed image entry {img!r} "
                                "(needs id, file_name, width, height)") from None
        if iid in known_ids:
            first = next(r.file_name for r in records if r.image_id == iid)
            raise HarmonicError(f"{json_path}: duplicate image id {iid} ({first!r} and {fname!r}); "
                                "each image needs its own id")
        known_ids.add(iid)
        b, lab, ig = per_image.get(iid, ([], [], []))
        records.append(_make_record(stats, iid, fname, width, height, b, lab, ig))
    stats.report()
    orphans = sum(len(v[0]) for k, v in per_image.items() if k not in known_ids)
    if orphans:
        log.warning("%s: %d annotation(s) refer to image ids missing from 'images' and were skipped",
                    json_path, orphans)
    return records, category_ids


def records_to_coco(records: Sequence[ImageRecord], names: Sequence[str],
                    category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """COCO ground-truth dict: ``category_id = category_ids[index]`` (default ``index + 1``), ``bbox`` xywh,
    ``area`` = box area, ``iscrowd`` = ignore."""
    ids = [int(c) for c in category_ids] if category_ids is not None else list(range(1, len(names) + 1))
    if len(ids) != len(names) or len(set(ids)) != len(ids):
        raise HarmonicError(f"category ids {ids} do not give one distinct id per class of {list(names)}")
    images, annotations = [], []
    ann_id = 1
    for r in records:
        images.append({"id": int(r.image_id), "file_name": r.file_name, "width": int(r.width),
                       "height": int(r.height)})
        for box, label, ign in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": ann_id, "image_id": int(r.image_id), "category_id": ids[int(label)],
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(ign)})
            ann_id += 1
    categories = [{"id": ids[i], "name": str(n), "supercategory": "object"} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(records: Sequence[ImageRecord], names: Sequence[str], path: str | Path) -> Path:
    """Write :func:`records_to_coco` to ``path`` atomically (parents created); returns the path."""
    from harmonic.atomic import write_text

    return write_text(path, json.dumps(records_to_coco(records, names)))


# ---------------------------------------------------------------- Pascal VOC

def _xml_text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _find_image(images_dir: Path, stem: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        for cand in (images_dir / f"{stem}{suf}", images_dir / f"{stem}{suf.upper()}"):
            if cand.is_file():
                return cand
    return None


def read_voc(xml_dir: str | Path, images_dir: str | Path, names: Sequence[str]) -> list[ImageRecord]:
    """Read a directory of Pascal VOC xml files (sorted by path; ``image_id`` = 1, 2, ...).

    VOC corners are 1-based inclusive pixels; as in detectron2 they become
    ``(xmin - 1, ymin - 1, xmax, ymax)``. ``difficult`` objects get ``ignore=True``.
    Image size comes from ``<size>``, or from the image header when absent.
    """
    xml_dir, images_dir = Path(xml_dir), Path(images_dir)
    index = _class_index(names)
    stats = _BoxStats(xml_dir)
    records = []
    for image_id, xml_path in enumerate(sorted(xml_dir.rglob("*.xml")), start=1):
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise HarmonicError(f"{xml_path}: malformed xml ({exc})") from None
        fname = _xml_text(root, "filename")
        rel_stem = xml_path.relative_to(xml_dir).with_suffix("")
        if fname:  # <filename> is a base name; a nested xml's image sits in the same sub-directory
            file_name = (rel_stem.parent / fname).as_posix()
        else:
            found = _find_image(images_dir / rel_stem.parent, rel_stem.name)
            if found is None:
                raise HarmonicError(f"{xml_path}: no <filename> and no image named {rel_stem.name}.* "
                                    f"in {images_dir}")
            file_name = found.relative_to(images_dir).as_posix()
        size = root.find("size")
        try:
            width, height = int(float(_xml_text(size, "width") or 0)), int(float(_xml_text(size, "height") or 0))
        except ValueError:
            raise HarmonicError(f"{xml_path}: malformed <size>") from None
        if width <= 0 or height <= 0:
            width, height = image_size(images_dir / file_name)
        boxes, labels, ignore = [], [], []
        for obj in root.findall("object"):
            cname = _xml_text(obj, "name")
            if cname not in index:
                raise HarmonicError(f"{xml_path}: unknown class {cname!r}; expected one of {list(names)}")
            bnd = obj.find("bndbox")
            try:
                x1, y1, x2, y2 = (float(_xml_text(bnd, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise HarmonicError(f"{xml_path}: object {cname!r} has a malformed <bndbox>") from None
            boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
            labels.append(index[cname])
            ignore.append(_xml_text(obj, "difficult") in {"1", "true", "True"})
        records.append(_make_record(stats, image_id, file_name, width, height, boxes, labels, ignore))
    stats.report()
    return records


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_voc(records: Sequence[ImageRecord], names: Sequence[str], xml_dir: str | Path) -> Path:
    """One Pascal VOC xml per record (``<stem>.xml``, 1-based corners: ``xmin = x1 + 1``), written as one
    group of outputs (all or none, earlier files kept on a failure); returns ``xml_dir``."""
    from harmonic.atomic import output_group

    xml_dir = Path(xml_dir)
    with output_group(xml_dir):
        for r in records:
            _write_voc_xml(r, names, xml_dir / Path(r.file_name).with_suffix(".xml"))
    return xml_dir


def _write_voc_xml(r: ImageRecord, names: Sequence[str], out: Path) -> None:
    """One VOC annotation file: the record's size and objects (``difficult`` = ignored)."""
    from harmonic.atomic import write_bytes

    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = Path(r.file_name).name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(r.width)
    ET.SubElement(size, "height").text = str(r.height)
    ET.SubElement(size, "depth").text = "3"
    for box, label, ign in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(names[label])
        ET.SubElement(obj, "difficult").text = "1" if ign else "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (box[0] + 1, box[1] + 1, box[2], box[3])):
            ET.SubElement(bnd, tag).text = _num(v)
    write_bytes(out, ET.tostring(root, encoding="utf-8"))


# ---------------------------------------------------------------- YOLO

def read_yolo(labels_dir: str | Path, images_dir: str | Path, names: Sequence[str]) -> list[ImageRecord]:
    """Read YOLO txt labels (``class cx cy w h`` normalised; polygon rows use their bounding box).

    The images define the records (sorted by path; ``image_id`` = 1, 2, ...); an
    image without a label file has no objects. Image sizes are read from the
    file headers. Label files without an image are counted in a warning.
    """
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    stats = _BoxStats(labels_dir)
    records = []
    used: set[Path] = set()
    listed = _list_images(images_dir)
    unreadable = 0
    for image_id, img_path in enumerate(listed, start=1):
        rel = img_path.relative_to(images_dir)
        try:
            width, height = image_size(img_path)
        except HarmonicError as exc:  # the size is the image's: an unreadable one can't be a record
            log.warning("skipped %s", exc)
            unreadable += 1
            continue
        txt = labels_dir / rel.with_suffix(".txt")
        boxes, labels = [], []
        if txt.resolve() in used:  # the same photo in a second format: one label file, one record
            log.warning("%s: skipped: its label file %s belongs to another image of the same name", img_path, txt)
            continue
        if txt.is_file():
            used.add(txt.resolve())
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    cls = int(float(parts[0]))
                    vals = [float(v) for v in parts[1:]]
                except ValueError:
                    raise HarmonicError(f"{txt}:{lineno}: malformed YOLO row {line.strip()!r}") from None
                if cls < 0 or cls >= len(names) or float(parts[0]) != cls:
                    raise HarmonicError(f"{txt}:{lineno}: unknown class id {parts[0]} "
                                        f"(names has {len(names)} classes)")
                if len(vals) == 4:
                    cx, cy, w, h = vals
                    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                elif len(vals) >= 6 and len(vals) % 2 == 0:  # segment: x1 y1 x2 y2 ...
                    xs, ys = vals[0::2], vals[1::2]
                    box = [min(xs), min(ys), max(xs), max(ys)]
                else:
                    raise HarmonicError(f"{txt}:{lineno}: expected 'class cx cy w h', got {len(parts)} values")
                boxes.append([box[0] * width, box[1] * height, box[2] * width, box[3] * height])
                labels.append(cls)
        records.append(_make_record(stats, image_id, rel.as_posix(), width, height, boxes, labels,
                                    [False] * len(labels)))
    stats.report()
    if unreadable:
        if unreadable == len(listed):
            raise HarmonicError(f"{images_dir}: none of the {len(listed)} image(s) can be read")
        log.warning("%s: %d of %d image(s) unreadable and skipped", images_dir, unreadable, len(listed))
    orphans = sum(1 for p in labels_dir.rglob("*.txt") if p.resolve() not in used and p.name != "classes.txt")
    if orphans:
        log.warning("%s: %d label file(s) have no matching image in %s and were skipped",
                    labels_dir, orphans, images_dir)
    return records


def write_yolo(records: Sequence[ImageRecord], labels_dir: str | Path) -> Path:
    """One YOLO txt per record (``class cx cy w h`` normalised; ignored boxes are not representable and skipped)."""
    from harmonic.atomic import write_text

    labels_dir = Path(labels_dir)
    for r in records:
        lines = []
        for box, label, ign in zip(r.boxes.tolist(), r.labels.tolist(), r.ignore.tolist()):
            if ign:
                continue
            x1, y1, x2, y2 = box
            cx, cy = (x1 + x2) / 2 / r.width, (y1 + y2) / 2 / r.height
            w, h = (x2 - x1) / r.width, (y2 - y1) / r.height
            lines.append(f"{label} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}")
        out = labels_dir / Path(r.file_name).with_suffix(".txt")
        write_text(out, "\n".join(lines) + ("\n" if lines else ""))
    return labels_dir


# ---------------------------------------------------------------- dispatch

def read_split(spec: Any, names: Sequence[str]) -> list[ImageRecord]:
    """Records of a :class:`harmonic.data.dataset_file.SplitSpec` in its detected format."""
    return read_split_with_ids(spec, names)[0]


def read_split_with_ids(spec: Any, names: Sequence[str]) -> tuple[list[ImageRecord], list[int]]:
    """:func:`read_split` and the dataset's own category id of each class: a COCO file's ids
    (matched by name), ``index + 1`` for VOC and YOLO (which have no ids)."""
    if spec.format == "coco":
        return read_coco_with_ids(spec.annotations, names)
    return _read_split_no_ids(spec, names), list(range(1, len(names) + 1))


def _read_split_no_ids(spec: Any, names: Sequence[str]) -> list[ImageRecord]:
    if spec.format == "coco":
        return read_coco(spec.annotations, names)
    if spec.format == "voc":
        return read_voc(spec.annotations, spec.images, names)
    if spec.format == "yolo":
        return read_yolo(spec.annotations, spec.images, names)
    raise HarmonicError(f"{spec.annotations}: unknown annotation format {spec.format!r}")


# ---------------------------------------------------------------- any ground truth (one loader)

@dataclass
class Annotations:
    """Ground truth as every command reads it (:func:`load_annotations`).

    ``records`` index ``names``; ``category_ids[k]`` is the dataset's own id of class ``k`` (a COCO
    file's ids matched by name; ``index + 1`` for VOC and YOLO, which have none); ``format`` is
    coco | voc | yolo; ``source`` names what was read; ``images`` is the images folder the records'
    ``file_name`` are relative to (``None`` when not known: a bare COCO file); ``coco`` is a COCO
    file's own content (for evaluators that keep its areas and crowd flags exactly).
    """

    records: list[ImageRecord]
    names: list[str]
    category_ids: list[int]
    format: str
    source: str
    images: Path | None = None
    coco: dict | None = None


def split_yaml_spec(spec: Any, default_split: str | None = "val") -> tuple[Path, str | None] | None:
    """``"a.yaml:val"`` / ``("a.yaml", "val")`` -> ``(path, split)``; ``"a.yaml"`` -> ``(path, default_split)``;
    anything that is not a dataset file -> ``None``."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str):
        return Path(spec[0]), spec[1]
    if isinstance(spec, (str, Path)):
        text = str(spec)
        head, sep, tail = text.rpartition(":")
        if sep and head.lower().endswith((".yaml", ".yml")) and tail and "/" not in tail and "\\" not in tail:
            return Path(head), tail
        if text.lower().endswith((".yaml", ".yml")):
            return Path(text), default_split
    return None


def default_images_dir(annotations: Path) -> Path | None:
    """Where a VOC / YOLO folder's images usually are: the same path with its last ``labels`` part as
    ``images`` (Ultralytics' layout), or ``JPEGImages`` beside a VOC ``Annotations`` folder."""
    parts = list(annotations.parts)
    for i in range(len(parts) - 1, -1, -1):
        swap = {"labels": "images", "Annotations": "JPEGImages"}.get(parts[i])
        if swap:
            cand = Path(*parts[:i], swap, *parts[i + 1:])
            if cand.is_dir():
                return cand
    return None


def load_annotations(annotations: Any, names: Sequence[str] | None = None, *, split: str | None = None,
                     images: str | Path | None = None, flag: str = "--annotations") -> Annotations:
    """Read ground truth in any form the commands accept; every problem is one :class:`HarmonicError` line.

    Args:
        annotations: a COCO ``.json`` file, a Pascal VOC folder (``.xml``), a YOLO labels folder (``.txt``),
            or a dataset file ``DATA.yaml[:split]`` (``split`` when the text has none, default ``val``).
        names: the class list to index by (a model's); default: the dataset file's, a COCO file's
            categories sorted by id. VOC and YOLO folders have no class list: they need ``names``.
        images: the images folder of a VOC / YOLO folder (a YOLO folder's records are its images);
            default: :func:`default_images_dir`, else the annotations folder itself (VOC only).
        flag: the option named in messages.
    """
    yaml_spec = split_yaml_spec(annotations, split or "val")
    if yaml_spec is not None:
        from harmonic.data.dataset_file import load_dataset_config

        path, split_name = yaml_spec
        split_name = split_name or "val"
        cfg = load_dataset_config(path)
        if split_name not in cfg.splits:
            raise HarmonicError(f"{cfg.path}: no split {split_name!r} (has {', '.join(cfg.splits) or 'none'}); "
                                "pass DATA.yaml:SPLIT or --split")
        spec = cfg.splits[split_name]
        use = list(names) if names is not None else list(cfg.names)
        records, ids = read_split_with_ids(spec, use)
        coco = _read_coco_json(spec.annotations) if spec.format == "coco" else None
        return Annotations(list(records), use, ids, spec.format, f"{cfg.path}:{split_name}", spec.images, coco)
    if not isinstance(annotations, (str, Path)):
        raise HarmonicError(f"{flag}: unsupported ground truth {type(annotations).__name__}")
    path = Path(annotations)
    if not path.exists():
        raise HarmonicError(f"{flag} {path}: not found")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise HarmonicError(f"{flag} {path}: expected a COCO .json file, a VOC or YOLO folder, "
                                "or a dataset file DATA.yaml[:split]")
        records, ids = read_coco_with_ids(path, names)
        coco = _read_coco_json(path)
        if names is None:
            cats = {int(c["id"]): str(c["name"]) for c in coco.get("categories") or []}
            names = [cats[k] for k in sorted(cats)]
        return Annotations(list(records), list(names), ids, "coco", str(path), None, coco)
    from harmonic.data.dataset_file import detect_format

    try:
        fmt = detect_format(path)
    except ValueError as exc:
        raise HarmonicError(f"{flag} {path}: {exc}; expected a COCO .json file, a VOC or YOLO folder, "
                            "or DATA.yaml[:split]") from None
    if names is None:
        raise HarmonicError(f"{flag} {path}: a {fmt.upper()} folder has no class list: give the class names "
                            "(--names, or a model that carries them) or use a dataset file DATA.yaml:SPLIT")
    img_dir = Path(images) if images is not None else default_images_dir(path)
    if img_dir is not None and not img_dir.is_dir():
        raise HarmonicError(f"{flag} {path}: images folder {img_dir} not found")
    if fmt == "yolo":
        if img_dir is None:
            raise HarmonicError(f"{flag} {path}: a YOLO labels folder needs its images folder "
                                "(--images DIR, or the layout .../labels/... beside .../images/...)")
        records = read_yolo(path, img_dir, list(names))
    else:
        img_dir = img_dir if img_dir is not None else path
        records = read_voc(path, img_dir, list(names))
    return Annotations(records, list(names), list(range(1, len(names) + 1)), fmt, str(path), img_dir)


def _read_coco_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarmonicError(f"{path}: malformed json ({exc})") from None
    if not isinstance(data, dict):
        raise HarmonicError(f"{path}: not a COCO detection file (no 'images' list)")
    return data
