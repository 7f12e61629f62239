"""ONNX -> TensorRT engine (a plain plan ``trtexec --loadEngine`` reads) + JSON sidecar.

FP16 per TensorRT version (:func:`fp16_mode`):

- 10.x: weakly typed network + ``BuilderFlag.FP16`` (TensorRT picks FP16 kernels).
- 11.x: the precision flags are gone and networks are strongly typed, so FP16 needs an
  FP16 ONNX. NVIDIA's tool for that is ModelOpt AutoCast; when ``modelopt`` is not
  installed :func:`convert_onnx_fp16` does it with ``onnx`` alone: float initializers,
  constants and casts become float16, the IO stays float32 (Cast nodes at the edges) and
  the ``NonMaxSuppression`` inputs are cast back to float32 (the ONNX op is float-only),
  so the whole NMS tail, the box outputs and the scores stay FP32.

Everything but :func:`build_engine` is pure and testable without TensorRT.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "harmonicdet[trt]" on a machine with an NVIDIA GPU and CUDA'
INPUT_NAME = "images"


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


def fp16_mode(version: str, fp16: bool) -> str:
    """``"fp32"``, ``"builder_flag"`` (TensorRT 10.x) or ``"strongly_typed"`` (11.x+) for ``--fp16``."""
    major = trt_major(version)
    if major < 10:
        raise HarmonicError(f"TensorRT {version} is too old: export needs TensorRT >= 10 ({INSTALL_HINT})")
    if not fp16:
        return "fp32"
    return "builder_flag" if major == 10 else "strongly_typed"


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
        parts.append("--fp16")
    elif mode == "strongly_typed":
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
    fp16: bool,
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, Any]:
    """The ``<engine>.json`` sidecar: the ONNX metadata (decoded) plus the engine's build facts."""
    from harmonic.export.metadata import decode_metadata

    side = decode_metadata(onnx_meta)
    versions = dict(side.get("versions", {}))
    versions["tensorrt"] = tensorrt_version
    side.update(
        versions=versions,
        tensorrt=tensorrt_version,
        gpu=gpu,
        compute_capability=compute_capability,
        fp16=bool(fp16),
        profile={k: int(v[0]) for k, v in shapes.items()},
    )
    return side


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


def convert_onnx_fp16(model_proto):  # noqa: ANN001, ANN201
    """FP16 copy of an FP32 graph with float32 IO and an FP32 NMS tail (see module docstring)."""
    import copy

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = copy.deepcopy(model_proto)
    g = m.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16

    def to16(t):  # noqa: ANN001, ANN202
        if t.data_type != f32:
            return t
        arr = np.clip(numpy_helper.to_array(t), -65504, 65504).astype(np.float16)
        return numpy_helper.from_array(arr, t.name)

    for i, init in enumerate(g.initializer):
        if init.data_type == f32:
            g.initializer[i].CopyFrom(to16(init))
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(to16(a.t))
            if node.op_type == "Cast" and a.name == "to" and a.i == f32:
                a.i = f16
    new_nodes = []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == f32:
            new_nodes.append(helper.make_node("Cast", [inp.name + "_f16in"], [inp.name + "_f16"], to=f16))
    renamed = {inp.name: inp.name + "_f16" for inp in g.input if inp.type.tensor_type.elem_type == f32}
    for node in g.node:
        if node.op_type == "NonMaxSuppression":
            for k in (0, 1, 3, 4):
                if k < len(node.input) and node.input[k]:
                    src = renamed.get(node.input[k], node.input[k])
                    cast_out = f"{src}_nms_f32_{k}_{id(node)}"
                    new_nodes.append(helper.make_node("Cast", [src], [cast_out], to=f32))
                    node.input[k] = cast_out
                    continue
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        new_nodes.append(node)
    # Graph inputs keep their names and FP32 type: feed the leading Casts.
    for n in new_nodes:
        if n.op_type == "Cast" and n.input and n.input[0].endswith("_f16in"):
            n.input[0] = n.input[0][: -len("_f16in")]
    # Float outputs: produce FP16 internally, Cast back to FP32 under the original name.
    for out in g.output:
        if out.type.tensor_type.elem_type == f32:
            internal = out.name + "_f16out"
            for n in new_nodes:
                for k, name in enumerate(n.output):
                    if name == out.name:
                        n.output[k] = internal
                for k, name in enumerate(n.input):
                    if name == out.name:
                        n.input[k] = internal
            new_nodes.append(helper.make_node("Cast", [internal], [out.name], to=f32))
    del g.node[:]
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} | {i.name for i in g.initializer}))
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


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``; return the temp path (caller renames)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(tmp)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    fp16: bool = False,
    profile: tuple[int, int, int] = (1, 1, 8),
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a TensorRT plan from ``onnx_path`` and write ``engine_path`` + ``engine_path.json``.

    Args:
        profile: ``(min, opt, max)`` batch of the single optimisation profile for ``images``.
        workspace_gb: ``WORKSPACE`` memory pool limit.
        timing_cache: file read (if present) and written back, so rebuilds skip kernel timing.
    Both files appear only after a successful build (temp files + rename).
    """
    import onnx

    from harmonic.export.metadata import read_metadata

    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    sidecar_path = engine_path.with_name(engine_path.name + ".json")
    for p in (engine_path, sidecar_path):
        if p.exists() and not overwrite:
            raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")
    mode = fp16_mode(trt.__version__, fp16)
    proto = onnx.load(str(onnx_path))
    meta = read_metadata(proto)
    img_size = int(meta.get("img_size") or proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value)
    fixed = int(meta["max_batch"]) if "max_batch" in meta else None
    shapes = profile_shapes(img_size, *profile, fixed_batch=fixed)

    tmp_files: list[Path] = []
    try:
        src = onnx_path
        if mode == "strongly_typed":
            src = _atomic_write(engine_path, convert_onnx_fp16(proto).SerializeToString())
            tmp_files.append(src)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if mode == "strongly_typed" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(src)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            for e in errors:
                log.error("TensorRT ONNX parser: %s", e)
            first = errors[0].splitlines()[0] if errors else "unknown error"
            raise HarmonicError(f"{onnx_path}: TensorRT cannot parse the ONNX graph ({len(errors)} errors): {first}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if mode == "builder_flag":
            config.set_flag(trt.BuilderFlag.FP16)
        prof = builder.create_optimization_profile()
        prof.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(prof)
        cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise HarmonicError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
        tmp_engine = _atomic_write(engine_path, bytes(plan))
        tmp_files.append(tmp_engine)
        gpu, cc = gpu_info()
        side = sidecar_dict(meta, tensorrt_version=trt.__version__, gpu=gpu, compute_capability=cc,
                            fp16=fp16, shapes=shapes)
        tmp_side = _atomic_write(sidecar_path, (json.dumps(side, indent=2) + "\n").encode())
        tmp_files.append(tmp_side)
        if timing_cache:
            tmp_cache = _atomic_write(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
            tmp_files.append(tmp_cache)
            os.replace(tmp_cache, timing_cache)
        os.replace(tmp_engine, engine_path)
        os.replace(tmp_side, sidecar_path)
    finally:
        for t in tmp_files:
            if t.exists():
                t.unlink()
    cmd_onnx = "<fp16 copy of the ONNX>" if mode == "strongly_typed" else onnx_path
    log.info("wrote %s (+ %s); trtexec equivalent:\n  %s", engine_path, sidecar_path.name,
             trtexec_command(cmd_onnx, engine_path, shapes, mode, workspace_gb, timing_cache))
    return engine_path
