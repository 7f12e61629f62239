"""Video files, cameras and stream URLs in, a video with the boxes drawn out: OpenCV's FFmpeg build.

:func:`video_source` tells a video / camera / URL ``--source`` from image files;
:class:`VideoReader` opens it (one line naming the problem when it can't) and yields
:class:`Frame` s ``[H, W, 3]`` uint8 BGR with their index and timestamp, skipping and counting
frames that fail to decode; :class:`VideoSink` writes frames to a temporary file beside the
target and renames it when done (also after an error: the frames written are kept);
:func:`check_video_writer` finds out before any work whether OpenCV can write the codec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harmonic.errors import HarmonicError

log = logging.getLogger("harmonic.infer")

#: files read as video (everything else named on the command line is an image)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".mts", ".m2ts", ".3gp", ".ogv", ".gif")
#: URL schemes read as a stream through FFmpeg
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
#: the codec written for each ``--save-video`` suffix (``--fourcc`` overrides it)
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG",
                    ".webm": "VP80"}
#: consecutive failed reads that end a file (a damaged frame fails once, the end of a file for good)
FILE_MAX_BAD_READS = 16
#: consecutive failed reads (each up to the read timeout) that end a camera or a stream
LIVE_MAX_BAD_READS = 3


def quiet_opencv() -> None:
    """Keep OpenCV's and FFmpeg's own log lines off stderr (every problem is reported in one line here).

    FFmpeg's level is read when OpenCV first uses it, so call this before opening any video.
    """
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """Redirect file descriptor 2 to /dev/null: FFmpeg's writer prints codec notes with ``fprintf``."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def redact(url: str) -> str:
    """A stream URL without its password (``rtsp://user:secret@host`` -> ``rtsp://user:***@host``)."""
    return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1:***@", url)


@dataclass(frozen=True)
class VideoSource:
    """What a video ``--source`` names: ``kind`` ``file`` (a path), ``camera`` (an index) or ``url``."""

    kind: str
    target: str | int

    @property
    def label(self) -> str:
        return redact(str(self.target)) if self.kind == "url" else str(self.target)

    @property
    def live(self) -> bool:
        return self.kind != "file"


def video_source(spec: str | int | Path) -> VideoSource | None:
    """The video, camera or stream ``spec`` names, or ``None`` for an image file, folder or glob.

    An integer (or a string of digits that is not a file) is a camera index; ``scheme://...`` with a
    stream scheme is a URL; a path with a video suffix is a video file (it need not exist yet:
    :class:`VideoReader` reports a missing one).
    """
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return VideoSource("camera", int(spec))
    s = str(spec)
    if s.isdigit() and not Path(s).exists():
        return VideoSource("camera", int(s))
    if "://" in s:
        scheme = s.split("://", 1)[0].lower()
        if scheme == "file":
            s = s.split("://", 1)[1]
        elif scheme in STREAM_SCHEMES:
            return VideoSource("url", s)
        else:
            raise HarmonicError(f"{redact(s)}: unknown stream scheme {scheme!r}; expected one of "
                                f"{', '.join(STREAM_SCHEMES)}")
    if Path(s).suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource("file", s)
    return None


@dataclass
class Frame:
    """One decoded frame: ``image[H, W, 3]`` uint8 BGR, its ``index`` in the source (counting every frame,
    also those skipped by a stride or lost to damage), ``timestamp`` in seconds, when its read started
    (``t_start``, ``perf_counter``; for a live source when it arrived) and the read's seconds."""

    index: int
    image: np.ndarray
    timestamp: float
    t_start: float
    t_decode: float


@dataclass
class ReadStats:
    """What reading found: frames decoded, frames that failed to decode (skipped), and why reading
    stopped before the source's natural end (``None`` when it did not)."""

    decoded: int = 0
    corrupt: int = 0
    stopped: str | None = None
    corrupt_at: list[int] = field(default_factory=list)


class VideoReader:
    """An opened video file, camera or stream; the first frame is read on opening, so a source that opens
    but yields nothing is refused here, before any work.

    ``open_timeout_s`` / ``read_timeout_s`` bound how long a stream URL may take to answer and to
    deliver a frame.
    """

    def __init__(self, source: VideoSource, open_timeout_s: float = 10.0, read_timeout_s: float = 10.0) -> None:
        import cv2

        quiet_opencv()
        self.source = source
        self.stats = ReadStats()
        self._cv2 = cv2
        self.cap = self._open(source, open_timeout_s, read_timeout_s)
        self.t_open = time.perf_counter()
        t0 = time.perf_counter()
        ok, first = self._read(True)
        if not ok or first is None:
            self.cap.release()
            what = {"file": "no frame could be decoded (not a video, or damaged)",
                    "camera": "the camera opened but delivered no frame",
                    "url": "the stream opened but delivered no frame"}[source.kind]
            raise HarmonicError(f"{self._where()}: {what}")
        self._first = (first, self._timestamp(0), t0, time.perf_counter() - t0)
        self.height, self.width = first.shape[:2]
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps: float | None = fps if np.isfinite(fps) and 0 < fps < 1000 else None
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if source.kind == "file" else 0
        self.frame_count: int | None = count if count > 0 else None

    @property
    def first_frame(self) -> np.ndarray:
        """The first frame ``[H, W, 3]`` uint8 BGR (read when opening)."""
        return self._first[0]

    def _where(self) -> str:
        return f"--source {self.source.label}" if self.source.kind == "camera" else self.source.label

    def _open(self, source: VideoSource, open_timeout_s: float, read_timeout_s: float) -> object:
        cv2 = self._cv2
        if source.kind == "camera":
            cap = cv2.VideoCapture(int(source.target))
            if not cap.isOpened():
                raise HarmonicError(f"--source {source.target}: no camera with index {source.target} "
                                    "(OpenCV cannot open it)")
            return cap
        if source.kind == "file":
            path = Path(str(source.target))
            if not path.exists():
                raise HarmonicError(f"{path}: not found")
            if not path.is_file():
                raise HarmonicError(f"{path}: not a file")
            cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
            if not cap.isOpened():
                raise HarmonicError(f"{path}: not a video OpenCV's FFmpeg can read (or its header is damaged)")
            return cap
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        cap = cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise HarmonicError(f"{source.label}: no stream answers there within {open_timeout_s:g} s "
                                "(or OpenCV's FFmpeg cannot read it)")
        return cap

    def _read(self, decode: bool) -> tuple[bool, np.ndarray | None]:
        try:
            if decode:
                return self.cap.read()
            return self.cap.grab(), None
        except self._cv2.error:  # a decoder assertion on a damaged frame: that frame fails
            return False, None

    def _timestamp(self, index: int) -> float:
        """Seconds into the source: the frame's own time for a file or stream, else time since opening."""
        if self.source.kind == "camera":
            return time.perf_counter() - getattr(self, "t_open", time.perf_counter())
        ms = float(self.cap.get(self._cv2.CAP_PROP_POS_MSEC) or 0.0)
        if ms > 0 or index == 0:
            return ms / 1000.0
        fps = getattr(self, "fps", None)
        return index / fps if fps else time.perf_counter() - getattr(self, "t_open", time.perf_counter())

    def frames(self, stride: int = 1, pace: bool = False) -> Iterator[Frame]:
        """Every ``stride``-th frame from the first; a frame that fails to decode is skipped and counted
        (``stats.corrupt``). ``pace``: deliver frames no faster than their timestamps (a file read as if
        it were live). The capture is released when the iteration ends."""
        max_bad = LIVE_MAX_BAD_READS if self.source.live else FILE_MAX_BAD_READS
        index, bad = 0, 0
        t_wall0, ts0 = time.perf_counter(), self._first[1]
        try:
            img, ts, t0, td = self._first
            self.stats.decoded += 1
            yield Frame(0, img, ts, t0, td)
            while True:
                index += 1
                want = index % stride == 0
                t0 = time.perf_counter()
                ok, img = self._read(want)
                t1 = time.perf_counter()
                if not ok:
                    bad += 1
                    if bad >= max_bad:
                        self._stopped(index - bad + 1)
                        return
                    continue
                if bad:  # frames that failed between two good ones: damaged, skipped
                    self.stats.corrupt += bad
                    self.stats.corrupt_at.extend(range(index - bad, index))
                    log.warning("%s: %d frame(s) at %d could not be decoded (skipped)", self.source.label, bad,
                                index - bad)
                    bad = 0
                if not want:
                    continue
                self.stats.decoded += 1
                ts = self._timestamp(index)
                if pace:  # never more than a second at once: a damaged timestamp must not stall the run
                    delay = (ts - ts0) - (time.perf_counter() - t_wall0)
                    if delay > 0:
                        time.sleep(min(delay, 1.0))
                live_start = t1 if self.source.live else t0
                yield Frame(index, img, ts, live_start, t1 - t0 if not self.source.live else 0.0)
        finally:
            self.close()

    def _stopped(self, frames: int) -> None:
        """Record why reading ended after ``frames`` frames, where that is not the source's natural end."""
        if self.source.live:
            self.stats.stopped = f"the stream stopped after {frames} frame(s)"
        elif self.frame_count is not None and frames < self.frame_count - 1:
            self.stats.stopped = (f"the file ends after {frames} of the {self.frame_count} frames it declares "
                                  "(truncated or damaged)")

    def close(self) -> None:
        cap = getattr(self, "cap", None)
        if cap is not None:
            cap.release()


def check_video_writer(path: str | Path, fourcc: str | None = None) -> str:
    """The codec ``--save-video path`` will be written with, after checking that OpenCV's FFmpeg can
    write it into that container here (a small probe file in a temporary folder): a
    :class:`HarmonicError` when it can't, before any work."""
    import cv2

    from harmonic.validate import check_out_file

    path = Path(path)
    check_out_file(path, "--save-video")
    suffix = path.suffix.lower()
    if fourcc is None:
        if suffix not in FOURCC_BY_SUFFIX:
            raise HarmonicError(f"--save-video {path}: unknown video type {suffix or '(no suffix)'!r}; use "
                                f"{', '.join(FOURCC_BY_SUFFIX)} (or name a codec with --fourcc)")
        fourcc = FOURCC_BY_SUFFIX[suffix]
    if len(fourcc) != 4:
        raise HarmonicError(f"--fourcc {fourcc!r}: a codec is four characters (mp4v, MJPG, XVID, avc1, ...)")
    quiet_opencv()
    with tempfile.TemporaryDirectory(prefix="harmonic_probe_") as tmp, silenced_stderr():
        probe = Path(tmp) / f"probe{suffix}"
        writer = cv2.VideoWriter(str(probe), cv2.VideoWriter_fourcc(*fourcc), 25.0, (64, 64))
        ok = writer.isOpened()
        if ok:
            writer.write(np.zeros((64, 64, 3), np.uint8))
        writer.release()
        ok = ok and probe.is_file() and probe.stat().st_size > 0
    if not ok:
        raise HarmonicError(f"--save-video {path}: OpenCV's FFmpeg here cannot write codec {fourcc!r} into a "
                            f"{suffix or 'suffix-less'} file (mp4v in .mp4 and MJPG in .avi work everywhere)")
    return fourcc


class VideoSink:
    """Frames ``[H, W, 3]`` uint8 BGR -> ``path`` (``fourcc`` from :func:`check_video_writer`), written to a
    temporary file beside it; :meth:`close` renames it onto ``path`` once a frame was written (also after
    an error or Ctrl-C, so the frames written are kept) and removes it otherwise. Frames of another size
    than the first are resized to it."""

    def __init__(self, path: str | Path, fourcc: str, fps: float, size: tuple[int, int]) -> None:
        import cv2

        from harmonic.atomic import chmod_default

        self._cv2, self._chmod = cv2, chmod_default
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))  # (width, height)
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".tmp{self.path.suffix}",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        with silenced_stderr():
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), self.size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise HarmonicError(f"--save-video {self.path}: OpenCV cannot open a {fourcc} writer of "
                                f"{self.size[0]}x{self.size[1]} at {fps:g} fps")

    def write(self, bgr: np.ndarray) -> None:
        if (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = self._cv2.resize(bgr, self.size, interpolation=self._cv2.INTER_AREA)
        self.writer.write(np.ascontiguousarray(bgr))
        self.frames += 1

    def close(self) -> None:
        """Finish the file: rename it onto ``path`` when it holds a frame, else remove it."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if self.frames:
            self._chmod(self.tmp)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
