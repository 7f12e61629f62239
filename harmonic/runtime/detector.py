"""``from harmonic import Detector``: an exported detector as a Python object (torch-free).

    det = Detector("model.onnx")               # or model.engine, or "grpc://host:8001/harmonicdet_e2e"
    dets = det(frame)                          # frame: [H, W, 3] uint8 BGR as OpenCV delivers it
    dets.boxes, dets.scores, dets.names        # x1, y1, x2, y2 in the frame's pixels
    for index, frame, dets in det.stream("clip.mp4"):   # or a camera index, an RTSP/HTTP URL, a folder
        ...

Names, input size, normalisation and the operating point (score and IoU thresholds, detections
per image) come from the model's metadata. Every call goes through the run loop the ``infer``
command uses (:func:`harmonic.runtime.runners.run_batches` for streams, the same runner for single
calls), so a local engine and a served model give the same detections the command writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.errors import HarmonicError
from harmonic.runtime.inputs import ImageInput, as_image, is_single
from harmonic.runtime.pipeline import ImageItem, RunStats, Skipped, iter_batches, iter_frame_batches
from harmonic.runtime.postprocess import Detections
from harmonic.runtime.runners import LocalRunner, Runner, run_batches

__all__ = ["Detections", "Detector", "FrameStream"]


class Detector:
    """An exported HarmonicDet model, local or served, behind one call.

    ``model``: an ONNX file, a TensorRT engine (``.engine``/``.plan``/``.trt``), another file a
    registered backend opens, or a Triton server's model as ``http://host:port/MODEL`` /
    ``grpc://host:port/MODEL``. ``backend``: ``auto`` (from the file suffix or the URL), a name of
    :data:`harmonic.runtime.backends.BACKENDS`, or ``triton``. ``device`` (``cpu``, ``cuda:N``) and
    ``threads`` (intra-op threads) go to the backend together with ``backend_options`` (e.g.
    ``provider="cpu"``, ``img_size`` for a graph without metadata, ``max_batch``). ``conf`` drops
    detections scoring below it; ``iou`` / ``max_det`` make the model's NMS stricter (they can't loosen
    an NMS that ran in the graph). ``model_name`` names the served model where the URL does not;
    ``concurrency`` is the number of requests in flight to a server.

    Thread safety: calls may come from several threads; an ONNX Runtime session and a Triton client run
    them concurrently, other backends (TensorRT) one at a time. One :meth:`stream` uses its own threads.
    """

    def __init__(self, model: str | Path, backend: str = "auto", device: str | None = None,
                 conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                 threads: int | None = None, *, model_name: str | None = None, concurrency: int = 1,
                 **backend_options: Any) -> None:
        from harmonic.runtime.triton_client import is_triton_url

        _check_operating_point(conf, iou, max_det)
        self.conf = conf
        if backend == "triton" or (backend == "auto" and is_triton_url(str(model))):
            extra = {k: v for k, v in (("device", device), ("threads", threads), *backend_options.items())
                     if v is not None}
            if extra:
                raise HarmonicError(f"{', '.join(extra)}: not used with a served model (the server runs it)")
            self.runner: Runner = _triton_runner(str(model), model_name, concurrency, iou, max_det)
        else:
            if model_name is not None:
                raise HarmonicError("model_name: only for a served model (a Triton URL)")
            self.runner = _local_runner(model, backend, device, threads, iou, max_det, backend_options)

    @classmethod
    def from_runner(cls, runner: Runner, conf: float | None = None) -> Detector:
        """A Detector over an already opened runner (what the ``infer`` command does)."""
        det = cls.__new__(cls)
        det.conf, det.runner = conf, runner
        return det

    # ------------------------------------------------------------------ what the model says

    @property
    def names(self) -> list[str] | None:
        """Class names, index = the class of a detection."""
        return self.runner.names

    @property
    def category_ids(self) -> list[int] | None:
        """The dataset's category id of each class (``None``: class + 1)."""
        return self.runner.category_ids

    @property
    def img_size(self) -> int | None:
        """The model's square input size (``None`` for a served end-to-end model: the server letterboxes)."""
        return self.runner.img_size

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def device(self) -> str:
        return self.runner.device

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.runner.metadata)

    # ------------------------------------------------------------------ images

    def __call__(self, x: ImageInput | Sequence[ImageInput], rgb: bool = False) -> Detections | list[Detections]:
        """Detections of one image (an array, a path or encoded bytes), or a list of them for a list.

        Arrays are ``[H, W, 3]`` uint8 BGR (``rgb=True``: RGB); gray and 4-channel images are
        converted. Boxes are x1, y1, x2, y2 in the input image's pixels (a file's as displayed,
        EXIF orientation applied).
        """
        items = [x] if is_single(x) else list(x)
        out: list[Detections] = []
        step = max(1, self.runner.default_batch())
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            loaded = [self._load(item, rgb, f"image {start + k}") for k, item in enumerate(chunk)]
            res = self.runner.run(self.runner.assemble([p for p, _ in loaded]), [i for _, i in loaded], self.conf)
            for k, d in enumerate(res.dets):
                if isinstance(d, str):
                    raise HarmonicError(f"image {start + k}: {d}")
                out.append(self._label(d))
        return out[0] if is_single(x) else out

    def _load(self, x: ImageInput, rgb: bool, label: str) -> tuple[Any, Any]:
        if isinstance(x, (str, Path)):
            return tuple(self.runner.load_path(Path(x))[:2])
        if isinstance(x, (bytes, bytearray, memoryview)):
            return self.runner.load_encoded(bytes(x), label)
        img, bgr = as_image(x, rgb, label)
        return self.runner.load_array(img, bgr)

    def _label(self, d: Detections) -> Detections:
        d.model_names = self.runner.names
        d.model_category_ids = self.runner.category_ids
        return d

    # ------------------------------------------------------------------ runs (the infer command's loop)

    def run_paths(self, paths: Sequence[Path], batch: int | None = None, workers: int | None = None,
                  fast_decode: bool = False, stats: RunStats | None = None,
                  on_skip: Callable[[Skipped], None] | None = None,
                  keep: str | None = None) -> Iterator[tuple[ImageItem, Detections]]:
        """Image files through the prefetching pipeline: ``(item, detections)`` per readable file, in order.

        ``keep`` ``"bgr"``/``"rgb"``: each item also carries its decoded image in that order.
        """
        batch = batch or self.runner.default_batch()
        self.runner.check_batch(batch)
        size = int(self.runner.img_size or 0)

        def load(p: Path) -> tuple:
            return self.runner.load_path(p, fast_decode, keep)

        batches = iter_batches(paths, size, batch, workers, 2, fast_decode, load=load, assemble=self.runner.assemble)
        for item, d in run_batches(self.runner, batches, self.conf, stats, on_skip):
            yield item, self._label(d)

    def run_frames(self, reader: Any, batch: int = 1, stride: int = 1, realtime: bool = False,
                   stats: RunStats | None = None) -> Iterator[tuple[ImageItem, Detections]]:
        """Frames of an opened :class:`~harmonic.runtime.video.VideoReader`: ``(item, detections)`` per frame
        processed (``item.image`` is the frame, BGR). Decoding runs ahead in a bounded queue; ``realtime``
        drops frames rather than falling behind (a file is then read at its own frame rate)."""
        stats = stats if stats is not None else RunStats()
        self.runner.check_batch(batch)

        def dropped(n: int) -> None:
            stats.dropped += n

        frames = reader.frames(stride, pace=realtime and reader.source.kind == "file")  # a live source paces itself
        batches = iter_frame_batches(frames, lambda img: self.runner.load_array(img, True), batch,
                                     assemble=self.runner.assemble, realtime=realtime, on_drop=dropped)
        for item, d in run_batches(self.runner, batches, self.conf, stats):
            yield item, self._label(d)

    def stream(self, source: str | int | Path | Sequence[str | Path], batch: int = 1, stride: int = 1,
               realtime: bool = False, rgb: bool = False, workers: int | None = None) -> FrameStream:
        """Iterate ``(index, frame, detections)`` over a video file, a camera index, an RTSP/HTTP URL, or
        image files (a folder, a glob, a file or a list of them).

        The source is opened here (one :class:`HarmonicError` line when it can't be); frames are
        ``[H, W, 3]`` uint8 BGR (``rgb=True``: RGB). ``stride``: every ``stride``-th frame; ``realtime``:
        drop frames rather than fall behind a live source (counted in ``.dropped``). See :class:`FrameStream`.
        """
        return FrameStream(self, source, batch, stride, realtime, rgb, workers)

    def close(self) -> None:
        """Release the engine (or the server connection)."""
        self.runner.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Detector({self.backend} on {self.device}, {len(self.names or [])} classes, input {self.img_size})"


class FrameStream:
    """One pass over a source: iterate it for ``(index, frame, detections)``.

    Counters, valid during and after the pass: ``processed`` frames, ``dropped`` (realtime), ``corrupt``
    (frames that failed to decode, skipped), ``skipped`` (unreadable image files), ``stopped`` (why a
    video or stream ended early, ``None`` otherwise). ``fps`` is the source's frame rate where known.
    """

    def __init__(self, detector: Detector, source: Any, batch: int, stride: int, realtime: bool, rgb: bool,
                 workers: int | None) -> None:
        from harmonic.runtime.sources import open_source

        if batch < 1 or stride < 1:
            raise HarmonicError(f"{'batch' if batch < 1 else 'stride'}: must be >= 1")
        self.detector, self.batch, self.stride, self.realtime, self.rgb = detector, batch, stride, realtime, rgb
        self.workers = workers
        self.stats = RunStats()
        self.reader, self.images = open_source(source)
        if self.images is not None and (realtime or stride != 1):
            raise HarmonicError("realtime / stride: only for a video, camera or stream source")
        self._used = False

    @property
    def fps(self) -> float | None:
        return self.reader.fps if self.reader is not None else None

    @property
    def processed(self) -> int:
        return self.stats.processed

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    @property
    def corrupt(self) -> int:
        return self.reader.stats.corrupt if self.reader is not None else 0

    @property
    def skipped(self) -> list[Skipped]:
        return list(self.stats.skipped)

    @property
    def stopped(self) -> str | None:
        return self.reader.stats.stopped if self.reader is not None else None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, Detections]]:
        if self._used:
            raise HarmonicError("a stream is iterated once; call Detector.stream again")
        self._used = True
        det = self.detector
        if self.reader is None:
            for item, d in det.run_paths(self.images.paths, self.batch, self.workers, stats=self.stats,
                                         keep="rgb" if self.rgb else "bgr"):
                yield item.index, item.image, d
            return
        import cv2

        try:
            for item, d in det.run_frames(self.reader, self.batch, self.stride, self.realtime, self.stats):
                yield item.index, cv2.cvtColor(item.image, cv2.COLOR_BGR2RGB) if self.rgb else item.image, d
        finally:
            self.reader.close()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_operating_point(conf: float | None, iou: float | None, max_det: int | None) -> None:
    from harmonic.validate import check_float, check_int

    check_float(conf, "conf", 0, 1)
    check_float(iou, "iou", 0, 1)
    check_int(max_det, "max_det", 1)


def _local_runner(model: str | Path, backend: str, device: str | None, threads: int | None,
                  iou: float | None, max_det: int | None, options: dict[str, Any]) -> LocalRunner:
    from harmonic.runtime.backends import open_backend
    from harmonic.runtime.runners import check_model

    be = open_backend(model, backend, device=device, threads=threads, **options)
    try:
        check_model(be)
        return LocalRunner(be, iou, max_det)
    except BaseException:
        be.close()
        raise


def _triton_runner(url: str, model_name: str | None, concurrency: int, iou: float | None,
                   max_det: int | None) -> Runner:
    from harmonic.runtime.triton_client import TritonRunner, TritonSession, split_model_url

    address, name = split_model_url(url, model_name)
    return TritonRunner(TritonSession(address, name), concurrency, iou, max_det)

