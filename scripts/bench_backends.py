"""Same images, one run: PyTorch eager vs ONNX Runtime (NMS graph, raw graph + numpy NMS, INT8 with
``--int8``) vs OpenVINO FP32, bf16 and INT8 (``--openvino``) vs TensorRT (``--engine``): latency, images/s and
conv GFLOP/s at each ``--batch``, AP and the score-IoU consistency metrics, as one table.

Every backend gets the same decoded, letterboxed batches, so the timing is the model
part (forward + post-processing incl. NMS), not decoding; each ``--batch`` is timed over the
same images, median of ``--repeats`` passes interleaved across the backends (so load on a
shared machine hits every row alike); ``x`` is the speed relative to ONNX Runtime's NMS graph.
The INT8 graphs (ONNX Runtime Q/DQ, OpenVINO NNCF) are calibrated on the benchmark's own
images: a latency figure; their agreement is optimistic. OpenVINO bf16 runs only on a CPU
with native bf16 (elsewhere its row says why not). AP and consistency come from
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
    python scripts/bench_backends.py --int8 --openvino   # random-init RetinaNet-R50 at 320, generated images
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (  # noqa: E402
    agreement,
    backend_infer,
    build_random_detector,
    conv_gflop,
    eager_infer,
    eager_reference,
    export_random_model,
    finish,
    generate_jpegs,
    machine_line,
    openvino_runners,
    time_interleaved,
)

from harmonic.data.images import ImageDecodeError, decode_image  # noqa: E402
from harmonic.runtime import open_backend  # noqa: E402
from harmonic.runtime.postprocess import coco_results, unletterbox  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402
from harmonic.runtime.reports import load_annotation_records, match_image_ids  # noqa: E402
from harmonic.runtime.sources import expand_sources  # noqa: E402

ORT_NMS = "onnxruntime nms graph"


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
    p.add_argument("--openvino", action="store_true",
                   help="also time OpenVINO FP32, bf16 (a CPU with native bf16 only) and INT8 (NNCF, calibrated on "
                        "the benchmark's own images)")
    p.add_argument("--profile", action="store_true",
                   help="with --openvino: print OpenVINO's per-layer profile (time by layer type and kernel) of its "
                        "FP32 and INT8 rows at the last --batch")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes timed (default 1 8)")
    p.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO threads")
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="timed passes per backend and batch size (median)")
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
                 calib_count: int) -> tuple[list[tuple[str, Any]], list[Any], dict[str, str]]:
    """``([(backend name, run(batch) -> detections)], the opened backends, {row: why it did not run})``: eager,
    the ONNX Runtime graphs (+ INT8 with ``--int8``), OpenVINO with ``--openvino``, TensorRT with ``--engine``."""
    runners: list[tuple[str, Any]] = [("pytorch eager", lambda x: eager_infer(model, x))]
    opened, refused = [], {}
    graphs = [(ORT_NMS, nms_path), ("onnxruntime raw + numpy nms", raw_path)]
    if args.int8:
        from harmonic.export.quantize import quantize_int8

        graphs.append(("onnxruntime int8 q/dq",
                       quantize_int8(nms_path, work / "model.int8.onnx", folder, count=calib_count, overwrite=True)))
    for name, path in graphs:
        be = open_backend(path, provider="cpu", threads=args.threads)
        opened.append(be)
        runners.append((name, backend_infer(be)))
    if args.openvino:
        ov_runners, ov_opened, refused, _ = openvino_runners(nms_path, work, folder, calib_count, args.threads)
        runners += ov_runners
        opened += ov_opened
    if args.engine:
        try:
            be = open_backend(args.engine)
            opened.append(be)
            runners.append((f"tensorrt ({be.device})", backend_infer(be)))
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            refused["tensorrt"] = str(exc)
    return runners, opened, refused


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


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]], refused: dict[str, str], label: str,
                images: int, size: int, gflop: float, with_ap: bool) -> None:
    print(f"\n{label}, {images} images at {size}px, {args.threads} threads, conf {args.conf}, iou {args.iou}, "
          f"K {args.max_det}; {machine_line()}; time = forward + post-processing on pre-decoded batches, ms per "
          f"batch (median of {args.repeats} interleaved passes); x = speed relative to {ORT_NMS}; "
          f"{gflop:.1f} conv GFLOP per image")
    head = f"{'backend':<30}"
    for b in args.batch:
        head += f"{f'ms b{b}':>9}{f'img/s b{b}':>10}{f'x b{b}':>7}{f'GFLOP/s b{b}':>12}"
    head += f"{'dets':>7}{'agree':>7}{'|ds|':>8}"
    if with_ap:
        head += f"{'AP':>7}{'AP50':>7}{'rho':>7}{'tau':>7}{'AIC':>7}"
    print(head)

    def f(v: Any, w: int, d: int = 3) -> str:
        return f"{v:>{w}.{d}f}" if isinstance(v, float) and v == v else f"{'-':>{w}}"

    for r in rows:
        line = f"{r['backend']:<30}"
        for b in args.batch:
            t = r["batches"][str(b)]
            line += f"{t['ms_per_batch']:>9.1f}{t['img_s']:>10.1f}{t['speedup']:>7.2f}{t['gflop_s']:>12.0f}"
        line += f"{r['detections']:>7d}{f(r['agree'], 7, 3)}{f(r['dscore'], 8, 4)}"
        if with_ap:
            line += "".join(f(r.get(k), 7) for k in ("AP", "AP50", "spearman", "kendall", "aic"))
        print(line)
    for name, why in refused.items():
        print(f"{name:<30}not run: {why}")
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
    per_batch = {str(b): prepare_batches(images.paths, size, b) for b in args.batch}
    prepared = per_batch[str(args.batch[-1])][0]
    runners, opened, refused = open_runners(args, model, nms_path, raw_path, folder, work, len(prepared))

    rows, per_backend = [], {}
    for name, run in runners:  # detections (untimed) at the last batch size
        dets = [d for a in per_batch[str(args.batch[-1])][1] for d in run(a)]
        per_backend[name] = dets
        row: dict[str, Any] = {"backend": name, "detections": int(sum(len(d) for d in dets))}
        if records is not None:
            row.update(accuracy(prepared, dets, records, ids, gt_names))
        rows.append(row)
    times = time_interleaved(runners, {b: arrays for b, (_, arrays) in per_batch.items()}, args.repeats)
    for row in rows:
        row["batches"] = {}
        for b, (_, arrays) in per_batch.items():
            wall = float(np.median(times[row["backend"]][b]))
            row["batches"][b] = {"ms_per_batch": wall / len(arrays) * 1000, "img_s": len(prepared) / wall,
                                 "gflop_s": gflop * len(prepared) / wall}
    for row in rows:
        for b in per_batch:
            base = next(r for r in rows if r["backend"] == ORT_NMS)["batches"][b]["img_s"]
            row["batches"][b]["speedup"] = row["batches"][b]["img_s"] / base
    ref = per_backend["pytorch eager"]
    for row in rows:
        row["agree"], row["dscore"] = agreement(ref, per_backend[row["backend"]])
    print_table(args, rows, refused, label, len(prepared), size, gflop, records is not None)
    if args.profile and args.openvino:
        print_profiles(args, nms_path, work, per_batch[str(args.batch[-1])][1][0])
    for name, why in refused.items():
        rows.append({"backend": name, "not_run": why})
    return finish(rows, args.json, opened)


def print_profiles(args: argparse.Namespace, nms_path: Path, work: Path, batch: Any) -> None:
    """OpenVINO's per-layer profile of the FP32 graph and the INT8 IR on ``batch``: where the time goes and at
    which precision the hot layers ran."""
    from benchlib import openvino_profile

    for name, path, precision in (("openvino fp32", nms_path, "fp32"),
                                  ("openvino int8 (nncf)", work / "openvino_int8" / "model.xml", "int8")):
        if not path.is_file():
            continue
        print(f"\n{name}: per-layer profile at batch {len(batch)} (ms per inference, by layer type and kernel)")
        for r in openvino_profile(path, precision, batch, args.threads):
            print(f"  {r['layer']:<18}{r['kernel']:<26}{r['ms']:>9.1f} ms{100 * r['share']:>6.1f} %  x{r['count']}")


if __name__ == "__main__":
    sys.exit(main())
