"""ONNX -> TensorRT engine (a plain plan ``trtexec --loadEngine`` reads) + JSON sidecar.

FP16 per TensorRT version (:func:`fp16_mode`):

- 10.x: weakly typed network + ``BuilderFlag.FP16`` (TensorRT picks FP16 kernels).
- 11.x: the precision flags are gone and networks are strongly typed, so FP16 needs an
  FP16 ONNX. NVIDIA's tool for that is ModelOpt AutoCast; when ``modelopt`` is not
  installed :func:`convert_onnx_fp16` does it with ``onnx`` alone: float initializers,
  constants and casts become float16, the IO stays float32 (Cast nodes at the edges) and
  the ``NonMaxSuppression`` inputs are cast back to float32 (the ONNX op is float-only),
  so the whole NMS tail, the box outputs and the scores stay FP32.

FP16 keeps box decoding, candidate selection, the NMS tail and Faster R-CNN's FPN level
mapper (whose ``w*h`` overflows FP16 above 65504 px²) in FP32: on 10.x those layers
(ONNX node names ``/<scope>/...``, :data:`harmonic.export.wrapper.FP32_SCOPES`) get an FP32
layer precision under ``OBEY_PRECISION_CONSTRAINTS``; on 11.x the FP16 copy of the graph
leaves those nodes in FP32 with explicit Casts at the region's edges.

INT8 (``int8=True``) takes an explicitly quantised Q/DQ graph (:mod:`harmonic.export.quantize`)
and builds it strongly typed on every version (TensorRT's advice for Q/DQ networks; the
implicit-INT8 calibrator is deprecated since 10.1 and gone in 11).

The plugin registry is initialised before parsing (``init_libnvinfer_plugins``): the
Faster R-CNN graph's ``RoiAlign`` can map to a plugin. The INMSLayer is reported slow on TensorRT
10.0-10.6 (NVIDIA/TensorRT#4248, still open; nothing is known about later versions): the build
warns there, and ``--raw`` + host NMS is the fallback.

Everything but :func:`build_engine` and its two steps (:func:`parse_network`, :func:`builder_config`) is
pure and testable without TensorRT; :func:`precision_plan` decides the precision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmonic.atomic import output_group, remove_quietly, write_bytes, write_staged
from harmonic.contract import INPUT_NAME, decode_metadata, sidecar_bytes, sidecar_path
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "harmonicdet[trt]" on a machine with an NVIDIA GPU and CUDA'


def import_tensorrt():  # noqa: ANN201
    """``import tensorrt`` or a one-line ``HarmonicError`` saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise HarmonicError(f"--engine needs TensorRT, which is not installed ({exc}); {INSTALL_HINT}") from None
    return trt


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``"10.13.0.35"`` -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise HarmonicError(f"cannot parse TensorRT version {version!r}") from None


def nms_slowdown_warning(version: str) -> str | None:
    """A warning for TensorRT 10.0-10.6, whose INMSLayer is reported slow (TensorRT#4248, open), else None."""
    parts = str(version).split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None
    if major == 10 and minor <= 6:
        return (f"TensorRT {version}: the NonMaxSuppression layer (INMSLayer) is reported slow on TensorRT 10.0-10.6 "
                "(NVIDIA/TensorRT#4248, still open; the 10.6 release notes list a regression for data-dependent-shape "
                "ops such as NMS); measure it with infer/run.py --bench, or export with --raw and run NMS on the "
                "host (infer/run.py --engine MODEL.raw.onnx)")
    return None


def fp32_layer_names(layer_names: list[str]) -> list[str]:
    """The layers to pin to FP32 in an FP16 build: those parsed from nodes of the FP32 scopes."""
    from harmonic.export.wrapper import FP32_SCOPES

    prefixes = tuple(f"/{s}/" for s in FP32_SCOPES)
    return [n for n in layer_names if n.startswith(prefixes)]


def fp16_mode(version: str, fp16: bool) -> str:
    """``"fp32"``, ``"builder_flag"`` (TensorRT 10.x) or ``"strongly_typed"`` (11.x+) for ``--fp16``."""
    major = trt_major(version)
    if major < 10:
        raise HarmonicError(f"TensorRT {version} is too old: export needs TensorRT >= 10 ({INSTALL_HINT})")
    if not fp16:
        return "fp32"
    return "builder_flag" if major == 10 else "strongly_typed"


@dataclass(frozen=True)
class PrecisionPlan:
    """How an engine is built for the precision asked (:func:`precision_plan`).

    ``mode``: ``"fp32"``, ``"builder_flag"`` (10.x FP16), ``"strongly_typed"`` (11.x FP16, from an
    FP16 copy of the graph) or ``"int8"`` (a Q/DQ graph, strongly typed); ``warnings``: what the
    build logs before it starts.
    """

    mode: str
    warnings: tuple[str, ...] = ()

    @property
    def precision(self) -> str:
        """What the engine is built in: ``"fp32"``, ``"fp16"`` or ``"int8"`` (:func:`built_precision`)."""
        return built_precision(self.mode)

    @property
    def strongly_typed(self) -> bool:
        """The network is created ``STRONGLY_TYPED``: the graph's own types decide the precisions."""
        return self.mode in ("strongly_typed", "int8")

    @property
    def fp16_graph(self) -> bool:
        """TensorRT parses an FP16 copy of the graph (:func:`convert_onnx_fp16`), not the graph itself."""
        return self.mode == "strongly_typed"

    @property
    def fp16_flag(self) -> bool:
        """``BuilderFlag.FP16``, with the FP32-scope layers pinned to FP32 (:func:`pin_fp32_layers`)."""
        return self.mode == "builder_flag"


def precision_plan(version: str, op_types: Collection[str], *, fp16: bool, int8: bool,
                   source: str | Path) -> PrecisionPlan:
    """The build's precision from the TensorRT ``version``, the graph (its node ``op_types``) and what was
    asked (``fp16``, ``int8``); ``source`` names the graph in messages.

    A Q/DQ graph (``QuantizeLinear`` nodes) is built as INT8 whatever was asked (with a warning when
    ``fp16`` was); ``int8`` needs one and excludes ``fp16``; TensorRT < 10 is refused. The NMS
    slowdown of TensorRT 10.0-10.6 is a warning when the graph has a ``NonMaxSuppression``.
    """
    mode = fp16_mode(version, fp16)
    has_qdq = "QuantizeLinear" in op_types
    warnings: list[str] = []
    if int8:
        if fp16:
            raise HarmonicError("--int8 and --fp16 together are not supported: the INT8 engine keeps float layers in FP32")
        if not has_qdq:
            raise HarmonicError(f"{source}: --int8 needs a Q/DQ graph (export with --int8 --calib DIR)")
        mode = "int8"
    elif has_qdq:
        if fp16:
            warnings.append(f"{source} is a Q/DQ graph: built as INT8 (strongly typed, its float layers in FP32), "
                            "not FP16")
        mode = "int8"  # a Q/DQ graph is explicitly quantised whatever was asked
    slow_nms = nms_slowdown_warning(version)
    if slow_nms and "NonMaxSuppression" in op_types:
        warnings.append(slow_nms)
    return PrecisionPlan(mode, tuple(warnings))


def profile_shapes(
    img_size: int, min_batch: int = 1, opt_batch: int = 1, max_batch: int = 8, fixed_batch: int | None = None
) -> dict[str, tuple[int, int, int, int]]:
    """Optimisation-profile shapes for ``images``: ``{"min"|"opt"|"max": (B,3,S,S)}``.

    A fixed-batch graph (``fixed_batch``) admits only that batch.
    """
    if fixed_batch is not None:
        if (min_batch, opt_batch, max_batch) not in ((fixed_batch,) * 3, (1, 1, 8)):
            raise HarmonicError(f"the ONNX graph has a fixed batch {fixed_batch}; --min/--opt/--max-batch must equal it")
        min_batch = opt_batch = max_batch = fixed_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise HarmonicError(
            f"batch profile needs 1 <= --min-batch <= --opt-batch <= --max-batch, got {min_batch}, {opt_batch}, {max_batch}"
        )
    return {k: (b, 3, img_size, img_size) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    shapes: dict[str, tuple[int, ...]],
    mode: str = "fp32",
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
) -> str:
    """The equivalent ``trtexec`` command line (for 11.x FP16, ``onnx_path`` is the FP16 ONNX)."""
    dims = {k: "x".join(str(d) for d in v) for k, v in shapes.items()}
    parts = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={INPUT_NAME}:{dims['min']}",
        f"--optShapes={INPUT_NAME}:{dims['opt']}",
        f"--maxShapes={INPUT_NAME}:{dims['max']}",
        f"--memPoolSize=workspace:{int(round(workspace_gb * 1024))}M",
    ]
    if mode == "builder_flag":
        parts.append("--fp16")  # approximate: the FP32 pinning of the scoped layers has no prefix form in trtexec
    elif mode in ("strongly_typed", "int8"):
        parts.append("--stronglyTyped")
    if timing_cache:
        parts.append(f"--timingCacheFile={timing_cache}")
    return " ".join(parts)


def sidecar_dict(
    onnx_meta: dict[str, str],
    *,
    tensorrt_version: str,
    gpu: str,
    compute_capability: str,
    precision: str,
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, Any]:
    """The ``<engine>.json`` sidecar: the ONNX metadata (decoded) plus the engine's build facts.

    ``precision`` is what was built (``"fp32"``, ``"fp16"`` or ``"int8"``, see :func:`built_precision`),
    recorded as ``precision`` and as the booleans ``fp16`` / ``int8``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    side = decode_metadata(onnx_meta)
    versions = dict(side.get("versions", {}))
    versions["tensorrt"] = tensorrt_version
    side.update(
        versions=versions,
        tensorrt=tensorrt_version,
        gpu=gpu,
        compute_capability=compute_capability,
        precision=precision,
        fp16=precision == "fp16",
        int8=precision == "int8",
        profile={k: int(v[0]) for k, v in shapes.items()},
    )
    return side


PRECISIONS = ("fp32", "fp16", "int8")


def built_precision(mode: str) -> str:
    """The precision an engine of build ``mode`` (:func:`fp16_mode`, or ``"int8"``) is built in."""
    return {"fp32": "fp32", "builder_flag": "fp16", "strongly_typed": "fp16", "int8": "int8"}[mode]


_DTYPE_WORDS = (("Int8", "int8"), ("FP16", "fp16"), ("Half", "fp16"), ("BF16", "bf16"), ("FP32", "fp32"),
                ("Float", "fp32"), ("Int32", "int32"), ("Int64", "int64"), ("Bool", "bool"))


def _tensor_dtype(desc: Any) -> str | None:
    """The data type named in an engine-inspector tensor entry (``"Format/Datatype"``), else None."""
    text = desc.get("Format/Datatype", "") if isinstance(desc, dict) else str(desc)
    for word, name in _DTYPE_WORDS:
        if word.lower() in str(text).lower():
            return name
    return None


def summarize_engine_layers(info: str | dict[str, Any]) -> dict[str, Any]:
    """What the engine inspector says about precisions: INT8 convolutions and the NMS layers' input types.

    ``info`` is ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)`` of an engine
    built with ``ProfilingVerbosity.DETAILED`` (what :func:`build_engine` sets) and inspected with an
    execution context whose input shape is set (otherwise TensorRT leaves the formats out). Returns
    ``{"layers", "convolutions", "int8_convolutions", "nms": [{"name", "inputs": [dtype, ...]}],
    "nms_fp32"}``; ``HarmonicError`` when the engine carries no per-layer detail.
    """
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    if not layers or not all(isinstance(x, dict) for x in layers):
        raise HarmonicError("the engine has no per-layer detail (build it with ProfilingVerbosity.DETAILED)")
    convs = [x for x in layers if "convolution" in str(x.get("LayerType", "")).lower()
             or str(x.get("ParameterType", "")).lower() == "convolution"]
    int8 = [x for x in convs if x.get("Inputs") and _tensor_dtype(x["Inputs"][0]) == "int8"]
    nms = [{"name": x.get("Name", ""), "inputs": [_tensor_dtype(t) for t in x.get("Inputs", [])[:2]]}
           for x in layers if "nms" in str(x.get("LayerType", "")).lower()
           or "nonmaxsuppression" in str(x.get("Name", "")).lower()]
    return {"layers": len(layers), "convolutions": len(convs), "int8_convolutions": len(int8), "nms": nms,
            "nms_fp32": bool(nms) and all(d == ["fp32", "fp32"] for d in (n["inputs"] for n in nms))}


def gpu_info() -> tuple[str, str]:
    """``(name, "major.minor")`` of CUDA device 0 via torch, else ``("unknown", "unknown")``."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except Exception:  # noqa: BLE001 - best effort, the sidecar says unknown
        pass
    return "unknown", "unknown"


#: inputs that stay float32 whatever the node's precision (ONNX fixes their type)
_F32_INPUTS = {("Resize", 1), ("Resize", 2), ("NonMaxSuppression", 3), ("NonMaxSuppression", 4)}


def convert_onnx_fp16(model_proto, fp32_scopes: tuple[str, ...] | None = None):  # noqa: ANN001, ANN201
    """FP16 copy of an FP32 graph: float32 IO; FP32 NMS and FP32 scopes (see module docstring).

    Nodes named ``/<scope>/...`` for a scope in ``fp32_scopes`` (default
    :data:`harmonic.export.wrapper.FP32_SCOPES`) and ``NonMaxSuppression`` stay FP32, a
    ``Constant`` stays FP32 when an FP32 node reads it; every other float node runs in FP16.
    A Cast is inserted wherever a tensor crosses between the two, float initializers get an
    FP16 copy for FP16 readers, and float graph outputs produced in FP16 are cast back.
    """
    import copy
    from collections import defaultdict

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harmonic.export.wrapper import FP32_SCOPES

    prefixes = tuple(f"/{s}/" for s in (FP32_SCOPES if fp32_scopes is None else fp32_scopes))
    m = onnx.shape_inference.infer_shapes(copy.deepcopy(model_proto))
    g = m.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    inits = {t.name: t for t in g.initializer}
    elem.update({name: t.data_type for name, t in inits.items()})
    readers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)
    prec = {id(n): f32 if n.name.startswith(prefixes) or n.op_type == "NonMaxSuppression" else f16 for n in g.node}
    for n in g.node:
        if n.op_type == "Constant" and any(prec[id(r)] == f32 for r in readers[n.output[0]]):
            prec[id(n)] = f32

    def to16(t):  # noqa: ANN001, ANN202
        arr = np.clip(numpy_helper.to_array(t), -65504, 65504).astype(np.float16)
        return numpy_helper.from_array(arr, t.name)

    cur = {i.name: i.type.tensor_type.elem_type for i in g.input}
    cur.update({name: t.data_type for name, t in inits.items()})
    made: dict[tuple[str, int], str] = {}
    new_nodes, new_inits = [], []

    def as_type(name: str, want: int) -> str:
        if cur.get(name) == want:
            return name
        if (name, want) not in made:
            out = f"{name}_as_{'fp16' if want == f16 else 'fp32'}"
            if name in inits:
                new_inits.append(to16(inits[name]) if want == f16 else numpy_helper.from_array(
                    numpy_helper.to_array(inits[name]).astype(np.float32)))
                new_inits[-1].name = out
            else:
                new_nodes.append(helper.make_node("Cast", [name], [out], to=want, name=f"{out}_cast"))
            cur[out] = want
            made[(name, want)] = out
        return made[(name, want)]

    for n in g.node:
        p = prec[id(n)]
        for a in n.attribute:
            if p == f16 and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(to16(a.t))
            if n.op_type == "Cast" and a.name == "to" and a.i == f32:
                a.i = p
        if n.op_type != "Cast":
            for k, name in enumerate(n.input):
                if name and elem.get(name) == f32:
                    n.input[k] = as_type(name, f32 if (n.op_type, k) in _F32_INPUTS else p)
        new_nodes.append(n)
        for o in n.output:
            if elem.get(o) == f32:
                cur[o] = p
    renames = {}
    for out in g.output:
        if cur.get(out.name) == f16:
            renames[out.name] = out.name + "_f16out"
    for n in new_nodes:
        for seq in (n.input, n.output):
            for k, name in enumerate(seq):
                if name in renames:
                    seq[k] = renames[name]
    for name, internal in renames.items():
        new_nodes.append(helper.make_node("Cast", [internal], [name], to=f32, name=f"{name}_to_fp32"))
    used = {i for n in new_nodes for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + [t for t in new_inits if t.name in used])
    del g.node[:]
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} | {t.name for t in g.initializer}))
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(m)


def _toposort(nodes: list, available: set[str]) -> list:
    """Order ``nodes`` so every input is produced before use (inserted Casts go where they belong)."""
    done, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in done for i in n.input):
                order.append(n)
                done.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise HarmonicError(f"cannot order FP16 graph: {len(rest)} nodes with missing inputs")
        pending = rest
    return order


def _float_types(trt) -> tuple:  # noqa: ANN001
    return tuple(getattr(trt, n) for n in ("float32", "float16", "bfloat16") if hasattr(trt, n))


def pin_fp32_layers(trt, network, config) -> int:  # noqa: ANN001
    """TensorRT 10.x FP16 build: FP32 precision for the FP32-scope layers, obeyed by the builder.

    Every layer of the FP32 scopes that computes on floats gets ``precision = float32``: any layer
    with a float input or a float output, whatever its other tensors are, so ``ITopKLayer``
    (float values + int32 indices), ``INMSLayer`` (float boxes/scores in, int32 out), float->int
    casts and comparisons are pinned too. The output type is set only on float outputs (TopK's
    indices and the NMS outputs keep their integer type). Not pinned: layers with no float tensor
    (integer shape arithmetic) and ``IShapeLayer`` (it reads dimensions, not values); TensorRT
    rejects an FP32 precision on those ("A shape layer can only run in INT32 precision").
    Returns the number of layers pinned.
    """
    floats = _float_types(trt)
    shape_type = getattr(getattr(trt, "LayerType", None), "SHAPE", object())
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    pinned = set(fp32_layer_names([layer.name for layer in layers]))
    count = 0
    for layer in layers:
        if layer.name not in pinned or getattr(layer, "type", None) == shape_type:
            continue
        outs = [layer.get_output(i) for i in range(layer.num_outputs)]
        ins = [layer.get_input(i) for i in range(layer.num_inputs)]
        if not any(t is not None and t.dtype in floats for t in (*ins, *outs)):
            continue
        layer.precision = trt.float32
        for i, o in enumerate(outs):
            if o.dtype in floats:
                layer.set_output_type(i, trt.float32)
        count += 1
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    log.info("FP16 build: %d layers (box decoding, candidate selection, NMS tail, level mapper) pinned to FP32",
             count)
    return count


def parse_network(trt, builder, logger, src: Path, strongly_typed: bool, onnx_path: Path) -> tuple:  # noqa: ANN001
    """``(network, parser)``: ``src`` parsed into a new network (``STRONGLY_TYPED`` where asked and the
    version has it), or a ``HarmonicError`` with the parser's first error (``onnx_path`` names the graph).
    The parser owns the weights: keep it until the engine is built."""
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            log.error("TensorRT ONNX parser: %s", e)
        first = errors[0].splitlines()[0] if errors else "unknown error"
        raise HarmonicError(f"{onnx_path}: TensorRT cannot parse the ONNX graph ({len(errors)} errors): {first}")
    return network, parser


def builder_config(trt, builder, network, precision: PrecisionPlan, shapes: dict[str, tuple[int, ...]],  # noqa: ANN001, ANN201
                   workspace_gb: float, timing_cache: str | Path | None):
    """The builder config: workspace pool, per-layer detail, the precision's flags and FP32 pinning, the
    optimisation profile of ``shapes`` and the timing cache (read from ``timing_cache`` when it exists)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if hasattr(trt, "ProfilingVerbosity"):  # per-layer precisions for the engine inspector (gpu_check)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if precision.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        pin_fp32_layers(trt, network, config)
    prof = builder.create_optimization_profile()
    prof.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(prof)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    fp16: bool = False,
    profile: tuple[int, int, int] = (1, 1, 8),
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    overwrite: bool = False,
    int8: bool = False,
) -> Path:
    """Build a TensorRT plan from ``onnx_path`` and write ``engine_path`` + ``engine_path.json``.

    Args:
        int8: ``onnx_path`` is an INT8 Q/DQ graph (:func:`harmonic.export.quantize.quantize_int8`):
            built strongly typed (its Q/DQ pairs fix the precisions; ``fp16`` is not combined with it).
        profile: ``(min, opt, max)`` batch of the single optimisation profile for ``images``.
        workspace_gb: ``WORKSPACE`` memory pool limit.
        timing_cache: file read (if present) and written back, so rebuilds skip kernel timing.
    Both files (and the updated cache) appear together, only after a successful build (temp files
    renamed together: :func:`harmonic.atomic.output_group`); a failed write removes them all.
    """
    import onnx

    from harmonic.export.metadata import read_metadata

    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    side_path = sidecar_path(engine_path)
    for p in (engine_path, side_path):
        if p.exists() and not overwrite:
            raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")
    fp16_mode(trt.__version__, fp16)  # TensorRT < 10 is refused before the graph is read
    proto = onnx.load(str(onnx_path))
    meta = read_metadata(proto)
    precision = precision_plan(trt.__version__, {n.op_type for n in proto.graph.node}, fp16=fp16, int8=int8,
                               source=onnx_path)
    for warning in precision.warnings:
        log.warning(warning)
    mode = precision.mode
    img_size = int(meta.get("img_size") or proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value)
    fixed = int(meta["max_batch"]) if "max_batch" in meta else None
    shapes = profile_shapes(img_size, *profile, fixed_batch=fixed)

    tmp_files: list[Path] = []
    try:
        src = onnx_path
        if precision.fp16_graph:
            src = write_staged(engine_path, convert_onnx_fp16(proto).SerializeToString())
            tmp_files.append(src)
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # RoiAlign and friends may map to plugins
        builder = trt.Builder(logger)
        # the parser owns the parsed weights: it stays referenced until the engine is built
        network, parser = parse_network(trt, builder, logger, src, precision.strongly_typed, onnx_path)
        config = builder_config(trt, builder, network, precision, shapes, workspace_gb, timing_cache)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise HarmonicError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
        gpu, cc = gpu_info()
        side = sidecar_dict(meta, tensorrt_version=trt.__version__, gpu=gpu, compute_capability=cc,
                            precision=built_precision(mode), shapes=shapes)
        with output_group():  # all three appear together, or none replaces its old file
            write_bytes(engine_path, bytes(plan))
            write_bytes(side_path, sidecar_bytes(side))
            if timing_cache:
                write_bytes(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    finally:
        for t in tmp_files:  # the FP16 copy of the graph
            remove_quietly(t)
    cmd_onnx = "<fp16 copy of the ONNX>" if mode == "strongly_typed" else onnx_path
    log.info("wrote %s (+ %s); trtexec equivalent:\n  %s", engine_path, side_path.name,
             trtexec_command(cmd_onnx, engine_path, shapes, mode, workspace_gb, timing_cache))
    return engine_path
