"""OpenVINO backend (CPU): an exported ``.onnx`` graph, or an OpenVINO IR (``model.xml`` + ``model.bin``)
written by ``export/run.py --openvino DIR``, at ``fp32``, ``bf16`` or ``int8`` (:mod:`.openvino_precision`).

The metadata (:mod:`harmonic.contract`) is read from the model's runtime info, section ``framework``:
OpenVINO's ONNX reader puts an ONNX graph's ``metadata_props`` there, and the IR keeps it. An IR
without it is refused (an ``.onnx`` without it falls back as on ONNX Runtime). A dynamic-batch model is
compiled with the batch fixed, for batch 1 at once and for each other batch size when it first runs
(:meth:`OpenVinoBackend.request_for`); every compile is checked (its reported inference precision, and
the runtime graph of the FP32 scopes) before it runs an image.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import (
    FORMAT_KEY,
    IR_SUFFIXES,
    OUTPUT_NAMES,
    RAW_OUTPUT_NAMES,
    check_format_version,
    decode_metadata,
    is_ours,
)
from harmonic.errors import HarmonicError, RunFailure
from harmonic.runtime.backends.base import Backend, InputSpec, cpu_name, fallback_metadata
from harmonic.runtime.backends.openvino_precision import (
    HINTS,
    check_capability,
    check_compiled_hint,
    check_precision,
    choose_precision,
    mark_fp32_scopes,
    verify_fp32_scopes,
)

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "harmonicdet[openvino]" (openvino and nncf)'
#: the runtime-info section holding the metadata (where OpenVINO's ONNX reader puts ``metadata_props``)
META_SECTION = "framework"
#: metadata key: the precision an IR was exported for (``fp32``/``bf16``/``int8``), the default at inference
PRECISION_KEY = "precision"
#: static-batch compiles kept per dynamic-batch model (the batch sizes a run uses: usually two)
MAX_STATIC = 4


def import_openvino(needed_for: str = "--backend openvino") -> Any:
    """``import openvino`` or a one-line :class:`HarmonicError` naming the extra to install."""
    try:
        import openvino as ov
    except ImportError:
        raise HarmonicError(f"openvino is not installed, needed for {needed_for}: {INSTALL_HINT}") from None
    return ov


@functools.lru_cache(maxsize=1)
def shared_core() -> Any:
    """The process's one ``openvino.Core``, created on first use and kept until the process exits.

    One per process, not one per model: OpenVINO's CPU plugin gives the thread that runs a model its
    own alternate signal stack and, when its Core is destroyed, puts back the one it found. Cores
    destroyed in any order but the reverse of their creation leave the thread on a freed stack, and the
    next signal with a Python handler (Ctrl-C, SIGTERM) kills the process with SIGSEGV instead.
    """
    return import_openvino().Core()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def read_rt_metadata(model: Any) -> dict[str, str]:
    """The metadata strings of an ``openvino.Model`` (runtime info section :data:`META_SECTION`)."""
    if not model.has_rt_info([META_SECTION]):
        return {}
    section = model.get_rt_info()[META_SECTION]
    if not isinstance(section, dict):
        return {}
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v) for k, v in section.items()}


def write_rt_metadata(model: Any, meta: dict[str, str]) -> None:
    """Store ``meta`` (strings, as ONNX ``metadata_props``) in the model's runtime info, section :data:`META_SECTION`."""
    for key, value in meta.items():
        model.set_rt_info(str(value), [META_SECTION, str(key)])


def read_model(core: Any, path: Path) -> Any:
    """``core.read_model`` with one-line errors: an IR needs its ``.bin`` beside the ``.xml``."""
    if path.suffix.lower() in IR_SUFFIXES and not path.with_suffix(".bin").is_file():
        raise HarmonicError(f"{path}: the IR's weights {path.with_suffix('.bin').name} are not beside it")
    try:
        return core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError/its own types with multi-line messages
        raise HarmonicError(f"{path}: OpenVINO cannot read the model ({first_line(exc)})") from None


def is_quantised(model: Any) -> bool:
    """An NNCF-quantised IR (or a Q/DQ ONNX graph) has ``FakeQuantize`` ops in front of its quantised layers."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


def compile_marked(ov: Any, core: Any, model: Any, config: dict[str, Any]) -> tuple[Any, Any]:
    """``(marked model, compiled model)``: ``model`` with its FP32 scopes marked, saved as an IR and read back
    (the IR reader turns the marks into OpenVINO's typed attribute the CPU plugin honours), then compiled."""
    mark_fp32_scopes(model)
    with tempfile.TemporaryDirectory(prefix="harmonic_ov_") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        marked = core.read_model(str(xml))
        return marked, core.compile_model(marked, "CPU", config)


def output_name(port: Any) -> str:
    """The contract name of a compiled output (its tensor names may include the producing op's own)."""
    names = port.get_names()
    for known in (*OUTPUT_NAMES, *RAW_OUTPUT_NAMES):
        if known in names:
            return known
    return port.get_any_name()


class OpenVinoBackend(Backend):
    """An exported graph (``.onnx``) or an OpenVINO IR (``.xml``) compiled for the CPU by OpenVINO."""

    name = "openvino"

    def __init__(self, path: str | Path, precision: str | None = None, device: str | None = None,
                 threads: int | None = None, img_size: int | None = None, perf_count: bool = False,
                 **_: Any) -> None:
        check_precision(precision)
        if device not in (None, "cpu"):
            raise HarmonicError(f"--device {device}: the OpenVINO backend runs on the CPU (its GPU and NPU "
                                "plugins are not supported here); use --device cpu")
        ov = import_openvino()
        self._ov = ov
        self.path = Path(path)
        core = shared_core()
        model = read_model(core, self.path)
        if len(model.inputs) != 1:
            raise HarmonicError(f"{self.path}: expected one input, found {len(model.inputs)}")
        self.metadata = self._metadata(model, img_size)
        self.precision = choose_precision(precision, is_quantised(model), self.metadata.get(PRECISION_KEY), self.path)
        check_capability(self.precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"), cpu_name(),
                         self.path)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if perf_count:  # per-layer timing: self.request.get_profiling_info() after an infer
            config["PERF_COUNT"] = True
        if self.input_spec.shape[0] < 1:  # compiled per batch size (request_for), batch 1 first
            model.reshape({model.inputs[0]: [1, 3, self.img_size, self.img_size]})
        try:
            if self.precision == "bf16":
                model, self.compiled = compile_marked(ov, core, model, config)
            else:
                self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise HarmonicError(f"{self.path}: OpenVINO cannot compile the model for the CPU "
                                f"({first_line(exc)})") from None
        self._check_compiled(model, self.compiled)
        self._core, self._model, self._config = core, model, config
        self.request = self.compiled.create_infer_request()
        #: batch size -> (compiled, request) of a dynamic-batch model, each compiled with that batch fixed
        self._static: dict[int, tuple[Any, Any]] = {}
        if self.input_spec.shape[0] < 1:
            self._static[1] = (self.compiled, self.request)
        self.outputs = list(self.compiled.outputs)
        self.output_names = [output_name(p) for p in self.outputs]
        self.device = f"{cpu_name()} (OpenVINO CPU, {self.precision})"

    def _check_compiled(self, model: Any, compiled: Any) -> None:
        """The compiled model runs the precision asked for, and its FP32 scopes in FP32."""
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint)
        check_compiled_hint(self.precision, self.inference_precision, self.path)
        self.fp32_ops_checked = verify_fp32_scopes(model, compiled, self.path)

    def request_for(self, batch_size: int) -> Any:
        """The infer request for ``batch_size``: a dynamic-batch model is compiled once per batch size with that
        batch fixed (the CPU plugin's static-shape kernels: about 1.7x faster than the dynamic-shape model
        on a small detector at batch 1), each compile checked as the first; a fixed-batch model has one."""
        if self.input_spec.shape[0] > 0:
            return self.request
        if batch_size not in self._static:
            if len(self._static) >= MAX_STATIC:
                self._static.pop(next(iter(self._static)))
            self._model.reshape({self._model.inputs[0]: [batch_size, 3, self.img_size, self.img_size]})
            try:
                compiled = self._core.compile_model(self._model, "CPU", self._config)
            except Exception as exc:
                raise RunFailure(f"{self.path}: OpenVINO cannot compile the model for batch {batch_size} "
                                 f"({first_line(exc)})") from None
            self._check_compiled(self._model, compiled)
            self._static[batch_size] = (compiled, compiled.create_infer_request())
        return self._static[batch_size][1]

    def _metadata(self, model: Any, img_size: int | None) -> dict[str, Any]:
        """The decoded metadata; the input spec and batch limits on the side. An IR must carry ours."""
        inp = model.inputs[0]
        shape = tuple(int(d.get_length()) if d.is_static else -1 for d in inp.get_partial_shape())
        self.input_spec = InputSpec(inp.get_any_name(), shape, "float32")
        raw = read_rt_metadata(model)
        check_format_version(raw, self.path)
        meta = decode_metadata(raw)
        if not is_ours(meta) or "img_size" not in meta:
            if self.path.suffix.lower() in IR_SUFFIXES:
                raise HarmonicError(f"{self.path}: no HarmonicDet metadata in the IR's runtime info "
                                    f"({META_SECTION}/{FORMAT_KEY}); write the IR with: python export/run.py "
                                    "--onnx model.onnx --openvino DIR")
            meta = {**meta, **fallback_metadata(self.path, shape, img_size or meta.get("img_size"))}
        max_batch = meta.get("max_batch")
        self.max_batch = shape[0] if shape and shape[0] > 0 else (int(max_batch) if max_batch else None)
        return meta

    @property
    def versions(self) -> dict[str, str]:
        return {"openvino": self._ov.get_version().split("-")[0], "precision": self.precision,
                "inference_precision": self.inference_precision}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` float32 ``[B, 3, S, S]`` -> the graph's outputs by name (copies)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        request = self.request_for(batch.shape[0]) if batch.ndim == 4 else self.request
        try:
            res = request.infer({0: batch})
        except Exception as exc:  # a shape the model can't take, or a kernel failure
            raise RunFailure(f"{self.path}: OpenVINO inference failed on a {list(batch.shape)} batch "
                             f"({first_line(exc)})") from None
        return {name: np.array(value) for name, value in zip(self.output_names, res.to_tuple())}

    def close(self) -> None:
        self.request = None  # type: ignore[assignment]
        self.compiled = None  # type: ignore[assignment]
        self._static = {}
