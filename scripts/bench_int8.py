"""The CPU deploy paths side by side in one run on a trained checkpoint: PyTorch eager, ONNX Runtime FP32 and
INT8 (Q/DQ), OpenVINO FP32, bf16 and INT8 (NNCF), plus FP32 graphs with smaller NMS candidate caps: latency
at batch 1 and 8, AP, AP50, AP75, the true-positive score-IoU Spearman, NMS top-1 and agreement on a split.

One checkpoint is exported to the FP32 NMS graph (default ``--nms-topk``: the model's own
candidate budget) and its raw pre-NMS graph; ONNX Runtime's INT8 graph and OpenVINO's INT8 IR
are both calibrated on the same ``--calib-count`` images of the ``--calib-split``, letterboxed
as inference does. OpenVINO bf16 runs only on a CPU with native bf16 (elsewhere its row says
why not). Every model gets the same decoded, letterboxed batches; latency is forward + NMS on
those batches (mean per batch; median of ``--repeats`` interleaved passes); AP/AP75 and ``rho TP``
(Spearman of score and IoU over true positives) come from ``harmonic.evaluation.evaluate``;
``NMS top-1`` (share of objects whose top-scoring pre-NMS candidate is also their best-IoU one)
from the raw graph run at the row's precision; ``agree`` is the share of FP32-graph detections
scoring >= 0.05 the row reproduces (same class, IoU >= 0.95).

    python scripts/bench_int8.py --checkpoint runs/demo/harmonic_s0/best.pt --data runs/demo/data/dataset.yaml \\
        --split test --num-images 300 --caps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (  # noqa: E402
    agreement,
    backend_infer,
    eager_infer,
    eager_reference,
    finish,
    machine_line,
    openvino_runners,
    time_interleaved,
)

from harmonic.data.images import decode_image  # noqa: E402
from harmonic.runtime import open_backend  # noqa: E402
from harmonic.runtime.postprocess import Detections, coco_results, find_raw_outputs, unletterbox  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402

ORT_FP32, ORT_INT8 = "onnxruntime fp32", "onnxruntime int8 q/dq"
OV_FP32, OV_BF16, OV_INT8 = "openvino fp32", "openvino bf16", "openvino int8 (nncf)"
AGREE_SCORE_MIN = 0.05
#: OpenVINO FP32 must reproduce ONNX Runtime FP32 (as scripts/gpu_check.py checks ONNX Runtime against eager)
PARITY_AGREE, PARITY_AP_POINTS = 0.99, 0.05


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="HarmonicDet checkpoint (.pt)")
    p.add_argument("--data", required=True, help="dataset.yaml (e.g. from harmonic synth)")
    p.add_argument("--split", default="val", help="split evaluated")
    p.add_argument("--calib-split", default="train", help="split whose images calibrate INT8")
    p.add_argument("--calib-count", type=int, default=64)
    p.add_argument("--num-images", type=int, default=100, help="images of --split evaluated")
    p.add_argument("--time-images", type=int, default=32, help="of those, the images timed (batch 1 and 8)")
    p.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO threads")
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--iou", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--caps", type=int, nargs="*", default=[1000, 300],
                   help="extra FP32 graphs with these --nms-topk caps (AP effect of the cap)")
    p.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO rows")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (median per batch size)")
    p.add_argument("--work", default=None, help="folder for the exported graphs (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the rows here")
    return p


def export_graphs(args: argparse.Namespace, work: Path, calib_dir: Path) -> tuple[list[tuple[str, Path]], dict, float]:
    """``([(row, NMS graph)], {row: raw graph at the row's precision}, ORT INT8 quantisation seconds)``."""
    from harmonic.export.metadata import read_metadata
    from harmonic.export.onnx_export import export_onnx
    from harmonic.export.quantize import quantize_int8

    opts = dict(conf=args.conf, iou=args.iou, max_det=args.max_det, overwrite=True)
    fp32 = export_onnx(args.checkpoint, work / "model.onnx", raw=work / "model.raw.onnx", **opts)
    raw = work / "model.raw.onnx"
    cap = int(read_metadata(fp32)["nms_topk"])
    t0 = time.perf_counter()
    int8 = quantize_int8(fp32, work / "model.int8.onnx", calib_dir, count=args.calib_count, overwrite=True)
    t_quant = time.perf_counter() - t0
    raw_int8 = quantize_int8(raw, work / "model.raw.int8.onnx", calib_dir, count=args.calib_count, overwrite=True)
    graphs = [(f"{ORT_FP32} (nms_topk {cap})", fp32), (ORT_INT8, int8)]
    for c in args.caps:
        if c < cap:
            graphs.append((f"onnxruntime fp32 (nms_topk {c})",
                           export_onnx(args.checkpoint, work / f"model.cap{c}.onnx", nms_topk=c, **opts)))
    raws = {graphs[0][0]: ("onnxruntime", raw, None), ORT_INT8: ("onnxruntime", raw_int8, None),
            OV_FP32: ("openvino", raw, "fp32"), OV_BF16: ("openvino", raw, "bf16")}
    return graphs, raws, t_quant


def raw_int8_ir(raw: Path, work: Path, calib_dir: Path, count: int) -> Path:
    """The raw graph's OpenVINO INT8 IR, calibrated as the NMS graph's (for the INT8 row's NMS top-1)."""
    from harmonic.export.openvino import OpenVinoPlan, write_ir
    from harmonic.export.quantize import calibration_files

    plan = OpenVinoPlan(work / "openvino_raw_int8" / "model.xml", "int8", calibration_files(calib_dir, count))
    return write_ir(raw, plan, SimpleNamespace(verify_images=None))[0]


def candidates(spec: tuple[str, Path, str | None], batches: list[np.ndarray], prepared: list[Any],
               records: list[Any], threads: int) -> list[dict[str, Any]]:
    """The pre-NMS candidates of the raw graph on ``batches``, as COCO results: every (box, class) pair at or above
    the graph's own score threshold, what its NMS sees (as ``harmonic.experiments.runner.write_candidates``)."""
    backend, path, precision = spec
    out: list[dict[str, Any]] = []
    with open_backend(path, backend=backend, provider="cpu", precision=precision, threads=threads) as be:
        k = 0
        floor = be.score_threshold or 0.0
        for x in batches:
            boxes, scores = find_raw_outputs(be.infer(x))
            for b, s in zip(boxes, scores):
                a, c = np.nonzero(s >= floor)
                det = unletterbox(Detections(b[a], s[a, c], c), prepared[k][1])
                out += coco_results(det, int(records[k].image_id))
                k += 1
    return out


def accuracy(dets: list[Detections], prepared: list[Any], records: list[Any], names: list[str],
             cands: list[dict[str, Any]] | None) -> dict[str, Any]:
    from harmonic.evaluation import evaluate

    results = []
    for (_, info), d, r in zip(prepared, dets, records):
        results += coco_results(unletterbox(d, info), int(r.image_id))
    rep = evaluate(records, results, candidates=cands, names=names)
    nms = rep["ranking"].get("nms") or {}
    return {"AP": rep["coco"]["AP"], "AP50": rep["coco"]["AP50"], "AP75": rep["coco"]["AP75"],
            "rho_tp": rep["ranking"]["true_positives"]["spearman"], "nms_top1": nms.get("top1_share"),
            "detections": int(sum(len(d) for d in dets))}


def print_table(args: argparse.Namespace, rows: list[dict[str, Any]], refused: dict[str, str], head: str) -> None:
    print(head)

    def f(v: Any, w: int, d: int = 3) -> str:
        return f"{v:>{w}.{d}f}" if isinstance(v, float) and v == v else f"{'-':>{w}}"

    print(f"{'model':<34}{'AP':>7}{'AP50':>7}{'AP75':>7}{'rhoTP':>7}{'NMS@1':>7}{'dets':>7}{'agree':>7}"
          f"{'ms b1':>8}{'x b1':>6}{'ms b8':>8}{'x b8':>6}")
    for r in rows:
        print(f"{r['model']:<34}{f(r['AP'], 7, 4)}{f(r['AP50'], 7, 4)}{f(r['AP75'], 7, 4)}{f(r['rho_tp'], 7)}"
              f"{f(r['nms_top1'], 7)}{r['detections']:>7d}{f(r['agree_fp32'], 7)}{r['ms_b1']:>8.1f}"
              f"{r['speedup_b1']:>6.2f}{r['ms_b8']:>8.1f}{r['speedup_b8']:>6.2f}")
    for name, why in refused.items():
        print(f"{name:<34}not run: {why}")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    from harmonic.data import readers
    from harmonic.data.dataset_file import load_dataset_config
    from harmonic.training.checkpoint import model_from_checkpoint

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="harmonic_int8_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_dataset_config(args.data)
    split, calib = cfg.splits[args.split], cfg.splits[args.calib_split]
    names = list(cfg.names)
    records = list(readers.read_split(split, names))[: args.num_images]
    model, spec, _ = model_from_checkpoint(args.checkpoint, "cpu")
    size = int(spec.img_size)
    graphs, raws, t_quant = export_graphs(args, work, calib.images)
    fp32 = graphs[0][1]

    prepared = [prepare_image(decode_image(split.images / r.file_name), size) for r in records]
    b8 = [to_batch([c for c, _ in prepared[k : k + 8]]) for k in range(0, len(prepared), 8)]
    timed = {"b1": [to_batch([c]) for c, _ in prepared[: args.time_images]],
             "b8": [to_batch([c for c, _ in prepared[k : k + 8]]) for k in range(0, args.time_images, 8)]}

    ref_model = eager_reference(model.eval(), fp32, size, args.conf, args.iou, args.max_det)
    runners: list[tuple[str, Any]] = [("pytorch eager", lambda x: eager_infer(ref_model, x))]
    opened = []
    for name, path in graphs:
        be = open_backend(path, provider="cpu", threads=args.threads)
        opened.append(be)
        runners.append((name, backend_infer(be)))
    refused: dict[str, str] = {}
    t_nncf = None
    if not args.no_openvino:
        ov_runners, ov_opened, refused, t_nncf = openvino_runners(fp32, work, calib.images, args.calib_count,
                                                                  args.threads)
        runners += ov_runners
        opened += ov_opened
        if any(n == OV_INT8 for n, _ in ov_runners):
            raws[OV_INT8] = ("openvino", raw_int8_ir(work / "model.raw.onnx", work, calib.images,
                                                     args.calib_count), "int8")

    rows, dets_by = [], {}
    for name, run in runners:
        dets = [d for a in b8 for d in run(a)]
        dets_by[name] = dets
        cands = candidates(raws[name], b8, prepared, records, args.threads) if name in raws else None
        rows.append({"model": name, **accuracy(dets, prepared, records, names, cands)})
    times = time_interleaved(runners, timed, args.repeats)
    ref = dets_by[graphs[0][0]]
    for row in rows:
        row["agree_fp32"], _ = agreement(ref, dets_by[row["model"]], score_min=AGREE_SCORE_MIN)
        for key, arrays in timed.items():
            row[f"ms_{key}"] = float(np.median(times[row["model"]][key])) / len(arrays) * 1000
    base = rows[1]
    for row in rows:
        row["speedup_b1"], row["speedup_b8"] = base["ms_b1"] / row["ms_b1"], base["ms_b8"] / row["ms_b8"]

    head = (f"\n{spec.name} ({spec.loss}) from {args.checkpoint}; {len(records)} {args.split} images at {size}px "
            f"(timed: the first {args.time_images}); {args.threads} threads; {machine_line()}; INT8 calibrated on "
            f"{args.calib_count} {args.calib_split} images (ONNX Runtime {t_quant:.0f} s"
            + (f", NNCF {t_nncf:.0f} s" if t_nncf is not None else "") + f"); ms = mean per batch, median of "
            f"{args.repeats} interleaved passes; x = speed relative to ONNX Runtime FP32; agree = share of the "
            f"FP32 graph's detections scoring >= {AGREE_SCORE_MIN} reproduced")
    print_table(args, rows, refused, head)
    ok = parity(rows, graphs[0][0])
    for name, why in refused.items():
        rows.append({"model": name, "not_run": why})
    return finish(rows, args.json, opened) or (0 if ok else 1)


def parity(rows: list[dict[str, Any]], ort_name: str) -> bool:
    """Print the OpenVINO FP32 vs ONNX Runtime FP32 check (agreement and |AP difference|); False when it fails."""
    by = {r["model"]: r for r in rows}
    if OV_FP32 not in by:
        return True
    ov, ort = by[OV_FP32], by[ort_name]
    d_ap = abs(ov["AP"] - ort["AP"]) * 100
    ok = ov["agree_fp32"] >= PARITY_AGREE and d_ap <= PARITY_AP_POINTS
    print(f"\nparity: {OV_FP32} vs {ort_name}: agree {ov['agree_fp32']:.4f} (>= {PARITY_AGREE}), |dAP| "
          f"{d_ap:.3f} points (<= {PARITY_AP_POINTS}): {'OK' if ok else 'FAILED'}")
    for name in (OV_BF16, OV_INT8, ORT_INT8):
        if name in by:
            r = by[name]
            print(f"        {name}: agree {r['agree_fp32']:.4f}, dAP {(r['AP'] - ort['AP']) * 100:+.2f} points, "
                  f"dAP75 {(r['AP75'] - ort['AP75']) * 100:+.2f}, x b1 {r['speedup_b1']:.2f}, x b8 {r['speedup_b8']:.2f}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
