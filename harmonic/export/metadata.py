"""ONNX ``metadata_props`` per docs/CONTRACTS.md: build, write and read them (all values strings)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ONNX_FORMAT = "harmonicdet-onnx"
JSON_KEYS = ("names", "mean", "std", "versions", "category_ids")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_versions() -> dict[str, str]:
    """Versions of the export stack (torch, torchvision, onnx, onnxruntime, onnxslim, harmonic)."""
    import importlib.metadata as md

    import harmonic

    out = {"harmonic": harmonic.__version__}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def build_metadata(
    *,
    names: list[str],
    img_size: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    model: str,
    loss: str,
    checkpoint_sha256: str,
    graph: str,
    max_batch: int | None = None,
    versions: dict[str, str] | None = None,
    category_ids: list[int] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` dict (strings; JSON for structured values). ``max_batch`` for fixed-batch graphs;
    ``category_ids`` (the dataset's id of each class) when they are not ``index + 1``."""
    meta: dict[str, Any] = {
        "harmonic.format": ONNX_FORMAT,
        "names": json.dumps(list(names)),
        "img_size": str(int(img_size)),
        "input_range": "0-1",
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "score_threshold": repr(float(score_threshold)),
        "iou_threshold": repr(float(iou_threshold)),
        "max_det": str(int(max_det)),
        "model": model,
        "loss": loss,
        "checkpoint_sha256": checkpoint_sha256,
        "versions": json.dumps(versions if versions is not None else export_versions(), sort_keys=True),
        "graph": graph,
    }
    if max_batch is not None:
        meta["max_batch"] = str(int(max_batch))
    if category_ids is not None:
        meta["category_ids"] = json.dumps([int(c) for c in category_ids])
    return meta


def set_metadata(model_proto, meta: dict[str, str]) -> None:  # noqa: ANN001
    """Replace ``model_proto.metadata_props`` with ``meta``."""
    del model_proto.metadata_props[:]
    for k, v in meta.items():
        p = model_proto.metadata_props.add()
        p.key, p.value = k, str(v)


def read_metadata(model_proto_or_path) -> dict[str, str]:  # noqa: ANN001
    """``metadata_props`` of an ONNX model (a ``ModelProto`` or a path) as a plain dict."""
    if isinstance(model_proto_or_path, (str, Path)):
        import onnx

        model_proto_or_path = onnx.load(str(model_proto_or_path), load_external_data=False)
    return {p.key: p.value for p in model_proto_or_path.metadata_props}


def decode_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """Metadata strings -> Python values (JSON keys parsed, numbers converted) for the engine sidecar."""
    out: dict[str, Any] = dict(meta)
    for k in JSON_KEYS:
        if k in out:
            out[k] = json.loads(out[k])
    for k in ("img_size", "max_det", "max_batch"):
        if k in out:
            out[k] = int(out[k])
    for k in ("score_threshold", "iou_threshold"):
        if k in out:
            out[k] = float(out[k])
    return out
