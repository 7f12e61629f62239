"""One command for a machine with an NVIDIA GPU (<= 8 minutes): train, export, ONNX Runtime CUDA, TensorRT FP16/INT8.

Steps, each reported ok / skipped (reason) / failed (error), with a JSON summary (``--out``/gpu_check.json):

1. ``environment``   torch/CUDA, ONNX Runtime providers, TensorRT version, GPU name
2. ``data``          a small synthetic dataset (``harmonic synth``)
3. ``train_cuda``    one short epoch on CUDA with AMP (skipped without CUDA); without CUDA a
                     ``train_cpu_smoke`` of a few iterations gives the later steps a checkpoint
4. ``export``        FP32 NMS graph (verified against PyTorch) + INT8 Q/DQ graph (``--int8 --calib``)
5. ``ort_cpu``       ``infer/run.py --bench`` on the validation images (AP and latency)
6. ``ort_cuda``      the same on the CUDA execution provider (skipped without onnxruntime-gpu)
7. ``trt_fp16`` / ``trt_int8``  engine build, ``infer/run.py --bench`` on it, and parity against
                     ONNX Runtime on the same images (skipped when ``tensorrt`` does not import)

On a CPU-only machine the GPU steps are skipped with their reason and the rest runs
(``tests/test_gpu_check.py`` runs it with ``--quick``).

    python scripts/gpu_check.py --out runs/gpu_check            # on the GPU machine
    python scripts/gpu_check.py --out /tmp/gc --quick           # a tiny model, a minute on a CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


class Skip(Exception):
    """A step that does not apply on this machine (the message is the reason)."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder; gpu_check.json is written here")
    p.add_argument("--quick", action="store_true", help="tiny model and data (for tests and CPU machines)")
    p.add_argument("--model", default="retinanet_resnet18_fpn")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--num-train", type=int, default=256)
    p.add_argument("--num-val", type=int, default=32)
    p.add_argument("--batch", type=int, default=8, help="inference batch")
    p.add_argument("--steps", default=None, help="comma-separated subset of steps to run (others are skipped)")
    return p


def run_cli(args: list[Any], log: Path) -> str:
    """Run ``python <args>`` from the repository root; raise with the last output line on failure."""
    cmd = [sys.executable, *map(str, args)]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"{' '.join(cmd[1:3])} exited {proc.returncode}: {lines[-1] if lines else ''}")
    return proc.stdout


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def trt_available() -> str:
    """TensorRT version, or raise :class:`Skip` with the reason."""
    if not cuda_available():
        raise Skip("no CUDA device")
    try:
        import tensorrt
    except ImportError as exc:
        raise Skip(f"tensorrt does not import ({exc})") from None
    return str(tensorrt.__version__)


def bench_report(out_dir: Path) -> dict[str, Any]:
    """AP and end-to-end latency from an ``infer/run.py --annotations --bench`` output folder."""
    res: dict[str, Any] = {}
    rep = out_dir / "report.json"
    if rep.is_file():
        data = json.loads(rep.read_text())
        res["AP"] = data.get("coco", {}).get("AP")
        res["spearman"] = data.get("consistency", {}).get("spearman")
    if (out_dir / "bench.json").is_file():
        bench = json.loads((out_dir / "bench.json").read_text())
        res["engine_only_img_s"] = bench.get("engine_only", {}).get("throughput_img_s")
        res["end_to_end_img_s"] = bench.get("end_to_end", {}).get("throughput_img_s")
    return res


def parity(a: Path, b: Path, images: Path, size: int, batch: int, **opts_b: Any) -> dict[str, float]:
    """Share of ``a``'s detections (ONNX Runtime) that ``b`` reproduces on the same letterboxed images."""
    from bench_backends import agreement, backend_infer

    from harmonic.runtime import open_backend
    from harmonic.runtime.preprocess import decode_image, prepare_image, to_batch

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[: 4 * batch]
    chw = [prepare_image(decode_image(f), size)[0] for f in files]
    arrays = [to_batch(chw[k : k + batch]) for k in range(0, len(chw), batch)]
    with open_backend(a, provider="cpu") as ba, open_backend(b, **opts_b) as bb:
        ra = [d for x in arrays for d in backend_infer(ba)(x)]
        rb = [d for x in arrays for d in backend_infer(bb)(x)]
    agree, dscore = agreement(ra, rb, score_min=0.05)
    return {"agree": agree, "mean_abs_dscore": dscore, "images": len(files)}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    if args.quick:
        args.img_size, args.num_train, args.num_val, args.batch = 64, 8, 4, 2
    wanted = set(args.steps.split(",")) if args.steps else None
    cuda = cuda_available()
    state: dict[str, Any] = {}
    steps: list[dict[str, Any]] = []

    def step(name: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"step": name}
        try:
            if wanted is not None and name not in wanted:
                raise Skip("not in --steps")
            rec.update(status="ok", **(fn() or {}))
        except Skip as exc:
            rec.update(status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the others still run
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            with open(log, "a") as f:
                f.write(traceback.format_exc())
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        steps.append(rec)
        extra = rec.get("reason") or rec.get("error") or ""
        print(f"[{rec['status']:>7}] {name:<16} {rec['seconds']:6.1f} s  {extra}", flush=True)

    def environment() -> dict[str, Any]:
        import onnxruntime as ort

        env: dict[str, Any] = {"cuda": cuda, "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
        try:
            import torch

            env["torch"] = torch.__version__
            if cuda:
                env["gpu"] = torch.cuda.get_device_name(0)
                env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        except ImportError:
            pass
        try:
            import tensorrt

            env["tensorrt"] = tensorrt.__version__
        except ImportError:
            env["tensorrt"] = None
        return env

    def data() -> dict[str, Any]:
        from harmonic.data.synth import generate

        state["data"] = generate(out / "data", num_train=args.num_train, num_val=args.num_val, seed=0,
                                 img_size=args.img_size, num_classes=3)
        return {"yaml": str(state["data"])}

    def train(device: str) -> dict[str, Any]:
        run = out / f"train_{device}"
        cmd = ["train/run.py", "--data", state["data"], "--model", args.model, "--img-size", args.img_size,
               "--epochs", 1, "--batch-size", 8 if not args.quick else 4, "--out", run, "--device", device,
               "--fpn-channels", 64 if args.quick else 128, "--workers", 0 if args.quick else 4, "--val-every", 0,
               "--optimizer", "adamw", "--lr", "1e-3", "--warmup-iters", 1]
        if device == "cuda":
            cmd.append("--amp")
        else:
            cmd += ["--max-iters-per-epoch", 2]
        run_cli(cmd, log)
        state["ckpt"] = run / "last.pt" if (run / "last.pt").exists() else run / "best.pt"
        return {"checkpoint": str(state["ckpt"])}

    def train_cuda() -> dict[str, Any]:
        if not cuda:
            raise Skip("no CUDA device")
        return train("cuda")

    def train_cpu_smoke() -> dict[str, Any]:
        if "ckpt" in state:
            raise Skip("train_cuda made the checkpoint")
        return train("cpu")

    def export() -> dict[str, Any]:
        if "ckpt" not in state:
            raise Skip("no checkpoint (training did not run)")
        state["onnx"] = out / "model.onnx"
        val = out / "data" / "images" / "val"
        run_cli(["export/run.py", "--checkpoint", state["ckpt"], "--out", state["onnx"], "--overwrite",
                 "--int8", "--calib", out / "data" / "images" / "train", "--calib-count", 16 if args.quick else 64,
                 *(["--no-verify"] if args.quick else ["--verify-images", val])], log)
        # --quick: a 2-iteration model has near-tied duplicate detections that verification can't pair
        state["int8"] = out / "model.int8.onnx"
        return {"onnx": str(state["onnx"]), "int8_onnx": str(state["int8"])}

    def infer(name: str, model: Path, *extra: Any) -> dict[str, Any]:
        d = out / f"infer_{name}"
        run_cli(["infer/run.py", "--engine", model, "--images", out / "data" / "images" / "val",
                 "--annotations", state["data"], "--out", d, "--bench", "--batch", args.batch, *extra],
                log)
        return bench_report(d)

    def ort_cpu() -> dict[str, Any]:
        if "onnx" not in state:
            raise Skip("no exported graph")
        return {"fp32": infer("ort_cpu", state["onnx"], "--provider", "cpu"),
                "int8": infer("ort_cpu_int8", state["int8"], "--provider", "cpu")}

    def ort_cuda() -> dict[str, Any]:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
        if "onnx" not in state:
            raise Skip("no exported graph")
        return infer("ort_cuda", state["onnx"], "--provider", "cuda")

    def trt(kind: str) -> dict[str, Any]:
        version = trt_available()
        if "onnx" not in state:
            raise Skip("no exported graph")
        from harmonic.export.tensorrt import build_engine
        from harmonic.runtime import open_backend

        src = state["int8"] if kind == "int8" else state["onnx"]
        engine = out / f"model.{kind}.engine"
        build_engine(src, engine, fp16=kind == "fp16", int8=kind == "int8", profile=(1, args.batch, args.batch),
                     overwrite=True)
        res = {"tensorrt": version, "engine": str(engine), **infer(f"trt_{kind}", engine)}
        with open_backend(state["onnx"], provider="cpu") as be:
            size = be.img_size
        res["parity_vs_ort_fp32"] = parity(state["onnx"], engine, out / "data" / "images" / "val", size, args.batch)
        return res

    step("environment", environment)
    step("data", data)
    step("train_cuda", train_cuda)
    step("train_cpu_smoke", train_cpu_smoke)
    step("export", export)
    step("ort_cpu", ort_cpu)
    step("ort_cuda", ort_cuda)
    step("trt_fp16", lambda: trt("fp16"))
    step("trt_int8", lambda: trt("int8"))
    summary = {"steps": steps, "ok": all(s["status"] != "failed" for s in steps)}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"summary: {out / 'gpu_check.json'} ({sum(s['status'] == 'ok' for s in steps)} ok, "
          f"{sum(s['status'] == 'skipped' for s in steps)} skipped, {sum(s['status'] == 'failed' for s in steps)} failed)")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
