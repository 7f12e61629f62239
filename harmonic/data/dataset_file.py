"""The dataset file (``dataset.yaml``): class names and where each split's images and annotations live.

```yaml
names: [circle, triangle, star]          # class id = index
train: {images: images/train, annotations: annotations/train.json}   # COCO json
val:   {images: images/val,   annotations: annotations/val}          # or a VOC xml dir, or a YOLO labels dir
test:  {images: images/test,  annotations: labels/test}              # optional: what comparisons report on
```

Training selects ``best.pt`` on ``val``; ``harmonic demo`` / ``ablate`` / ``scripts/reproduce.py``
report on ``test`` (on ``val``, with a warning, when there is none); test images shared with train
or val are an error there.

Paths are relative to the yaml (or to an optional top-level ``path:``). The
format of a split is detected from what ``annotations`` points at: a ``.json``
file is COCO, a directory of ``.xml`` files is Pascal VOC, a directory of
``.txt`` files is YOLO. numpy/yaml only: the deploy side reads this file too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harmonic.errors import HarmonicError

FORMATS = ("coco", "voc", "yolo")
_RESERVED = {"names", "path", "nc"}


@dataclass(frozen=True)
class SplitSpec:
    """One split: ``images`` and ``annotations`` are absolute paths; ``format`` is coco | voc | yolo."""

    name: str
    images: Path
    annotations: Path
    format: str


@dataclass(frozen=True)
class DatasetConfig:
    """A loaded ``dataset.yaml``: ``names[i]`` is class index ``i``; ``splits`` by name (train, val, ...)."""

    path: Path
    root: Path
    names: list[str]
    splits: dict[str, SplitSpec]


def detect_format(annotations: Path) -> str:
    """``coco`` for a ``.json`` file, ``voc`` for a directory with ``.xml`` files, ``yolo`` for ``.txt`` files.

    Raises ``ValueError`` with the reason when nothing matches (the caller names the yaml).
    """
    if annotations.is_file():
        if annotations.suffix.lower() == ".json":
            return "coco"
        raise ValueError(f"annotations file {annotations} is not a COCO .json file")
    if annotations.is_dir():
        suffixes = {p.suffix.lower() for p in annotations.rglob("*") if p.is_file()}
        if ".xml" in suffixes:
            return "voc"
        if ".txt" in suffixes:
            return "yolo"
        raise ValueError(f"annotations directory {annotations} holds no .xml (VOC) or .txt (YOLO) files")
    raise ValueError(f"annotations {annotations} not found")


def _parse_names(raw: Any, path: Path) -> list[str]:
    if isinstance(raw, dict):  # YOLO style {0: name, 1: name}
        try:
            items = sorted((int(k), str(v)) for k, v in raw.items())
        except (TypeError, ValueError):
            raise HarmonicError(f"{path}: 'names' as a mapping needs integer keys") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise HarmonicError(f"{path}: 'names' mapping keys must be 0..{len(items) - 1}")
        names = [v for _, v in items]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        raise HarmonicError(f"{path}: 'names' must be a list of class names")
    if not names:
        raise HarmonicError(f"{path}: 'names' is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HarmonicError(f"{path}: duplicate class names {dup}")
    return names


def _parse_split(name: str, raw: Any, root: Path, path: Path) -> SplitSpec:
    if not isinstance(raw, dict) or "images" not in raw or "annotations" not in raw:
        raise HarmonicError(f"{path}: split {name!r} needs 'images' and 'annotations' keys")
    images = (root / str(raw["images"])).resolve()
    annotations = (root / str(raw["annotations"])).resolve()
    if not images.is_dir():
        raise HarmonicError(f"{path}: split {name!r}: images directory {images} not found")
    fmt = raw.get("format")
    if fmt is not None:
        fmt = str(fmt).lower()
        if fmt not in FORMATS:
            raise HarmonicError(f"{path}: split {name!r}: unknown format {fmt!r} (expected one of {FORMATS})")
        if not annotations.exists():
            raise HarmonicError(f"{path}: split {name!r}: annotations {annotations} not found")
    else:
        try:
            fmt = detect_format(annotations)
        except ValueError as exc:
            raise HarmonicError(f"{path}: split {name!r}: {exc}") from None
    return SplitSpec(name=name, images=images, annotations=annotations, format=fmt)


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """Read and validate a ``dataset.yaml``; every problem is a :class:`HarmonicError` naming the file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise HarmonicError(f"{path}: dataset file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HarmonicError(f"{path}: not valid YAML ({reason})") from None
    if not isinstance(raw, dict):
        raise HarmonicError(f"{path}: expected a mapping with 'names', 'train' and 'val'")
    if "names" not in raw:
        raise HarmonicError(f"{path}: missing key 'names'")
    names = _parse_names(raw["names"], path)
    root = path.parent
    if raw.get("path"):
        root = (root / str(raw["path"])).resolve()
    splits = {
        str(k): _parse_split(str(k), v, root, path)
        for k, v in raw.items()
        if k not in _RESERVED
    }
    if not splits:
        raise HarmonicError(f"{path}: no splits (expected 'train' and/or 'val')")
    return DatasetConfig(path=path, root=root, names=names, splits=splits)
