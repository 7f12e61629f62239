"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import FORMAT_KEY, check_format_version, decode_metadata
from harmonic.errors import HarmonicError
from harmonic.runtime.backends.base import Backend, InputSpec, cpu_name, fallback_metadata

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise HarmonicError('onnxruntime is not installed: pip install "harmonicdet[cpu]" '
                            '(or "harmonicdet[gpu]" for CUDA)') from exc
    return ort


def parse_device(device: str | None) -> tuple[str | None, int]:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / ``None`` -> (kind, index)."""
    if device is None:
        return None, 0
    kind, _, idx = device.partition(":")
    if kind not in {"cpu", "cuda"} or (idx and not idx.isdigit()):
        raise HarmonicError(f"--device must be cpu or cuda[:N], got {device!r}")
    return kind, int(idx or 0)


def choose_providers(provider: str | None, device: str | None, available: list[str]) -> list[Any]:
    """The ORT provider list for ``--provider`` / ``--device`` given ``ort.get_available_providers()``.

    No provider asked: CUDA when a CUDA device is asked (or none is and CUDA is there), else CPU.
    An asked provider that isn't available is a :class:`HarmonicError` naming what is.
    """
    kind, index = parse_device(device)
    if provider is None:
        provider = "cuda" if kind != "cpu" and PROVIDERS["cuda"] in available else "cpu"
        if kind == "cuda" and provider == "cpu":
            raise HarmonicError(f"--device {device}: onnxruntime has no CUDA provider here "
                                f"(available: {', '.join(available)}); pip install onnxruntime-gpu")
    if provider not in PROVIDERS:
        raise HarmonicError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    if kind == "cpu" and provider != "cpu":
        raise HarmonicError(f"--provider {provider} needs a GPU but --device is cpu")
    ort_name = PROVIDERS[provider]
    if ort_name not in available:
        raise HarmonicError(f"--provider {provider}: {ort_name} is not available in this onnxruntime "
                            f"(available: {', '.join(available)})")
    chain: list[Any] = []
    if provider == "tensorrt":
        chain.append((ort_name, {"device_id": index}))
        provider = "cuda" if PROVIDERS["cuda"] in available else "cpu"
    if provider == "cuda":
        chain.append((PROVIDERS["cuda"], {"device_id": index}))
    chain.append(PROVIDERS["cpu"])
    return chain


class OnnxRuntimeBackend(Backend):
    """An exported ``.onnx`` graph in an ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"
    thread_safe = True  # InferenceSession.run may be called concurrently

    def __init__(self, path: str | Path, provider: str | None = None, device: str | None = None,
                 threads: int | None = None, img_size: int | None = None, spin: bool | None = None,
                 **_: Any) -> None:
        ort = _import_ort()
        self._ort = ort
        self.path = Path(path)
        providers = choose_providers(provider, device, ort.get_available_providers())
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or 0)  # 0 = ORT default (physical cores)
        so.log_severity_level = 3
        if spin is not None:
            # ORT's idle worker threads spin-wait by default, which steals the cores the
            # decode threads need when both share a small CPU
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarmonicError(f"{self.path}: onnxruntime cannot load the model ({first})") from exc
        inp = self.session.get_inputs()[0]
        shape = tuple(int(d) if isinstance(d, int) and d > 0 else -1 for d in inp.shape)
        self.input_spec = InputSpec(inp.name, shape, "float32")
        self.output_names = [o.name for o in self.session.get_outputs()]
        raw = dict(self.session.get_modelmeta().custom_metadata_map)
        check_format_version(raw, self.path)
        meta = decode_metadata(raw)
        if "img_size" not in meta or FORMAT_KEY not in meta:
            meta = {**meta, **fallback_metadata(self.path, shape, img_size or meta.get("img_size"))}
        self.metadata = meta
        max_batch = meta.get("max_batch")
        self.max_batch = shape[0] if shape[0] > 0 else (int(max_batch) if max_batch else None)
        used = self.session.get_providers()
        self.provider = used[0]
        _, index = parse_device(device)
        self.device = cpu_name() if used[0] == PROVIDERS["cpu"] else f"cuda:{index} ({used[0]})"

    @property
    def versions(self) -> dict[str, str]:
        return {"onnxruntime": self._ort.__version__, "provider": self.provider}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` float32 ``[B, 3, S, S]`` -> the graph's outputs by name."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outs = self.session.run(self.output_names, {self.input_spec.name: batch})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
