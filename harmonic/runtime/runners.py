"""What runs a batch, behind the one run loop :func:`run_batches`.

A :class:`Runner` turns an input into its payload (``load_path`` in the decode threads,
``load_array`` for an image in memory), stacks payloads into a request (``assemble``) and runs
it (``run``), returning detections in original image pixels. :class:`LocalRunner` wraps a
:class:`~harmonic.runtime.backends.Backend` (ONNX Runtime, TensorRT, ...);
:class:`harmonic.runtime.triton_client.TritonRunner` wraps a served model. Images, video
frames, the ``infer`` command and :class:`~harmonic.runtime.detector.Detector` all go through
:func:`run_batches`, so a local and a served model are run the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import OUTPUT_NAMES, MetadataClasses
from harmonic.data.letterbox import LetterboxInfo
from harmonic.errors import HarmonicError
from harmonic.runtime.backends.base import Backend
from harmonic.runtime.pipeline import (
    Batch,
    BatchTiming,
    ImageItem,
    RunStats,
    Skipped,
    iter_batches,
    run_engine,
)
from harmonic.runtime.postprocess import Detections, find_raw_outputs, refine, split_outputs, unletterbox
from harmonic.runtime.preprocess import prepare_image, to_batch

log = logging.getLogger("harmonic.infer")


@dataclass
class RunResult:
    """One batch run: per input its detections (original pixels) or why it was refused; engine and
    post-processing seconds; the GPU time where measured; (images, seconds) per request sent."""

    dets: list[Detections | str]
    engine_s: float
    post_s: float = 0.0
    engine_gpu_ms: float | None = None
    requests: list[tuple[int, float]] = field(default_factory=list)


def default_batch(backend: Any) -> int:
    """The engine's fixed batch, else ``min(8, its max)``, else 8."""
    if backend.fixed_batch:
        return int(backend.fixed_batch)
    return min(8, backend.max_batch) if backend.max_batch else 8


class Runner(MetadataClasses, ABC):
    """One model behind the run loop. ``img_size`` is ``None`` where the server letterboxes."""

    name: str = "?"
    device: str = "?"
    img_size: int | None = None
    #: requests in flight at once (a served model); a local engine runs one batch at a time
    concurrency: int = 1
    metadata: dict[str, Any]

    def _float_meta(self, key: str) -> float | None:
        try:
            return float(self.metadata[key])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def score_threshold(self) -> float | None:
        return self._float_meta("score_threshold")

    @property
    def iou_threshold(self) -> float | None:
        return self._float_meta("iou_threshold")

    @property
    def versions(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def default_batch(self) -> int:
        """The batch used when none is asked for."""

    @abstractmethod
    def check_batch(self, batch: int) -> None:
        """A :class:`HarmonicError` naming the allowed range when ``batch`` can't run."""

    @abstractmethod
    def load_path(self, path: Path, fast_decode: bool = False, keep: str | None = None) -> tuple:
        """Read one file -> a :class:`~harmonic.runtime.pipeline.Loaded` tuple (runs in decode threads).

        ``keep`` ``"bgr"`` / ``"rgb"``: also return the decoded image in that channel order.
        Unreadable files raise :class:`~harmonic.data.images.ImageDecodeError`."""

    @abstractmethod
    def load_array(self, img: np.ndarray, bgr: bool) -> tuple[Any, LetterboxInfo | None]:
        """``img[H, W, 3]`` uint8 (BGR where ``bgr``) -> ``(payload, letterbox info)``."""

    def load_encoded(self, data: bytes, label: str) -> tuple[Any, LetterboxInfo | None]:
        """Encoded image bytes -> ``(payload, letterbox info)`` (decoded as a file is; errors name ``label``)."""
        from harmonic.data.images import ImageDecodeError, decode_buffer

        arr = np.frombuffer(data, np.uint8)
        if arr.size == 0:
            raise ImageDecodeError(f"{label}: empty bytes")
        return self.load_array(decode_buffer(Path(label), arr), bgr=False)

    @abstractmethod
    def assemble(self, payloads: list[Any]) -> np.ndarray:
        """Stack payloads into one request array."""

    @abstractmethod
    def run(self, array: np.ndarray, infos: list[LetterboxInfo | None], conf: float | None) -> RunResult:
        """Run one assembled batch of ``len(infos)`` inputs; detections below ``conf`` are dropped."""

    def warmup(self, batch: int, iters: int, sample: Path | np.ndarray | None = None) -> None:
        """``iters`` untimed runs of a batch of ``batch`` (``sample`` repeated where a real input is needed)."""
        if not iters:
            return
        if isinstance(sample, np.ndarray):
            payload, info = self.load_array(sample, bgr=True)
        elif sample is not None:
            payload, info = self.load_path(Path(sample))[:2]
        else:
            return
        array = self.assemble([payload] * batch)
        for _ in range(iters):
            self.run(array, [info] * batch, None)

    def engine_only(self, array: np.ndarray, warmup: int, iters: int) -> dict[str, Any] | None:
        """The engine-only benchmark on one ready batch (``None`` where the engine is out of reach)."""
        return None

    def close(self) -> None:
        return None


class LocalRunner(Runner):
    """A :class:`~harmonic.runtime.backends.Backend` run in this process.

    ``iou`` / ``max_det``: a stricter operating point than the model's (exact for a raw graph, whose
    NMS runs here; an NMS graph gets :func:`~harmonic.runtime.postprocess.refine` on its output).
    Calls are serialised where the backend is not thread-safe.
    """

    def __init__(self, backend: Backend, iou: float | None = None, max_det: int | None = None) -> None:
        self.backend = backend
        self.name = backend.name
        self.device = backend.device
        self.img_size = backend.img_size
        self.metadata = backend.metadata
        self.iou, self.max_det = iou, max_det
        self._lock = None if backend.thread_safe else threading.Lock()
        raw = backend.graph == "raw"
        graph_iou = self.iou_threshold
        self._refine_iou = None if raw or iou is None or graph_iou is None or iou >= graph_iou else iou
        if not raw and iou is not None and graph_iou is not None and iou > graph_iou:
            log.warning("iou %.3g is above the IoU threshold of the graph's NMS (%.3g): it can't bring back "
                        "what the graph suppressed", iou, graph_iou)
        k = self.metadata.get("max_det")
        if not raw and max_det is not None and isinstance(k, int) and max_det > k:
            log.warning("max_det %d is above the graph's %d detections per image", max_det, k)

    @property
    def versions(self) -> dict[str, str]:
        return self.backend.versions

    def default_batch(self) -> int:
        return default_batch(self.backend)

    def check_batch(self, batch: int) -> None:
        self.backend.check_batch(batch)

    def load_path(self, path: Path, fast_decode: bool = False, keep: str | None = None) -> tuple:
        from harmonic.data.images import decode_image_for
        from harmonic.runtime import pipeline

        if keep is None:
            return pipeline.load_one(path, self.backend.img_size, fast_decode)
        t0 = time.perf_counter()
        img, orig = decode_image_for(path, self.backend.img_size if fast_decode else None)
        t1 = time.perf_counter()
        chw, info = prepare_image(img, self.backend.img_size, orig)
        t2 = time.perf_counter()
        return chw, info, t1 - t0, t2 - t1, t0, _in_order(img, keep)

    def load_array(self, img: np.ndarray, bgr: bool) -> tuple[Any, LetterboxInfo | None]:
        return prepare_image(img, self.backend.img_size, bgr=bgr)

    def assemble(self, payloads: list[Any]) -> np.ndarray:
        return to_batch(payloads)

    def run(self, array: np.ndarray, infos: list[LetterboxInfo | None], conf: float | None) -> RunResult:
        n = len(infos)
        t0 = time.perf_counter()
        if self._lock is None:
            outs = run_engine(self.backend, array, self.iou, self.max_det)
            gpu = self.backend.last_engine_ms
        else:
            with self._lock:
                outs = run_engine(self.backend, array, self.iou, self.max_det)
                gpu = self.backend.last_engine_ms
        t1 = time.perf_counter()
        dets: list[Detections | str] = []
        for d, info in zip(split_outputs(outs, n, conf), infos):
            if self._refine_iou is not None or self.max_det is not None:
                d = refine(d, self._refine_iou, self.max_det)
            dets.append(unletterbox(d, info) if info is not None else d)
        t2 = time.perf_counter()
        return RunResult(dets, t1 - t0, t2 - t1, gpu, [(n, t1 - t0)])

    def warmup(self, batch: int, iters: int, sample: Path | np.ndarray | None = None) -> None:
        dummy = np.zeros((batch, 3, self.backend.img_size, self.backend.img_size), np.float32)
        for _ in range(iters):
            run_engine(self.backend, dummy)

    def engine_only(self, array: np.ndarray, warmup: int, iters: int) -> dict[str, Any] | None:
        from harmonic.runtime import bench as bench_mod

        return bench_mod.engine_only(self.backend, array, warmup=warmup, iters=iters)

    def close(self) -> None:
        self.backend.close()


def _in_order(rgb: np.ndarray, keep: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if keep == "bgr" else rgb


def check_model(backend: Backend) -> None:
    """Refuse a model whose outputs are not the exported contract before any output is touched.

    A graph is run once on a blank batch: its outputs must be ``num_dets, det_boxes,
    det_scores, det_classes`` (or, for a raw graph, a raw head's boxes and scores).
    """
    try:
        outs = backend.infer(np.zeros((backend.fixed_batch or max(1, backend.min_batch), 3, backend.img_size,
                                       backend.img_size), np.float32))
    except HarmonicError:
        raise
    except Exception as exc:  # the runtime's own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmonicError(f"{backend.path}: the model does not run on a [B, 3, {backend.img_size}, "
                            f"{backend.img_size}] float32 batch ({first[:200]})") from None
    if backend.graph == "raw":
        try:
            find_raw_outputs(outs)
        except ValueError as exc:
            raise HarmonicError(f"{backend.path}: {exc}") from None
        return
    missing = [n for n in OUTPUT_NAMES if n not in outs]
    if missing:
        raise HarmonicError(f"{backend.path}: not a HarmonicDet detector: outputs {sorted(outs)} lack "
                            f"{', '.join(missing)} (export one with: harmonic export --checkpoint best.pt --out model.onnx)")


def run_batches(runner: Runner, batches: Iterator[Batch], conf: float | None = None, stats: RunStats | None = None,
                on_skip: Callable[[Skipped], None] | None = None) -> Iterator[tuple[ImageItem, Detections]]:
    """The one run loop: yield ``(item, detections in original pixels)`` per input, in input order.

    Inputs the runner refuses (a served model's error for one image) and those ``batches`` skipped are
    recorded in ``stats.skipped`` and passed to ``on_skip``. With ``runner.concurrency > 1`` that many
    batches are in flight at once (twice as many queued).
    """
    stats = stats if stats is not None else RunStats()
    t_start = time.perf_counter()
    conc = max(1, int(runner.concurrency))
    pool = ThreadPoolExecutor(max_workers=conc, thread_name_prefix="harmonic-request") if conc > 1 else None
    pending: deque[Future] = deque()

    def execute(batch: Batch) -> tuple[Batch, RunResult, float]:
        res = runner.run(batch.array, [it.info for it in batch.items], conf)
        return batch, res, time.perf_counter()

    try:
        for batch in batches:
            for s in batch.skipped:
                stats.skipped.append(s)
                if on_skip is not None:
                    on_skip(s)
            if not batch.items:
                continue
            if stats.first_batch is None:
                stats.first_batch = batch.array
            if pool is None:
                yield from _finish(*execute(batch), stats, on_skip)
                continue
            pending.append(pool.submit(execute, batch))
            while len(pending) >= 2 * conc:
                yield from _finish(*pending.popleft().result(), stats, on_skip)
        while pending:
            yield from _finish(*pending.popleft().result(), stats, on_skip)
    finally:
        stats.wall = time.perf_counter() - t_start
        if pool is not None:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _finish(batch: Batch, res: RunResult, t_done: float, stats: RunStats,
            on_skip: Callable[[Skipped], None] | None) -> Iterator[tuple[ImageItem, Detections]]:
    """Record one run batch in ``stats`` and yield its detections."""
    items = batch.items
    ok = [(it, d) for it, d in zip(items, res.dets) if not isinstance(d, str)]
    stats.timings.append(BatchTiming(
        len(items), sum(it.t_decode for it in items), sum(it.t_preprocess for it in items) + batch.t_assemble,
        res.engine_s, res.engine_gpu_ms, res.post_s, t_done - batch.t_first))
    stats.requests.extend(res.requests)
    stats.processed += len(ok)
    for it, d in zip(items, res.dets):
        if isinstance(d, str):
            s = Skipped(it.path, f"{it.path if it.path is not None else f'frame {it.index}'}: {d}", it.index)
            stats.skipped.append(s)
            stats.refused += 1
            if on_skip is not None:
                on_skip(s)
        else:
            stats.detections += len(d)
            stats.latencies.append(t_done - it.t_start)
    yield from ok


def infer_images(backend: Backend, paths: Sequence[Path], batch_size: int, conf: float | None = None,
                 workers: int | None = None, prefetch: int = 2, stats: RunStats | None = None,
                 on_skip: Callable[[Path, str], None] | None = None,
                 fast_decode: bool = False) -> Iterator[tuple[ImageItem, Detections]]:
    """Pipelined inference: yield ``(item, detections in original pixels)`` per image, in input order.

    ``stats`` (when given) collects counts, skipped files and per-batch :class:`BatchTiming`.
    The run loop is :func:`run_batches` with a :class:`LocalRunner`.
    """
    runner = LocalRunner(backend)
    batches = iter_batches(paths, backend.img_size, batch_size, workers, prefetch, fast_decode)
    yield from run_batches(runner, batches, conf, stats,
                           (lambda s: on_skip(s.path, s.reason)) if on_skip is not None else None)
