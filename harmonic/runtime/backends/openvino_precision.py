"""OpenVINO precision: what the CPU offers, the inference-precision hint, and the check that the graph's
FP32 scopes really ran in FP32 (torch-free; the functions on plain data need no OpenVINO).

``fp32`` and ``int8`` compile with ``INFERENCE_PRECISION_HINT=f32`` (an INT8 model's quantised layers run
in INT8 because NNCF put ``FakeQuantize`` ops in front of them; everything else stays FP32). ``bf16``
asks for ``bf16`` and is refused where OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the device lack
``BF16`` (OpenVINO itself would silently run FP32 there), and again when the compiled model reports
another inference precision than the one asked for.

Box decoding, candidate selection, the NMS tail and Faster R-CNN's level mapper (ops named
``/decode/``, ``/select/``, ``/nms_tail/``, ``/level_mapper/``, plus the ops that produce the graph's
outputs) stay FP32 at every precision: their ops carry OpenVINO's ``precise`` runtime attribute
(``disable_fp16_compression``: the CPU plugin keeps a node so marked at its original precision when it
lowers the rest to bf16/f16), NNCF leaves them out of quantisation, and :func:`scope_violations`
checks the compiled model's runtime graph (each op's ``runtimePrecision``/``outputPrecisions``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harmonic.contract import OUTPUT_NAMES, RAW_OUTPUT_NAMES
from harmonic.errors import HarmonicError, RunFailure

#: the precisions ``--precision`` accepts
PRECISIONS = ("fp32", "bf16", "int8")
#: ``--precision`` -> OpenVINO's ``INFERENCE_PRECISION_HINT`` for the float layers
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: the CPU capability (``OPTIMIZATION_CAPABILITIES``) a precision needs
CAPABILITY = {"bf16": "BF16", "int8": "INT8"}
#: sub-graphs kept FP32 at every precision (the exporter's ``FP32_SCOPES``; a test keeps the two equal)
FP32_SCOPES = ("decode", "select", "nms_tail", "level_mapper")
SCOPE_PREFIXES = tuple(f"/{s}/" for s in FP32_SCOPES)
#: runtime attribute (``name_version``) that keeps an op at its original precision (``ov::disable_fp16_compression``)
PRECISE_KEY = "precise_0"
#: the attribute's key before and after an IR round trip
MARKED_KEYS = ("precise", "DisablePrecisionConversion")
#: precisions that mean an FP32-scope op was lowered (bf16/f16 floats, int8 compute)
LOW_FLOAT = frozenset({"bf16", "f16"})
QUANTISED = frozenset({"i8", "u8"})


def check_precision(precision: str | None) -> None:
    """``--precision`` must be one of :data:`PRECISIONS` (``None`` = the model's own)."""
    if precision is not None and precision not in PRECISIONS:
        raise HarmonicError(f"--precision {precision!r}: unknown; choose from {', '.join(PRECISIONS)}")


def choose_precision(asked: str | None, quantised: bool, preferred: str | None, path: Any) -> str:
    """The precision to run: ``asked``, else the model's (``int8`` when ``quantised``, else the IR's
    ``preferred`` one written at export, else ``fp32``). A float model can't run ``int8`` (it needs
    NNCF's calibration first) and an INT8 model can't run as a float one: one line each."""
    check_precision(asked)
    if quantised:
        if asked not in (None, "int8"):
            raise HarmonicError(f"{path}: an INT8 (NNCF-quantised) model; --precision {asked} needs the float "
                                "model (export it with --precision fp32)")
        return "int8"
    if asked == "int8":
        raise HarmonicError(f"{path}: --precision int8 needs an INT8 OpenVINO IR calibrated with NNCF: python "
                            "export/run.py --onnx MODEL.onnx --openvino DIR --precision int8 --calib IMAGES")
    chosen = asked or preferred or "fp32"
    if chosen not in PRECISIONS:
        raise HarmonicError(f"{path}: unknown precision {chosen!r} in the IR's metadata")
    return chosen


def check_capability(precision: str, capabilities: Iterable[str], cpu: str, path: Any) -> None:
    """Refuse, in one line, a precision the CPU has no native support for (OpenVINO would quietly use FP32)."""
    need = CAPABILITY.get(precision)
    caps = sorted(str(c) for c in capabilities)
    if need is not None and need not in caps:
        what = "native bf16 (AVX512-BF16 or AMX)" if precision == "bf16" else f"{need} support"
        alt = "; run --precision fp32 or int8" if precision == "bf16" else ""
        raise HarmonicError(f"--precision {precision}: this CPU ({cpu}) has no {what}; OpenVINO's "
                            f"OPTIMIZATION_CAPABILITIES are {', '.join(caps) or 'none'}{alt}")


def check_compiled_hint(precision: str, reported: str, path: Any) -> None:
    """The compiled model's ``INFERENCE_PRECISION_HINT`` (``reported``, e.g. ``"f32"``/``"bf16"``) must be
    the one asked for ``precision``: OpenVINO falls back to f32 without a word where it can't."""
    want = HINTS[precision]
    got = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(str(reported).lower(), str(reported).lower())
    if got != want:
        raise HarmonicError(f"{path}: --precision {precision} asked OpenVINO for {want}, the compiled model runs "
                            f"{got}; this CPU can't run {precision} (use --precision fp32)")


def in_fp32_scope(name: str) -> bool:
    """Whether an op named ``name`` belongs to a sub-graph kept FP32 (a scope, or an op producing an output)."""
    return name.startswith(SCOPE_PREFIXES) or name in OUTPUT_NAMES or name in RAW_OUTPUT_NAMES


def mark_fp32_scopes(model: Any) -> int:
    """Give every op of the FP32 scopes of an ``openvino.Model`` the ``precise`` attribute: the number marked.

    The attribute becomes OpenVINO's typed ``DisablePrecisionConversion`` when the model is saved as an IR
    and read back (the IR reader builds it); :func:`harmonic.export.openvino.write_ir` writes it.
    """
    n = 0
    for op in model.get_ordered_ops():
        if in_fp32_scope(op.get_friendly_name()):
            rt = op.get_rt_info()
            if not any(str(k).startswith(MARKED_KEYS) for k in rt.keys()):  # an IR read back has the typed one
                rt[PRECISE_KEY] = ""
            n += 1
    return n


@dataclass(frozen=True)
class RuntimeOp:
    """One node of a compiled model's runtime graph (``compiled.get_runtime_model()``), as its rt_info says."""

    name: str
    layer_type: str
    runtime_precision: str
    output_precisions: tuple[str, ...]
    original: tuple[str, ...]  # the source ops fused into this node (``originalLayersNames``)


def _info(rt: Any, key: str) -> str:
    try:
        value = rt[key]
    except (KeyError, IndexError):
        return ""
    return str(value.astype(str) if hasattr(value, "astype") else value)


def runtime_ops(compiled: Any) -> list[RuntimeOp]:
    """The runtime graph of an ``openvino.CompiledModel``: each op's layer type, precisions and source ops."""
    ops = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        ops.append(RuntimeOp(
            op.get_friendly_name(), _info(rt, "layerType"), _info(rt, "runtimePrecision").lower(),
            tuple(p.strip().lower() for p in _info(rt, "outputPrecisions").split(",") if p.strip()),
            tuple(n.strip() for n in _info(rt, "originalLayersNames").split(",") if n.strip())))
    return ops


def float_input_ops(model: Any) -> set[str]:
    """Names of the FP32-scope ops of an ``openvino.Model`` whose inputs are all floating point: an INT8
    runtime precision on them means quantised arithmetic (elsewhere it is a boolean or index tensor)."""
    out = set()
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if in_fp32_scope(name) and op.get_input_size() and all(
                op.get_input_element_type(i).is_real() for i in range(op.get_input_size())):
            out.add(name)
    return out


def scope_violations(ops: Iterable[RuntimeOp], float_inputs: set[str]) -> list[str]:
    """The runtime ops fused from FP32-scope ops that did not run in FP32: a bf16/f16 runtime or output
    precision, a ``FakeQuantize``, or INT8 arithmetic on float inputs (``float_inputs``: :func:`float_input_ops`).
    Each entry names the op, its type and precisions."""
    bad = []
    for op in ops:
        scoped = [n for n in op.original if in_fp32_scope(n)]
        if not scoped:
            continue
        precs = {op.runtime_precision, *op.output_precisions}
        lowered = bool(precs & LOW_FLOAT) or op.layer_type == "FakeQuantize" or (
            op.runtime_precision in QUANTISED and all(n in float_inputs for n in scoped))
        if lowered:
            bad.append(f"{scoped[0]} ({op.layer_type}, runtime {op.runtime_precision}, "
                       f"out {','.join(op.output_precisions)})")
    return bad


def verify_fp32_scopes(model: Any, compiled: Any, path: Any) -> int:
    """Raise :class:`~harmonic.errors.RunFailure` (exit 1) when an FP32-scope op of ``model`` ran below FP32 in ``compiled``;
    returns the number of runtime ops checked (0 for a graph without those scopes)."""
    ops = runtime_ops(compiled)
    bad = scope_violations(ops, float_input_ops(model))
    if bad:
        raise RunFailure(f"{path}: {len(bad)} op(s) of the FP32 decode/NMS scopes run below FP32 in the compiled "
                            f"model (first: {bad[0]}); use --precision fp32")
    return sum(1 for op in ops if any(in_fp32_scope(n) for n in op.original))
