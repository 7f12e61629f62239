"""A prefetching pipeline: decode + preprocess of batch i+1 overlap the engine on batch i.

A thread pool decodes and letterboxes images (OpenCV and numpy release the GIL);
a producer thread keeps at most ``batch * (prefetch + 1)`` images in flight and at
most ``prefetch`` assembled batches queued, so memory is bounded whatever the
number of images. Results come back in input order, so they equal a plain loop's.
Video frames come from one reader thread (:func:`iter_frame_batches`) through the same
bounded queue; with ``realtime`` it drops frames instead of falling behind.
:func:`harmonic.runtime.runners.run_batches` is the one run loop over these batches
(:func:`harmonic.runtime.runners.infer_images` runs it over image files with a local backend).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from harmonic.data.images import ImageDecodeError, decode_image, decode_image_for
from harmonic.data.letterbox import LetterboxInfo
from harmonic.runtime.backends.base import Backend
from harmonic.runtime.postprocess import (
    Detections,
    find_raw_outputs,
    raw_to_nms_outputs,
    split_outputs,
    unletterbox,
)
from harmonic.runtime.preprocess import pad_batch, prepare_image, to_batch

log = logging.getLogger(__name__)
_END = object()


class Skipped(NamedTuple):
    """An input left out: its path (``None`` for a frame), why, and its position in the input."""

    path: Path | None
    reason: str
    index: int = -1


class Loaded(NamedTuple):
    """One prepared input: the runner's payload (``[3, S, S]`` uint8 for a local graph), its letterbox
    info (``None`` where the server letterboxes), decode / preprocess seconds, the start time, and the
    decoded image itself when asked for (``None`` otherwise)."""

    payload: Any
    info: LetterboxInfo | None
    t_decode: float
    t_preprocess: float
    t_start: float
    image: np.ndarray | None = None


@dataclass
class ImageItem:
    """One input of a batch: its position in the input (image index or frame index), path (``None``
    for a frame), letterbox info and stage times (s); a frame also carries its image and timestamp."""

    index: int
    path: Path | None
    info: LetterboxInfo | None
    t_decode: float
    t_preprocess: float
    t_start: float = 0.0  # perf_counter when its decode started (a live frame: when it arrived)
    image: np.ndarray | None = None
    timestamp: float | None = None  # seconds into the video / stream


@dataclass
class Batch:
    """``array`` (float32 ``[n, 3, S, S]`` for a local graph) for ``items``; ``skipped`` since the previous batch."""

    items: list[ImageItem]
    array: np.ndarray
    skipped: list[Skipped] = field(default_factory=list)
    t_first: float = 0.0  # perf_counter when its first image started decoding
    t_assemble: float = 0.0  # seconds to stack into the float batch


@dataclass
class BatchTiming:
    """Stage times of one batch in seconds (decode/preprocess = summed worker time of its images)."""

    n: int
    decode: float
    preprocess: float
    engine: float
    engine_gpu_ms: float | None
    postprocess: float
    end_to_end: float


def load_one(path: Path, size: int, fast_decode: bool = False) -> tuple[np.ndarray, LetterboxInfo, float, float, float]:
    """Decode + letterbox one file -> (``[3, S, S]`` uint8, info, decode s, preprocess s, start time).

    ``fast_decode``: decode large JPEGs scaled down in the DCT (see :func:`harmonic.data.images.decode_image_for`).
    """
    t0 = time.perf_counter()
    img, orig = decode_image_for(path, size if fast_decode else None)
    t1 = time.perf_counter()
    chw, info = prepare_image(img, size, orig)
    t2 = time.perf_counter()
    return chw, info, t1 - t0, t2 - t1, t0


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


def iter_batches(paths: Sequence[Path], size: int, batch_size: int, workers: int | None = None,
                 prefetch: int = 2, fast_decode: bool = False, load: Callable[[Path], tuple] | None = None,
                 assemble: Callable[[list[Any]], np.ndarray] = to_batch) -> Iterator[Batch]:
    """Yield :class:`Batch` es of up to ``batch_size`` decodable images of ``paths``, in order.

    Undecodable files are skipped (reported in the next batch's ``skipped``; a final
    batch may have no items and only ``skipped``). The last batch may be partial.
    ``load(path)`` (default :func:`load_one` at ``size``) returns a :class:`Loaded`-shaped tuple;
    ``assemble`` stacks the payloads of a batch into its array.
    """
    workers = workers or default_workers()
    window = batch_size * (prefetch + 1)
    if load is None:
        def load(p: Path) -> tuple:
            return load_one(p, size, fast_decode)

    def produce(put: Callable[[object], bool], stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harmonic-decode")
        try:
            pending: deque[tuple[int, Path, Future]] = deque()
            source = iter(enumerate(paths))

            def fill() -> None:
                while len(pending) < window and not stop.is_set():
                    try:
                        i, p = next(source)
                    except StopIteration:
                        return
                    pending.append((i, Path(p), pool.submit(load, Path(p))))

            fill()
            acc = _Accumulator(batch_size, assemble, put)
            while pending and not stop.is_set():
                i, p, fut = pending.popleft()
                try:
                    loaded = Loaded(*fut.result())
                except ImageDecodeError as exc:
                    acc.skip(Skipped(p, str(exc), i))
                    fill()
                    continue
                fill()
                if not acc.add(ImageItem(i, p, loaded.info, loaded.t_decode, loaded.t_preprocess, loaded.t_start,
                                         loaded.image), loaded.payload):
                    return
            acc.flush(final=True, empty=np.zeros((0, 3, size, size), np.float32))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    yield from _prefetched(produce, prefetch)


class _Accumulator:
    """Collects items into batches of ``batch_size`` and hands each to ``put``."""

    def __init__(self, batch_size: int, assemble: Callable[[list[Any]], np.ndarray],
                 put: Callable[[Batch], bool]) -> None:
        self.batch_size, self.assemble, self.put = batch_size, assemble, put
        self.items: list[ImageItem] = []
        self.payloads: list[Any] = []
        self.skipped: list[Skipped] = []

    def skip(self, s: Skipped) -> None:
        self.skipped.append(s)

    def add(self, item: ImageItem, payload: Any) -> bool:
        """Add one item; a full batch is handed on. False once the consumer has gone."""
        self.items.append(item)
        self.payloads.append(payload)
        return self.flush() if len(self.items) == self.batch_size else True

    def flush(self, final: bool = False, empty: np.ndarray | None = None) -> bool:
        if not self.items and not (final and self.skipped):
            return True
        ta = time.perf_counter()
        arr = self.assemble(self.payloads) if self.payloads else empty
        batch = Batch(self.items, arr, self.skipped, self.items[0].t_start if self.items else ta,
                      time.perf_counter() - ta)
        self.items, self.payloads, self.skipped = [], [], []
        return self.put(batch)


def _prefetched(produce: Callable[[Callable[[object], bool], threading.Event], None], prefetch: int,
                latest_only: bool = False, on_drop: Callable[[Batch], None] | None = None) -> Iterator[Batch]:
    """Run ``produce(put, stop)`` in a thread and yield what it puts, through a queue of ``prefetch`` batches.

    ``latest_only``: a batch that finds the queue full replaces the queued one (``on_drop`` gets the one
    dropped), so a consumer slower than the producer sees the newest batch instead of falling behind.
    The producer stops when the consumer does (``stop``); its exceptions reach the consumer.
    """
    out_q: queue.Queue = queue.Queue(maxsize=1 if latest_only else max(1, prefetch))
    stop = threading.Event()

    def put(obj: object, droppable: bool = True) -> bool:
        if latest_only and droppable and isinstance(obj, Batch):
            while not stop.is_set():
                try:
                    out_q.put_nowait(obj)
                    return True
                except queue.Full:
                    try:
                        old = out_q.get_nowait()
                    except queue.Empty:
                        continue
                    if on_drop is not None:
                        on_drop(old)
            return False
        while not stop.is_set():
            try:
                out_q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            produce(put, stop)
            put(_END, droppable=False)
        except BaseException as exc:  # hand anything unexpected to the consumer
            put(exc, droppable=False)

    thread = threading.Thread(target=run, name="harmonic-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            obj = out_q.get()
            if obj is _END:
                break
            if isinstance(obj, BaseException):
                raise obj
            yield obj
    finally:
        stop.set()
        thread.join()


def iter_frame_batches(frames: Iterable[Any], prepare: Callable[[np.ndarray], tuple[Any, LetterboxInfo | None]],
                       batch_size: int, prefetch: int = 2, assemble: Callable[[list[Any]], np.ndarray] = to_batch,
                       realtime: bool = False, on_drop: Callable[[int], None] | None = None) -> Iterator[Batch]:
    """Batches of video frames, read and prepared in one thread ahead of the consumer.

    ``frames`` yields objects with ``index``, ``image`` (``[H, W, 3]`` uint8 BGR), ``timestamp`` (s),
    ``t_start`` and ``t_decode`` (see :class:`harmonic.runtime.video.Frame`); ``prepare(image)`` ->
    ``(payload, info)``. At most ``prefetch`` batches wait for the engine; with ``realtime`` the newest
    batch replaces a waiting one and ``on_drop(n_frames)`` counts the frames dropped.
    """
    def produce(put: Callable[[object], bool], stop: threading.Event) -> None:
        acc = _Accumulator(batch_size, assemble, put)
        it = iter(frames)
        try:
            for f in it:
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                payload, info = prepare(f.image)
                item = ImageItem(f.index, None, info, f.t_decode, time.perf_counter() - t0, f.t_start, f.image,
                                 f.timestamp)
                if not acc.add(item, payload):
                    return
            acc.flush()
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    drop = (lambda b: on_drop(len(b.items))) if on_drop is not None else None
    yield from _prefetched(produce, prefetch, latest_only=realtime, on_drop=drop)


def run_engine(backend: Backend, array: np.ndarray, iou: float | None = None,
               max_det: int | None = None) -> dict[str, np.ndarray]:
    """Run ``array[n, 3, S, S]``, padded to a fixed batch or a profile minimum; raw graphs get numpy NMS
    (at the model's IoU threshold and ``max_det``, or ``iou`` / ``max_det`` where given).

    Outputs keep the padded rows; callers read the first ``n``.
    """
    n = array.shape[0]
    target = backend.fixed_batch or max(n, backend.min_batch)
    outs = backend.infer(pad_batch(array, target) if n < target else array)
    if backend.graph == "raw":
        boxes, scores = find_raw_outputs(outs)
        meta = backend.metadata
        outs = raw_to_nms_outputs(boxes, scores, float(meta.get("score_threshold", 0.001)),
                                  float(iou if iou is not None else meta.get("iou_threshold", 0.5)),
                                  int(max_det if max_det is not None else meta.get("max_det", 100)))
    return outs


@dataclass
class RunStats:
    """Counts of one run and the per-batch timings.

    ``skipped``: inputs left out (unreadable, or refused by a server); ``refused``: how many of them a
    server refused; ``dropped``: frames a realtime stream dropped; ``latencies``: per processed input,
    seconds from its decode start to its detections; ``requests``: (images, seconds) per engine run or
    server request; ``first_batch``: the first batch's array (for the engine-only benchmark).
    """

    processed: int = 0
    detections: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    timings: list[BatchTiming] = field(default_factory=list)
    wall: float = 0.0
    refused: int = 0
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)
    requests: list[tuple[int, float]] = field(default_factory=list)
    first_batch: np.ndarray | None = None


def infer_sequential(backend: Backend, paths: Sequence[Path], batch_size: int,
                     conf: float | None = None) -> list[tuple[int, Detections]]:
    """Reference implementation: a plain loop (decode, letterbox, batch, run) without threads."""
    results: list[tuple[int, Detections]] = []
    chws, infos, idx = [], [], []

    def flush() -> None:
        outs = run_engine(backend, to_batch(chws))
        for i, d, info in zip(idx, split_outputs(outs, len(chws), conf), infos):
            results.append((i, unletterbox(d, info)))
        chws.clear(), infos.clear(), idx.clear()

    for i, p in enumerate(paths):
        try:
            img = decode_image(p)
        except ImageDecodeError:
            continue
        chw, info = prepare_image(img, backend.img_size)
        chws.append(chw), infos.append(info), idx.append(i)
        if len(chws) == batch_size:
            flush()
    if chws:
        flush()
    return results
