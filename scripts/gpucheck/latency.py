"""Eager inference latency per family: GPU fp32 and AMP against this box's CPU."""

from __future__ import annotations

import time
from typing import Any

from gpucheck.context import FAMILIES, Ctx, percentiles


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
