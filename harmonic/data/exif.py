"""EXIF orientation (numpy only): one policy for every decode path.

Phone cameras store the sensor's pixels and an EXIF ``Orientation`` tag (1..8).
Every image HarmonicDet reads -- training, validation, inference (``--fast-decode``
included) and the image sizes the annotation readers check -- is the image as a
viewer shows it, with the orientation applied, as PIL's ``ImageOps.exif_transpose``
and ultralytics do. Annotations made in a viewer are in those coordinates.
Only JPEG EXIF is read (where phones write it).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_TAG_ORIENTATION = 0x0112


def _orientation_from_app1(seg: bytes) -> int:
    """Orientation from an APP1 payload (``Exif\\0\\0`` + TIFF); 1 when absent or malformed."""
    if seg[:6] != b"Exif\x00\x00" or len(seg) < 14:
        return 1
    tiff = seg[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            off = ifd + 2 + 12 * k
            tag, typ, _n = struct.unpack(order + "HHI", tiff[off:off + 8])
            if tag == _TAG_ORIENTATION and typ == 3:  # SHORT
                (value,) = struct.unpack(order + "H", tiff[off + 8:off + 10])
                return int(value) if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def read_jpeg_header(f: BinaryIO) -> tuple[tuple[int, int] | None, int]:
    """Scan a JPEG stream (positioned anywhere; read from its start) for the stored size and the orientation.

    Returns ``((stored width, stored height) or None, orientation 1..8)``; no decode.
    """
    f.seek(0)
    if f.read(2) != b"\xff\xd8":
        return None, 1
    orientation = 1
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":
            byte = f.read(1)
        while byte == b"\xff":
            byte = f.read(1)
        if not byte:
            return None, orientation
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        seg = f.read(2)
        if len(seg) < 2:
            return None, orientation
        length = struct.unpack(">H", seg)[0]
        if marker == 0xE1 and orientation == 1:
            orientation = _orientation_from_app1(f.read(max(0, length - 2)))
            continue
        if marker in _SOF:
            data = f.read(5)
            if len(data) < 5:
                return None, orientation
            h, w = struct.unpack(">HH", data[1:5])
            return ((int(w), int(h)) if w and h else None), orientation
        if marker == 0xDA:  # start of scan before any SOF: odd stream
            return None, orientation
        f.seek(length - 2, 1)


def jpeg_orientation(data: bytes | np.ndarray) -> int:
    """EXIF orientation (1..8) of JPEG bytes; 1 for other formats or without the tag."""
    import io

    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if buf[:2] != b"\xff\xd8":
        return 1
    return read_jpeg_header(io.BytesIO(buf))[1]


def oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """``(width, height)`` as displayed: orientations 5..8 swap the sides."""
    return (height, width) if orientation >= 5 else (width, height)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img[H, W, ...]`` as stored -> as displayed (same as PIL's ``exif_transpose``); a contiguous copy when changed."""
    if orientation <= 1 or orientation > 8:
        return img
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    else:
        t = np.swapaxes(img, 0, 1)
        out = {5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1]}[orientation]
    return np.ascontiguousarray(out)
