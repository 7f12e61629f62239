"""Same images, one run: PyTorch eager vs ONNX Runtime (NMS graph) vs ONNX Runtime (raw graph + numpy NMS)
vs TensorRT (where present): images/s, latency, AP and the score-IoU consistency metrics, as one table.

Every backend gets the same decoded, letterboxed batches, so the timing is the model
part (forward + post-processing incl. NMS), not decoding; AP and consistency come from
``harmonic.evaluation.evaluate`` on detections mapped back to original pixels;
"agree" is the share of eager detections that the backend reproduces
(same class, IoU >= 0.95), with the mean |score difference| of those. Eager is the
reference ``export/verify.py`` checks graphs against: the graph's operating point and NMS
cap, and RetinaNet/FCOS's background logit column switched off as the graph drops it
(left on, a random-init model's top-100 is ~15 % "class -1" boxes no graph can match).
GFLOP/s = convolution GFLOP per image x images/s: how close each backend runs to the
machine's FP32 rate.

    python scripts/bench_backends.py --checkpoint runs/x/best.pt --images data/synth/images/val \\
        --annotations data/synth/annotations/val.json [--engine model.engine]
    python scripts/bench_backends.py            # random-init RetinaNet-R50 at 320 on generated images, no AP
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.data.images import ImageDecodeError, decode_image  # noqa: E402
from harmonic.experiments.benchmarks import (  # noqa: E402
    agreement,
    backend_infer,
    build_random_detector,
    conv_gflop,
    eager_infer,
    eager_reference,
    export_random_model,
    finish,
    generate_jpegs,
)
from harmonic.runtime import open_backend  # noqa: E402
from harmonic.runtime.bench import summarize  # noqa: E402
from harmonic.runtime.postprocess import coco_results, unletterbox  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402
from harmonic.runtime.reports import load_annotation_records, match_image_ids  # noqa: E402
from harmonic.runtime.sources import expand_sources  # noqa: E402


def load_model(args: argparse.Namespace) -> tuple[Any, int, list[str], str]:
    """``(eager model, img size, names, label)`` from ``--checkpoint`` or a random torchvision ``--arch``."""
    if args.checkpoint:
        from harmonic.training.checkpoint import model_from_checkpoint

        model, spec, _ = model_from_checkpoint(args.checkpoint, "cpu")
        return model.eval(), int(spec.img_size), list(spec.class_names), f"{spec.name} ({spec.loss})"
    model, size = build_random_detector(args.arch)
    return model, size, ["a", "b", "c"], f"{args.arch} (random init)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="HarmonicDet checkpoint (default: random --arch)")
    p.add_argument("--arch", default="retinanet_resnet50_fpn", help="random-init torchvision detector (no --checkpoint)")
    p.add_argument("--images", default=None, help="image folder (default: generated)")
    p.add_argument("--annotations", default=None, help="COCO json or dataset.yaml for AP and consistency")
    p.add_argument("--split", default="val")
    p.add_argument("--engine", default=None, help="a TensorRT engine of the same model (optional)")
    p.add_argument("--int8", action="store_true",
                   help="also time the INT8 Q/DQ graph (export/run.py --int8), calibrated on the benchmark's "
                        "own images: a latency figure; its agreement is optimistic (calibrated on the test images)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2, help="timed passes per backend (best kept)")
    p.add_argument("--work", default=None)
    p.add_argument("--json", default=None)
    return p


def export_graphs(args: argparse.Namespace, work: Path) -> tuple[Any, int, list[str], str, Path, Path, float]:
    """The eager model, exported to the NMS and the raw graph: ``(eager reference, size, names, label,
    nms graph, raw graph, conv GFLOP per image)``."""
    model, size, names, label = load_model(args)
    nms_path, raw_path = work / "model.onnx", work / "model.raw.onnx"
    export_random_model(args.arch, nms_path, conf=args.conf, iou=args.iou, max_det=args.max_det,
                        raw_out=raw_path, model=model, img_size=size)
    model = eager_reference(model, nms_path, size, args.conf, args.iou, args.max_det)
    return model, size, names, label, nms_path, raw_path, conv_gflop(model, size)


def benchmark_images(args: argparse.Namespace, work: Path, names: list[str]) -> tuple[Path, Any, Any, list[str], list[int]]:
    """``(folder, images, ground-truth records or None, their class names, image ids)``: ``--images`` (or
    generated JPEGs), cut to ``--num-images``, with the ``--annotations`` of those images only."""
    folder = Path(args.images) if args.images else work / "images"
    if not args.images:
        generate_jpegs(folder, args.num_images)
    images = expand_sources([folder])
    images.paths, images.roots = images.paths[: args.num_images], images.roots[: args.num_images]
    records, gt_names, ids = None, names, list(range(1, len(images.paths) + 1))
    if args.annotations:
        records, gt_names, _ = load_annotation_records(Path(args.annotations), names, args.split)
        matched, unmatched = match_image_ids(images, records)
        if unmatched:
            raise SystemExit(f"{unmatched} images are not in {args.annotations}")
        ids = matched
        benched = set(ids)  # score the benchmarked images only, not the rest of the split's ground truth
        records = [r for r in records if int(r.image_id) in benched]
    return folder, images, records, gt_names, ids


def prepare_batches(paths: list[Path], size: int, batch: int) -> tuple[list[tuple[int, Any, Any]], list[Any]]:
    """Decode + letterbox once, so every backend sees identical batches: ``(prepared, batches)``."""
    prepared = []
    for i, path in enumerate(paths):
        try:
            chw, info = prepare_image(decode_image(path), size)
        except ImageDecodeError as exc:
            print(f"skipped {exc}")
            continue
        prepared.append((i, chw, info))
    batches = [prepared[k:k + batch] for k in range(0, len(prepared), batch)]
    return prepared, [to_batch([c for _, c, _ in b]) for b in batches]


def open_runners(args: argparse.Namespace, model: Any, nms_path: Path, raw_path: Path, folder: Path, work: Path,
                 calib_count: int) -> tuple[list[tuple[str, Any]], list[Any]]:
    """``([(backend name, run(batch) -> detections)], the opened backends)``: eager, the ONNX Runtime
    graphs (+ INT8 with ``--int8``), TensorRT with ``--engine`` (skipped with a message if it fails)."""
    runners: list[tuple[str, Any]] = [("pytorch eager", lambda x: eager_infer(model, x))]
    opened = []
    graphs = [("onnxruntime nms graph", nms_path), ("onnxruntime raw + numpy nms", raw_path)]
    if args.int8:
        from harmonic.export.quantize import quantize_int8

        graphs.append(("onnxruntime int8 q/dq",
                       quantize_int8(nms_path, work / "model.int8.onnx", folder, count=calib_count, overwrite=True)))
    for name, path in graphs:
        be = open_backend(path, provider="cpu", threads=args.threads)
        opened.append(be)
        runners.append((name, backend_infer(be)))
    if args.engine:
        try:
            be = open_backend(args.engine)
            opened.append(be)
            runners.append((f"tensorrt ({be.device})", backend_infer(be)))
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            print(f"tensorrt skipped: {exc}")
    return runners, opened


def time_runner(run: Any, arrays: list[Any], repeats: int) -> tuple[float, list[float], list[Any]]:
    """One warm-up, then ``repeats`` timed passes: ``(best wall seconds, its batch latencies, its detections)``."""
    run(arrays[0])  # warm-up
    best_wall, lat, dets = float("inf"), [], []
    for _ in range(repeats):
        lat_r, dets_r = [], []
        t0 = time.perf_counter()
        for a in arrays:
            t = time.perf_counter()
            dets_r += run(a)
            lat_r.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        if wall < best_wall:
            best_wall, lat, dets = wall, lat_r, dets_r
    return best_wall, lat, dets


def accuracy(prepared: list[tuple[int, Any, Any]], dets: list[Any], records: Any, ids: list[int],
             gt_names: list[str]) -> dict[str, Any]:
    """AP, AP50 and the consistency metrics of one backend's detections (mapped back to original pixels)."""
    from harmonic.evaluation import evaluate

    results = []
    for (i, _, info), d in zip(prepared, dets):
        results += coco_results(unletterbox(d, info), ids[i])
    rep = evaluate(records, results, names=gt_names)
    return dict(AP=rep["coco"]["AP"], AP50=rep["coco"]["AP50"],
                **{k: rep["consistency"].get(k) for k in ("spearman", "kendall", "aic")})


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]], label: str, images: int, size: int,
                gflop: float, with_ap: bool) -> None:
    print(f"\n{label}, {images} images at {size}px, batch {args.batch}, {args.threads} threads, "
          f"conf {args.conf}, iou {args.iou}, K {args.max_det}; time = forward + post-processing on "
          f"pre-decoded batches (best of repeats); {gflop:.1f} conv GFLOP per image")
    head = f"{'backend':<30}{'img/s':>8}{'GFLOP/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'dets':>7}{'agree':>7}{'|ds|':>8}"
    if with_ap:
        head += f"{'AP':>7}{'AP50':>7}{'rho':>7}{'tau':>7}{'AIC':>7}"
    print(head)

    def f(v: Any, w: int, d: int = 3) -> str:
        return f"{v:>{w}.{d}f}" if isinstance(v, float) and v == v else f"{'-':>{w}}"

    for r in rows:
        line = (f"{r['backend']:<30}{r['img_s']:>8.1f}{r['gflop_s']:>9.0f}"
                f"{r['latency_ms']['p50']:>9.1f}{r['latency_ms']['p90']:>9.1f}{r['detections']:>7d}{f(r['agree'], 7, 3)}{f(r['dscore'], 8, 4)}")
        if with_ap:
            line += "".join(f(r.get(k), 7) for k in ("AP", "AP50", "spearman", "kendall", "aic"))
        print(line)
    if not args.engine:
        print(f"{'tensorrt':<30}   (no --engine given / TensorRT not installed here)")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="harmonic_backends_"))
    work.mkdir(parents=True, exist_ok=True)
    model, size, names, label, nms_path, raw_path, gflop = export_graphs(args, work)
    folder, images, records, gt_names, ids = benchmark_images(args, work, names)
    prepared, arrays = prepare_batches(images.paths, size, args.batch)
    runners, opened = open_runners(args, model, nms_path, raw_path, folder, work, len(prepared))

    rows, per_backend = [], {}
    for name, run in runners:
        best_wall, lat, dets = time_runner(run, arrays, args.repeats)
        per_backend[name] = dets
        row: dict[str, Any] = {"backend": name, "img_s": len(prepared) / best_wall,
                               "gflop_s": gflop * len(prepared) / best_wall,
                               "latency_ms": summarize(lat), "detections": int(sum(len(d) for d in dets))}
        if records is not None:
            row.update(accuracy(prepared, dets, records, ids, gt_names))
        rows.append(row)
    ref = per_backend["pytorch eager"]
    for row in rows:
        row["agree"], row["dscore"] = agreement(ref, per_backend[row["backend"]])
    print_table(args, rows, label, len(prepared), size, gflop, records is not None)
    return finish(rows, args.json, opened)


if __name__ == "__main__":
    sys.exit(main())
