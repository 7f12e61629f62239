"""ONNX ``metadata_props`` on a model proto: write and read them (all values strings).

The schema (what the keys are, how values are encoded and decoded) is :mod:`harmonic.contract`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
