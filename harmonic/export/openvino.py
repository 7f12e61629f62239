"""OpenVINO IR export: ``export/run.py ... --openvino DIR [--precision fp32|bf16|int8]`` writes ``DIR/model.xml``
and ``DIR/model.bin`` from the exported NMS (or raw) graph.

- ``fp32``: the graph as OpenVINO reads it, weights kept FP32 (no FP16 compression).
- ``bf16``: the same IR, recorded as meant to run at bf16 (the inference-precision hint is set when the
  IR is compiled on a CPU with native bf16; :mod:`harmonic.runtime.backends.openvino_precision`).
- ``int8``: post-training quantisation with NNCF, calibrated on ``--calib-count`` images of ``--calib``
  letterboxed exactly as inference does; the decode/selection/NMS scopes are left out of it.

The graph's metadata (:mod:`harmonic.contract`) is carried in the IR's runtime info (section
``framework``) with ``precision`` (and for INT8 ``quantization``/``calib_images``) added; the ops of the
FP32 scopes carry OpenVINO's ``precise`` attribute. The IR is then opened as ``infer/run.py`` opens it
and, at FP32, checked against ONNX Runtime on the same inputs. Both files are written beside their
targets and renamed into place together (:func:`harmonic.atomic.write_staged`), so a failure leaves the
earlier complete pair.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import OUTPUT_NAMES, RAW_OUTPUT_NAMES, check_format_version, decode_metadata, is_ours
from harmonic.errors import HarmonicError, RunFailure
from harmonic.runtime.backends.openvino_backend import (
    INSTALL_HINT,
    PRECISION_KEY,
    first_line,
    import_openvino,
    read_model,
    read_rt_metadata,
    shared_core,
    write_rt_metadata,
)
from harmonic.runtime.backends.openvino_precision import (
    MARKED_KEYS,
    SCOPE_PREFIXES,
    check_precision,
    mark_fp32_scopes,
)

log = logging.getLogger(__name__)

IR_STEM = "model"
#: the least share of ONNX Runtime's detections scoring >= :data:`AGREE_SCORE_MIN` the FP32 IR must reproduce
#: (same class, IoU >= 0.95); below that score, near-ties at the top-K cut may swap places
AGREE_FP32 = 0.99
AGREE_SCORE_MIN = 0.05


@dataclass(frozen=True)
class OpenVinoPlan:
    """The IR an export writes, checked before any export work."""

    xml: Path
    precision: str
    calib: list[Path] | None  # the calibration images (``int8``)

    @property
    def bin(self) -> Path:
        return self.xml.with_suffix(".bin")


def import_nncf() -> Any:
    """``import nncf`` or a one-line :class:`HarmonicError` naming the extra to install."""
    try:
        import nncf
    except ImportError:
        raise HarmonicError(f"--precision int8 quantises with NNCF, which is not installed: {INSTALL_HINT}") from None
    return nncf


def plan_openvino(cfg: Any) -> OpenVinoPlan | None:
    """Check ``--openvino DIR``, ``--precision`` and (``int8``) ``--calib`` before any work; None without
    ``--openvino``. One line for each problem: a missing library, a file there without ``--overwrite``, no
    readable calibration image."""
    if cfg.openvino is None:
        if cfg.precision is not None:
            raise HarmonicError("--precision: only used with --openvino DIR (the OpenVINO IR's precision)")
        return None
    precision = cfg.precision or "fp32"
    check_precision(precision)
    import_openvino("--openvino DIR")
    out = Path(cfg.openvino)
    if out.exists() and not out.is_dir():
        raise HarmonicError(f"--openvino {out}: exists and is not a folder")
    xml = out / f"{IR_STEM}.xml"
    for p in (xml, xml.with_suffix(".bin")):
        if p.exists() and not cfg.overwrite:
            raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")
    calib = None
    if precision != "int8" and cfg.calib is not None and not getattr(cfg, "int8", False):
        raise HarmonicError("--calib: only used with --int8 or --openvino DIR --precision int8")
    if precision == "int8":
        import_nncf()
        if cfg.calib is None:
            raise HarmonicError("--precision int8: needs --calib DIR (calibration images)")
        from harmonic.export.quantize import calibration_files

        calib = calibration_files(cfg.calib, cfg.calib_count)
    return OpenVinoPlan(xml, precision, calib)


def calibration_data(files: list[Path], img_size: int, fixed_batch: int | None) -> list[np.ndarray]:
    """Letterboxed float32 ``[b, 3, S, S]`` batches of ``files`` as inference prepares them (one image per
    batch, or the graph's fixed batch with the last one padded by repeating its last image)."""
    from harmonic.export.quantize import calibration_batches

    out = []
    for x in calibration_batches(files, img_size, fixed_batch or 1):
        if fixed_batch and len(x) < fixed_batch:
            x = np.concatenate([x, np.repeat(x[-1:], fixed_batch - len(x), axis=0)])
        out.append(x)
    return out


def quantize_nncf(model: Any, data: list[np.ndarray]) -> Any:
    """NNCF post-training INT8 quantisation of an ``openvino.Model`` on ``data`` (the input batches), with the
    FP32 scopes and the output-producing ops ignored."""
    nncf = import_nncf()
    nncf.set_log_level(logging.ERROR)
    ignored = nncf.IgnoredScope(patterns=[f"^{re.escape(p)}.*" for p in SCOPE_PREFIXES],
                                names=[*OUTPUT_NAMES, *RAW_OUTPUT_NAMES], validate=False)
    try:
        return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), ignored_scope=ignored,
                             preset=nncf.QuantizationPreset.PERFORMANCE)
    except Exception as exc:  # NNCF's and OpenVINO's own errors
        raise RunFailure(f"NNCF INT8 quantisation failed ({first_line(exc)})") from None


def ir_metadata(meta: dict[str, str], precision: str, calib: int | None) -> dict[str, str]:
    """The graph's metadata strings plus ``precision`` (and the INT8 calibration) and the OpenVINO versions."""
    import importlib.metadata as md

    out = dict(meta)
    out[PRECISION_KEY] = precision
    try:
        versions = json.loads(meta.get("versions", "{}"))
    except json.JSONDecodeError:
        versions = {}
    for dist in ("openvino", "nncf") if precision == "int8" else ("openvino",):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    out["versions"] = json.dumps(versions, sort_keys=True)
    if calib is not None:
        out.update({"quantization": "int8-nncf", "calib_images": str(calib)})
    return out


def build_ir(onnx_path: Path, plan: OpenVinoPlan) -> Any:
    """The ``openvino.Model`` to save: ``onnx_path`` read by OpenVINO, quantised for ``int8``, its FP32
    scopes marked and the metadata set. One line when the graph has no HarmonicDet metadata."""
    model = read_model(shared_core(), onnx_path)
    raw = read_rt_metadata(model)
    check_format_version(raw, onnx_path)
    meta = decode_metadata(raw)
    if not is_ours(meta) or "img_size" not in meta:
        raise HarmonicError(f"{onnx_path}: no HarmonicDet metadata; export the graph with export/run.py first")
    if plan.calib is not None:
        shape = model.inputs[0].get_partial_shape()
        fixed = int(shape[0].get_length()) if shape[0].is_static else None
        model = quantize_nncf(model, calibration_data(plan.calib, int(meta["img_size"]), fixed))
    marked = mark_fp32_scopes(model)
    log.debug("%s: %d ops of the FP32 scopes marked precise", onnx_path, marked)
    write_rt_metadata(model, ir_metadata(raw, plan.precision, len(plan.calib) if plan.calib else None))
    return model


def save_ir(model: Any, plan: OpenVinoPlan, check: Callable[[Path], str]) -> tuple[list[Path], str]:
    """Save ``model`` as ``plan.xml``/``plan.bin``: saved in a scratch folder beside them, checked there
    (``check(xml)`` returns the verification line or raises), then placed as one group of outputs: the
    earlier pair stays until both new files are in (at the end of the export's own group when there is
    one), and on any failure the new files and the scratch folder are removed and a failed write names
    the output. Returns ``(the files written, the verification line)``."""
    from harmonic.atomic import output_group, place, scratch_dir

    ov = import_openvino()
    with output_group(plan.xml.parent), scratch_dir(plan.xml) as tmp:
        xml = Path(tmp) / plan.xml.name
        ov.save_model(model, str(xml), compress_to_fp16=False)
        text = check(xml)
        place(xml.with_suffix(".bin"), plan.bin)
        place(xml, plan.xml)
    return [plan.xml, plan.bin], text


def verify_inputs(cfg: Any, plan: OpenVinoPlan, img_size: int) -> np.ndarray:
    """The batch the IR is checked on: ``--verify-images``, else the calibration images, else synthetic ones."""
    from harmonic.export.verify import load_images, synthetic_images

    if getattr(cfg, "verify_images", None):
        return load_images(cfg.verify_images, img_size)
    if plan.calib:
        return np.concatenate(calibration_data(plan.calib[:4], img_size, None))
    return synthetic_images(4, img_size)


def reproduced_share(ref: list[Any], got: list[Any], score_min: float, px: float = 0.5) -> tuple[float, int]:
    """``(share, n)``: of the ``n`` detections of ``ref`` scoring >= ``score_min`` (per-image ``Detections``),
    the share ``got`` has with the same class and a box within ``px`` pixels or at IoU >= 0.95 (a box clipped
    to zero width at the border has no IoU, even with itself)."""
    from harmonic.boxes import box_iou

    matched = total = 0
    for r, g in zip(ref, got):
        keep = r.scores >= score_min
        boxes, classes = r.boxes[keep], r.classes[keep]
        total += len(boxes)
        if not len(boxes) or not len(g):
            continue
        same = classes[:, None] == g.classes[None, :]
        close = np.abs(boxes[:, None, :] - g.boxes[None, :, :]).max(-1) <= px
        matched += int(((close | (box_iou(boxes, g.boxes) >= 0.95)) & same).any(1).sum())
    return (matched / total if total else 1.0), total


def check_ir(xml: Path, onnx_path: Path, precision: str, images: np.ndarray) -> str:
    """Open the IR ``xml`` as inference does (compiled, FP32 scopes checked on the runtime graph) and run
    ``images``; at FP32 its detections must reproduce ONNX Runtime's on ``onnx_path`` (share >= :data:`AGREE_FP32`).
    A bf16 IR (FP32 weights) is checked at FP32: bf16 itself runs on a CPU with native bf16. Returns the
    verification line; :class:`RunFailure` when the FP32 IR differs."""
    from harmonic.runtime.backends import open_backend
    from harmonic.runtime.pipeline import run_engine
    from harmonic.runtime.postprocess import split_outputs

    def backend_infer(be: Any) -> Callable[[np.ndarray], list[Any]]:
        return lambda batch: split_outputs(run_engine(be, batch), batch.shape[0])

    precision = "fp32" if precision == "bf16" else precision
    with open_backend(xml, backend="openvino", precision=precision) as be:
        ov_dets = backend_infer(be)(images)
        checked = be.fp32_ops_checked
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return f"the {precision} IR compiles and runs; {checked} runtime ops of the FP32 scopes run FP32"
    with open_backend(onnx_path, backend="onnxruntime", provider="cpu") as ort_be:
        ref = backend_infer(ort_be)(images)
    agree, n = reproduced_share(ref, ov_dets, AGREE_SCORE_MIN)
    scopes = f"{checked} runtime ops of the FP32 scopes run FP32"
    if not n:
        return (f"the {precision} IR runs; ONNX Runtime has no detection scoring >= {AGREE_SCORE_MIN} on the "
                f"{len(images)} images to compare (pass --verify-images); {scopes}")
    text = (f"the {precision} IR reproduces {agree:.3f} of ONNX Runtime's {n} detections scoring >= "
            f"{AGREE_SCORE_MIN} on {len(images)} images; {scopes}")
    if precision == "fp32" and agree < AGREE_FP32:
        raise RunFailure(f"{onnx_path}: the OpenVINO IR differs from ONNX Runtime ({text})")
    return text


def write_ir(onnx_path: str | Path, plan: OpenVinoPlan, cfg: Any) -> list[Path]:
    """Build, check and save the IR of ``onnx_path``: the files written."""
    onnx_path = Path(onnx_path)
    model = build_ir(onnx_path, plan)
    images = verify_inputs(cfg, plan, int(decode_metadata(read_rt_metadata(model))["img_size"]))
    written, text = save_ir(model, plan, lambda xml: check_ir(xml, onnx_path, plan.precision, images))
    print(f"verify: OK, {text}")
    return written


def iter_scope_ops(model: Any) -> Iterator[str]:
    """Names of the ops of ``model`` that carry the ``precise`` mark (for tests and reports)."""
    for op in model.get_ordered_ops():
        if any(str(k).startswith(MARKED_KEYS) for k in op.get_rt_info().keys()):
            yield op.get_friendly_name()
