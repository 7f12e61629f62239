"""The TensorRT steps: the backend's CUDA side (fake TensorRT), FP16 and INT8 engines (inspector, parity, AP)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gpucheck.context import AGREE_TRT, AP_TOL, Ctx, Skip
from gpucheck.export_ort import ap_of
from gpucheck.fake_tensorrt import fake_tensorrt_for_cuda
from harmonic.contract import FORMAT_KEY, METADATA_FORMAT, sidecar_path


def step_trt_backend_cuda(ctx: Ctx) -> dict[str, Any]:
    """TensorRTBackend with the real cuda-bindings and only TensorRT faked: pinned host buffers, device
    buffers, async copies on its stream, CUDA events, the stream handle, the device name."""
    import numpy as np
    import torch

    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise Skip(f"cuda-bindings does not import ({exc})") from None
    from harmonic.runtime import open_backend

    S, K = 32, 5  # noqa: N806
    folder = ctx.out / "trt_fake"
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / "m.engine"
    engine.write_bytes(b"FAKE-PLAN")
    cc = ".".join(map(str, torch.cuda.get_device_capability(0)))
    fake = fake_tensorrt_for_cuda(cudart, S, K)
    sidecar_path(engine).write_text(json.dumps({
        FORMAT_KEY: METADATA_FORMAT, "names": ["a", "b", "c"], "img_size": S, "graph": "nms",
        "score_threshold": 0.001, "tensorrt": fake.__version__, "gpu": torch.cuda.get_device_name(0),
        "compute_capability": cc, "profile": {"min": 1, "opt": 2, "max": 4}}))
    saved = sys.modules.get("tensorrt")
    sys.modules["tensorrt"] = fake
    try:
        with open_backend(engine, device="cuda:0") as be:
            rng = np.random.default_rng(0)
            errs, ms = [], []
            for b in (3, 1, 4):
                x = rng.random((b, 3, S, S), dtype=np.float32)
                out = be.infer(x)
                errs.append(float(np.abs(out["det_scores"][:, 0] - x.mean(axis=(1, 2, 3))).max()))
                ctx.check(f"batch {b}: num_dets", out["num_dets"][:, 0].tolist(), "==", list(range(1, b + 1)))
                ms.append(be.last_engine_ms)
            kinds = {}
            for name, arr in be.host.items():
                attrs = cudart.cudaPointerGetAttributes(arr.ctypes.data)[1]
                kinds[f"host:{name}"] = str(attrs.type).rsplit(".", 1)[-1]
            for name, ptr in be.dev.items():
                attrs = cudart.cudaPointerGetAttributes(ptr)[1]
                kinds[f"dev:{name}"] = str(attrs.type).rsplit(".", 1)[-1]
            stream = int(be.stream)
            device = be.device
    finally:
        if saved is None:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = saved
    ctx.check("outputs copied back (max |score error|)", max(errs), "<=", 1e-6)
    ctx.check("host buffers pinned", sorted({v for k, v in kinds.items() if k.startswith("host:")}), "==",
              ["cudaMemoryTypeHost"])
    ctx.check("device buffers on the GPU", sorted({v for k, v in kinds.items() if k.startswith("dev:")}), "==",
              ["cudaMemoryTypeDevice"])
    ctx.check("execute got the backend's own stream handle", set(fake.seen["streams"]), "==", {stream})
    ctx.check("stream is not the legacy default stream", stream != 0, "==", True)
    ctx.check("CUDA event time is a finite number of ms", all(m == m and m >= 0 for m in ms), "==", True)
    ctx.check("device name", torch.cuda.get_device_name(0) in device, "==", True)
    return {"device": device, "event_ms": ms, "buffers": kinds, "stream": stream}


def inspect_engine(trt: Any, engine_path: Path, batch: int, size: int) -> dict[str, Any]:
    """The engine inspector's per-layer precisions (an execution context with the input shape set)."""
    from harmonic.export.tensorrt import summarize_engine_layers

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    context.set_input_shape("images", (batch, 3, size, size))
    inspector = engine.create_engine_inspector()
    for attr in ("execution_context", "context"):  # 10.x/11.x spell it differently
        try:
            setattr(inspector, attr, context)
            break
        except (AttributeError, TypeError):
            continue
    return summarize_engine_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def step_trt(ctx: Ctx, kind: str) -> dict[str, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise Skip(f"tensorrt does not import ({exc})") from None
    if "onnx" not in ctx.state or "batches" not in ctx.state:
        raise Skip("no exported graph / ORT reference")
    from benchlib import agreement, backend_infer

    from harmonic.export.tensorrt import build_engine
    from harmonic.runtime import open_backend

    src = ctx.state["int8"] if kind == "int8" else ctx.state["onnx"]
    engine = ctx.out / f"model.{kind}.engine"
    t0 = time.perf_counter()
    build_engine(src, engine, fp16=kind == "fp16", int8=kind == "int8", profile=(1, 8, 8), overwrite=True)
    build_s = time.perf_counter() - t0
    side = json.loads(sidecar_path(engine).read_text())
    ctx.check("sidecar precision", side.get("precision"), "==", kind)
    size = int(side["img_size"])
    layers = inspect_engine(trt, engine, 8, size)
    if kind == "int8":
        ctx.check("INT8 convolutions in the engine", layers["int8_convolutions"], ">=", 1)
    ctx.check("NMS layer reads FP32 boxes and scores", layers["nms_fp32"], "==", True)
    with open_backend(engine, device="cuda:0") as be:
        dets = [d for x in ctx.state["batches"] for d in backend_infer(be)(x)]
        engine_ms = be.last_engine_ms
    agree, dscore = agreement(ctx.state["ort_dets"], dets, score_min=0.05)
    ap = ap_of(ctx, dets, ctx.state["infos"])
    ctx.check(f"{kind} engine reproduces ORT FP32 (share)", round(agree, 4), ">=", AGREE_TRT[kind])
    ctx.check(f"|AP {kind} - AP ORT FP32|", round(abs(ap - ctx.state["ap_ort_fp32"]), 4), "<=", AP_TOL)
    return {"tensorrt": trt.__version__, "build_s": round(build_s, 1), "layers": layers, "AP": round(ap, 4),
            "agree_vs_ort_fp32": round(agree, 4), "mean_abs_dscore": round(dscore, 5),
            "engine_ms_b8_last": engine_ms}
