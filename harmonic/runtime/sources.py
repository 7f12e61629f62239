"""``--source``: image files, folders and globs (a sorted list of paths; images are read later), or one
video file, camera index or stream URL (:mod:`harmonic.runtime.video`)."""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonic.contract import IMAGE_SUFFIXES
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)


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


def read_image_list(path: str | Path) -> list[str]:
    """The lines of an image-list file (``--image-list``): one relative path per line; blank lines and
    ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarmonicError(f"--image-list {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise HarmonicError(f"--image-list {path}: lists no images")
    return names


def _listed_in(folder: Path, listed: Sequence[str]) -> ImageList:
    """Exactly the ``listed`` files under ``folder`` (in list order); the folder's other image files
    are counted in one log line, listed files that are not there are warnings and ``missing``."""
    out = ImageList()
    seen: set[str] = set()
    for name in listed:
        rel = name.replace("\\", "/")
        if rel in seen:
            continue
        seen.add(rel)
        p = folder / rel
        if p.is_file():
            out.paths.append(p)
            out.roots.append(folder)
        else:
            log.warning("%s: listed in --image-list but not found (skipped)", p)
            out.missing.append(str(p))
    others = sum(1 for f in folder.rglob("*") if f.is_file() and _is_image_name(f)
                 and f.relative_to(folder).as_posix() not in seen)
    if others:
        log.info("%s: %d other image file(s) in the folder are not in --image-list and are left out",
                 folder, others)
    if not out.paths:
        raise HarmonicError(f"--image-list: none of its {len(seen)} image(s) is in {folder}")
    return out


def expand_sources(specs: Sequence[str | Path], listed: Sequence[str] | None = None) -> ImageList:
    """Expand directories (recursive, image suffixes only), globs and files, in the given order.

    Within a directory or glob the files are sorted by relative path; duplicates are
    dropped. An explicitly named file is kept whatever its suffix (the decoder decides).
    A path that doesn't exist is a warning and counted in ``missing``; an empty
    directory, or nothing at all found, is a :class:`HarmonicError`. With ``listed`` (relative
    paths, ``--image-list``) ``specs`` must be one folder and exactly the listed files are used.
    """
    if listed is not None:
        if len(specs) != 1 or not Path(specs[0]).is_dir():
            raise HarmonicError("--image-list: needs exactly one --images folder")
        return _listed_in(Path(specs[0]), listed)
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


def video_spec(specs: Sequence[str | int | Path]) -> Any:
    """The one :class:`~harmonic.runtime.video.VideoSource` ``specs`` name, or ``None`` when they are all
    image files, folders or globs; a video among other sources is a :class:`HarmonicError`."""
    from harmonic.runtime.video import video_source

    found = [(s, video_source(s)) for s in specs]
    videos = [v for _, v in found if v is not None]
    if videos and len(found) > 1:
        raise HarmonicError(f"--source {videos[0].label}: a video, camera or stream is the only source of a run "
                            f"(got {len(found)} sources)")
    return videos[0] if videos else None


def open_source(source: Any, open_timeout_s: float = 10.0) -> tuple[Any, ImageList | None]:
    """``(VideoReader, None)`` for a video, camera or stream, ``(None, ImageList)`` for image files,
    folders and globs (``source``: one of them or a list)."""
    specs = list(source) if isinstance(source, (list, tuple)) else [source]
    spec = video_spec(specs)
    if spec is not None:
        from harmonic.runtime.video import VideoReader

        return VideoReader(spec, open_timeout_s=open_timeout_s), None
    return None, expand_sources([str(s) for s in specs])
