"""What :class:`~harmonic.runtime.detector.Detector` accepts as one image, as a ``[H, W, 3]`` uint8 array.

- a numpy array ``[H, W, 3]`` uint8, BGR as OpenCV delivers it (``rgb=True``: RGB); ``[H, W]`` or
  ``[H, W, 1]`` gray and ``[H, W, 4]`` BGRA (RGBA) are converted, 16-bit and float images scaled
  as :func:`harmonic.data.images.to_rgb8` does;
- a path (``str`` or :class:`~pathlib.Path`), decoded by :func:`harmonic.data.images.decode_image`
  (EXIF orientation applied, as everywhere else);
- encoded bytes (``bytes``, ``bytearray``, ``memoryview``) of any format OpenCV decodes.

Anything else is a :class:`~harmonic.errors.HarmonicError` naming what was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from harmonic.data.images import ImageDecodeError, decode_buffer, decode_image, to_rgb8
from harmonic.errors import HarmonicError

#: one image: an array, a path or encoded bytes
ImageInput = np.ndarray | str | Path | bytes | bytearray | memoryview


def is_single(x: Any) -> bool:
    """Whether ``x`` is one image (else a list / tuple of them)."""
    return not isinstance(x, (list, tuple))


def as_image(x: ImageInput, rgb: bool = False, label: str = "image") -> tuple[np.ndarray, bool]:
    """One input -> ``(image [H, W, 3] uint8, is_bgr)``; arrays are not copied where they need no conversion.

    Files and bytes decode to RGB (``is_bgr`` False); an array keeps the channel order it came in.
    """
    if isinstance(x, np.ndarray):
        return _from_array(x, rgb, label)
    if isinstance(x, (str, Path)):
        return decode_image(x), False
    if isinstance(x, (bytes, bytearray, memoryview)):
        data = np.frombuffer(x, np.uint8)
        if data.size == 0:
            raise ImageDecodeError(f"{label}: empty bytes")
        return decode_buffer(Path(label), data), False
    raise HarmonicError(f"{label}: expected a numpy image, a path or encoded bytes, got {type(x).__name__}")


def _from_array(x: np.ndarray, rgb: bool, label: str) -> tuple[np.ndarray, bool]:
    channels = 1 if x.ndim == 2 else (x.shape[2] if x.ndim == 3 else 0)
    if channels not in (1, 3, 4) or x.size == 0:
        raise HarmonicError(f"{label}: expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image, "
                            f"got shape {list(x.shape)}")
    if x.dtype != np.uint8:
        if rgb and channels >= 3:  # to_rgb8 reads OpenCV's order
            x = x[..., [2, 1, 0, 3][:channels]]
        try:
            return to_rgb8(np.ascontiguousarray(x)), False
        except (cv2.error, TypeError, ValueError) as exc:
            raise HarmonicError(f"{label}: cannot convert a {x.dtype} image ({exc})") from None
    x = np.ascontiguousarray(x)
    if channels == 1:
        return cv2.cvtColor(x.reshape(x.shape[:2]), cv2.COLOR_GRAY2BGR), True
    if channels == 4:
        return cv2.cvtColor(x, cv2.COLOR_RGBA2RGB if rgb else cv2.COLOR_BGRA2BGR), not rgb
    return x, not rgb
