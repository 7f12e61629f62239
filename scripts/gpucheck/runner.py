"""The GPU check's command: the flags, the steps in order, what each needs, the checks before any GPU work,
and the report (``gpu_check.json`` and the summary line)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import gpucheck
from gpucheck import bundle
from gpucheck.context import (
    AGREE_ORT_EAGER,
    AGREE_TRT,
    AP_TOL,
    DEMO_FLOORS,
    MIN_SCALER_STEP_SHARE,
    ROOT,
    Ctx,
    Skip,
    Step,
    versions,
)
from gpucheck.environment import step_bundle, step_data, step_environment
from gpucheck.export_ort import step_export, step_ort, step_ort_cuda
from gpucheck.latency import step_latency
from gpucheck.tensorrt_steps import step_trt, step_trt_backend_cuda
from gpucheck.training import step_amp_train, step_ddp, step_demo_train, step_resume
from harmonic.errors import HarmonicError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=gpucheck.__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder; gpu_check.json and gpu_check.log are written here")
    p.add_argument("--bundle", default=str(ROOT / "dist" / "gpu-bundle"), help="folder made by make gpu-bundle")
    p.add_argument("--checkpoint", default=None, help="demo-recipe checkpoint (default: the bundle's)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny data, a few iterations (tests, CPU machines)")
    p.add_argument("--require", default="", help="comma-separated steps that must run (a skip fails the check)")
    p.add_argument("--steps", default=None, help="comma-separated subset to run (the others are skipped)")
    p.add_argument("--iters", type=int, default=None, help="AMP training iterations per family and loss (30)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip the remaining steps past this many seconds")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and the commands it runs (default: torch's; --quick: 1, which a "
                        "shared, oversubscribed CPU needs: two threads waiting on each other there make a "
                        "forward 100x slower)")
    return p


#: cheap and deploy-path steps first, the demo training (the longest) last: a run cut by --budget-s loses least
STEPS = [
    Step("environment", step_environment, "device, versions, ONNX Runtime providers"),
    Step("bundle", step_bundle, "the bundle's wheels unpacked (onnxslim, pycocotools import)"),
    Step("data", step_data, "the demo's synthetic data regenerated"),
    Step("amp_train", step_amp_train, "AMP training per family and loss: finite, fp32 loss maths, GradScaler"),
    Step("resume", step_resume, "train() with AMP stopped after epoch 0 and resumed from last.pt, per family"),
    Step("ddp", step_ddp, "torchrun --nproc_per_node 1: DDP on NCCL (gloo on CPU)"),
    Step("trt_backend_cuda", step_trt_backend_cuda, "TensorRT backend's CUDA side (real cuda-bindings, fake TensorRT)",
         needs_cuda=True),
    Step("export", step_export, "carried checkpoint -> FP32 NMS graph (verified) + INT8 Q/DQ graph"),
    Step("ort", step_ort, "ONNX Runtime CPU: provider used, parity and AP vs PyTorch"),
    Step("ort_cuda", step_ort_cuda, "ONNX Runtime CUDA provider: used, parity and AP", needs_cuda=True),
    Step("trt_fp16", lambda c: step_trt(c, "fp16"), "TensorRT FP16 engine: inspector, parity, AP", needs_cuda=True),
    Step("trt_int8", lambda c: step_trt(c, "int8"), "TensorRT INT8 engine: INT8 convs, FP32 NMS, parity, AP",
         needs_cuda=True),
    Step("latency", step_latency, "eager latency per family: GPU fp32/AMP vs CPU"),
    Step("demo_train", step_demo_train, "the demo recipe trained here: time and AP", needs_cuda=True),
]
STEP_NAMES = [s.name for s in STEPS]
#: what a later step needs from an earlier one
NEEDS = {"amp_train": "data", "resume": "data", "ddp": "data", "demo_train": "data", "export": "bundle",
         "ort": "export", "ort_cuda": "ort", "trt_fp16": "ort", "trt_int8": "ort"}


def parse_steps(text: str | None, flag: str) -> list[str]:
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown:
        raise HarmonicError(f"{flag}: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEP_NAMES)}")
    return names


def preflight(args: argparse.Namespace) -> tuple[dict[str, Any], Path, list[str], list[str] | None]:
    """Everything checked before any GPU work: step names, the bundle, the checkpoint's model."""
    required = parse_steps(args.require, "--require")
    wanted = parse_steps(args.steps, "--steps") if args.steps is not None else None
    if wanted is not None:
        left_out = [r for r in required if r not in wanted]
        if left_out:
            raise HarmonicError(f"--require {','.join(left_out)}: not in --steps, so it would always be skipped")
    manifest = bundle.check_bundle(Path(args.bundle))
    ckpt = Path(args.checkpoint) if args.checkpoint else Path(args.bundle) / manifest["checkpoint"]["file"]
    bundle.check_checkpoint(ckpt)
    return manifest, ckpt, required, wanted


def summary_line(steps: list[dict[str, Any]], seconds: float, cuda: bool) -> str:
    n = {k: sum(s["status"] == k for s in steps) for k in ("ok", "skipped", "failed")}
    gaps = [f"{s['step']} ({s.get('reason') or s.get('error')})" for s in steps if s["status"] != "ok"]
    head = f"gpu_check: {n['ok']} ok, {n['skipped']} skipped, {n['failed']} failed in {seconds:.0f} s"
    if not cuda:
        head += " (CPU mode: nothing on a GPU was verified)"
    if not gaps:
        return f"{head}; all {len(steps)} steps verified"
    verdict = "FAILED" if n["failed"] else "passed with gaps"
    return f"{head}; {verdict}; NOT verified: " + "; ".join(gaps)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        manifest, ckpt, required, wanted = preflight(args)
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise HarmonicError("--device cuda: torch sees no CUDA device here")
    except HarmonicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    quiet = logging.getLogger("harmonic")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # short-schedule warnings of the in-process trainings
    try:
        return _run(args, manifest, ckpt, required, wanted)
    finally:
        quiet.setLevel(level)


def _run(args: argparse.Namespace, manifest: dict[str, Any], ckpt: Path, required: list[str],
         wanted: list[str] | None) -> int:
    """The steps, in order, then gpu_check.json and the summary line (after :func:`preflight`)."""
    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.threads is None and args.quick:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args, out, cuda, manifest, out / "gpu_check.log", state={"checkpoint": ckpt.resolve()})
    ctx.log.write_text("")
    t_start = time.perf_counter()
    ctx.state["t_start"] = t_start
    records: list[dict[str, Any]] = []
    for k, st in enumerate(STEPS, 1):
        print(f"[{k:>2}/{len(STEPS)}] {st.name:<17} {st.what}", flush=True)
        rec = run_step(ctx, st, records, required, wanted, t_start)
        records.append(rec)
        extra = rec.get("reason") or rec.get("error") or f"{sum(c['pass'] for c in ctx.checks)} checks passed"
        print(f"        {rec['status']:>7} {st.name:<17} {rec['seconds']:6.1f} s  {extra}", flush=True)
    seconds = time.perf_counter() - t_start
    summary = write_summary(ctx, records, required, ckpt, seconds)
    print(summary_line(records, seconds, cuda) + f"  ({out / 'gpu_check.json'})", flush=True)
    return 0 if summary["ok"] else 1


def run_step(ctx: Ctx, st: Step, records: list[dict[str, Any]], required: list[str], wanted: list[str] | None,
             t_start: float) -> dict[str, Any]:
    """Run one step (or skip it: not wanted, no CUDA, what it needs did not pass, budget spent): its record,
    ``status`` ok / skipped / failed with its checks and seconds; a failure's traceback goes to the log."""
    rec: dict[str, Any] = {"step": st.name, "what": st.what}
    t0 = time.perf_counter()
    ctx.checks = []
    need = NEEDS.get(st.name)
    try:
        if wanted is not None and st.name not in wanted:
            raise Skip("not in --steps")
        if st.needs_cuda and not ctx.cuda:
            raise Skip("no CUDA device" if ctx.args.device != "cpu" else "--device cpu")
        if need and next((r["status"] for r in records if r["step"] == need), None) != "ok":
            raise Skip(f"needs {need}, which did not pass")
        if time.perf_counter() - t_start > ctx.args.budget_s:
            raise Skip(f"--budget-s {ctx.args.budget_s:.0f} s spent")
        result = st.fn(ctx) or {}
        failed = [c for c in ctx.checks if not c["pass"]]
        rec.update(status="failed" if failed else "ok", result=result)
        if failed:
            rec["error"] = "; ".join(f"{c['check']}: {c['value']} (needs {c['op']} {c['threshold']})"
                                     for c in failed)
    except Skip as exc:
        rec.update(status="skipped", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed step is reported, the others still run
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        with open(ctx.log, "a") as f:
            f.write(traceback.format_exc())
    if rec["status"] == "skipped" and st.name in required:
        rec.update(status="failed", error=f"required (--require) but skipped: {rec.pop('reason')}")
    rec["checks"] = ctx.checks
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def write_summary(ctx: Ctx, records: list[dict[str, Any]], required: list[str], ckpt: Path,
                  seconds: float) -> dict[str, Any]:
    """``<out>/gpu_check.json``: device, versions, mode, thresholds, every step's record, what was not verified."""
    args, cuda = ctx.args, ctx.cuda
    env = next((r.get("result", {}) for r in records if r["step"] == "environment"), {})
    summary = {
        "device": env.get("gpu") or ("cpu" if not cuda else None), "versions": {**(env.get("versions") or {}), **versions()},
        "mode": {"device": ctx.device, "quick": bool(args.quick)}, "required": required, "seconds": round(seconds, 1),
        "bundle": {"path": str(Path(args.bundle).resolve()), "checkpoint": str(ckpt)},
        "thresholds": {"agree_ort_eager": AGREE_ORT_EAGER, "ap_tolerance": AP_TOL, "agree_trt": AGREE_TRT,
                       "demo_floors": DEMO_FLOORS, "min_scaler_step_share": MIN_SCALER_STEP_SHARE},
        "steps": records,
        "not_verified": [r["step"] for r in records if r["status"] != "ok"],
        "ok": all(r["status"] != "failed" for r in records),
    }
    from harmonic.atomic import write_text

    write_text(ctx.out / "gpu_check.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
