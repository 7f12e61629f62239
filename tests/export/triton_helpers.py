"""Helpers for the Triton tests: the separate server environment (``make triton-env``) and Triton's own
model-config schema (``tritonclient.grpc.model_config_pb2``), in this interpreter or in that environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def triton_env() -> Path | None:
    """The server environment: ``$HARMONIC_TRITON_ENV`` or ``<repo>/.venv-triton`` (``make triton-env``)."""
    env = Path(os.environ.get("HARMONIC_TRITON_ENV") or ROOT / ".venv-triton")
    return env if (env / "bin" / "python").is_file() else None


_PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
cfg = text_format.Parse(sys.stdin.read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)))
"""


def parse_config(text: str) -> dict:
    """``config.pbtxt`` text -> dict through Triton's ``ModelConfig`` protobuf (a field or value the schema
    lacks fails the test). In-process when ``tritonclient[grpc]`` is installed, else in the server env."""
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        env = triton_env()
        if env is None:
            pytest.skip("tritonclient[grpc] is not installed here and there is no .venv-triton (make triton-env)")
        res = subprocess.run([str(env / "bin" / "python"), "-c", _PARSE], input=text, capture_output=True,
                             text=True, timeout=120)
        if res.returncode != 0 and "No module named" in res.stderr:
            pytest.skip(f"{env}: {res.stderr.strip().splitlines()[-1]}")
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(cfg, preserving_proto_field_name=True)
