"""``--images DIR|GLOB|FILE...`` -> a sorted list of image files (paths only: images are read later)."""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm",
                            ".ppm", ".pbm", ".pnm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".avif"})


@dataclass
class ImageList:
    """Resolved images. ``roots[i]`` is the folder ``paths[i]`` was found under (for relative names)."""

    paths: list[Path] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def relative_name(self, i: int) -> str:
        """``paths[i]`` relative to its root, with ``/`` separators (matches COCO ``file_name``)."""
        try:
            return self.paths[i].relative_to(self.roots[i]).as_posix()
        except ValueError:
            return self.paths[i].name


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def expand_sources(specs: Sequence[str | Path]) -> ImageList:
    """Expand directories (recursive, image suffixes only), globs and files, in the given order.

    Within a directory or glob the files are sorted by relative path; duplicates are
    dropped. An explicitly named file is kept whatever its suffix (the decoder decides).
    A path that doesn't exist is a warning and counted in ``missing``; an empty
    directory, or nothing at all found, is a :class:`HarmonicError`.
    """
    out = ImageList()
    seen: set[Path] = set()

    def add(p: Path, root: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.paths.append(p)
            out.roots.append(root)

    for spec in specs:
        s = str(spec)
        p = Path(s)
        if p.is_dir():
            found = sorted((f for f in p.rglob("*") if f.is_file() and _is_image_name(f)),
                           key=lambda f: f.relative_to(p).as_posix())
            if not found:
                raise HarmonicError(f"{p}: no images in this directory (looked for {', '.join(sorted(IMAGE_SUFFIXES)[:6])}, ...)")
            for f in found:
                add(f, p)
        elif p.is_file():
            add(p, p.parent)
        elif glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            files = [m for m in matches if m.is_file() and _is_image_name(m)]
            if not files:
                log.warning("%s: the pattern matches no images", s)
                out.missing.append(s)
            root = Path(s.split("*")[0].split("?")[0].split("[")[0] or ".")
            root = root if root.is_dir() else root.parent
            for f in files:
                add(f, root)
        else:
            log.warning("%s: no such file or directory (skipped)", s)
            out.missing.append(s)
    if not out.paths:
        raise HarmonicError(f"no images found in --images {' '.join(str(s) for s in specs)}")
    return out
