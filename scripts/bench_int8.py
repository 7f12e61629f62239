"""INT8 (Q/DQ) vs FP32 on ONNX Runtime, side by side in one run: latency at batch 1 and 8, AP, AP75 and the
score-IoU Spearman on a dataset split, plus PyTorch eager and FP32 graphs with smaller NMS candidate caps.

One checkpoint is exported to the FP32 NMS graph (default ``--nms-topk``: the model's own
candidate budget) and quantised to ``model.int8.onnx`` (calibrated on ``--calib-count``
images of the ``--calib-split``, letterboxed as inference does). Every model gets the same
decoded, letterboxed batches; latency is forward + NMS on those batches (median of
``--repeats`` passes); AP/AP75/Spearman come from ``harmonic.evaluation.evaluate``;
``agree`` is the share of FP32-graph detections the row reproduces (same class, IoU >= 0.95).

    python scripts/bench_int8.py --checkpoint runs/demo/harmonic_s0/best.pt --data runs/demo/data/dataset.yaml
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.data.images import decode_image  # noqa: E402
from harmonic.experiments.benchmarks import (  # noqa: E402
    agreement,
    backend_infer,
    eager_infer,
    eager_reference,
    finish,
)
from harmonic.runtime import open_backend  # noqa: E402
from harmonic.runtime.postprocess import coco_results, unletterbox  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="HarmonicDet checkpoint (.pt)")
    p.add_argument("--data", required=True, help="dataset.yaml (e.g. from harmonic synth)")
    p.add_argument("--split", default="val", help="split evaluated")
    p.add_argument("--calib-split", default="train", help="split whose images calibrate INT8")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--num-images", type=int, default=100, help="images of --split evaluated")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--caps", type=int, nargs="*", default=[1000, 300],
                   help="extra FP32 graphs with these --nms-topk caps (AP effect of the cap)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (median per batch size)")
    p.add_argument("--work", default=None, help="folder for the exported graphs (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the rows here")
    return p


def _time(run: Any, arrays: list[np.ndarray], repeats: int) -> float:
    """Median over ``repeats`` passes of the mean per-batch latency in ms (one warm-up call first)."""
    run(arrays[0])
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a in arrays:
            run(a)
        passes.append((time.perf_counter() - t0) / len(arrays) * 1000)
    return float(np.median(passes))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    from harmonic.data import readers
    from harmonic.data.dataset_file import load_dataset_config
    from harmonic.evaluation import evaluate
    from harmonic.export.metadata import read_metadata
    from harmonic.export.onnx_export import export_onnx
    from harmonic.export.quantize import quantize_int8
    from harmonic.training.checkpoint import model_from_checkpoint

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="harmonic_int8_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_dataset_config(args.data)
    split, calib = cfg.splits[args.split], cfg.splits[args.calib_split]
    names = list(cfg.names)
    records = list(readers.read_split(split, names))[: args.num_images]

    model, spec, _ = model_from_checkpoint(args.checkpoint, "cpu")
    model.eval()
    size = int(spec.img_size)
    opts = dict(conf=args.conf, iou=args.iou, max_det=args.max_det, overwrite=True)
    graphs: list[tuple[str, Path]] = []
    fp32 = export_onnx(args.checkpoint, work / "model.onnx", **opts)
    default_cap = int(read_metadata(fp32)["nms_topk"])
    t0 = time.perf_counter()
    int8 = quantize_int8(fp32, work / "model.int8.onnx", calib.images, count=args.calib_count, overwrite=True)
    t_quant = time.perf_counter() - t0
    graphs += [(f"onnx fp32 (nms_topk {default_cap})", fp32), (f"onnx int8 q/dq (nms_topk {default_cap})", int8)]
    for cap in args.caps:
        if cap < default_cap:
            graphs.append((f"onnx fp32 (nms_topk {cap})", export_onnx(args.checkpoint, work / f"model.cap{cap}.onnx",
                                                                       nms_topk=cap, **opts)))

    prepared = [prepare_image(decode_image(split.images / r.file_name), size) for r in records]
    b8 = [to_batch([c for c, _ in prepared[k : k + 8]]) for k in range(0, len(prepared), 8)]
    b1 = [to_batch([c]) for c, _ in prepared[:16]]

    model = eager_reference(model, fp32, size, args.conf, args.iou, args.max_det)
    runners: list[tuple[str, Any]] = [("pytorch eager", lambda x: eager_infer(model, x))]
    opened = []
    for name, path in graphs:
        be = open_backend(path, provider="cpu", threads=args.threads)
        opened.append(be)
        runners.append((name, backend_infer(be)))

    rows, dets_by = [], {}
    for name, run in runners:
        dets = [d for a in b8 for d in run(a)]
        dets_by[name] = dets
        results = []
        for (_, info), d, r in zip(prepared, dets, records):
            results += coco_results(unletterbox(d, info), int(r.image_id))
        rep = evaluate(records, results, names=names)
        rows.append({"model": name, "AP": rep["coco"]["AP"], "AP50": rep["coco"]["AP50"], "AP75": rep["coco"]["AP75"],
                     "spearman": rep["consistency"].get("spearman"), "detections": int(sum(len(d) for d in dets)),
                     "ms_b1": _time(run, b1, args.repeats), "ms_b8": _time(run, b8, args.repeats)})
    ref = dets_by[graphs[0][0]]
    for row in rows:
        row["agree_fp32"], _ = agreement(ref, dets_by[row["model"]])
    base = rows[1]
    for row in rows:
        row["speedup_b1"], row["speedup_b8"] = base["ms_b1"] / row["ms_b1"], base["ms_b8"] / row["ms_b8"]

    print(f"\n{spec.name} ({spec.loss}) from {args.checkpoint}; {len(records)} {args.split} images at {size}px; "
          f"ONNX Runtime {opened[0].versions.get('onnxruntime')} CPU, {args.threads} threads; INT8 calibrated on "
          f"{args.calib_count} {args.calib_split} images in {t_quant:.0f} s; ms = mean per batch, median of {args.repeats}")
    head = (f"{'model':<34}{'AP':>7}{'AP50':>7}{'AP75':>7}{'rho':>7}{'dets':>7}{'agree':>7}"
            f"{'ms b1':>8}{'x b1':>6}{'ms b8':>8}{'x b8':>6}")
    print(head)
    for r in rows:
        rho = r["spearman"] if r["spearman"] is not None else float("nan")
        print(f"{r['model']:<34}{r['AP']:>7.4f}{r['AP50']:>7.4f}{r['AP75']:>7.4f}{rho:>7.3f}{r['detections']:>7d}"
              f"{r['agree_fp32']:>7.3f}{r['ms_b1']:>8.1f}{r['speedup_b1']:>6.2f}{r['ms_b8']:>8.1f}{r['speedup_b8']:>6.2f}")
    return finish(rows, args.json, opened)


if __name__ == "__main__":
    sys.exit(main())
