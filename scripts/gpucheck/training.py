"""The training steps: AMP per family and loss (fp32 loss maths, GradScaler), resume, DDP, the demo recipe."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpucheck import bundle
from gpucheck.context import (
    DEMO_FLOORS,
    FAMILIES,
    LOSSES,
    MIN_SCALER_STEP_SHARE,
    ROOT,
    Ctx,
    Skip,
    run_cli,
    small_data,
)


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
