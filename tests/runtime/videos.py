"""Short videos written with ``cv2.VideoWriter`` for the video / stream tests (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def frame_image(i: int, w: int = 96, h: int = 64, seed: int = 0) -> np.ndarray:
    """Frame ``i``: a coloured background (so the test graph's scores change per frame) and a moving box."""
    rng = np.random.default_rng(seed + i)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    x = (i * 7) % max(1, w - 20)
    cv2.rectangle(img, (x, 10), (x + 20, 40), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return img


def write_video(path: Path, n: int = 12, w: int = 96, h: int = 64, fps: float = 25.0,
                fourcc: str | None = None) -> Path:
    """``n`` frames of :func:`frame_image` (BGR) into ``path`` (mp4v for .mp4, MJPG for .avi)."""
    fourcc = fourcc or ("MJPG" if path.suffix == ".avi" else "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for i in range(n):
        writer.write(frame_image(i, w, h))
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as OpenCV decodes it (BGR): what the video source must deliver."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def frames_as_pngs(path: Path, folder: Path) -> list[Path]:
    """The decoded frames of ``path`` written losslessly as ``frame_00000.png``, ... (the frames as images)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(decoded_frames(path)):
        p = folder / f"frame_{i:05d}.png"
        cv2.imwrite(str(p), f)
        out.append(p)
    return out


def jpeg_starts(data: bytes) -> list[int]:
    """Offsets of the JPEG start-of-image markers in an MJPG file (one per frame)."""
    out, i = [], data.find(b"\xff\xd8\xff")
    while i >= 0:
        out.append(i)
        i = data.find(b"\xff\xd8\xff", i + 3)
    return out
