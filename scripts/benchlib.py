"""Helpers the benchmark scripts (``scripts/bench_*.py``) and ``scripts/gpucheck/`` share: generated
JPEGs, random-init torchvision detectors and their export, the eager reference a graph is checked
against, per-backend inference on prepared batches, the agreement between two backends, interleaved
timing, the OpenVINO rows and the machine line of a table's header.

Importing this module does not import torch (the functions that need it import it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from harmonic.boxes import box_iou
from harmonic.runtime.pipeline import run_engine
from harmonic.runtime.postprocess import Detections, split_outputs

ARCH_SIZES = {"ssdlite320_mobilenet_v3_large": 320, "retinanet_resnet50_fpn": 320, "fcos_resnet50_fpn": 320}


def generate_jpegs(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """``n`` JPEGs of coloured shapes on a textured background (about camera-sized: 640x480 by default)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    for i in range(n):
        p = folder / f"{i:05d}.jpg"
        paths.append(p)
        if p.exists():
            continue
        img = cv2.resize(np.roll(base, i, axis=1), (w, h), interpolation=cv2.INTER_LINEAR)
        for _ in range(int(rng.integers(2, 6))):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(15, 90))
            if rng.random() < 0.5:
                cv2.circle(img, (x, y), r, c, -1)
            else:
                cv2.rectangle(img, (x - r, y - r), (x + r, y + r), c, -1)
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def build_random_detector(arch: str, num_classes: int = 3, perturb: float = 0.0):
    """A randomly initialised torchvision detector (no downloads): ``(model, img_size)``.

    ``perturb``: re-draw the classification head's weights with std ``perturb`` (SSDlite's
    random init scores every anchor the same, so rankings would be arbitrary ties).
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    size = ARCH_SIZES.get(arch, 320)
    fn = getattr(torchvision.models.detection, arch)
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes + 1}
    if arch.startswith(("retinanet", "fcos")):
        kwargs.update(min_size=size, max_size=size)
    model = fn(**kwargs).eval()
    if perturb:
        with torch.no_grad():
            for name, prm in model.head.named_parameters():
                if "cls" in name or "classification" in name:
                    prm.normal_(0.0, perturb)
    return model, size


def export_random_model(arch: str, out: Path, conf: float = 0.05, iou: float = 0.6, max_det: int = 100,
                        raw_out: Path | None = None, model=None, img_size: int | None = None) -> Path:  # noqa: ANN001
    """Export ``arch`` (random init) with the project's exporter to ``out`` (+ the raw graph to ``raw_out``)."""
    from harmonic.contract import build_metadata
    from harmonic.export.onnx_export import export_model

    if model is None:
        model, img_size = build_random_detector(arch)
    tr = model.transform
    meta = build_metadata(names=["a", "b", "c"], img_size=img_size, mean=tr.image_mean, std=tr.image_std,
                          score_threshold=conf, iou_threshold=iou, max_det=max_det, model=arch, loss="baseline",
                          checkpoint_sha256="random-init", graph="nms")
    export_model(model, out, img_size=img_size, conf=conf, iou=iou, max_det=max_det, metadata=meta, overwrite=True)
    if raw_out is not None:
        export_model(model, raw_out, img_size=img_size, conf=conf, iou=iou, max_det=max_det, raw=True,
                     metadata=meta, overwrite=True)
    return out


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


def finish(rows: list[dict[str, Any]], json_path: str | None, opened: list[Any]) -> int:
    """Write ``rows`` to ``json_path`` (if given), close the backends; the script's exit code."""
    if json_path:
        from harmonic.atomic import write_text

        write_text(json_path, json.dumps(rows, indent=2, default=float))
    for be in opened:
        be.close()
    return 0


def time_interleaved(runners: list[tuple[str, Any]], inputs: dict[str, list[np.ndarray]],
                     repeats: int) -> dict[str, dict[str, list[float]]]:
    """``{runner: {input set: [seconds of each pass]}}``: one untimed warm-up call per runner and input set,
    then ``repeats`` rounds, each running every runner once over every input set (a pass = all its batches),
    so load drift on a shared machine hits every row alike. Quote the median of the passes."""
    for _, run in runners:
        for arrays in inputs.values():
            run(arrays[0])
    out: dict[str, dict[str, list[float]]] = {name: {k: [] for k in inputs} for name, _ in runners}
    for _ in range(repeats):
        for name, run in runners:
            for key, arrays in inputs.items():
                t0 = time.perf_counter()
                for a in arrays:
                    run(a)
                out[name][key].append(time.perf_counter() - t0)
    return out


def openvino_runners(nms_path: Path, work: Path, calib: Path, calib_count: int,
                     threads: int) -> tuple[list[tuple[str, Any]], list[Any], dict[str, str], float | None]:
    """The OpenVINO rows of a benchmark: ``(runners [(name, run)], opened backends, {name: why it can't run},
    seconds the INT8 quantisation took)``. FP32 and bf16 compile ``nms_path``; INT8 is the IR
    ``export/run.py --openvino DIR --precision int8`` writes, NNCF-calibrated on ``calib_count`` images of
    ``calib``. A row OpenVINO refuses (bf16 on a CPU without it, OpenVINO not installed) gets its reason."""
    from types import SimpleNamespace

    from harmonic.errors import HarmonicError
    from harmonic.runtime.backends import open_backend

    runners, opened, refused, t_quant = [], [], {}, None
    rows = [("openvino fp32", "fp32"), ("openvino bf16", "bf16"), ("openvino int8 (nncf)", "int8")]
    for name, precision in rows:
        try:
            path = nms_path
            if precision == "int8":
                from harmonic.export.openvino import OpenVinoPlan, write_ir
                from harmonic.export.quantize import calibration_files

                plan = OpenVinoPlan(work / "openvino_int8" / "model.xml", "int8", calibration_files(calib, calib_count))
                t0 = time.perf_counter()
                path = write_ir(nms_path, plan, SimpleNamespace(verify_images=None))[0]
                t_quant = time.perf_counter() - t0
            be = open_backend(path, backend="openvino", precision=precision, threads=threads)
        except HarmonicError as exc:
            refused[name] = str(exc)
            continue
        opened.append(be)
        runners.append((name, backend_infer(be)))
    return runners, opened, refused, t_quant


def machine_line() -> str:
    """The CPU, its core count and the versions of the deploy stack, for a benchmark's header."""
    import importlib.metadata as md
    import os
    import platform

    from harmonic.runtime.backends.base import cpu_name

    libs = []
    for dist in ("torch", "onnxruntime", "openvino", "nncf", "numpy"):
        try:
            libs.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, {', '.join(libs)}"


def openvino_profile(path: Path, precision: str, batch: np.ndarray, threads: int, iters: int = 3,
                     top: int = 8) -> list[dict[str, Any]]:
    """OpenVINO's per-layer profile of ``path`` at ``precision`` on ``batch`` (``PERF_COUNT``), summed by layer
    type and kernel (the kernel name carries the precision it ran at, e.g. ``brgconv_avx2_I8``): the ``top``
    rows by time, each ``{layer, kernel, ms, share, count}`` (ms per inference, mean of ``iters``)."""
    from collections import defaultdict

    from harmonic.runtime.backends import open_backend

    with open_backend(path, backend="openvino", precision=precision, threads=threads, perf_count=True) as be:
        be.infer(batch)
        acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for _ in range(iters):
            be.infer(batch)
            for p in be.request_for(len(batch)).get_profiling_info():
                ms = p.real_time.total_seconds() * 1000
                if ms > 0:
                    key = (p.node_type, p.exec_type)
                    acc[key][0] += ms / iters
                    acc[key][1] += 1 / iters
    total = sum(v[0] for v in acc.values()) or 1.0
    rows = sorted(acc.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"layer": k[0], "kernel": k[1], "ms": v[0], "share": v[0] / total, "count": round(v[1])} for k, v in rows]
