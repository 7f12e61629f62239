"""End-to-end vs engine-only throughput of the torch-free runtime on a folder of JPEGs, and memory.

Measures, at the same batch and on the same backend:

- end-to-end: files in -> detections out through the prefetching pipeline
  (``harmonic.runtime.runners.infer_images``), images / wall time;
- engine-only: ``backend.infer`` on one ready batch in a loop (no decode, no pre/post);
- resident memory (VmRSS) after 100 and after all (500) images: the pipeline keeps
  a bounded window of images, so it should not grow.

Without ``--engine`` it exports a randomly initialised torchvision detector to ONNX
(needs torch; the runtime measured does not use it) and without ``--images`` it
writes 500 synthetic JPEGs. Example:

    python scripts/bench_infer.py --arch ssdlite320_mobilenet_v3_large --num-images 500 --batch 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import generate_jpegs  # noqa: E402

from harmonic.atomic import write_text  # noqa: E402
from harmonic.data.images import decode_image  # noqa: E402
from harmonic.runtime import open_backend  # noqa: E402
from harmonic.runtime.bench import engine_only, summarize  # noqa: E402
from harmonic.runtime.pipeline import RunStats  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402
from harmonic.runtime.runners import infer_images  # noqa: E402
from harmonic.runtime.sources import expand_sources  # noqa: E402


def rss_mb() -> float:
    """Current resident set size in MiB (Linux ``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default=None, help="model.onnx / model.engine (default: export a random --arch)")
    p.add_argument("--arch", default="ssdlite320_mobilenet_v3_large", help="torchvision detector for the default model")
    p.add_argument("--images", default=None, help="folder of JPEGs (default: generate --num-images)")
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--provider", default=None)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--workers", type=int, default=None, help="decode threads")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="interleaved engine-only / end-to-end passes")
    p.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--no-spin", action="store_true", help="ORT: no spin-waiting intra-op threads")
    p.add_argument("--fast-decode", action="store_true", help="JPEG DCT-domain downscaled decode")
    args = p.parse_args(argv)

    cv2.setNumThreads(1)  # as the infer CLI: parallelism is across images
    work = Path(args.work or tempfile.mkdtemp(prefix="harmonic_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    engine = Path(args.engine) if args.engine else work / f"{args.arch}.onnx"
    if not engine.exists():
        print(f"exporting a random-init {args.arch} to {engine} (in a subprocess) ...", flush=True)
        code = (f"import sys; sys.path[:0] = [{str(Path(__file__).resolve().parents[1])!r}, "
                f"{str(Path(__file__).resolve().parent)!r}]; "
                "from benchlib import export_random_model; "
                f"export_random_model({args.arch!r}, __import__('pathlib').Path({str(engine)!r}))")
        subprocess.run([sys.executable, "-c", code], check=True)
    folder = Path(args.images) if args.images else work / "images"
    if not args.images:
        generate_jpegs(folder, args.num_images)
    paths = expand_sources([folder]).paths[: args.num_images]

    be = open_backend(engine, provider=args.provider, threads=args.threads, spin=False if args.no_spin else None)
    b = args.batch
    be.check_batch(b)
    batch = to_batch([prepare_image(decode_image(q), be.img_size)[0] for q in paths[:b]])
    eng = engine_only(be, batch, args.warmup, args.iters)  # warm-up

    rss = {"before": rss_mb()}
    eng_runs, e2e_runs, stats = [], [], RunStats()
    # the box is shared and noisy: interleave engine-only and end-to-end passes, report medians
    for r in range(args.repeats):
        eng_runs.append(engine_only(be, batch, 1, args.iters)["throughput_img_s"])
        stats = RunStats()
        t0 = time.perf_counter()
        for n, _ in enumerate(infer_images(be, paths, b, workers=args.workers, stats=stats,
                                                  fast_decode=args.fast_decode), 1):
            if r == 0 and n in (100, len(paths)):
                rss[f"after_{n}"] = rss_mb()
        e2e_runs.append(stats.processed / (time.perf_counter() - t0))
    ratios = [e / g for e, g in zip(e2e_runs, eng_runs)]
    e2e_tp, eng_tp = float(np.median(e2e_runs)), float(np.median(eng_runs))
    res = {
        "engine": str(engine), "backend": be.name, "device": be.device, "versions": be.versions,
        "images": stats.processed, "batch": b, "img_size": be.img_size, "repeats": args.repeats,
        "end_to_end_img_s": e2e_runs, "engine_only_img_s": eng_runs, "ratios": ratios,
        "median_end_to_end_img_s": e2e_tp, "median_engine_only_img_s": eng_tp,
        "median_ratio": float(np.median(ratios)),
        "engine_ms_per_batch_first": eng["latency_ms_per_batch"],
        "pipeline_engine_ms_per_batch": summarize([t.engine for t in stats.timings]),
        "decode_ms_per_image": summarize([t.decode / t.n for t in stats.timings]),
        "preprocess_ms_per_image": summarize([t.preprocess / t.n for t in stats.timings]),
        "rss_mb": rss,
    }
    print(f"{be.name} on {be.device}, {args.arch if not args.engine else engine.name}, "
          f"{stats.processed} images, batch {b}, input {be.img_size}, {args.repeats} interleaved repeats"
          + (", fast decode" if args.fast_decode else ""))
    print("  engine-only : " + " ".join(f"{v:7.1f}" for v in eng_runs) + f"  img/s  median {eng_tp:.1f}")
    print("  end-to-end  : " + " ".join(f"{v:7.1f}" for v in e2e_runs) + f"  img/s  median {e2e_tp:.1f}")
    print("  ratio       : " + " ".join(f"{100 * v:6.0f}%" for v in ratios)
          + f"   median {100 * res['median_ratio']:.0f}%")
    print(f"  decode {res['decode_ms_per_image']['p50']:.2f} ms/img, preprocess "
          f"{res['preprocess_ms_per_image']['p50']:.2f} ms/img (p50, worker threads)")
    print("  RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    if args.json:
        write_text(args.json, json.dumps(res, indent=2))
    be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
