"""The ``infer`` run over a video file, a camera or a stream, local or served: ``detections.jsonl`` (one line
per frame, flushed as it goes), ``--save-video`` with the boxes drawn, ``bench.json`` with ``--bench``.

Whatever ends the run (the end of the source, a stream that stops, an error, Ctrl-C), the frames
finished so far are kept in both files; frames that fail to decode are skipped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from harmonic.atomic import write_json
from harmonic.errors import RunFailure
from harmonic.runtime import bench as bench_mod
from harmonic.runtime.config import InferConfig
from harmonic.runtime.outputs import JsonLinesWriter, frame_record
from harmonic.runtime.pipeline import RunStats
from harmonic.runtime.run_images import warn_operating_point
from harmonic.runtime.video import VideoReader, VideoSink

log = logging.getLogger("harmonic.infer")
#: frame rate written to --save-video when the source does not give one (a camera, a stream)
DEFAULT_FPS = 25.0


def run_video(cfg: InferConfig, det: Any, reader: VideoReader, fourcc: str | None) -> int:
    """The run over ``reader``'s frames with the opened :class:`~harmonic.runtime.detector.Detector` ``det``."""
    runner = det.runner
    batch = cfg.batch or 1
    runner.check_batch(batch)
    warn_operating_point(cfg, runner)
    if cfg.bench and cfg.warmup:
        runner.warmup(batch, cfg.warmup, reader.first_frame)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sink = None
    if cfg.save_video:
        fps = (reader.fps or DEFAULT_FPS) / cfg.vid_stride
        sink = DrawingSink(VideoSink(cfg.save_video, fourcc or "mp4v", fps, (reader.width, reader.height)))
    lines = JsonLinesWriter(out / "detections.jsonl")
    stats = RunStats()
    t0 = time.perf_counter()
    try:
        for item, d in det.run_frames(reader, batch, cfg.vid_stride, cfg.realtime, stats):
            lines.write(frame_record(item.index, item.timestamp, d))
            if sink is not None:
                sink.put(item.image, d)
    finally:  # the frames finished so far are kept, whatever ended the run
        wrote = lines.close()
        if sink is not None:
            sink.close()
    elapsed = time.perf_counter() - t0
    read = reader.stats
    print(f"frames: {stats.processed} processed, {stats.dropped} dropped, {read.corrupt} corrupt (skipped); "
          f"{stats.detections} detections; {elapsed:.2f} s ({stats.processed / max(elapsed, 1e-9):.1f} fps) "
          f"from {reader.source.label}")
    if read.stopped:
        log.warning("%s: %s; the %d frame(s) processed are kept", reader.source.label, read.stopped,
                    stats.processed)
    if not wrote:
        raise RunFailure(f"--source {reader.source.label}: no frame was processed; {out} left as it was")
    print(f"wrote {out / 'detections.jsonl'}" + (f" and {cfg.save_video}" if sink is not None else ""))
    if cfg.bench:
        report = bench_mod.video_report(runner, reader.source.label, batch, cfg.vid_stride, cfg.realtime,
                                        cfg.warmup, cfg.iters, stats, read, stats.first_batch)
        write_json(out / "bench.json", report, indent=2, default=bench_mod.json_default)
        print()
        print(bench_mod.format_video(report))
        print(f"wrote {out / 'bench.json'}")
    return 0


class DrawingSink:
    """Draws the boxes and encodes the video in a thread of its own, behind a bounded queue, so drawing
    and encoding frame i overlap the engine on frame i + 1. :meth:`close` writes what is queued and
    finishes the file; an error of the writer thread is raised by the next :meth:`put` or :meth:`close`."""

    def __init__(self, sink: VideoSink, queued: int = 4) -> None:
        self.sink = sink
        self.q: queue.Queue = queue.Queue(maxsize=queued)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="harmonic-video-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is None:
                try:
                    frame, det = job
                    self.sink.write(det.draw(frame))
                except BaseException as exc:  # handed to the run's thread
                    self.error = exc

    def put(self, frame: Any, det: Any) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((frame, det))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        self.sink.close()
        if self.error is not None:
            raise self.error
