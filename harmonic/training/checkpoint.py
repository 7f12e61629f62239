"""Checkpoints: atomic writes, validated loads, and rebuilding a model from one.

Layout (docs/CONTRACTS.md)::

    {"format": "harmonicdet-checkpoint", "format_version": 1, "spec": ModelSpec.to_dict(),
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "epoch": int, "rng": {...}, "metrics": {...}, "args": {...}, "versions": {...}}

Everything stored is plain Python types and tensors, so ``torch.load(weights_only=True)``
reads it without executing pickled code.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harmonic.errors import HarmonicError, WriteFailure
from harmonic.models.spec import CHECKPOINT_FORMAT, FORMAT_VERSION, ModelSpec


def versions() -> dict[str, str]:
    """Library versions recorded in each checkpoint."""
    import torchvision

    import harmonic

    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "harmonic": harmonic.__version__}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    ``format`` and ``format_version`` are filled in if missing. A crash at any point leaves
    either the previous file or the new one, never a partial file. A failed write (full disk,
    quota, a short write torch reports as ``RuntimeError``) removes the temporary file and raises
    a one-line :class:`~harmonic.errors.WriteFailure` (exit 1) naming ``path`` and, for a full
    disk, its filesystem's free space.
    """
    from harmonic.atomic import atomic_open

    path = Path(path)
    state = dict(state)
    state.setdefault("format", CHECKPOINT_FORMAT)
    state.setdefault("format_version", FORMAT_VERSION)
    try:
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    except WriteFailure as exc:
        raise WriteFailure(exc.place, f"checkpoint not written: {exc.problem}; "
                                      f"the previous {path.name}, if any, is unchanged") from exc.__cause__
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


#: optimizer state per trainable parameter byte, by optimizer class (SGD: its momentum buffer, if any)
OPTIMIZER_STATE = {"Adam": 2, "AdamW": 2, "RMSprop": 1, "Adagrad": 1}


def checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """At least the size of a checkpoint of ``model`` and ``optimizer`` (its state once it has stepped)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if optimizer is None:
        return weights
    name = type(optimizer).__name__
    per = OPTIMIZER_STATE.get(name, 0)
    if name == "SGD":
        per = int(any(g.get("momentum", 0) for g in optimizer.param_groups))
    params = sum(p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"])
    return weights + per * params


def check_checkpoint_space(out: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Refuse (one line, exit 1) before training when ``out``'s filesystem cannot hold the run's
    checkpoints: ``last.pt``, and ``best.pt`` beside it (each written to a temporary file first)."""
    from harmonic.atomic import require_space

    out = Path(out)
    missing = sum(not (out / name).exists() for name in ("last.pt", "best.pt"))
    require_space([(out / "last.pt", checkpoint_bytes(model, optimizer) * max(1, missing))])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a HarmonicDet checkpoint (``weights_only=True``).

    Raises ``HarmonicError`` naming the file when it is missing, corrupt or truncated, not a
    HarmonicDet checkpoint, or written by a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise HarmonicError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a pickled object (e.g. torch.save(model)), not our dict
            raise HarmonicError(
                f"{path}: not a HarmonicDet checkpoint: it holds pickled Python objects (e.g. a whole model saved "
                "with torch.save(model)), which are not loaded because unpickling can run code; "
                "train with harmonic train, or save a checkpoint dict of plain tensors") from None
        raise HarmonicError(f"{path}: corrupt or truncated checkpoint (not a readable torch file)") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load fails on odd bytes in many ways (IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmonicError(f"{path}: corrupt or truncated checkpoint ({first[:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise HarmonicError(f"{path}: not a HarmonicDet checkpoint")
    version = ckpt.get("format_version")
    if not isinstance(version, int):
        raise HarmonicError(f"{path}: checkpoint has no valid format_version")
    if version > FORMAT_VERSION:
        raise HarmonicError(
            f"{path}: checkpoint format_version {version} is newer than this HarmonicDet "
            f"supports ({FORMAT_VERSION}); upgrade harmonicdet")
    for key in ("spec", "model"):
        if key not in ckpt:
            raise HarmonicError(f"{path}: checkpoint has no {key!r} entry")
    return ckpt


def spec_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "") -> ModelSpec:
    """The ``ModelSpec`` stored in a loaded checkpoint dict."""
    try:
        return ModelSpec.from_dict(ckpt["spec"])
    except (TypeError, ValueError, KeyError) as exc:
        raise HarmonicError(f"{path}: invalid model spec in checkpoint ({exc})") from exc


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the detector stored in ``path``: ``(model in eval mode on device, spec, ckpt dict)``.

    A state dict that does not fit the spec's architecture raises ``HarmonicError`` naming the file.
    """
    from harmonic.models import build_from_spec

    ckpt = load_checkpoint(path, map_location="cpu")
    spec = spec_from_checkpoint(ckpt, path)
    try:
        model = build_from_spec(spec)
    except (KeyError, ValueError) as exc:
        raise HarmonicError(f"{path}: cannot build model {spec.name!r} from checkpoint ({exc})") from exc
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise HarmonicError(f"{path}: weights do not match model spec {spec.name!r} ({first[:200]})") from exc
    model.to(device).eval()
    return model, spec, ckpt


# ---------------------------------------------------------------- RNG state (weights_only-safe)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) RNG states as plain types and tensors."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
