"""Benchmark statistics, engine-only timing, device/version info and the printed table.

Two throughputs are reported and must not be confused (TensorRT issues #728,
#1243, #4015): *engine-only* runs the backend on one ready batch in a loop (no
decode, no pre/post-processing); *end-to-end* is the whole pipeline over the
images (files in, detections out) divided by its wall time.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from harmonic.runtime.backends.base import Backend

PERCENTILES = (50, 90, 99)


def summarize(values_s: Sequence[float]) -> dict[str, float]:
    """Seconds -> ``{mean, p50, p90, p99, min, max}`` in milliseconds (linear-interpolated percentiles) and ``n``."""
    v = np.asarray(values_s, dtype=np.float64) * 1000.0
    if v.size == 0:
        return {"n": 0}
    out: dict[str, float] = {"n": int(v.size), "mean": float(v.mean())}
    for q, val in zip(PERCENTILES, np.percentile(v, PERCENTILES)):
        out[f"p{q}"] = float(val)
    out["min"], out["max"] = float(v.min()), float(v.max())
    return out


def library_versions(backend: Backend) -> dict[str, str]:
    import cv2

    return {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
            **backend.versions}


def engine_only(backend: Backend, batch: np.ndarray, warmup: int, iters: int) -> dict[str, Any]:
    """Time ``backend.infer`` on one ready ``batch[B, 3, S, S]``: ``warmup`` untimed calls, then ``iters`` timed.

    Host time is ``perf_counter`` around a call that returns host arrays (so the
    device is synchronised); GPU time comes from CUDA events where the backend has them.
    """
    for _ in range(warmup):
        backend.infer(batch)
    host, gpu = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        backend.infer(batch)
        host.append(time.perf_counter() - t0)
        if backend.last_engine_ms is not None:
            gpu.append(backend.last_engine_ms / 1000.0)
    b = batch.shape[0]
    total = float(np.sum(host))
    out: dict[str, Any] = {"batch": b, "iters": iters, "warmup": warmup,
                           "latency_ms_per_batch": summarize(host),
                           "latency_ms_per_image": summarize(np.asarray(host) / b),
                           "throughput_img_s": b * iters / total if total > 0 else None}
    if gpu:
        out["gpu_latency_ms_per_batch"] = summarize(gpu)
    return out


def end_to_end(timings: Sequence[Any], wall_s: float, images: int) -> dict[str, Any]:
    """Per-stage stats from the pipeline's per-batch :class:`~harmonic.runtime.pipeline.BatchTiming` list."""
    if not timings:
        return {"images": images, "wall_s": wall_s}
    n = np.asarray([t.n for t in timings], dtype=np.float64)
    stages: dict[str, Any] = {}
    for stage in ("decode", "preprocess", "engine", "postprocess", "end_to_end"):
        per_batch = np.asarray([getattr(t, stage) for t in timings])
        stages[stage] = {"per_batch": summarize(per_batch), "per_image": summarize(per_batch / n)}
    gpu = [t.engine_gpu_ms / 1000.0 for t in timings if t.engine_gpu_ms is not None]
    if gpu:
        stages["engine_gpu"] = {"per_batch": summarize(gpu)}
    return {"images": images, "batches": len(timings), "wall_s": wall_s,
            "throughput_img_s": images / wall_s if wall_s > 0 else None, "stages": stages}


def format_table(report: dict[str, Any]) -> str:
    """The printed benchmark table (milliseconds)."""
    e2e, eng = report.get("end_to_end", {}), report.get("engine_only", {})
    lines = [
        f"backend {report['backend']} on {report['device']}  batch {report['batch']}  "
        f"img {report['img_size']}  warm-up {report['warmup']}  images {e2e.get('images', 0)}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()),
        "",
        f"{'stage':<28}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}   (ms)",
    ]

    def row(label: str, s: dict[str, float] | None) -> None:
        if s and s.get("n"):
            lines.append(f"{label:<28}" + "".join(f"{s[k]:>9.2f}" for k in ("mean", "p50", "p90", "p99")))

    stages = e2e.get("stages", {})
    for stage in ("decode", "preprocess", "engine", "postprocess"):
        if stage in stages:
            row(f"{stage} / image" if stage in {"decode", "preprocess"} else f"{stage} / batch",
                stages[stage]["per_image" if stage in {"decode", "preprocess"} else "per_batch"])
    if "engine_gpu" in stages:
        row("engine GPU (events) / batch", stages["engine_gpu"]["per_batch"])
    if "end_to_end" in stages:
        row("end-to-end latency / batch", stages["end_to_end"]["per_batch"])
    if eng:
        row("engine-only / batch", eng.get("latency_ms_per_batch"))
        row("engine-only GPU / batch", eng.get("gpu_latency_ms_per_batch"))
    lines.append("")
    e2e_tp, eng_tp = e2e.get("throughput_img_s"), eng.get("throughput_img_s")
    if e2e_tp:
        lines.append(f"throughput end-to-end (files in -> detections out, pipelined): {e2e_tp:9.1f} img/s")
    if eng_tp:
        lines.append(f"throughput engine-only (one ready batch in a loop, no I/O):     {eng_tp:9.1f} img/s")
    if e2e_tp and eng_tp:
        lines.append(f"end-to-end / engine-only: {100 * e2e_tp / eng_tp:.0f}%   "
                     "(decode/preprocess are summed worker time, overlapped with the engine)")
    return "\n".join(lines)


def json_default(o: Any) -> Any:
    """``json.dumps`` ``default`` for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def local_report(backend: Backend, engine: str, batch: int, warmup: int, iters: int, stats: Any,
                 first_batch: np.ndarray) -> dict[str, Any]:
    """``bench.json`` of a local run over images: pipeline stages, end to end and engine-only."""
    report: dict[str, Any] = {
        "backend": backend.name, "device": backend.device, "engine": engine,
        "batch": batch, "img_size": backend.img_size, "warmup": warmup, "iters": iters,
        "versions": library_versions(backend),
        "note": "engine_only = backend.infer on one ready batch in a loop (no decode/pre/post); "
                "end_to_end throughput = files in -> detections out through the pipeline / wall time; "
                "end_to_end latency per batch = its first decode start -> its detections out (includes "
                "the prefetch queue); decode/preprocess = summed worker time of the batch's images, "
                "overlapped with the engine; times in ms",
        "end_to_end": end_to_end(stats.timings, stats.wall, stats.processed),
        "engine_only": engine_only(backend, first_batch, warmup=min(warmup, 2), iters=iters),
    }
    e2e_tp, eng_tp = report["end_to_end"].get("throughput_img_s"), report["engine_only"]["throughput_img_s"]
    report["end_to_end_over_engine_only"] = e2e_tp / eng_tp if e2e_tp and eng_tp else None
    return report


def served_report(runner: Any, url: str | None, batch: int, warmup: int, stats: Any,
                  before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``bench.json`` of a run against a served model: client-side request latency, throughput and the
    batches the server's dynamic batcher formed."""

    m = runner.model
    lat = [t for _, t in stats.requests]
    processed = stats.processed
    return {
        "backend": runner.name, "url": url, "model": m.name,
        "model_kind": "end_to_end" if m.end_to_end else "graph", "batch": batch,
        "concurrency": runner.concurrency, "warmup": warmup, "img_size": m.img_size or m.params.get("img_size"),
        "versions": runner.versions,
        "note": "client side: latency per request = send -> outputs decoded (the file is read, and for a graph "
                "model decoded and letterboxed, beforehand in the decode threads); throughput = images / wall "
                "time with --concurrency requests in flight; server = batches its dynamic batcher formed; "
                "times in ms",
        "end_to_end": {"images": processed, "requests": len(stats.requests), "wall_s": stats.wall,
                       "throughput_img_s": processed / stats.wall if stats.wall > 0 else None,
                       "latency_ms_per_request": summarize(lat),
                       "latency_ms_per_image": summarize([t / n for n, t in stats.requests])},
        "server": server_batches(before, after),
    }


def format_served(report: dict[str, Any]) -> str:
    e2e, sv = report["end_to_end"], report["server"]
    lr = e2e["latency_ms_per_request"]
    return (f"triton {report['model']} batch {report['batch']} concurrency {report['concurrency']}: "
            f"{e2e['throughput_img_s'] or 0:.1f} img/s; latency/request p50 {lr.get('p50', 0):.2f} "
            f"p90 {lr.get('p90', 0):.2f} p99 {lr.get('p99', 0):.2f} ms; server batches "
            f"{sv['executions_by_batch_size']} (mean {sv['mean_batch'] or 0:.2f})")


def video_report(runner: Any, source: str, batch: int, stride: int, realtime: bool, warmup: int, iters: int,
                 stats: Any, read: Any, first_batch: np.ndarray | None) -> dict[str, Any]:
    """``bench.json`` of a video / camera / stream run: frames per second and per-frame latency end to end
    and engine-only, and the frames dropped or lost to damage."""
    e2e = end_to_end(stats.timings, stats.wall, stats.processed)
    fps = e2e.get("throughput_img_s")
    report: dict[str, Any] = {
        "backend": runner.name, "device": runner.device, "source": source, "batch": batch, "vid_stride": stride,
        "realtime": realtime, "img_size": runner.img_size, "warmup": warmup, "iters": iters,
        "versions": {**_base_versions(), **runner.versions},
        "note": "end_to_end = frames in (decode start; a live frame: its arrival) -> detections out, through the "
                "read-ahead queue; fps = frames processed / wall time; engine_only = the engine on one ready "
                "batch in a loop (no decode/pre/post); times in ms",
        "frames": {"processed": stats.processed, "dropped": stats.dropped, "corrupt": read.corrupt,
                   "decoded": read.decoded, "stopped": read.stopped},
        "end_to_end": {"fps": fps, "wall_s": stats.wall, "latency_ms_per_frame": summarize(stats.latencies),
                       "stages": e2e.get("stages", {})},
    }
    eng = runner.engine_only(_full_batch(first_batch, batch), min(warmup, 2), iters) \
        if first_batch is not None else None
    if eng is not None:
        report["engine_only"] = {"fps": eng["throughput_img_s"], "latency_ms_per_frame": eng["latency_ms_per_image"],
                                 "latency_ms_per_batch": eng["latency_ms_per_batch"], "iters": eng["iters"]}
        report["end_to_end_over_engine_only"] = fps / eng["throughput_img_s"] if fps and eng["throughput_img_s"] \
            else None
    else:
        report["requests"] = {"n": len(stats.requests), "latency_ms": summarize([t for _, t in stats.requests])}
    return report


def _base_versions() -> dict[str, str]:
    import cv2

    return {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__}


def _full_batch(first: np.ndarray | None, batch: int) -> np.ndarray | None:
    """The first batch of a run, its rows repeated up to ``batch`` (a short video's only batch may be partial)."""
    if first is None or first.shape[0] >= batch or first.dtype == np.object_:
        return first
    reps = -(-batch // first.shape[0])
    return np.concatenate([first] * reps)[:batch]


def format_video(report: dict[str, Any]) -> str:
    """The printed benchmark of a video run."""
    fr, e2e, eng = report["frames"], report["end_to_end"], report.get("engine_only")
    lines = [f"backend {report['backend']} on {report['device']}  batch {report['batch']}  "
             f"img {report['img_size']}  source {report['source']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()), "",
             f"{'per frame':<28}{'p50':>9}{'p90':>9}{'p99':>9}   (ms)"]

    def row(label: str, s: dict[str, float] | None) -> None:
        if s and s.get("n"):
            lines.append(f"{label:<28}" + "".join(f"{s[k]:>9.2f}" for k in ("p50", "p90", "p99")))

    row("end-to-end latency", e2e.get("latency_ms_per_frame"))
    if eng:
        row("engine-only", eng.get("latency_ms_per_frame"))
    lines.append("")
    lines.append(f"frames: {fr['processed']} processed, {fr['dropped']} dropped, {fr['corrupt']} corrupt")
    if e2e.get("fps"):
        lines.append(f"fps end-to-end (frames in -> detections out): {e2e['fps']:9.1f}")
    if eng and eng.get("fps"):
        lines.append(f"fps engine-only (one ready batch in a loop):   {eng['fps']:9.1f}")
    if report.get("end_to_end_over_engine_only"):
        lines.append(f"end-to-end / engine-only: {100 * report['end_to_end_over_engine_only']:.0f}%")
    return "\n".join(lines)


def server_batches(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Executions / inferences and the batch sizes the server formed between two statistics snapshots."""
    def stats(s: dict[str, Any]) -> dict[str, Any]:
        ms = (s.get("model_stats") or [{}])[0]
        return {"inference_count": int(ms.get("inference_count", 0)), "execution_count": int(ms.get("execution_count", 0)),
                "batches": {int(b["batch_size"]): int((b.get("compute_infer") or {}).get("count", 0))
                            for b in ms.get("batch_stats") or []}}
    a, b = stats(before), stats(after)
    sizes = {k: v - a["batches"].get(k, 0) for k, v in b["batches"].items() if v - a["batches"].get(k, 0) > 0}
    inf, ex = b["inference_count"] - a["inference_count"], b["execution_count"] - a["execution_count"]
    return {"inferences": inf, "executions": ex, "mean_batch": inf / ex if ex else None,
            "executions_by_batch_size": dict(sorted(sizes.items()))}
