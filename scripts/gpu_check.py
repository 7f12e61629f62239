"""One command for a bare GPU box (<= 8 minutes): AMP training per family, DDP/NCCL, the demo on the GPU,
GPU vs CPU latency, the TensorRT backend's CUDA side, export, ONNX Runtime, TensorRT FP16/INT8 engines.

Runs with the box's own Python and the project on ``PYTHONPATH`` (no install, no ``.venv``),
plus the bundle made here by ``make gpu-bundle`` (``scripts/gpu_bundle.py``: the wheels the box
lacks and a demo-recipe checkpoint trained here). Bad input (an unknown ``--require`` step, a
missing or oversized bundle, a checkpoint of another model) is a one-line error, exit 2, before
any GPU work.

Each step is ok / skipped (reason) / failed (error); every number it measures is written with
its pass threshold to ``<out>/gpu_check.json`` with the device name and versions. ``--require
STEP,...`` turns a skipped step into a failure. The last line names every step that was not
verified; it never says a plain "ok" having checked nothing.

    PYTHONPATH=$PWD python3 scripts/gpu_check.py --bundle dist/gpu-bundle --out runs/gpu_check
    PYTHONPATH=$PWD python3 scripts/gpu_check.py --bundle dist/gpu-bundle --out /tmp/gc --device cpu --quick

``--device cpu --quick`` (tiny data, a few iterations) runs every step that does not need a GPU:
the test suite and a CPU machine use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harmonic.contract import FORMAT_KEY, METADATA_FORMAT, sidecar_path  # noqa: E402
from harmonic.errors import HarmonicError  # noqa: E402
from harmonic.experiments import bundle  # noqa: E402

#: one detector per family: the small variants a GPU run sizes (RetinaNet, FCOS, SSD, Faster R-CNN)
FAMILIES = {"retinanet": "retinanet_resnet18_fpn", "fcos": "fcos_resnet18_fpn",
            "ssd": "ssdlite320_mobilenet_v3_large", "faster_rcnn": "fasterrcnn_resnet18_fpn"}
LOSSES = ("harmonic", "baseline")
#: pass thresholds (recorded beside each measured value in gpu_check.json)
AGREE_ORT_EAGER = 0.95      # share of eager detections ONNX Runtime reproduces (IoU >= 0.95, same class)
AP_TOL = 0.005              # |AP difference| allowed between backends (0.5 AP points)
AGREE_TRT = {"fp16": 0.90, "int8": 0.70}  # share of ONNX Runtime FP32 detections a TensorRT engine reproduces
DEMO_FLOORS = {"AP": 0.35, "AP50": 0.60}  # the demo's convergence floors (harmonic.experiments.report.FLOORS)
MIN_SCALER_STEP_SHARE = 0.5  # AMP: at least half the iterations take an optimizer step (the rest: inf/nan skips)


class Skip(Exception):
    """A step that does not apply here (the message is the reason)."""


@dataclass
class Step:
    name: str
    fn: Callable[[Ctx], dict[str, Any] | None]
    what: str
    needs_cuda: bool = False


@dataclass
class Ctx:
    """What the steps share: arguments, folders, device, the results so far."""

    args: argparse.Namespace
    out: Path
    cuda: bool
    manifest: dict[str, Any]
    log: Path
    state: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def check(self, name: str, value: Any, op: str, threshold: Any) -> bool:
        """Record ``value op threshold`` (``>=``, ``<=``, ``==``) as a check of the running step."""
        ok = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}[op](value, threshold) \
            if value is not None else False
        self.checks.append({"check": name, "value": value, "op": op, "threshold": threshold, "pass": bool(ok)})
        return ok

    def say(self, text: str) -> None:
        print(f"           {text}", flush=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


# ---------------------------------------------------------------------------------------------- helpers


def subprocess_env(ctx: Ctx) -> dict[str, str]:
    """The environment of the commands the check runs: the bundle's unpacked wheels and the repo importable."""
    paths = [str(ctx.out / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    if ctx.args.threads:
        env["OMP_NUM_THREADS"] = str(ctx.args.threads)
    return env


def run_cli(ctx: Ctx, args: list[Any], timeout: float | None = None, module: bool = False) -> str:
    """Run ``python <args>`` (``-m`` first with ``module``) from the repo root, output into the log; raise
    with the last line on failure. Returns stdout + stderr."""
    cmd = [sys.executable, *(["-m"] if module else []), *map(str, args)]
    with open(ctx.log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=subprocess_env(ctx), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd[1:3])} ran past {timeout:.0f} s") from None
    with open(ctx.log, "a") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise RuntimeError(f"{' '.join(map(str, args[:2]))} exited {proc.returncode}: {lines[-1] if lines else ''}")
    return proc.stdout + proc.stderr


def percentiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"p50": round(statistics.median(ms), 3), "p90": round(q[8], 3), "n": len(ms)}


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "pycocotools",
                 "numpy", "opencv-python-headless", "opencv-python", "scipy", "tensorrt", "cuda-bindings",
                 "cuda-python"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except ImportError:
        pass
    return out


def small_data(ctx: Ctx) -> Path:
    return ctx.state["small_yaml"]


# ---------------------------------------------------------------------------------------------- steps


def step_environment(ctx: Ctx) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {"device": ctx.device, "versions": versions(), "ort_providers": ort.get_available_providers(),
                           "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if ctx.cuda:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        ctx.check("torch sees the GPU", torch.cuda.device_count(), ">=", 1)
    ctx.state["gpu"] = env.get("gpu")
    ctx.say(f"{env.get('gpu', 'no GPU')}; torch {torch.__version__}, onnxruntime {ort.__version__} "
            f"{env['ort_providers']}")
    return env


def step_bundle(ctx: Ctx) -> dict[str, Any]:
    res = bundle.activate(Path(ctx.args.bundle), ctx.out / "site")
    import importlib

    for module in ("onnxslim", "pycocotools.cocoeval"):
        importlib.import_module(module)  # an ImportError fails the step (export/evaluation need them)
    ctx.say(f"unpacked {res['unpacked'] or 'nothing'}; already here: {res['already_here'] or 'nothing'}")
    return {**res, "checkpoint": ctx.manifest.get("checkpoint", {}).get("file"),
            "bundle_mib": round(bundle.folder_bytes(Path(ctx.args.bundle)) / 2**20, 2)}


def step_data(ctx: Ctx) -> dict[str, Any]:
    quick = ctx.args.quick
    d = ctx.out / "data"
    if quick:
        demo = bundle.generate_data(d / "demo", num_train=16, num_val=8)
    else:
        demo = bundle.generate_data(d / "demo")  # exactly the data the bundle's checkpoint was trained on
    small = bundle.generate_data(d / "small", num_train=8 if quick else 96, num_val=4 if quick else 8)
    ctx.state.update(demo_yaml=demo, small_yaml=small, val_images=d / "demo" / "images" / "val",
                     train_images=d / "demo" / "images" / "train")
    n_val = len(list(ctx.state["val_images"].iterdir()))
    return {"demo": str(demo), "small": str(small), "val_images": n_val}


class LowPrecisionRecorder:
    """Records the dtype of every floating result of every aten op run while active (a dispatch mode:
    it sees the ops as autocast rewrote them)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        rec = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001, ANN204
                import torch
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.is_floating_point():
                        rec.ops += 1
                        if t.dtype in (torch.float16, torch.bfloat16):
                            rec.low.add(str(func))
                return out

        self.mode_cls = Mode
        self.ops = 0
        self.low: set[str] = set()

    def wrap(self, fn: Callable) -> Callable:
        def wrapped(*a: Any, **k: Any) -> Any:
            with self.mode_cls():
                return fn(*a, **k)
        return wrapped


def loss_region(model: Any) -> tuple[Any, str]:
    """The object and method name holding a detector's loss maths (the HarmonicDet adapters)."""
    if hasattr(model, "roi_heads") and hasattr(model.roi_heads, "box_loss"):
        return model.roi_heads, "box_loss"
    if hasattr(model, "head") and hasattr(model.head, "compute_loss"):
        return model.head, "compute_loss"
    return model, "compute_loss"


def train_loader(yaml: Path, img_size: int, batch: int, workers: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    from harmonic.data.dataset import DetectionDataset, collate
    from harmonic.data.dataset_file import load_dataset_config
    from harmonic.data.readers import read_split

    cfg = load_dataset_config(yaml)
    records = read_split(cfg.splits["train"], list(cfg.names))
    ds = DetectionDataset(records, cfg.splits["train"].images, img_size, train=True, augment=False)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate, drop_last=True,
                      generator=torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available())


def amp_run(ctx: Ctx, family: str, name: str, loss: str, iters: int, img_size: int, batch: int) -> dict[str, Any]:
    """``iters`` AMP training steps of one detector; the loss region's op dtypes recorded."""
    import torch

    from harmonic.models import build_detector
    from harmonic.training.optim import build_optimizer

    dev = torch.device(ctx.device)
    torch.manual_seed(0)
    model = build_detector(name, 3, loss=loss, img_size=img_size).to(dev).train()
    opt = build_optimizer(model, "adamw", 1e-4, None)
    scaler = torch.amp.GradScaler("cuda", enabled=ctx.cuda)
    amp_dtype = torch.float16 if ctx.cuda else torch.bfloat16
    rec_loss, rec_all = LowPrecisionRecorder(), LowPrecisionRecorder()
    holder, meth = loss_region(model)
    loss_fn = getattr(holder, meth)
    if not ctx.cuda:
        # CPU: the forward runs in fp32 (bf16 convolutions are slow on most CPUs) and only the loss region
        # under bf16 autocast, so any autocast-eligible op (matmul, conv, ...) in the loss maths shows up
        def loss_fn(*a: Any, _fn: Callable = loss_fn, **k: Any) -> Any:
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                rec_loss.autocast = torch.is_autocast_enabled("cpu")
                return _fn(*a, **k)
    setattr(holder, meth, rec_loss.wrap(loss_fn))
    first = next(p for p in model.parameters() if p.requires_grad).detach().clone()
    loader = train_loader(small_data(ctx), img_size, batch, 0 if ctx.args.quick else 4)
    losses, times, skipped, loss_dtypes = [], [], 0, set()
    it = 0
    while it < iters:
        for images, targets in loader:
            if it >= iters:
                break
            images = images.to(dev, non_blocking=True)
            targets = [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            if ctx.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=ctx.cuda):
                fwd = (rec_all.wrap(model) if it == 0 and ctx.cuda else model)(list(images), targets)
            terms = {k: v for k, v in fwd.items() if k.startswith("loss_")}
            loss_dtypes |= {str(v.dtype) for v in terms.values()}
            total = sum(v.float() for v in terms.values())
            opt.zero_grad(set_to_none=True)
            before = scaler.get_scale() if ctx.cuda else None
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            if ctx.cuda:
                torch.cuda.synchronize()
                skipped += int(scaler.get_scale() < before)
            times.append(1000 * (time.perf_counter() - t0))
            losses.append(float(total.detach()))
            it += 1
    tag = f"{family}/{loss}"
    finite = sum(map(lambda v: v == v and abs(v) != float("inf"), losses))
    ctx.check(f"{tag}: finite losses", finite, "==", iters)
    ctx.check(f"{tag}: loss_* dtypes", sorted(loss_dtypes), "==", ["torch.float32"])
    ctx.check(f"{tag}: low-precision ops in the loss maths", sorted(rec_loss.low), "==", [])
    if ctx.cuda:
        ctx.check(f"{tag}: autocast active (fp16 ops in the forward)", len(rec_all.low) > 0, "==", True)
    else:
        ctx.check(f"{tag}: bf16 autocast active in the loss region", getattr(rec_loss, "autocast", False), "==", True)
    changed = not torch.equal(first, next(p for p in model.parameters() if p.requires_grad).detach())
    ctx.check(f"{tag}: parameters updated", changed, "==", True)
    if ctx.cuda:
        ctx.check(f"{tag}: GradScaler steps taken share", round(1 - skipped / iters, 3), ">=", MIN_SCALER_STEP_SHARE)
    half = times[len(times) // 2:] or times
    return {"iters": iters, "batch": batch, "img_size": img_size, "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4), "step_ms_p50": round(statistics.median(half), 2),
            "scaler_skipped": skipped if ctx.cuda else None, "loss_region_float_ops": rec_loss.ops,
            "final_scale": scaler.get_scale() if ctx.cuda else None}


def step_amp_train(ctx: Ctx) -> dict[str, Any]:
    quick = ctx.args.quick
    iters = ctx.args.iters or (2 if quick else 30)
    res: dict[str, Any] = {"amp_dtype": "float16" if ctx.cuda else "bfloat16 (CPU: loss region only)", "runs": {}}
    for family, name in FAMILIES.items():
        size = 128 if quick else None
        from harmonic.models import MODELS

        size = size or MODELS[name].default_img_size
        for loss in LOSSES:
            r = amp_run(ctx, family, name, loss, iters, size, 2 if quick else 8)
            res["runs"][f"{family}/{loss}"] = {"model": name, **r}
            ctx.say(f"{family:<11} {loss:<8} {r['step_ms_p50']:8.1f} ms/step  loss {r['loss_first']:.3f} -> "
                    f"{r['loss_last']:.3f}" + (f"  scaler skipped {r['scaler_skipped']}" if ctx.cuda else ""))
    return res


def step_resume(ctx: Ctx) -> dict[str, Any]:
    """train() with AMP for one epoch, stopped; resumed from last.pt for the second (per family)."""
    from harmonic.training.checkpoint import load_checkpoint
    from harmonic.training.config import TrainConfig
    from harmonic.training.logging_utils import read_jsonl
    from harmonic.training.trainer import train

    res = {}
    for family, name in FAMILIES.items():
        run = ctx.out / "resume" / family
        quick = ctx.args.quick
        cfg = TrainConfig(data=small_data(ctx), model=name, epochs=2, batch_size=2 if quick else 8, out=run,
                          device=ctx.device, workers=0, max_iters_per_epoch=2 if quick else 6, val_every=0,
                          log_every=1, img_size=128 if quick else None, amp=ctx.cuda)
        train(cfg, stop_after_epoch=0)
        first = load_checkpoint(run / "last.pt")
        out = train(dataclasses.replace(cfg, resume=run / "last.pt"))
        last = load_checkpoint(run / "last.pt")
        starts = [r for r in read_jsonl(run / "log.jsonl") if r.get("type") == "start"]
        tag = family
        ctx.check(f"{tag}: first run stopped after epoch 0", first["epoch"], "==", 0)
        ctx.check(f"{tag}: resumed at epoch 1", starts[-1].get("resume_epoch"), "==", 1)
        ctx.check(f"{tag}: epochs done after resume", out["epochs_done"], "==", 2)
        ctx.check(f"{tag}: last.pt epoch", last["epoch"], "==", 1)
        if ctx.cuda:
            scale = (last.get("scaler") or {}).get("scale")
            ctx.check(f"{tag}: GradScaler state saved", scale is not None and float(scale) > 0, "==", True)
        res[family] = {"model": name, "first_epoch": first["epoch"], "resumed_epoch": starts[-1].get("resume_epoch"),
                       "scaler_scale": float((last.get("scaler") or {}).get("scale", 0)) if ctx.cuda else None}
        ctx.say(f"{family:<11} resumed at epoch {starts[-1].get('resume_epoch')}, finished {out['epochs_done']} epochs")
    return res


def step_ddp(ctx: Ctx) -> dict[str, Any]:
    """``torchrun --nproc_per_node 1``: the DDP path, NCCL on a GPU (gloo on CPU)."""
    run = ctx.out / "ddp"
    args = ["--standalone", "--nproc_per_node", "1", str(ROOT / "train" / "run.py"), "--data", small_data(ctx),
            "--model", "fcos_resnet10s_fpn", "--epochs", "1", "--batch-size", "2" if ctx.args.quick else "8",
            "--max-iters-per-epoch", "2" if ctx.args.quick else "10", "--device", ctx.device, "--workers", "0",
            "--val-every", "0", "--out", run] + (["--amp"] if ctx.cuda else [])
    text = run_cli(ctx, ["torch.distributed.run", *args], timeout=240, module=True)
    backend = "nccl" if ctx.cuda else "gloo"
    ctx.check("DDP process group joined", f"backend {backend}" in text, "==", True)
    ctx.check("last.pt written", (run / "last.pt").is_file(), "==", True)
    return {"backend": backend, "world_size": 1}


def step_demo_train(ctx: Ctx) -> dict[str, Any]:
    """The demo recipe (harmonic demo's: 7 epochs, HarmonicDet loss) trained on this device: time and AP."""
    if ctx.args.quick:
        raise Skip("--quick: the demo recipe is not trained")
    from harmonic.experiments.recipe import DEMO_MODEL_OPTIONS

    r = bundle.RECIPE
    run = ctx.out / "demo_train"
    cmd = ["train/run.py", "--data", ctx.state["demo_yaml"], "--out", run, "--model", r["model"], "--loss", r["loss"],
           "--epochs", 7, "--img-size", r["img_size"], "--batch-size", r["batch_size"], "--optimizer", r["optimizer"],
           "--lr", r["lr"], "--fpn-channels", r["fpn_channels"], "--augment", r["augment"], "--seed", r["seed"],
           "--device", ctx.device, "--workers", 4, "--val-every", 7]
    for opt in DEMO_MODEL_OPTIONS[r["model"]]:
        cmd += ["--model-option", opt]
    if ctx.cuda:
        cmd.append("--amp")
    t0 = time.perf_counter()
    left = ctx.args.budget_s - (t0 - ctx.state["t_start"])
    run_cli(ctx, cmd, timeout=max(60.0, min(300.0, left)))  # the whole check stays inside --budget-s
    seconds = time.perf_counter() - t0
    from harmonic.training.checkpoint import load_checkpoint

    coco = ((load_checkpoint(run / "last.pt").get("metrics") or {}).get("val") or {}).get("coco", {})
    ctx.check("demo AP", coco.get("AP"), ">=", DEMO_FLOORS["AP"])
    ctx.check("demo AP50", coco.get("AP50"), ">=", DEMO_FLOORS["AP50"])
    ctx.say(f"demo recipe: {seconds:.0f} s, AP {coco.get('AP')}, AP50 {coco.get('AP50')}")
    return {"seconds": round(seconds, 1), "epochs": 7, "AP": coco.get("AP"), "AP50": coco.get("AP50"),
            "AP75": coco.get("AP75"), "amp": ctx.cuda}


def time_eager(model: Any, x: Any, runs: int, warm: int, amp: bool, cuda: bool) -> list[float]:
    import torch

    ms = []
    with torch.inference_mode():
        for i in range(warm + runs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device_type="cuda" if cuda else "cpu", enabled=amp):
                model(list(x))
            if cuda:
                torch.cuda.synchronize()
            if i >= warm:
                ms.append(1000 * (time.perf_counter() - t0))
    return ms


def step_latency(ctx: Ctx) -> dict[str, Any]:
    """Eager inference per family: GPU fp32 and AMP at batch 1 and 8 vs this box's CPU (fp32)."""
    import torch

    from harmonic.models import MODELS, build_detector

    quick = ctx.args.quick
    batches = (1, 2) if quick else (1, 8)
    res: dict[str, Any] = {"cpu_threads": torch.get_num_threads(), "families": {}}
    for family, name in FAMILIES.items():
        size = 128 if quick else MODELS[name].default_img_size
        torch.manual_seed(0)
        model = build_detector(name, 3, img_size=size).eval()
        row: dict[str, Any] = {"model": name, "img_size": size}
        for b in batches:
            x = torch.rand(b, 3, size, size)
            row[f"cpu_fp32_b{b}"] = percentiles(time_eager(model, x, 2 if quick else 5, 1, False, False))
        if ctx.cuda:
            gm = model.to("cuda")
            for b in batches:
                x = torch.rand(b, 3, size, size, device="cuda")
                for amp in (False, True):
                    row[f"gpu_{'amp' if amp else 'fp32'}_b{b}"] = percentiles(time_eager(gm, x, 20, 5, amp, True))
            big = batches[-1]
            speed = row[f"cpu_fp32_b{big}"]["p50"] / row[f"gpu_fp32_b{big}"]["p50"]
            row[f"gpu_speedup_fp32_b{big}"] = round(speed, 2)
            ctx.check(f"{family}: GPU faster than CPU at batch {big} (x)", round(speed, 2), ">=", 1.0)
            model.to("cpu")
        res["families"][family] = row
        ctx.say(f"{family:<11} " + "  ".join(f"{k} {v['p50']:.1f}" for k, v in row.items() if isinstance(v, dict))
                + " ms p50")
    return res


def fake_tensorrt_for_cuda(cudart: Any, S: int, K: int) -> types.ModuleType:  # noqa: N803
    """A stand-in ``tensorrt`` whose 'engine' is computed with real CUDA copies on the backend's stream:
    out = per-image mean of the input (num_dets = 1..B, det_scores = mean, boxes fixed, class 2)."""
    import numpy as np

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, lvl: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT=0, OUTPUT=1)
    trt.nptype = lambda dt: dt
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    tensors = [("images", 0, (-1, 3, S, S), np.float32), ("num_dets", 1, (-1, 1), np.int32),
               ("det_boxes", 1, (-1, K, 4), np.float32), ("det_scores", 1, (-1, K), np.float32),
               ("det_classes", 1, (-1, K), np.int32)]
    by = {t[0]: t for t in tensors}
    seen: dict[str, Any] = {"streams": []}
    trt.seen = seen

    def ok(r: Any) -> Any:
        if r[0] != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error {r[0]}")
        return r[1] if len(r) == 2 else None

    class Context:
        def __init__(self) -> None:
            self.addr: dict[str, int] = {}
            self.shape: tuple[int, ...] = ()

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shape = tuple(shape)
            return 1 <= shape[0] <= 4

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addr[name] = int(ptr)

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (self.shape[0], *by[name][2][1:])

        def execute_async_v3(self, stream: int) -> bool:
            seen["streams"].append(stream)
            b = self.shape[0]
            d2h, h2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            x = np.empty((b, 3, S, S), np.float32)
            ok(cudart.cudaMemcpyAsync(x.ctypes.data, self.addr["images"], x.nbytes, d2h, stream))
            ok(cudart.cudaStreamSynchronize(stream))
            outs = {"num_dets": np.arange(1, b + 1, dtype=np.int32)[:, None],
                    "det_scores": np.repeat(x.mean(axis=(1, 2, 3))[:, None], K, 1).astype(np.float32),
                    "det_boxes": np.tile(np.array([1, 1, 4, 4], np.float32), (b, K, 1)),
                    "det_classes": np.full((b, K), 2, np.int32)}
            seen["host_outputs"] = outs  # kept alive until the copies ran (synchronised below)
            for name, arr in outs.items():
                ok(cudart.cudaMemcpyAsync(self.addr[name], arr.ctypes.data, arr.nbytes, h2d, stream))
            ok(cudart.cudaStreamSynchronize(stream))
            return True

    class Engine:
        num_io_tensors = len(tensors)

        def get_tensor_name(self, i: int) -> str:
            return tensors[i][0]

        def get_tensor_mode(self, name: str) -> int:
            return by[name][1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return by[name][2]

        def get_tensor_dtype(self, name: str) -> Any:
            return by[name][3]

        def get_tensor_profile_shape(self, name: str, idx: int) -> list[tuple[int, ...]]:
            return [(1, 3, S, S), (2, 3, S, S), (4, 3, S, S)]

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> Engine | None:
            return Engine() if blob == b"FAKE-PLAN" else None

    trt.Runtime = Runtime
    return trt


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
    from harmonic.experiments.benchmarks import agreement, backend_infer, eager_infer, eager_reference
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
    from harmonic.experiments.benchmarks import agreement, backend_infer
    from harmonic.runtime import open_backend

    with open_backend(ctx.state["onnx"], provider="cuda", device="cuda:0") as be:
        ctx.check("FP32 graph ran on", be.provider, "==", "CUDAExecutionProvider")
        dets = [d for x in ctx.state["batches"] for d in backend_infer(be)(x)]
    agree, _ = agreement(ctx.state["ort_dets"], dets, score_min=0.05)
    ap = ap_of(ctx, dets, ctx.state["infos"])
    ctx.check("ORT CUDA reproduces ORT CPU (share)", round(agree, 4), ">=", AGREE_ORT_EAGER)
    ctx.check("|AP CUDA - AP CPU|", round(abs(ap - ctx.state["ap_ort_fp32"]), 4), "<=", AP_TOL)
    return {"AP": round(ap, 4), "agree_vs_cpu": round(agree, 4)}


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
    from harmonic.experiments.benchmarks import agreement, backend_infer
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


if __name__ == "__main__":
    sys.exit(main())
