"""Letterbox and batch decoded images with OpenCV + numpy (no torch).

The model input is RGB float32 ``[B, 3, S, S]`` in ``[0, 1]``, letterboxed with
:func:`harmonic.data.letterbox.letterbox` (centred, pad 114) exactly as in training; images are
decoded by :mod:`harmonic.data.images` (the same decode as training's).
"""

from __future__ import annotations

import cv2
import numpy as np

from harmonic.data.letterbox import PAD_VALUE, LetterboxInfo, letterbox, letterbox_params


def prepare_image(img: np.ndarray, size: int, orig_size: tuple[int, int] | None = None,
                  bgr: bool = False) -> tuple[np.ndarray, LetterboxInfo]:
    """``[H, W, 3]`` uint8 RGB -> letterboxed ``[3, S, S]`` uint8 RGB (CHW) and its :class:`LetterboxInfo`.

    ``orig_size`` ``(w, h)``: ``img`` is a scaled-down decode of an image that size;
    the geometry (and so the info) is that of the original. ``bgr``: ``img`` is BGR (as OpenCV
    decodes a video frame); it is letterboxed as it is and its channels are swapped on the small
    result, which gives exactly the pixels of converting first (resizing treats each channel alike).
    """
    if orig_size is None or tuple(orig_size) == (img.shape[1], img.shape[0]):
        boxed, info = letterbox(img, size)
        chw = boxed.transpose(2, 0, 1)
        return np.ascontiguousarray(chw[::-1] if bgr else chw), info
    if bgr:
        raise ValueError("prepare_image: orig_size is for scaled-down RGB decodes only")
    info, (new_w, new_h) = letterbox_params(int(orig_size[0]), int(orig_size[1]), size)
    if (new_w, new_h) != (img.shape[1], img.shape[0]):
        interp = cv2.INTER_AREA if new_w < img.shape[1] else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    out = np.full((3, size, size), PAD_VALUE, dtype=np.uint8)
    px, py = int(info.pad_x), int(info.pad_y)
    out[:, py:py + new_h, px:px + new_w] = img.transpose(2, 0, 1)
    return out, info


def to_batch(chw_images: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Stack ``[3, S, S]`` uint8 images -> float32 ``[B, 3, S, S]`` in ``[0, 1]`` (into ``out`` when given)."""
    n = len(chw_images)
    if out is None:
        out = np.empty((n, *chw_images[0].shape), dtype=np.float32)
    for i, im in enumerate(chw_images):
        np.multiply(im, np.float32(1.0 / 255.0), out=out[i], casting="unsafe")
    return out[:n]


def preprocess(img: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """One image ``[H, W, 3]`` uint8 RGB -> float32 ``[3, S, S]`` in ``[0, 1]`` and its info."""
    chw, info = prepare_image(img, size)
    return to_batch([chw])[0], info


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """``[b, 3, S, S]`` -> ``[size, 3, S, S]`` with zero images appended (for fixed-batch engines)."""
    if batch.shape[0] >= size:
        return batch
    pad = np.zeros((size - batch.shape[0], *batch.shape[1:]), dtype=batch.dtype)
    return np.concatenate([batch, pad], axis=0)
