"""An NVIDIA Triton Inference Server model repository from an exported graph (torch-free, no ``onnx``).

The graph is read through ONNX Runtime (inputs, outputs, ``metadata_props``); an
engine through its JSON sidecar. Layout (``NAME`` = ``--triton-name``)::

    DIR/README.md                   what is here, the TensorRT version a plan needs, the commands
    DIR/NAME/config.pbtxt           platform "onnxruntime_onnx"
    DIR/NAME/1/model.onnx
    DIR/NAME_trt/config.pbtxt       platform "tensorrt_plan"      (with an engine)
    DIR/NAME_trt/1/model.plan
    DIR/NAME_e2e/config.pbtxt       backend "python": encoded image bytes in, detections in original pixels out
    DIR/NAME_e2e/1/{model.py, model.onnx, harmonic/}
    DIR/NAME_py/...                 (``python_twin``) the graph through the Python backend

Every config: ``dims`` without the batch dimension (``max_batch_size`` > 0), fixed ``K``
on the four outputs, ``dynamic_batching``, ``instance_group``, the model's metadata
in ``parameters``. A fixed-batch graph (Faster R-CNN: batch 1) is served with
``max_batch_size: 0``, full dims and no dynamic batching; its end-to-end model still
batches requests (it runs the graph one image at a time).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harmonic.contract import (
    DET_SCORES,
    OUTPUT_DTYPES,
    OUTPUT_NAMES,
    check_format_version,
    is_ours,
    output_shapes,
    sidecar_path,
)
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

KINDS = ("cpu", "gpu")
DEFAULT_MAX_BATCH = 8
#: the torch-free runtime copied beside the Python-backend models (relative to the package root)
RUNTIME_FILES = (
    "__init__.py", "errors.py", "boxes.py", "atomic.py", "contract.py",
    "data/__init__.py", "data/letterbox.py", "data/exif.py", "data/images.py",
    "runtime/__init__.py", "runtime/preprocess.py", "runtime/postprocess.py", "runtime/bench.py",
    "runtime/backends/__init__.py", "runtime/backends/base.py", "runtime/backends/onnxruntime_backend.py",
    "runtime/backends/tensorrt_backend.py",
)
_PKG = Path(__file__).resolve().parents[1]  # .../harmonic
_TRITON_MODEL = _PKG / "runtime" / "triton_model.py"  # copied as each Python-backend model.py


@dataclass(frozen=True)
class GraphInfo:
    """What a repository needs from the exported graph: ``batch`` is the input's fixed batch (``None`` = dynamic)."""

    path: Path
    metadata: dict[str, str]
    input_name: str
    img_size: int
    batch: int | None
    max_det: int


@dataclass(frozen=True)
class EngineInfo:
    """An engine and its sidecar: the batch profile ``(min, opt, max)``, TensorRT version, GPU.
    ``path`` and ``sidecar`` are the files to copy (staged files for outputs of the same run)."""

    path: Path
    profile: tuple[int, int, int]
    tensorrt: str
    gpu: str
    compute_capability: str
    fp16: bool
    sidecar: Path


@dataclass(frozen=True)
class RepoOptions:
    """``--triton-*`` flags: ``max_batch`` ``None`` = the default (engine profile max, else 8)."""

    name: str = "harmonicdet"
    max_batch: int | None = None
    instances: int = 1
    kind: str = "cpu"
    queue_delay_us: int = 100
    end_to_end: bool = True
    python_twin: bool = False


def read_graph(path: str | Path) -> GraphInfo:
    """Inputs/outputs/metadata of an exported NMS graph; :class:`HarmonicError` when it isn't ours.
    ``GraphInfo.path`` is the file to copy (the staged file of an output of the same run)."""
    from harmonic.atomic import resolve

    path = Path(path)
    src = resolve(path)
    if not src.is_file():
        raise HarmonicError(f"{path}: ONNX file not found")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise HarmonicError('--triton-repo reads the graph with onnxruntime: pip install "harmonicdet[cpu]"') from exc
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HarmonicError(f"{path}: onnxruntime cannot load the model ({first[:200]})") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    if not is_ours(meta):
        raise HarmonicError(f"{path}: no HarmonicDet metadata (harmonic.format); the repository needs the names, "
                            "input size and K it carries (export with: harmonic export --checkpoint best.pt ...)")
    check_format_version(meta, path)
    if meta.get("graph", "nms") != "nms":
        raise HarmonicError(f"{path}: a raw-head graph ({meta.get('graph')!r}); serve the NMS graph")
    inputs = sess.get_inputs()
    outs = {o.name: o for o in sess.get_outputs()}
    missing = [n for n in OUTPUT_NAMES if n not in outs]
    if len(inputs) != 1 or missing:
        raise HarmonicError(f"{path}: not the exported contract (one input, outputs {', '.join(OUTPUT_NAMES)}; "
                            f"missing {', '.join(missing) or '-'})")
    shape = inputs[0].shape
    batch = int(shape[0]) if isinstance(shape[0], int) and shape[0] > 0 else None
    try:
        size, k = int(meta["img_size"]), int(meta["max_det"])
    except (KeyError, ValueError):
        raise HarmonicError(f"{path}: metadata lacks img_size / max_det") from None
    kdim = outs[DET_SCORES].shape[1] if len(outs[DET_SCORES].shape) == 2 else None
    if isinstance(kdim, int) and kdim != k:
        raise HarmonicError(f"{path}: det_scores has K={kdim} but the metadata says max_det={k}")
    return GraphInfo(src, meta, inputs[0].name, size, batch, k)


def read_engine(path: str | Path) -> EngineInfo:
    """An engine and its ``<engine>.json`` sidecar (batch profile, TensorRT version); TensorRT not needed."""
    from harmonic.atomic import resolve

    path = Path(path)
    side = sidecar_path(path)
    src, side_src = resolve(path), resolve(side)
    if not src.is_file():
        raise HarmonicError(f"--engine {path}: not found")
    if not side_src.is_file():
        raise HarmonicError(f"--engine {path}: no sidecar {side.name} (the profile and TensorRT version come from it)")
    try:
        data = json.loads(side_src.read_text(encoding="utf-8"))
        prof = data["profile"]
        profile = (int(prof["min"]), int(prof["opt"]), int(prof["max"]))
        trt = str(data.get("tensorrt") or data.get("versions", {}).get("tensorrt"))
    except (ValueError, KeyError, TypeError) as exc:
        raise HarmonicError(f"{side}: not an engine sidecar ({type(exc).__name__}: {exc})") from None
    check_format_version(data, side)
    return EngineInfo(src, profile, trt, str(data.get("gpu", "unknown")), str(data.get("compute_capability", "unknown")),
                      bool(data.get("fp16", False)), side_src)


def check_options(opts: RepoOptions) -> None:
    """Flag checks that need no file."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opts.name):
        raise HarmonicError(f"--triton-name {opts.name!r}: use letters, digits, '_', '-' and '.'")
    if opts.kind not in KINDS:
        raise HarmonicError(f"--triton-kind must be cpu or gpu, got {opts.kind!r}")
    if opts.instances < 1:
        raise HarmonicError(f"--triton-instances must be >= 1, got {opts.instances}")
    if opts.queue_delay_us < 0:
        raise HarmonicError(f"--triton-queue-delay-us must be >= 0, got {opts.queue_delay_us}")
    if opts.max_batch is not None and opts.max_batch < 0:
        raise HarmonicError(f"--triton-max-batch must be >= 0, got {opts.max_batch}")


def check_repo_dir(out: str | Path, overwrite: bool) -> None:
    """``out`` may not exist yet, be an empty folder, or (with ``overwrite``) a folder to replace."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarmonicError(f"--triton-repo {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HarmonicError(f"--triton-repo {out}: folder exists and is not empty (pass --overwrite to replace it)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise HarmonicError(f"--triton-repo {out}: {parent} is a file, not a folder")
            break


def resolve_max_batch(graph: GraphInfo, engine: EngineInfo | None, requested: int | None) -> int:
    """``max_batch_size`` for the graph's configs: 0 for a fixed-batch graph; else ``requested`` (default:
    the engine profile's max, else 8), which must be 1.. the profile's max."""
    if graph.batch is not None:
        if requested not in (None, 0):
            raise HarmonicError(f"--triton-max-batch {requested}: {graph.path} has a fixed batch of {graph.batch}; "
                                "Triton serves it with max_batch_size 0 (leave the flag out)")
        return 0
    if requested == 0:
        raise HarmonicError(f"--triton-max-batch 0: {graph.path} has a dynamic batch; 0 would turn off Triton's "
                            "batching (use 1.. the batch you want the server to form)")
    if engine is not None:
        lo, _, hi = engine.profile
        if lo > 1:
            raise HarmonicError(f"--engine {engine.path}: its profile starts at batch {lo}; Triton sends batches "
                                "from 1 (rebuild with --min-batch 1)")
        if requested is not None and requested > hi:
            raise HarmonicError(f"--triton-max-batch {requested}: above the engine profile's maximum {hi} "
                                f"({engine.path}; rebuild with --max-batch {requested} or lower the flag)")
        return requested or hi
    return requested or DEFAULT_MAX_BATCH


_TRITON_TYPES = {"int32": "TYPE_INT32", "float32": "TYPE_FP32"}


def _q(s: str) -> str:
    return json.dumps(str(s))  # a protobuf text-format string literal (JSON escapes are valid there)


def _dims(d: list[int]) -> str:
    return "[ " + ", ".join(str(int(x)) for x in d) + " ]"


def model_config(name: str, *, platform: str | None = None, backend: str | None = None, max_batch: int,
                 inputs: list[tuple[str, str, list[int]]], k: int, fixed_batch: int | None, opts: RepoOptions,
                 parameters: dict[str, str], comments: Sequence[str] = ()) -> str:
    """``config.pbtxt`` text. ``inputs`` = (name, TYPE_*, dims without batch); outputs are the four
    detection outputs with fixed ``k``; ``fixed_batch`` (max_batch 0) prepends that batch to every dims."""
    lead = [fixed_batch] if max_batch == 0 else []
    lines = [f"# {c}" for c in comments]
    lines.append(f"name: {_q(name)}")
    lines.append(f"platform: {_q(platform)}" if platform else f"backend: {_q(backend)}")
    lines.append(f"max_batch_size: {int(max_batch)}")
    lines.append("input [")
    lines.append(",\n".join(f"  {{\n    name: {_q(n)}\n    data_type: {t}\n"
                            + ("    format: FORMAT_NCHW\n" if len(d) == 3 else "")
                            + f"    dims: {_dims(lead + d)}\n  }}" for n, t, d in inputs))
    lines.append("]")
    outs = [(n, _TRITON_TYPES[OUTPUT_DTYPES[n]], d) for n, d in output_shapes(k).items()]
    lines.append("output [")
    lines.append(",\n".join(f"  {{\n    name: {_q(n)}\n    data_type: {t}\n    dims: {_dims(lead + d)}\n  }}"
                            for n, t, d in outs))
    lines.append("]")
    if max_batch > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(opts.queue_delay_us)}\n}}")
    kind = "KIND_GPU" if opts.kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {int(opts.instances)}\n    kind: {kind}\n  }}\n]")
    for key, value in sorted(parameters.items()):
        lines.append(f"parameters {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(value)} }}\n}}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``; a failed write names ``path`` (Python's own error names no file)."""
    try:
        path.write_text(text)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _copy_runtime(dest: Path) -> None:
    """The torch-free runtime files a Python-backend model imports, under ``dest/harmonic/``."""
    for rel in RUNTIME_FILES:
        target = dest / "harmonic" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_PKG / rel, target)


def _python_model(model_dir: Path, graph_file: Path, graph_name: str, sidecar: Path | None = None) -> None:
    ver = model_dir / "1"
    ver.mkdir(parents=True)
    shutil.copyfile(_TRITON_MODEL, ver / "model.py")
    shutil.copyfile(graph_file, ver / graph_name)
    if sidecar is not None:
        shutil.copyfile(sidecar, sidecar_path(ver / graph_name))
    _copy_runtime(ver)


def _readme(opts: RepoOptions, graph: GraphInfo, engine: EngineInfo | None, names: list[str],
            max_batch: int) -> str:
    n = opts.name
    rows = [f"| `{n}` | onnxruntime_onnx | `images` float32 [3,{graph.img_size},{graph.img_size}] "
            "(RGB in [0,1], letterboxed) | boxes in letterboxed input pixels |"]
    if engine is not None:
        rows.append(f"| `{n}_trt` | tensorrt_plan (TensorRT {engine.tensorrt}) | as `{n}` | as `{n}` |")
    if opts.end_to_end:
        rows.append(f"| `{n}_e2e` | python (ONNX Runtime in the stub) | `image` BYTES [1] (an encoded file) "
                    "| boxes in original image pixels |")
    if opts.python_twin:
        rows.append(f"| `{n}_py` | python (ONNX Runtime in the stub) | as `{n}` | as `{n}` |")
    trt = ""
    if engine is not None:
        trt = (f"\n## TensorRT version\n\n`{n}_trt/1/model.plan` was built with **TensorRT {engine.tensorrt}** on "
               f"{engine.gpu} (compute capability {engine.compute_capability}{', FP16' if engine.fp16 else ''}). "
               "A plan only loads in the TensorRT version that built it, on the same GPU architecture: use the "
               f"Triton container release that ships TensorRT {engine.tensorrt} (NVIDIA's framework support "
               "matrix), or rebuild the engine inside the container (`harmonic export ... --engine`).\n")
    return f"""# Triton model repository (written by `harmonic export --triton-repo`)

Classes (0-based `det_classes`): {", ".join(names)}. K = {graph.max_det} detections per image
(`num_dets` int32 [1], `det_boxes` float32 [K,4] x1,y1,x2,y2, `det_scores` float32 [K],
`det_classes` int32 [K]; rows past `num_dets` are zero). max_batch_size {max_batch}
({"fixed-batch graph, no dynamic batching" if max_batch == 0 else "dynamic batching"}).

| model | backend | input | output |
|---|---|---|---|
{chr(10).join(rows)}
{trt}
## Serve

    docker run --rm {"--gpus all " if opts.kind == "gpu" or engine is not None else ""}-p 8000:8000 -p 8001:8001 -p 8002:8002 \\
      -v $PWD:/models nvcr.io/nvidia/tritonserver:<release>-py3 \\
      tritonserver --model-repository /models

The Python-backend models import numpy, OpenCV and onnxruntime in the backend's Python
(`pip install "numpy<2" opencv-python-headless onnxruntime` in the container, or a
conda-pack environment via the `EXECUTION_ENV_PATH` parameter); their own
`1/harmonic/` folder holds the pre/post-processing code.

## Query

    python infer/run.py --triton localhost:8000 --model {n}{"_e2e" if opts.end_to_end else ""} --images DIR --concurrency 8
    python infer/run.py --triton grpc://localhost:8001 --model {n} --images DIR --batch 8
"""


def write_repository(out: str | Path, onnx_path: str | Path, engine: str | Path | None = None,
                     opts: RepoOptions | None = None, overwrite: bool = False) -> Path:
    """Write the model repository for ``onnx_path`` (and ``engine``) to ``out``; returns ``out``.

    Written to a temporary folder beside ``out`` and renamed at the end (:func:`harmonic.atomic.atomic_dir`),
    so a failure leaves nothing half-written, and with ``overwrite`` the old repository stays until the
    new one is complete. Refused first when ``out``'s filesystem cannot hold the copies; a write that
    fails names the file in ``out`` it was writing. Inside an :func:`harmonic.atomic.output_group`
    the graph and engine may be outputs of the same run (read from their staged files).
    """
    from harmonic.atomic import atomic_dir, require_space

    opts = opts or RepoOptions()
    check_options(opts)
    out = Path(out)
    check_repo_dir(out, overwrite)
    graph = read_graph(onnx_path)
    eng = read_engine(engine) if engine is not None else None
    max_batch = resolve_max_batch(graph, eng, opts.max_batch)
    require_space([(out, repository_bytes(graph.path.stat().st_size, eng.path.stat().st_size if eng else None,
                                          opts))])
    with atomic_dir(out) as tmp:
        _fill_repository(tmp, graph, eng, opts, max_batch)
    log.debug("wrote Triton model repository %s", out)
    return out


def repository_bytes(graph_bytes: int, engine_bytes: int | None, opts: RepoOptions) -> int:
    """Bytes a repository takes at least: a copy of the graph per ONNX model, of the plan per plan
    model, and the Python-backend models' code."""
    use_plan = engine_bytes is not None and opts.kind == "gpu"
    python_models = int(opts.end_to_end) + int(opts.python_twin)
    total = graph_bytes * (1 + int(opts.end_to_end and not use_plan) + int(opts.python_twin))
    if engine_bytes is not None:
        total += engine_bytes * (1 + int(opts.end_to_end and use_plan))
    code = sum((_PKG / rel).stat().st_size for rel in RUNTIME_FILES) + _TRITON_MODEL.stat().st_size
    return total + python_models * code


def _fill_repository(tmp: Path, graph: GraphInfo, eng: EngineInfo | None, opts: RepoOptions, max_batch: int) -> None:
    """The repository's files under the temporary folder ``tmp`` (layout in the module doc)."""
    names = json.loads(graph.metadata.get("names", "[]"))
    params = {k: v for k, v in graph.metadata.items()}
    size = graph.img_size
    images_in = [(graph.input_name, "TYPE_FP32", [3, size, size])]
    common = dict(max_batch=max_batch, k=graph.max_det, fixed_batch=graph.batch, opts=opts)
    d = tmp / opts.name
    (d / "1").mkdir(parents=True)
    shutil.copyfile(graph.path, d / "1" / "model.onnx")
    _write_text(d / "config.pbtxt", model_config(
        opts.name, platform="onnxruntime_onnx", inputs=images_in, parameters=params,
        comments=["HarmonicDet exported graph (NMS inside): boxes in letterboxed input pixels."], **common))
    if eng is not None:
        d = tmp / f"{opts.name}_trt"
        (d / "1").mkdir(parents=True)
        shutil.copyfile(eng.path, d / "1" / "model.plan")
        trt_params = {**params, "tensorrt": eng.tensorrt, "gpu": eng.gpu,
                      "compute_capability": eng.compute_capability,
                      "profile": json.dumps(dict(zip(("min", "opt", "max"), eng.profile)))}
        _write_text(d / "config.pbtxt", model_config(
            f"{opts.name}_trt", platform="tensorrt_plan", inputs=images_in, parameters=trt_params,
            comments=[f"model.plan needs TensorRT {eng.tensorrt} (built on {eng.gpu}, compute capability "
                      f"{eng.compute_capability}): use the Triton release that ships it.",
                      f"max_batch_size = the engine profile's maximum ({eng.profile[2]}) unless lowered."],
            **common))
    # the Python-backend models batch requests themselves: a fixed-batch graph runs image by image
    py_batch = max_batch or DEFAULT_MAX_BATCH
    py_common = dict(common, max_batch=py_batch, fixed_batch=None)
    use_plan = eng is not None and opts.kind == "gpu"
    gfile = "model.plan" if use_plan else "model.onnx"
    gsrc = eng.path if use_plan else graph.path
    side = eng.sidecar if use_plan else None
    if opts.end_to_end:
        d = tmp / f"{opts.name}_e2e"
        _python_model(d, gsrc, gfile, side)
        _write_text(d / "config.pbtxt", model_config(
            f"{opts.name}_e2e", backend="python", inputs=[("image", "TYPE_STRING", [1])],
            parameters={**params, "harmonic.serving": "end_to_end", "harmonic.graph_file": gfile,
                        "harmonic.boxes": "original image pixels"},
            comments=["End to end: encoded image bytes in, detections in original image pixels out.",
                      "Needs numpy<2, opencv-python-headless and onnxruntime in the Python backend's env."],
            **py_common))
    if opts.python_twin:
        d = tmp / f"{opts.name}_py"
        _python_model(d, graph.path, "model.onnx")
        _write_text(d / "config.pbtxt", model_config(
            f"{opts.name}_py", backend="python", inputs=images_in,
            parameters={**params, "harmonic.serving": "graph", "harmonic.graph_file": "model.onnx"},
            comments=[f"The graph of '{opts.name}' through the Python backend (ONNX Runtime in the stub)."],
            **common))
    _write_text(tmp / "README.md", _readme(opts, graph, eng, names, max_batch))


def describe(out: Path) -> list[str]:
    """The model folders in a repository (for the CLI's summary line)."""
    return sorted(p.name for p in Path(out).iterdir() if p.is_dir())
