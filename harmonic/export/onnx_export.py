"""Checkpoint -> ONNX graph with NMS inside (and optionally the raw pre-NMS graph).

The graph is traced with the TorchScript exporter (``dynamo=False``): the NMS is an
``autograd.Function`` whose ``symbolic`` emits the standard ``NonMaxSuppression`` op,
which keeps the graph free of custom domains and exports a detector in ~1 s. The
dynamo exporter also handles ``torch.onnx.ops.symbolic`` for the op, but needs an
unbacked size for its data-dependent output and is several times slower per export.
Files are written to a temporary name in the target folder and renamed at the end (inside an
:func:`harmonic.atomic.output_group`, when the whole group is written).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harmonic.atomic import atomic_output_path, output_group
from harmonic.contract import INPUT_NAME, OUTPUT_NAMES, RAW_OUTPUT_NAMES, output_shapes
from harmonic.errors import HarmonicError
from harmonic.export.wrapper import build_wrapper

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
ALLOWED_DOMAINS = ("", "ai.onnx")


def opset_range() -> tuple[int, int]:
    """Opsets the export supports: NonMaxSuppression with dynamic top-K needs 11; the upper end is the
    TorchScript exporter's maximum."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as hi
    except ImportError:  # pragma: no cover - private constant moved
        hi = 20
    return 11, int(hi)


def check_opset(opset: int) -> None:
    """Raise ``HarmonicError`` (a usage error) for an opset outside :func:`opset_range`."""
    lo, hi = opset_range()
    if not lo <= opset <= hi:
        raise HarmonicError(f"--opset: must be in {lo}..{hi} (default {DEFAULT_OPSET}), got {opset}")


def _constants(model_proto) -> dict[str, object]:  # noqa: ANN001
    """Initializers and ``Constant`` node outputs of a graph, as numpy arrays by tensor name."""
    from onnx import numpy_helper

    out: dict[str, object] = {t.name: numpy_helper.to_array(t) for t in model_proto.graph.initializer}
    for n in model_proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _dims(model_proto, name: str) -> list[int | str | None]:  # noqa: ANN001
    """Inferred dims of tensor ``name`` (int, symbolic name, or None when unknown)."""
    for vi in [*model_proto.graph.value_info, *model_proto.graph.output, *model_proto.graph.input]:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in vi.type.tensor_type.shape.dim]
    return []


def check_tensorrt_limits(model_proto, nms_topk: int | None = None) -> None:  # noqa: ANN001
    """Raise ``HarmonicError`` unless every ``TopK`` has a constant K <= 3840 and the final NMS
    (the one in the ``/nms_tail/`` scope, else the last) sees a constant number of boxes <= ``nms_topk``
    (every other NMS <= 5000): what TensorRT's ``ITopKLayer`` and ``INMSLayer`` accept.
    ``model_proto`` must be shape-inferred.
    """
    from harmonic.export.wrapper import TRT_MAX_NMS, TRT_MAX_TOPK

    consts = _constants(model_proto)
    for n in model_proto.graph.node:
        if n.op_type != "TopK":
            continue
        k = consts.get(n.input[1]) if len(n.input) > 1 else None
        if k is None:
            raise HarmonicError(f"TopK node {n.name!r}: K ({n.input[1]!r}) is computed from the data; "
                                "TensorRT needs a constant K")
        if int(k.reshape(-1)[0]) > TRT_MAX_TOPK:
            raise HarmonicError(f"TopK node {n.name!r}: K = {int(k.reshape(-1)[0])} exceeds TensorRT's limit {TRT_MAX_TOPK}")
    nms = [n for n in model_proto.graph.node if n.op_type == "NonMaxSuppression"]
    final = [n for n in nms if n.name.startswith("/nms_tail/")] or nms[-1:]
    for n in nms:
        limit = nms_topk if n in final and nms_topk else TRT_MAX_NMS
        dims = _dims(model_proto, n.input[0])
        count = dims[1] if len(dims) == 3 else None
        if not isinstance(count, int) or count <= 0:
            raise HarmonicError(f"NonMaxSuppression node {n.name!r}: the number of candidate boxes is not a constant")
        if count > limit:
            raise HarmonicError(f"NonMaxSuppression node {n.name!r}: {count} candidate boxes exceed the cap {limit}")


def set_output_shapes(model_proto, max_det: int, batch: int | None) -> None:  # noqa: ANN001
    """Declare the contract's output shapes: ``num_dets [B,1]``, ``det_boxes [B,K,4]``, ``det_scores/classes [B,K]``."""
    shapes = output_shapes(max_det)
    for out in model_proto.graph.output:
        if out.name not in shapes:
            continue
        shape = out.type.tensor_type.shape
        del shape.dim[:]
        first = shape.dim.add()
        if batch:
            first.dim_value = batch
        else:
            first.dim_param = "batch"
        for d in shapes[out.name]:
            shape.dim.add().dim_value = d


def check_graph(model_proto, graph: str = "nms") -> None:  # noqa: ANN001
    """Raise ``HarmonicError`` unless the graph holds only standard ops (and the NMS op for ``nms``)."""
    ops = {(n.domain, n.op_type) for n in model_proto.graph.node}
    custom = sorted(f"{d}::{t}" for d, t in ops if d not in ALLOWED_DOMAINS)
    if custom:
        raise HarmonicError(f"exported graph has custom-domain ops {custom}")
    if graph == "nms" and ("", "NonMaxSuppression") not in ops and ("ai.onnx", "NonMaxSuppression") not in ops:
        raise HarmonicError("exported graph has no NonMaxSuppression op")


def export_model(
    model,  # noqa: ANN001 - a torchvision detector
    out: str | Path,
    *,
    img_size: int,
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    raw: bool = False,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    nms_topk: int | None = None,
) -> Path:
    """Trace ``model`` (eval) into ``out``: simplified, shape-inferred, checked, with ``metadata``.

    Args:
        img_size: the square input size ``S`` (input ``images [B,3,S,S]``).
        batch: ``None`` for a dynamic batch, else the fixed batch size.
        raw: write the pre-NMS graph (``boxes [B,A,4]``, ``scores [B,A,C]``) instead.
        nms_topk: most candidates the NMS sees per image (1..5000; default: the family's
            own candidate budget, at most 5000); recorded as ``nms_topk`` in the metadata.
    """
    import onnx
    import onnxslim
    import torch

    wrapper = build_wrapper(model.eval(), img_size, conf, iou, max_det, raw=raw, nms_topk=nms_topk)
    if wrapper.family.max_batch == 1:
        if batch not in (None, 1):
            raise HarmonicError(f"Faster R-CNN exports with batch 1 only, not {batch}")
        batch = 1
    names = list(RAW_OUTPUT_NAMES if raw else OUTPUT_NAMES)
    dummy = torch.rand(batch or 2, 3, img_size, img_size)
    dynamic = None if batch else {k: {0: "batch"} for k in [INPUT_NAME, *names]}
    with atomic_output_path(out, overwrite) as tmp:
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        proto = onnxslim.slim(proto)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
        check_graph(proto, "raw" if raw else "nms")
        if not raw:
            set_output_shapes(proto, max_det, batch)
            check_tensorrt_limits(proto, wrapper.nms_topk)
        if metadata:
            from harmonic.export.metadata import set_metadata

            extra = {} if raw else {"nms_topk": str(wrapper.nms_topk)}
            set_metadata(proto, {**metadata, **extra, "graph": "raw" if raw else "nms"})
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    log.debug("exported the %s graph for %s (opset %d, batch %s)", "raw" if raw else "nms", out, opset,
              batch or "dynamic")
    return Path(out)


@contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's expected warnings (constants from python scalars, eager-only NMS loop)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            from torch.jit import TracerWarning

            warnings.filterwarnings("ignore", category=TracerWarning)
        except ImportError:  # pragma: no cover
            pass
        yield


def check_stride_multiple(img_size: int, stride: int, checkpoint: str | Path = "") -> None:
    """``img_size`` must be a positive multiple of the model's stride."""
    if img_size <= 0 or img_size % stride:
        where = f"{checkpoint}: " if checkpoint else ""
        raise HarmonicError(f"{where}--img-size {img_size} is not a positive multiple of the model's stride {stride}")


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    img_size: int | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    raw: str | Path | None = None,
    overwrite: bool = False,
    nms_topk: int | None = None,
) -> Path:
    """Export a HarmonicDet checkpoint to ``out`` (NMS graph) and optionally ``raw`` (pre-NMS graph).

    Returns ``out``. Raises ``HarmonicError`` for a foreign/newer/mismatched checkpoint, an
    unsupported model, a bad ``img_size``, or an existing output without ``overwrite``.
    Verification is separate (:func:`harmonic.export.verify.verify_onnx`).
    """
    model, spec, meta = load_for_export(checkpoint, img_size, conf, iou, max_det, batch)
    img_size = int(meta["img_size"])
    conf, iou, max_det = float(meta["score_threshold"]), float(meta["iou_threshold"]), int(meta["max_det"])
    batch = int(meta["max_batch"]) if "max_batch" in meta else None
    if raw is not None and Path(raw).exists() and not overwrite:  # check both before writing either
        raise HarmonicError(f"{raw}: already exists (pass --overwrite to replace it)")
    with output_group():  # both graphs appear together, or neither replaces its old file
        export_model(model, out, img_size=img_size, conf=conf, iou=iou, max_det=max_det, opset=opset,
                     batch=batch, metadata=meta, overwrite=overwrite, nms_topk=nms_topk)
        if raw is not None:
            export_model(model, raw, img_size=img_size, conf=conf, iou=iou, max_det=max_det, opset=opset,
                         batch=batch, raw=True, metadata=meta, overwrite=overwrite)
    return Path(out)


def load_for_export(
    checkpoint: str | Path, img_size: int | None, conf: float | None, iou: float | None, max_det: int | None,
    batch: int | None,
):  # noqa: ANN201
    """Load and validate a checkpoint: ``(model eval, spec, metadata dict)``.

    ``conf``, ``iou``, ``max_det`` left ``None`` come from the checkpoint's operating point
    (``ModelSpec.score_threshold``, ``iou_threshold``, ``max_det``); the metadata states the ones used.
    """
    from harmonic.contract import build_metadata
    from harmonic.export.config import check_operating_point_flags
    from harmonic.export.metadata import file_sha256
    from harmonic.models.registry import family_of

    check_operating_point_flags(conf, iou, max_det)
    if batch is not None and batch < 1:
        raise HarmonicError(f"--batch {batch} must be >= 1 or 'dynamic'")
    path = Path(checkpoint)
    if not path.is_file():
        raise HarmonicError(f"{path}: checkpoint not found")
    from harmonic.training.checkpoint import model_from_checkpoint

    model, spec, _ = model_from_checkpoint(path, "cpu")
    conf = spec.score_threshold if conf is None else conf  # the checkpoint's operating point
    iou = spec.iou_threshold if iou is None else iou
    max_det = spec.max_det if max_det is None else max_det
    if family_of(model).max_batch == 1:  # RPN + RoIAlign graph is batch-1 only
        if batch not in (None, 1):
            raise HarmonicError(f"{path}: model {spec.name!r} (Faster R-CNN) exports with batch 1 only, not {batch}")
        batch = 1
    size = int(img_size or spec.img_size)
    check_stride_multiple(size, int(spec.stride), path)
    meta = build_metadata(
        names=list(spec.class_names), img_size=size, mean=spec.mean, std=spec.std, score_threshold=conf,
        iou_threshold=iou, max_det=max_det, model=spec.name, loss=spec.loss,
        checkpoint_sha256=file_sha256(path), graph="nms", max_batch=batch,
        category_ids=getattr(spec, "category_ids", None),
    )
    return model, spec, meta
