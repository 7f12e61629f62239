"""The bundle ``scripts/gpu_check.py`` carries to a bare GPU box: wheels it lacks + a checkpoint trained here.

The GPU box likely to be lent has no network and a Python 3.12 with torch, torchvision, onnx,
onnxruntime (CPU build), OpenCV, SciPy, matplotlib, PyYAML, tqdm, numpy and cuda-bindings, but
no onnxslim (export needs it) and no pycocotools (evaluation needs it). At most
:data:`LIMIT_BYTES` (64 MiB) of extra files travel with the working tree, so the bundle holds:

- ``wheels/``: onnxslim and pycocotools (cp312, manylinux2014 x86_64) and the pure-Python
  dependencies the box may lack; wheels of packages the box already has (numpy, onnx,
  protobuf, ...) are dropped here to stay small, and on the box a wheel is unpacked only when
  its distribution does not import there (:func:`activate`);
- ``demo.pt``: a weights-only checkpoint of the demo recipe (``fcos_resnet10s_fpn`` on the
  ``harmonic synth`` shapes at 128 px), so cross-backend AP on the box means something;
- ``manifest.json``: the recipe, the data parameters the box regenerates, the checkpoint's
  model and SHA-256, every file's size and SHA-256, the total.

    make gpu-bundle                                    # trains the checkpoint (the short recipe below)
    python scripts/gpu_bundle.py --out dist/gpu-bundle --checkpoint runs/demo/harmonic_s0/best.pt

The box side (the layout, the recipe, and the checks that run before any GPU work:
``check_bundle``, ``check_checkpoint``) lives in :mod:`gpucheck.bundle` (scripts/gpucheck/bundle.py): a missing or
oversized bundle, a tampered file or a checkpoint of another model is a one-line
:class:`~harmonic.errors.HarmonicError`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpucheck.bundle import (  # noqa: E402
    CHECKPOINT,
    DATA,
    LIMIT_BYTES,
    MANIFEST,
    RECIPE,
    check_checkpoint,
    folder_bytes,
    generate_data,
    sha256,
)

from harmonic.atomic import atomic_dir  # noqa: E402
from harmonic.errors import HarmonicError  # noqa: E402

#: what the box lacks (the project's own deps that are not on it)
WHEELS = ("onnxslim", "pycocotools")
#: distributions the box already has (import name): their wheels are not carried
ON_THE_BOX = {"numpy": "numpy", "onnx": "onnx", "protobuf": "google.protobuf", "ml_dtypes": "ml_dtypes",
              "sympy": "sympy", "mpmath": "mpmath", "typing_extensions": "typing_extensions"}


def dist_name(wheel: Path) -> str:
    """``onnxslim-0.1.98-py3-none-any.whl`` -> ``onnxslim`` (normalised: lower case, ``_``)."""
    return wheel.name.split("-")[0].lower().replace("-", "_").replace(".", "_")


def train_args(data_yaml: Path, out: Path, device: str = "cpu", recipe: dict[str, Any] | None = None) -> list[str]:
    """``train/run.py`` arguments of ``recipe`` (default :data:`RECIPE`)."""
    r = recipe or RECIPE
    args = ["--data", str(data_yaml), "--out", str(out), "--model", r["model"], "--loss", r["loss"],
            "--epochs", str(r["epochs"]), "--img-size", str(r["img_size"]), "--batch-size", str(r["batch_size"]),
            "--optimizer", r["optimizer"], "--lr", str(r["lr"]), "--fpn-channels", str(r["fpn_channels"]),
            "--augment", r["augment"], "--seed", str(r["seed"]), "--device", device, "--val-every", str(r["epochs"])]
    for opt in r["model_options"]:
        args += ["--model-option", opt]
    for key in ("max_iters_per_epoch", "workers"):
        if r.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(r[key])]
    return args


MODULES = {"pycocotools": "pycocotools", "onnxslim": "onnxslim", "colorama": "colorama", "packaging": "packaging",
           **ON_THE_BOX}


def download_wheels(dest: Path, python_version: str, platform: str) -> list[Path]:
    """``pip download`` :data:`WHEELS` with their dependencies for the box; drop what the box has."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python_version,
           "--platform", platform, "--implementation", "cp", "-d", str(dest), *WHEELS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        raise HarmonicError(f"pip download failed ({last[-1] if last else proc.returncode}): {' '.join(cmd)}")
    kept = []
    for whl in sorted(dest.glob("*.whl")):
        if dist_name(whl) in ON_THE_BOX:
            whl.unlink()
        else:
            kept.append(whl)
    return kept


def slim_checkpoint(src: Path, dst: Path) -> None:
    """Weights, spec and metrics only (no optimizer, scheduler, RNG state): a quarter of the size."""
    import torch

    from harmonic.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    keep = {k: ckpt[k] for k in ("format", "format_version", "spec", "model", "epoch", "metrics", "args", "versions")
            if k in ckpt}
    save_checkpoint(dst, keep)
    torch.load(dst, weights_only=True)  # readable as the box will read it


def train_checkpoint(work: Path, recipe: dict[str, Any], nice: int = 10) -> Path:
    """Generate :data:`DATA` and train ``recipe`` on this machine's CPU (under ``nice``) -> last.pt."""
    data_yaml = work / "data" / "dataset.yaml"
    if not data_yaml.is_file():
        print(f"gpu-bundle: generating the demo data in {work / 'data'}", flush=True)
        generate_data(work / "data")
    run = work / "run"
    cmd = ["nice", "-n", str(nice), sys.executable, str(ROOT / "train" / "run.py"),
           *train_args(data_yaml, run, recipe=recipe)]
    print(f"gpu-bundle: training the checkpoint ({recipe['model']}, {recipe['epochs']} epochs): {' '.join(cmd)}",
          flush=True)
    t0 = time.perf_counter()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise HarmonicError(f"{run}: training the bundle's checkpoint failed (see the output above)")
    print(f"gpu-bundle: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return run / "last.pt"


def make_bundle(out: Path, checkpoint: Path | None, work: Path, python_version: str = "3.12",
                platform: str = "manylinux2014_x86_64", wheels: bool = True,
                recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the bundle folder ``out`` (replaced) and return its manifest; ``HarmonicError`` over the limit.

    ``recipe``: :data:`RECIPE` with changes (e.g. ``max_iters_per_epoch`` on a busy machine); the
    manifest records the checkpoint's own training arguments either way.
    """
    recipe = {**RECIPE, **(recipe or {})}
    if checkpoint is not None:
        info = check_checkpoint(Path(checkpoint))  # before any download or training
    else:
        checkpoint = train_checkpoint(work, recipe)
        info = check_checkpoint(checkpoint)
    with atomic_dir(out) as tmp:  # the old bundle stays until the new one is complete
        manifest = _fill_bundle(tmp, out, Path(checkpoint), info, python_version, platform, wheels, recipe)
    return manifest


def _fill_bundle(tmp: Path, out: Path, checkpoint: Path, info: dict[str, Any], python_version: str, platform: str,
                 wheels: bool, recipe: dict[str, Any]) -> dict[str, Any]:
    """The bundle's files under the temporary folder ``tmp``; returns the manifest (+ ``total_bytes``)."""
    slim_checkpoint(checkpoint, tmp / CHECKPOINT)
    entries = []
    if wheels:
        for whl in download_wheels(tmp / "wheels", python_version, platform):
            dist = dist_name(whl)
            entries.append({"file": f"wheels/{whl.name}", "dist": dist, "module": MODULES.get(dist, dist),
                            "bytes": whl.stat().st_size, "sha256": sha256(whl)})
    manifest = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "for": {"python": python_version, "platform": platform},
        "recipe": recipe, "data": DATA,
        "checkpoint": {"file": CHECKPOINT, "bytes": (tmp / CHECKPOINT).stat().st_size,
                       "sha256": sha256(tmp / CHECKPOINT), "source": str(checkpoint), **info},
        "wheels": entries,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    total = folder_bytes(tmp)
    if total > LIMIT_BYTES:
        raise HarmonicError(f"{out}: the bundle would be {total / 2**20:.1f} MiB, over {LIMIT_BYTES // 2**20} MiB")
    manifest["total_bytes"] = total
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "dist" / "gpu-bundle"), help="bundle folder (replaced)")
    p.add_argument("--checkpoint", default=None,
                   help="a demo-recipe checkpoint to carry (default: train one here, see RECIPE)")
    p.add_argument("--work", default=str(ROOT / "dist" / "gpu-bundle-work"), help="data and training folder")
    p.add_argument("--python-version", default="3.12", help="the GPU box's Python (wheel tags)")
    p.add_argument("--platform", default="manylinux2014_x86_64")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="training epochs of the carried checkpoint")
    p.add_argument("--max-iters-per-epoch", type=int, default=None,
                   help="cap iterations per epoch (a busy machine; the AP on the box is then lower)")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers for training")
    args = p.parse_args(argv)
    recipe = {"epochs": args.epochs, "max_iters_per_epoch": args.max_iters_per_epoch, "workers": args.workers}
    try:
        man = make_bundle(Path(args.out), Path(args.checkpoint) if args.checkpoint else None, Path(args.work),
                          args.python_version, args.platform, recipe=recipe)
    except HarmonicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = [man["checkpoint"]["file"], *(w["file"] for w in man["wheels"])]
    print(f"gpu-bundle: {args.out}: {man['total_bytes'] / 2**20:.1f} MiB of {LIMIT_BYTES // 2**20} "
          f"({len(files)} files: {', '.join(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
