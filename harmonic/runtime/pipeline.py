"""A prefetching pipeline: decode + preprocess of batch i+1 overlap the engine on batch i.

A thread pool decodes and letterboxes images (OpenCV and numpy release the GIL);
a producer thread keeps at most ``batch * (prefetch + 1)`` images in flight and at
most ``prefetch`` assembled batches queued, so memory is bounded whatever the
number of images. Results come back in input order, so they equal a plain loop's.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class ImageItem:
    """One decoded image of a batch: its position in the input list, path, letterbox info and stage times (s)."""

    index: int
    path: Path
    info: LetterboxInfo
    t_decode: float
    t_preprocess: float


@dataclass
class Batch:
    """``array`` float32 ``[n, 3, S, S]`` for ``items``; ``skipped`` = (path, reason) since the previous batch."""

    items: list[ImageItem]
    array: np.ndarray
    skipped: list[tuple[Path, str]] = field(default_factory=list)
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
                 prefetch: int = 2, fast_decode: bool = False) -> Iterator[Batch]:
    """Yield :class:`Batch` es of up to ``batch_size`` decodable images of ``paths``, in order.

    Undecodable files are skipped (reported in the next batch's ``skipped``; a final
    batch may have no items and only ``skipped``). The last batch may be partial.
    """
    workers = workers or default_workers()
    window = batch_size * (prefetch + 1)
    out_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harmonic-decode")

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                out_q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            pending: deque[tuple[int, Path, Future]] = deque()
            source = iter(enumerate(paths))

            def fill() -> None:
                while len(pending) < window and not stop.is_set():
                    try:
                        i, p = next(source)
                    except StopIteration:
                        return
                    pending.append((i, Path(p), pool.submit(load_one, Path(p), size, fast_decode)))

            fill()
            items: list[ImageItem] = []
            chws: list[np.ndarray] = []
            skipped: list[tuple[Path, str]] = []
            t_first = 0.0
            while pending and not stop.is_set():
                i, p, fut = pending.popleft()
                try:
                    chw, info, td, tp, t0 = fut.result()
                except ImageDecodeError as exc:
                    skipped.append((p, str(exc)))
                    fill()
                    continue
                fill()
                if not items:
                    t_first = t0
                items.append(ImageItem(i, p, info, td, tp))
                chws.append(chw)
                if len(items) == batch_size:
                    ta = time.perf_counter()
                    arr = to_batch(chws)
                    if not put(Batch(items, arr, skipped, t_first, time.perf_counter() - ta)):
                        return
                    items, chws, skipped = [], [], []
            if items or skipped:
                ta = time.perf_counter()
                arr = to_batch(chws) if chws else np.zeros((0, 3, size, size), np.float32)
                put(Batch(items, arr, skipped, t_first, time.perf_counter() - ta))
            put(_END)
        except BaseException as exc:  # hand anything unexpected to the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="harmonic-prefetch", daemon=True)
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
        pool.shutdown(wait=True, cancel_futures=True)


def run_engine(backend: Backend, array: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``array[n, 3, S, S]``, padded to a fixed batch or a profile minimum; raw graphs get numpy NMS.

    Outputs keep the padded rows; callers read the first ``n``.
    """
    n = array.shape[0]
    target = backend.fixed_batch or max(n, backend.min_batch)
    outs = backend.infer(pad_batch(array, target) if n < target else array)
    if backend.graph == "raw":
        boxes, scores = find_raw_outputs(outs)
        meta = backend.metadata
        outs = raw_to_nms_outputs(boxes, scores, float(meta.get("score_threshold", 0.001)),
                                  float(meta.get("iou_threshold", 0.5)), int(meta.get("max_det", 100)))
    return outs


@dataclass
class RunStats:
    """Counts of one run and the per-batch timings."""

    processed: int = 0
    detections: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    timings: list[BatchTiming] = field(default_factory=list)
    wall: float = 0.0


def infer_images(backend: Backend, paths: Sequence[Path], batch_size: int, conf: float | None = None,
                 workers: int | None = None, prefetch: int = 2, stats: RunStats | None = None,
                 on_skip: Callable[[Path, str], None] | None = None,
                 fast_decode: bool = False) -> Iterator[tuple[ImageItem, Detections]]:
    """Pipelined inference: yield ``(item, detections in original pixels)`` per image, in input order.

    ``stats`` (when given) collects counts, skipped files and per-batch :class:`BatchTiming`.
    """
    stats = stats if stats is not None else RunStats()
    t_start = time.perf_counter()
    for batch in iter_batches(paths, backend.img_size, batch_size, workers, prefetch, fast_decode):
        for p, reason in batch.skipped:
            stats.skipped.append((p, reason))
            if on_skip:
                on_skip(p, reason)
        n = len(batch.items)
        if not n:
            continue
        t0 = time.perf_counter()
        outs = run_engine(backend, batch.array)
        t1 = time.perf_counter()
        dets = [unletterbox(d, it.info) for d, it in zip(split_outputs(outs, n, conf), batch.items)]
        t2 = time.perf_counter()
        stats.processed += n
        stats.detections += sum(len(d) for d in dets)
        stats.timings.append(BatchTiming(
            n, sum(it.t_decode for it in batch.items),
            sum(it.t_preprocess for it in batch.items) + batch.t_assemble,
            t1 - t0, backend.last_engine_ms, t2 - t1, t2 - batch.t_first))
        yield from zip(batch.items, dets)
    stats.wall = time.perf_counter() - t_start


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
