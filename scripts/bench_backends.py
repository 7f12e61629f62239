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
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_infer import build_random_detector, export_random_model, generate_jpegs  # noqa: E402

from harmonic.boxes import box_iou  # noqa: E402
from harmonic.data.images import ImageDecodeError, decode_image  # noqa: E402
from harmonic.runtime import open_backend  # noqa: E402
from harmonic.runtime.bench import summarize  # noqa: E402
from harmonic.runtime.pipeline import run_engine  # noqa: E402
from harmonic.runtime.postprocess import Detections, coco_results, split_outputs, unletterbox  # noqa: E402
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


def eager_reference(model: Any, graph: Path, size: int, conf: float, iou: float, max_det: int) -> Any:
    """``model`` as ``harmonic.export.verify`` checks the graph against: the graph's operating point and
    NMS candidate cap, and the background logit column (RetinaNet/FCOS column 0, which the graph
    drops) switched off, so eager and the graph rank the same classes."""
    from harmonic.export.metadata import read_metadata
    from harmonic.export.verify import reference_detector

    cap = read_metadata(graph).get("nms_topk")
    return reference_detector(model, size, conf, iou, max_det, nms_topk=int(cap) if cap else None)


def conv_gflop(model: Any, size: int) -> float:
    """Convolution GFLOP (2 x multiply-adds) of one ``size x size`` image through ``model`` (eval).

    Convolutions are >95 % of these detectors' arithmetic, so GFLOP/s per backend says how
    close each one runs to the machine's FP32 rate.
    """
    import torch

    total = [0]

    def hook(mod: Any, _inp: Any, out: Any) -> None:
        total[0] += 2 * out.numel() * mod.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model([torch.rand(3, size, size)])
    finally:
        for h in handles:
            h.remove()
    return total[0] / 1e9


def eager_infer(model: Any, batch: np.ndarray) -> list[Detections]:
    """PyTorch eager on ``batch[B, 3, S, S]``: torchvision's own post-processing; labels = class + 1."""
    import torch

    with torch.inference_mode():
        outs = model(list(torch.from_numpy(batch)))
    return [Detections(o["boxes"].numpy().astype(np.float32), o["scores"].numpy().astype(np.float32),
                       o["labels"].numpy().astype(np.int64) - 1) for o in outs]


def backend_infer(backend: Any) -> Any:
    def run(batch: np.ndarray) -> list[Detections]:
        return split_outputs(run_engine(backend, batch), batch.shape[0])
    return run


def agreement(ref: list[Detections], got: list[Detections], score_min: float = 0.0) -> tuple[float, float]:
    """Share of ``ref`` detections (score >= score_min) matched in ``got`` (same class, IoU >= 0.95), mean |dscore|."""
    matched, total, diffs = 0, 0, []
    for r, g in zip(ref, got):
        keep = r.scores >= score_min
        rb, rs, rc = r.boxes[keep], r.scores[keep], r.classes[keep]
        total += len(rs)
        if not len(rs) or not len(g):
            continue
        iou = box_iou(rb, g.boxes)
        iou[rc[:, None] != g.classes[None, :]] = 0
        best = iou.argmax(1)
        ok = iou[np.arange(len(rs)), best] >= 0.95
        matched += int(ok.sum())
        diffs += np.abs(rs[ok] - g.scores[best[ok]]).tolist()
    return (matched / total if total else float("nan")), (float(np.mean(diffs)) if diffs else float("nan"))


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="harmonic_backends_"))
    work.mkdir(parents=True, exist_ok=True)
    model, size, names, label = load_model(args)
    nms_path, raw_path = work / "model.onnx", work / "model.raw.onnx"
    export_random_model(args.arch, nms_path, conf=args.conf, iou=args.iou, max_det=args.max_det,
                        raw_out=raw_path, model=model, img_size=size)
    model = eager_reference(model, nms_path, size, args.conf, args.iou, args.max_det)
    gflop = conv_gflop(model, size)

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

    # decode + letterbox once: every backend sees identical batches
    prepared = []
    for i, path in enumerate(images.paths):
        try:
            chw, info = prepare_image(decode_image(path), size)
        except ImageDecodeError as exc:
            print(f"skipped {exc}")
            continue
        prepared.append((i, chw, info))
    batches = [prepared[k:k + args.batch] for k in range(0, len(prepared), args.batch)]
    arrays = [to_batch([c for _, c, _ in b]) for b in batches]

    runners: list[tuple[str, Any]] = [("pytorch eager", lambda x: eager_infer(model, x))]
    opened = []
    graphs = [("onnxruntime nms graph", nms_path), ("onnxruntime raw + numpy nms", raw_path)]
    if args.int8:
        from harmonic.export.quantize import quantize_int8

        graphs.append(("onnxruntime int8 q/dq",
                       quantize_int8(nms_path, work / "model.int8.onnx", folder, count=len(prepared), overwrite=True)))
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

    rows, per_backend = [], {}
    for name, run in runners:
        run(arrays[0])  # warm-up
        best_wall, lat, dets = float("inf"), [], []
        for _ in range(args.repeats):
            lat_r, dets_r = [], []
            t0 = time.perf_counter()
            for a in arrays:
                t = time.perf_counter()
                dets_r += run(a)
                lat_r.append(time.perf_counter() - t)
            wall = time.perf_counter() - t0
            if wall < best_wall:
                best_wall, lat, dets = wall, lat_r, dets_r
        per_backend[name] = dets
        row: dict[str, Any] = {"backend": name, "img_s": len(prepared) / best_wall,
                               "gflop_s": gflop * len(prepared) / best_wall,
                               "latency_ms": summarize(lat), "detections": int(sum(len(d) for d in dets))}
        if records is not None:
            from harmonic.evaluation import evaluate

            results = []
            for (i, _, info), d in zip(prepared, dets):
                results += coco_results(unletterbox(d, info), ids[i])
            rep = evaluate(records, results, names=gt_names)
            row.update(AP=rep["coco"]["AP"], AP50=rep["coco"]["AP50"],
                       **{k: rep["consistency"].get(k) for k in ("spearman", "kendall", "aic")})
        rows.append(row)
    ref = per_backend["pytorch eager"]
    for row in rows:
        row["agree"], row["dscore"] = agreement(ref, per_backend[row["backend"]])

    print(f"\n{label}, {len(prepared)} images at {size}px, batch {args.batch}, {args.threads} threads, "
          f"conf {args.conf}, iou {args.iou}, K {args.max_det}; time = forward + post-processing on "
          f"pre-decoded batches (best of repeats); {gflop:.1f} conv GFLOP per image")
    head = f"{'backend':<30}{'img/s':>8}{'GFLOP/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'dets':>7}{'agree':>7}{'|ds|':>8}"
    if records is not None:
        head += f"{'AP':>7}{'AP50':>7}{'rho':>7}{'tau':>7}{'AIC':>7}"
    print(head)

    def f(v: Any, w: int, d: int = 3) -> str:
        return f"{v:>{w}.{d}f}" if isinstance(v, float) and v == v else f"{'-':>{w}}"

    for r in rows:
        line = (f"{r['backend']:<30}{r['img_s']:>8.1f}{r['gflop_s']:>9.0f}"
                f"{r['latency_ms']['p50']:>9.1f}{r['latency_ms']['p90']:>9.1f}{r['detections']:>7d}{f(r['agree'], 7, 3)}{f(r['dscore'], 8, 4)}")
        if records is not None:
            line += "".join(f(r.get(k), 7) for k in ("AP", "AP50", "spearman", "kendall", "aic"))
        print(line)
    if not args.engine:
        print(f"{'tensorrt':<30}   (no --engine given / TensorRT not installed here)")
    return finish(rows, args.json, opened)


def finish(rows: list[dict[str, Any]], json_path: str | None, opened: list[Any]) -> int:
    """Write ``rows`` to ``json_path`` (if given), close the backends; the script's exit code."""
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2, default=float))
    for be in opened:
        be.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
