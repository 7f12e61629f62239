"""Image decoding (OpenCV + numpy, no torch): one decode for training, evaluation and inference.

Every image HarmonicDet reads is decoded here: any path (unicode included) -> ``[H, W, 3]``
uint8 RGB as a viewer shows it (the JPEG's EXIF orientation applied, :mod:`harmonic.data.exif`),
gray / RGBA / CMYK / 16-bit / float images converted, and missing, empty, non-image and
truncated files an :class:`ImageDecodeError` naming the file. The runtime
(:mod:`harmonic.runtime.preprocess`) letterboxes what this returns; the torch ``Dataset``
and the annotation readers use the same decode.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from harmonic.data.exif import apply_orientation, jpeg_orientation, oriented_size, read_jpeg_header
from harmonic.errors import HarmonicError


class ImageDecodeError(HarmonicError):
    """A file that can't be read as an image (missing, not an image, truncated)."""


def _looks_truncated(data: np.ndarray) -> bool:
    """A JPEG whose last scan has no end-of-image marker (FF D9) after it was cut short.

    OpenCV decodes such files without error (grey-filling the missing part), so this
    is checked here. Entropy-coded data can't contain FF DA / FF D9, so searching
    after the last start-of-scan ignores EXIF thumbnails and tolerates trailing bytes.
    """
    if data[:2].tobytes() != b"\xff\xd8":
        return False
    buf = data.tobytes()
    sos = buf.rfind(b"\xff\xda")
    return sos < 0 or buf.find(b"\xff\xd9", sos) < 0


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV-decoded image (gray, BGR, BGRA; uint8/uint16/float) -> ``[H, W, 3]`` uint8 RGB."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)  # 16-bit: keep the high byte (exact for 8-bit-scaled data)
    elif img.dtype in (np.float32, np.float64):
        hi = float(np.nanmax(img)) if img.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0  # float images are [0, 1] (HDR/EXR) unless clearly not
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageDecodeError(f"unsupported channel count {img.shape[2]}")


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's SOF header in its first 64 KiB without decoding, ``None`` if not found."""
    buf = data.tobytes() if data.size < 65536 else data[:65536].tobytes()
    if buf[:2] != b"\xff\xd8":
        return None
    return read_jpeg_header(io.BytesIO(buf))[0]


def reduce_factor(width: int, height: int, target: int) -> int:
    """Largest JPEG DCT scale-down (1, 2, 4, 8) that keeps the longer side >= ``target``."""
    k = 1
    while k < 8 and max(width, height) / (2 * k) >= target:
        k *= 2
    return k


def _read(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise ImageDecodeError(f"{path}: empty file")
    return data


def decode_image_for(path: str | Path, target: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like :func:`decode_image`, but a large JPEG is decoded already scaled down by 2/4/8 in the DCT
    (libjpeg's scaled decode: several times cheaper) while its longer side stays >= ``target``.

    Returns ``(image RGB uint8, (original width, original height))``, both as displayed
    (EXIF orientation applied, as in every decode path). The letterbox geometry is
    unchanged (see ``orig_size`` of :func:`harmonic.runtime.preprocess.prepare_image`); only the resampling filter
    differs slightly from a full decode + area resize.
    """
    path = Path(path)
    if target:
        data = _read(path)
        size = jpeg_size(data)
        k = reduce_factor(*size, target) if size else 1
        if k > 1 and not _looks_truncated(data):
            img = _imdecode(path, data, _REDUCED[k] | cv2.IMREAD_IGNORE_ORIENTATION)
            if img is not None and img.ndim == 3:
                orientation = jpeg_orientation(data)
                img = apply_orientation(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), orientation)
                return img, oriented_size(*size, orientation)
        img = decode_buffer(path, data)
    else:
        img = decode_image(path)
    return img, (img.shape[1], img.shape[0])


def decode_image(path: str | Path) -> np.ndarray:
    """Read ``path`` (any path, unicode included) -> ``[H, W, 3]`` uint8 RGB.

    Grayscale, RGBA, CMYK and 16-bit images are converted; a JPEG's EXIF orientation
    is applied (:mod:`harmonic.data.exif`). Missing, empty, non-image and truncated
    files raise :class:`ImageDecodeError` naming the file.
    """
    path = Path(path)
    return decode_buffer(path, _read(path))


def _imdecode(path: Path, data: np.ndarray, flags: int) -> np.ndarray | None:
    """``cv2.imdecode`` whose own exceptions (an absurd size, a codec assertion, no memory) become an
    :class:`ImageDecodeError` naming the file."""
    try:
        return cv2.imdecode(data, flags)
    except (cv2.error, MemoryError, ValueError, OverflowError) as exc:
        text = " ".join(str(exc).split())
        if "CV_IO_MAX_IMAGE_PIXELS" in text:
            reason = "image too large for the decoder (more pixels than OpenCV's CV_IO_MAX_IMAGE_PIXELS)"
        else:
            reason = f"the decoder failed ({(text.split('error: ', 1)[-1] or type(exc).__name__)[:160]})"
        raise ImageDecodeError(f"{path}: {reason}") from None


def decode_buffer(path: Path, data: np.ndarray) -> np.ndarray:
    """Encoded image bytes ``data`` (as read from ``path``, which errors name) -> ``[H, W, 3]`` uint8 RGB."""
    img = _imdecode(path, data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.size == 0:
        raise ImageDecodeError(f"{path}: not an image OpenCV can decode (or truncated)")
    if _looks_truncated(data):
        raise ImageDecodeError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        return apply_orientation(to_rgb8(img), jpeg_orientation(data))
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc
