"""INT8 post-training quantisation of an exported graph: explicit QuantizeLinear/DequantizeLinear pairs.

The quantiser is ONNX Runtime's (``onnxruntime.quantization.quantize_static``, QDQ format),
set up the way TensorRT's explicit quantisation wants it: symmetric INT8 activations and
weights, per-channel weight scales, float biases (TensorRT fuses them itself), and Q/DQ on the
*inputs* of convolutions, GEMMs and residual adds but not on the Conv/Gemm/MatMul outputs (no
Conv -> Q -> DQ -> ReLU requantisation). Only the
network body (backbone, FPN, heads: ``BODY_SCOPES``) is quantised; box decoding, candidate
selection, the NMS tail and everything else after the head stay float. Activations are
calibrated on images letterboxed exactly as inference does (:mod:`harmonic.runtime.preprocess`).

The result runs in ONNX Runtime like any exported graph (``infer/run.py``, torch-free) and
TensorRT builds it as an explicitly quantised, strongly typed network (no implicit-INT8
calibrator: deprecated since TensorRT 10.1, removed in 11).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from harmonic.contract import COMMON_IMAGE_SUFFIXES, IMAGE_SUFFIXES
from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

#: ONNX node-name prefixes of the network body (the exporter names nodes after the module path)
BODY_SCOPES = ("/backbone/", "/head/", "/rpn/head/", "/roi_heads/box_head/", "/roi_heads/box_predictor/")
#: op types that get Q/DQ on their inputs: the weighted ops and the residual adds (TensorRT's fusion points)
QUANT_OPS = ("Conv", "Gemm", "MatMul", "Add")
#: op types whose outputs get no Q/DQ of their own (only their inputs are quantised)
NO_OUTPUT_QUANT_OPS = ("Conv", "Gemm", "MatMul")


def calibration_files(directory: str | Path, count: int) -> list[Path]:
    """Up to ``count`` readable images of ``directory`` (sorted); ``HarmonicError`` when there are none."""
    from harmonic.data.images import ImageDecodeError, decode_image

    directory = Path(directory)
    if count < 1:
        raise HarmonicError(f"--calib-count {count} must be >= 1")
    if not directory.is_dir():
        raise HarmonicError(f"{directory}: --calib is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    good: list[Path] = []
    for f in files:
        try:
            decode_image(f)
        except ImageDecodeError as exc:
            log.warning("calibration: skipped %s", exc)
            continue
        good.append(f)
        if len(good) == count:
            break
    if not good:
        raise HarmonicError(f"{directory}: no readable calibration image ({', '.join(COMMON_IMAGE_SUFFIXES)})")
    return good


def calibration_batches(files: list[Path], img_size: int, batch: int = 1) -> Iterator[np.ndarray]:
    """Letterboxed float32 ``[b,3,S,S]`` batches in ``[0,1]``, exactly as ``infer/run.py`` prepares them."""
    from harmonic.data.images import decode_image
    from harmonic.runtime.preprocess import prepare_image, to_batch

    for i in range(0, len(files), batch):
        yield to_batch([prepare_image(decode_image(f), img_size)[0] for f in files[i : i + batch]])


def body_nodes(model_proto) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """``(body, rest)`` node names: the body is quantised, the rest (post-head tail) stays float."""
    body, rest = [], []
    for n in model_proto.graph.node:
        (body if n.name.startswith(BODY_SCOPES) else rest).append(n.name)
    return body, rest


def quantize_int8(
    onnx_path: str | Path,
    out: str | Path,
    calib: str | Path,
    count: int = 64,
    overwrite: bool = False,
    batch: int | None = None,
) -> Path:
    """Write ``out``: the INT8 Q/DQ version of ``onnx_path`` calibrated on ``count`` images of ``calib``.

    The metadata is the FP32 graph's plus ``quantization`` (``int8-qdq``) and ``calib_images``.
    ``batch``: the graph's fixed batch (calibration feeds batches of that size), None for dynamic.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from harmonic.atomic import atomic_output_path, scratch_dir
    from harmonic.export.metadata import read_metadata, set_metadata

    onnx_path, out = Path(onnx_path), Path(out)
    proto = onnx.load(str(onnx_path))
    meta = read_metadata(proto)
    img_size = int(meta.get("img_size") or proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value)
    fixed = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value or None
    files = calibration_files(calib, count)
    _, rest = body_nodes(proto)
    input_name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration_batches(files, img_size, batch or fixed or 1))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            if x is None:
                return None
            if fixed and len(x) < fixed:  # a fixed-batch graph: pad the last batch with copies
                x = np.concatenate([x, np.repeat(x[-1:], fixed - len(x), axis=0)])
            return {input_name: x}

    # the calibrator writes augmented copies next to its input and into a temporary folder: both go to a
    # hidden folder beside the output (removed at the end; one filesystem to check and to name when full)
    with atomic_output_path(out, overwrite) as tmp, scratch_dir(out) as work:
        src = work / "fp32.onnx"
        onnx.save(proto, str(src))
        quantize_static(
            str(src), str(tmp), Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=rest,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           # Q/DQ on the inputs of Conv/Gemm only (TensorRT's placement guidance): a quantised
                           # output would add a Conv -> Q -> DQ -> ReLU requantisation TensorRT can't fuse away
                           "OpTypesToExcludeOutputQuantization": list(NO_OUTPUT_QUANT_OPS)},
        )
        q = onnx.load(str(tmp))
        n_q = sum(n.op_type == "QuantizeLinear" for n in q.graph.node)
        if n_q == 0:
            raise HarmonicError(f"{onnx_path}: the quantiser inserted no QuantizeLinear node")
        set_metadata(q, {**meta, "quantization": "int8-qdq", "calib_images": str(len(files))})
        onnx.save(q, str(tmp))
    log.info("wrote %s (INT8 Q/DQ, %d QuantizeLinear, calibrated on %d images of %s)", out, n_q, len(files), calib)
    return out
