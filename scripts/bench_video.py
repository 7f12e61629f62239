"""Video end to end vs the engine alone, and the Detector API's per-call overhead, side by side in one run.

On a generated 640x480 video (``cv2.VideoWriter``, mp4v) and a model file, at batch 1:

- engine-only: the backend's own ``infer`` on each frame's prepared ``[1, 3, S, S]`` tensor (decoded and
  letterboxed beforehand), frames / summed engine time;
- end-to-end: ``Detector.stream(video)`` - decode (its own thread, bounded read-ahead), letterbox,
  engine, un-letterbox - frames / wall time;
- API overhead: ``det(frame)`` on a decoded frame in memory vs ``backend.infer`` on that frame's
  prepared tensor, the two calls alternated frame by frame.

The machine is shared and noisy: the passes are interleaved ``--repeats`` times and medians are
reported, with the CPU and library versions. Example:

    python scripts/bench_video.py --engine runs/demo/baseline/model.onnx --frames 300 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic import Detector  # noqa: E402
from harmonic.runtime.backends.base import cpu_name  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402


def write_clip(path: Path, frames: int, w: int, h: int, fps: float, seed: int = 0) -> Path:
    """A camera-like clip: a drifting texture with coloured shapes moving over it (BGR, mp4v)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    shapes = [(rng.integers(0, 255, 3), rng.integers(0, w), rng.integers(0, h), rng.integers(15, 90),
               rng.integers(-6, 7), rng.integers(-6, 7)) for _ in range(5)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        img = cv2.resize(np.roll(base, i // 2, axis=1), (w, h), interpolation=cv2.INTER_LINEAR)
        for k, (c, x, y, r, dx, dy) in enumerate(shapes):
            cx, cy, col = int((x + dx * i) % w), int((y + dy * i) % h), tuple(int(v) for v in c)
            if k % 2:
                cv2.circle(img, (cx, cy), int(r), col, -1)
            else:
                cv2.rectangle(img, (cx - int(r), cy - int(r)), (cx + int(r), cy + int(r)), col, -1)
        writer.write(img)
    writer.release()
    return path


def decoded(path: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < n:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def engine_only(backend, tensors: list[np.ndarray]) -> tuple[float, list[float]]:
    """The backend alone on each frame's prepared ``[1, 3, S, S]`` tensor (the same frames the stream runs)."""
    times = []
    for t in tensors:
        t0 = time.perf_counter()
        backend.infer(t)
        times.append(time.perf_counter() - t0)
    return len(times) / sum(times), times


def end_to_end(det: Detector, video: Path) -> tuple[float, int, list[float]]:
    stream = det.stream(video)
    t0 = time.perf_counter()
    n = sum(1 for _ in stream)
    wall = time.perf_counter() - t0
    return n / wall, n, list(stream.stats.latencies)


def api_overhead(det: Detector, frames: list[np.ndarray], tensors: list[np.ndarray]) -> dict[str, float]:
    """``det(frame)`` against ``backend.infer(tensor)``, the two alternated frame by frame: medians (ms) of
    each, and of the API's own work inside ``det(frame)`` (its time minus the backend call it makes), which
    the engine's jitter on a shared machine does not blur."""
    backend = det.runner.backend
    inner: list[float] = []
    real_infer = backend.infer

    def timed_infer(batch: np.ndarray) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = real_infer(batch)
        inner.append(time.perf_counter() - t0)
        return out

    api, raw, own = [], [], []
    backend.infer = timed_infer  # the instance attribute shadows the method for this measurement
    try:
        for f, t in zip(frames, tensors):
            t0 = time.perf_counter()
            det(f)
            t1 = time.perf_counter()
            real_infer(t)
            t2 = time.perf_counter()
            api.append(t1 - t0)
            raw.append(t2 - t1)
            own.append(api[-1] - inner[-1])
    finally:
        del backend.infer
    return {"api_ms": 1000 * float(np.median(api)), "infer_ms": 1000 * float(np.median(raw)),
            "own_ms": 1000 * float(np.median(own)), "min_api_ms": 1000 * float(np.min(api)),
            "min_infer_ms": 1000 * float(np.min(raw))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True, help="model.onnx / model.engine")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=3, help="interleaved passes (medians reported)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--no-spin", action="store_true", help="ONNX Runtime: idle intra-op threads do not spin-wait")
    p.add_argument("--work", default=None, help="folder for the generated video (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="harmonic_bench_video_"))
    work.mkdir(parents=True, exist_ok=True)
    video = write_clip(work / f"clip_{args.width}x{args.height}.mp4", args.frames, args.width, args.height, args.fps)
    det = Detector(args.engine, threads=args.threads, **({"spin": False} if args.no_spin else {}))
    backend = det.runner.backend
    frames = decoded(video, args.frames)
    tensors = [to_batch([prepare_image(f, backend.img_size, bgr=True)[0]]) for f in frames]
    for _ in range(5):  # warm-up
        det(frames[0])
        backend.infer(tensors[0])
    eng, e2e, api, lat_e2e, lat_eng = [], [], [], [], []
    for _ in range(args.repeats):
        fps, times = engine_only(backend, tensors)
        eng.append(fps)
        lat_eng.extend(times)
        fps, n, lat = end_to_end(det, video)
        e2e.append(fps)
        lat_e2e.extend(lat)
        api.append(api_overhead(det, frames, tensors))
    ratios = [e / g for e, g in zip(e2e, eng)]
    overheads = [a["api_ms"] / a["infer_ms"] - 1 for a in api]
    own = [a["own_ms"] / a["infer_ms"] for a in api]
    best = min(a["min_api_ms"] for a in api) / min(a["min_infer_ms"] for a in api) - 1
    res = {
        "engine": str(args.engine), "model": det.metadata.get("model"), "img_size": det.img_size,
        "backend": det.backend, "device": det.device, "cpu": cpu_name(), "threads": args.threads,
        "spin": not args.no_spin,
        "versions": {"numpy": np.__version__, "opencv": cv2.__version__, **backend.versions},
        "video": {"frames": n, "width": args.width, "height": args.height, "codec": "mp4v"}, "batch": 1,
        "repeats": args.repeats, "engine_only_fps": eng, "end_to_end_fps": e2e, "e2e_over_engine": ratios,
        "median_engine_only_fps": float(np.median(eng)), "median_end_to_end_fps": float(np.median(e2e)),
        "median_e2e_over_engine": float(np.median(ratios)),
        "latency_ms": {k: {f"p{q}": float(np.percentile(np.asarray(v) * 1000, q)) for q in (50, 90, 99)}
                       for k, v in (("end_to_end", lat_e2e), ("engine_only", lat_eng))},
        "api": api, "api_overhead": overheads, "median_api_overhead": float(np.median(overheads)),
        "api_own_work": own, "median_api_own_work": float(np.median(own)), "api_overhead_fastest_calls": best,
    }
    print(f"{det.backend} on {res['cpu']} (threads {args.threads or 'default'}{', no spin' if args.no_spin else ''}), "
          f"{res['model']} input {det.img_size}, batch 1, "
          f"{args.width}x{args.height} mp4v video of {n} frames, {args.repeats} interleaved repeats")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
    print("  engine-only fps : " + " ".join(f"{v:7.1f}" for v in eng) + f"   median {res['median_engine_only_fps']:.1f}")
    print("  end-to-end fps  : " + " ".join(f"{v:7.1f}" for v in e2e) + f"   median {res['median_end_to_end_fps']:.1f}")
    print("  e2e / engine    : " + " ".join(f"{100 * v:6.0f}%" for v in ratios)
          + f"   median {100 * res['median_e2e_over_engine']:.0f}%")
    print("  det(frame) ms   : " + " ".join(f"{a['api_ms']:7.2f}" for a in api)
          + "   backend.infer ms: " + " ".join(f"{a['infer_ms']:7.2f}" for a in api))
    print("  API overhead    : " + " ".join(f"{100 * v:+6.1f}%" for v in overheads)
          + f"   median {100 * res['median_api_overhead']:+.1f}%   (medians of det(frame) / backend.infer)")
    print("  API's own work  : " + " ".join(f"{a['own_ms']:6.2f}ms" for a in api)
          + f"   median {100 * res['median_api_own_work']:+.1f}% of backend.infer; fastest calls "
          f"{100 * best:+.1f}%")
    for k, v in res["latency_ms"].items():
        print(f"  latency {k:<11}: p50 {v['p50']:.2f}  p90 {v['p90']:.2f}  p99 {v['p99']:.2f} ms per frame")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    det.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
