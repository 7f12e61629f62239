"""The first steps: the device and versions, the bundle's wheels unpacked, the demo's data regenerated."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from gpucheck import bundle
from gpucheck.context import Ctx, versions


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
