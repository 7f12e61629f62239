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
