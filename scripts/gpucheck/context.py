"""What the GPU check's steps share: the context (:class:`Ctx`), the families and thresholds, running a
command with the bundle's packages, versions and timing summaries."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

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
