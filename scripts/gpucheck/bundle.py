"""The box side of the GPU-check bundle (``scripts/gpu_bundle.py`` makes it, ``scripts/gpu_check.py``
uses it on a bare GPU box): its layout and limits, the demo recipe and data its checkpoint is trained
on, and the checks that run before any GPU work (:func:`check_bundle`, :func:`check_checkpoint`) and
:func:`activate`, which puts the bundle's wheels on ``sys.path``. Torch is imported only to read the
checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from harmonic.errors import HarmonicError

LIMIT_BYTES = 64 * 2**20
MANIFEST = "manifest.json"
CHECKPOINT = "demo.pt"
#: the demo recipe (harmonic.experiments.recipe) the checkpoint is trained with; epochs cut to keep
#: `make gpu-bundle` short on a 2-core CPU (the demo itself trains 7)
RECIPE = {"model": "fcos_resnet10s_fpn", "loss": "harmonic", "epochs": 2, "img_size": 128, "batch_size": 8,
          "optimizer": "adamw", "lr": 1e-3, "fpn_channels": 64, "model_options": ["num_convs=2"],
          "augment": "flip", "seed": 0}
#: the synthetic data the checkpoint is trained on; gpu_check regenerates exactly this on the box
DATA = {"num_train": 2000, "num_val": 150, "seed": 0, "img_size": 128, "num_classes": 3, "scale": [0.2, 0.6],
        "max_objects": 5}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate_data(out: Path, **overrides: Any) -> Path:
    """The synthetic data of :data:`DATA` (``overrides`` e.g. fewer images for a quick run) -> dataset.yaml."""
    from harmonic.data.synth import generate

    d = {**DATA, **overrides}
    return generate(out, d["num_train"], d["num_val"], seed=d["seed"], img_size=d["img_size"],
                    num_classes=d["num_classes"], scale=tuple(d["scale"]), max_objects=d["max_objects"])


def check_checkpoint(path: Path, expected_model: str = RECIPE["model"]) -> dict[str, Any]:
    """The checkpoint's spec (CPU load, nothing on a GPU); ``HarmonicError`` when it is another model."""
    from harmonic.training.checkpoint import load_checkpoint, spec_from_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")
    spec = spec_from_checkpoint(ckpt, path)
    if spec.name != expected_model or int(spec.img_size) != RECIPE["img_size"] \
            or int(spec.num_classes) != DATA["num_classes"]:
        raise HarmonicError(f"{path}: a {spec.name} checkpoint ({spec.num_classes} classes, {spec.img_size} px); "
                            f"the GPU check needs the demo recipe's {expected_model} ({DATA['num_classes']} classes, "
                            f"{RECIPE['img_size']} px): make gpu-bundle")
    return {"model": spec.name, "loss": spec.loss, "img_size": int(spec.img_size), "epoch": ckpt.get("epoch"),
            "args": ckpt.get("args"), "val": (ckpt.get("metrics") or {}).get("val")}


def check_bundle(path: Path) -> dict[str, Any]:
    """Validate a bundle folder before any GPU work; return its manifest.

    One-line ``HarmonicError`` when the folder is missing, over :data:`LIMIT_BYTES`, has no
    manifest, or a listed file is missing or differs from its SHA-256.
    """
    path = Path(path)
    if not path.is_dir():
        raise HarmonicError(f"{path}: --bundle folder not found (make it here with: make gpu-bundle)")
    total = folder_bytes(path)
    if total > LIMIT_BYTES:
        raise HarmonicError(f"{path}: --bundle is {total / 2**20:.1f} MiB, over the {LIMIT_BYTES // 2**20} MiB "
                            "that can travel to the GPU box")
    man_path = path / MANIFEST
    try:
        manifest = json.loads(man_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarmonicError(f"{man_path}: missing or unreadable bundle manifest ({exc})") from None
    for entry in [manifest.get("checkpoint", {}), *manifest.get("wheels", [])]:
        f = path / str(entry.get("file", ""))
        if not entry.get("file") or not f.is_file():
            raise HarmonicError(f"{path}: the manifest lists {entry.get('file')!r}, which is not in the bundle")
        if sha256(f) != entry.get("sha256"):
            raise HarmonicError(f"{f}: SHA-256 differs from the bundle manifest (remake it: make gpu-bundle)")
    return manifest


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def activate(bundle: Path, site: Path) -> dict[str, list[str]]:
    """Unpack the bundle's wheels whose distribution does not import here into ``site`` and put it on
    ``sys.path`` (a wheel is a zip of site-packages; nothing is installed). Returns
    ``{"unpacked": [...], "already_here": [...]}`` by distribution name. Subprocesses need
    ``site`` on their ``PYTHONPATH`` too (``subprocess_env`` of ``scripts/gpucheck/context.py`` does that)."""
    manifest = json.loads((Path(bundle) / MANIFEST).read_text())
    site.mkdir(parents=True, exist_ok=True)
    unpacked, present = [], []
    for entry in manifest.get("wheels", []):
        module = entry.get("module") or entry["dist"]
        if _importable(module):
            present.append(entry["dist"])
            continue
        with zipfile.ZipFile(Path(bundle) / entry["file"]) as z:
            z.extractall(site)
        unpacked.append(entry["dist"])
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return {"unpacked": unpacked, "already_here": present}
