"""Cheap image checks run in the main process before training (no full decode, numpy only).

A DataLoader worker that meets a bad file can only raise inside the worker; checking
every image's header and end in the main process first turns a truncated or
unreadable file into one clear error naming it (or, when asked, a counted skip).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

_TAIL = 1 << 16
MAX_PIXELS = 1 << 30  # OpenCV's CV_IO_MAX_IMAGE_PIXELS default: a larger header is refused by its decoder


def jpeg_tail_truncated(tail: bytes) -> bool:
    """True when the last bytes of a JPEG hold no end-of-image marker after its last start-of-scan.

    Entropy-coded data cannot contain ``FF D9``, so a file cut inside its last scan has
    no ``FF D9`` in its tail (trailing bytes after a complete image are tolerated).
    """
    eoi = tail.rfind(b"\xff\xd9")
    return eoi < 0 or tail.rfind(b"\xff\xda") > eoi


def image_problem(path: Path, width: int | None = None, height: int | None = None) -> str | None:
    """What is wrong with an image file, or ``None``: missing, empty, unreadable header, an absurd
    size, truncated JPEG/PNG, or a size (as displayed) other than ``width x height``."""
    from harmonic.data.readers import image_size

    try:
        n = os.path.getsize(path)
    except OSError:
        return "missing or unreadable image"
    if n == 0:
        return "empty file"
    try:
        w, h = image_size(path)
    except HarmonicError as exc:
        text = str(exc)
        return text.split(": ", 1)[1] if text.startswith(f"{path}: ") else text
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, n - _TAIL))
            tail = f.read()
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if w <= 0 or h <= 0 or w * h > MAX_PIXELS:
        return f"absurd image size {w}x{h} (the decoder takes up to {MAX_PIXELS} pixels)"
    if head[:2] == b"\xff\xd8" and jpeg_tail_truncated(tail):
        return "truncated JPEG (no end-of-image marker)"
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail[-32:]:
        return "truncated PNG (no IEND chunk)"
    if width is not None and height is not None and (w, h) != (int(width), int(height)):
        return f"image is {w}x{h} but its annotations say {width}x{height}"
    return None


def check_split_images(records: Sequence, images_dir: str | Path, split: str, skip_bad: bool = False) -> tuple[list, int]:
    """Check every record's image; returns ``(records to use, number skipped)``.

    Without ``skip_bad`` the first bad image is a :class:`HarmonicError` naming it; with it,
    bad images are dropped with one warning each and counted.
    """
    images_dir = Path(images_dir)
    kept, skipped = [], 0
    for r in records:
        path = images_dir / r.file_name
        problem = image_problem(path, r.width, r.height)
        if problem is None:
            kept.append(r)
            continue
        if not skip_bad:
            raise HarmonicError(f"{path}: {problem} (pass --skip-bad-images to train without it)")
        log.warning("%s split: skipped %s: %s", split, path, problem)
        skipped += 1
    if skipped:
        log.warning("%s split: %d of %d image(s) skipped as unreadable (--skip-bad-images)",
                    split, skipped, len(records))
    return kept, skipped
