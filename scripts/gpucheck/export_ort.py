"""The deploy steps up to ONNX Runtime: export of the carried checkpoint, ORT CPU and CUDA parity and AP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpucheck.context import AGREE_ORT_EAGER, AP_TOL, Ctx, Skip, run_cli


def step_export(ctx: Ctx) -> dict[str, Any]:
    """The carried checkpoint -> FP32 NMS graph (verified against PyTorch) + INT8 Q/DQ graph."""
    onnx_path = ctx.out / "model.onnx"
    run_cli(ctx, ["export/run.py", "--checkpoint", ctx.state["checkpoint"], "--out", onnx_path, "--overwrite",
                  "--int8", "--calib", ctx.state["train_images"], "--calib-count", 8 if ctx.args.quick else 64,
                  "--verify-images", ctx.state["val_images"]], timeout=300)
    ctx.state.update(onnx=onnx_path, int8=ctx.out / "model.int8.onnx")
    import onnx

    q = onnx.load(str(ctx.state["int8"]))
    n_q = sum(n.op_type == "QuantizeLinear" for n in q.graph.node)
    ctx.check("INT8 graph has QuantizeLinear nodes", n_q, ">=", 1)
    return {"onnx": str(onnx_path), "int8_onnx": str(ctx.state["int8"]), "quantize_nodes": n_q}


def prepared_val(ctx: Ctx, size: int) -> tuple[list[Any], list[Any]]:
    """``(batches of 8 letterboxed images, [(image_id, LetterboxInfo)] per image)`` of the demo val split."""
    from harmonic.data.images import decode_image
    from harmonic.runtime.preprocess import prepare_image, to_batch
    from harmonic.runtime.reports import load_annotation_records

    records, _, _ = load_annotation_records(Path(ctx.state["demo_yaml"]), None, "val")
    images = ctx.state["val_images"]
    chw, infos = [], []
    for r in records:
        c, info = prepare_image(decode_image(images / r.file_name), size)
        chw.append(c)
        infos.append((int(r.image_id), info))
    return [to_batch(chw[k:k + 8]) for k in range(0, len(chw), 8)], infos


def ap_of(ctx: Ctx, dets: list[Any], infos: list[Any]) -> float:
    """COCO AP of per-image letterboxed detections on the demo val split."""
    from harmonic.evaluation import evaluate
    from harmonic.runtime.postprocess import coco_results, unletterbox

    results = [e for d, (iid, info) in zip(dets, infos) for e in coco_results(unletterbox(d, info), iid)]
    report = evaluate((str(ctx.state["demo_yaml"]), "val"), results)
    return float(report["coco"]["AP"])


def step_ort(ctx: Ctx) -> dict[str, Any]:
    """ONNX Runtime CPU: the provider that actually ran, parity and AP against PyTorch on the carried checkpoint."""
    from benchlib import agreement, backend_infer, eager_infer, eager_reference

    from harmonic.export.metadata import read_metadata
    from harmonic.runtime import open_backend
    from harmonic.training.checkpoint import model_from_checkpoint

    model, spec, _ = model_from_checkpoint(ctx.state["checkpoint"], "cpu")
    size = int(spec.img_size)
    batches, infos = prepared_val(ctx, size)
    meta = read_metadata(ctx.state["onnx"])  # the graph's operating point
    ref = eager_reference(model, ctx.state["onnx"], size, float(meta["score_threshold"]),
                          float(meta["iou_threshold"]), int(meta["max_det"]))
    eager = [d for x in batches for d in eager_infer(ref, x)]
    res: dict[str, Any] = {"images": len(infos)}
    with open_backend(ctx.state["onnx"], provider="cpu") as be:
        ctx.check("FP32 graph ran on", be.provider, "==", "CPUExecutionProvider")
        ort_dets = [d for x in batches for d in backend_infer(be)(x)]
    agree, dscore = agreement(eager, ort_dets, score_min=0.05)
    ap_eager, ap_ort = ap_of(ctx, eager, infos), ap_of(ctx, ort_dets, infos)
    ctx.check("ORT reproduces eager detections (share)", round(agree, 4), ">=", AGREE_ORT_EAGER)
    ctx.check("|AP ORT - AP eager|", round(abs(ap_ort - ap_eager), 4), "<=", AP_TOL)
    with open_backend(ctx.state["int8"], provider="cpu") as be:
        int8 = [d for x in batches for d in backend_infer(be)(x)]
    ap_int8 = ap_of(ctx, int8, infos)
    ctx.state.update(ap_ort_fp32=ap_ort, batches=batches, infos=infos, ort_dets=ort_dets)
    res.update(AP_eager=round(ap_eager, 4), AP_ort_fp32=round(ap_ort, 4), AP_ort_int8=round(ap_int8, 4),
               agree_ort_eager=round(agree, 4), mean_abs_dscore=round(dscore, 5),
               agree_int8_fp32=round(agreement(ort_dets, int8, score_min=0.05)[0], 4))
    ctx.say(f"AP eager {ap_eager:.4f}, ORT FP32 {ap_ort:.4f}, ORT INT8 {ap_int8:.4f}; agree {agree:.3f}")
    return res


def step_ort_cuda(ctx: Ctx) -> dict[str, Any]:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("onnxruntime has no CUDAExecutionProvider (a CPU build; onnxruntime-gpu is not installed)")
    if "onnx" not in ctx.state or "batches" not in ctx.state:
        raise Skip("no exported graph / ORT CPU reference")
    from benchlib import agreement, backend_infer

    from harmonic.runtime import open_backend

    with open_backend(ctx.state["onnx"], provider="cuda", device="cuda:0") as be:
        ctx.check("FP32 graph ran on", be.provider, "==", "CUDAExecutionProvider")
        dets = [d for x in ctx.state["batches"] for d in backend_infer(be)(x)]
    agree, _ = agreement(ctx.state["ort_dets"], dets, score_min=0.05)
    ap = ap_of(ctx, dets, ctx.state["infos"])
    ctx.check("ORT CUDA reproduces ORT CPU (share)", round(agree, 4), ">=", AGREE_ORT_EAGER)
    ctx.check("|AP CUDA - AP CPU|", round(abs(ap - ctx.state["ap_ort_fp32"]), 4), "<=", AP_TOL)
    return {"AP": round(ap, 4), "agree_vs_cpu": round(agree, 4)}
