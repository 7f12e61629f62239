"""The exported model's contract, in one place (torch-free, standard library only).

Export writes it, the runtime, the Triton repository and its Python-backend model read it
(docs/design.md, "Exported graph"):

- the graph's input and output names, dtypes and shapes (:data:`OUTPUT_NAMES`,
  :data:`RAW_OUTPUT_NAMES`, :func:`output_shapes`);
- the model file suffixes (:data:`ONNX_SUFFIXES`, :data:`ENGINE_SUFFIXES`, :data:`IR_SUFFIXES`) and the image
  files every reader accepts (:data:`IMAGE_SUFFIXES`);
- the metadata schema: :func:`build_metadata` encodes it (the ONNX ``metadata_props``, all
  strings), :func:`decode_metadata` turns those strings (or an engine sidecar) into Python
  values; :data:`METADATA_FORMAT` under :data:`FORMAT_KEY` names the schema and its version;
- the engine sidecar ``<engine>.json``: :func:`sidecar_path`, :func:`sidecar_bytes`,
  :func:`read_sidecar`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the graph

INPUT_NAME = "images"
NUM_DETS = "num_dets"  #: ``[B,1]``: detections kept per image
DET_BOXES = "det_boxes"  #: ``[B,K,4]``: their boxes, zero past ``num_dets``
DET_SCORES = "det_scores"  #: ``[B,K]``: their scores
DET_CLASSES = "det_classes"  #: ``[B,K]``: their 0-based class indices
#: the NMS graph's outputs, in order: ``num_dets [B,1]``, ``det_boxes [B,K,4]``, ``det_scores [B,K]``, ``det_classes [B,K]``
OUTPUT_NAMES = (NUM_DETS, DET_BOXES, DET_SCORES, DET_CLASSES)
#: a raw-head graph's outputs (``graph == "raw"``): ``boxes [B,A,4]``, ``scores [B,A,C]``
RAW_OUTPUT_NAMES = ("boxes", "scores")
#: numpy dtype name of each output of the NMS graph
OUTPUT_DTYPES = {NUM_DETS: "int32", DET_BOXES: "float32", DET_SCORES: "float32", DET_CLASSES: "int32"}


def output_shapes(max_det: int) -> dict[str, list[int]]:
    """Per-image shape (without the batch dimension) of each output for ``K = max_det``."""
    k = int(max_det)
    return {NUM_DETS: [1], DET_BOXES: [k, 4], DET_SCORES: [k], DET_CLASSES: [k]}


# ---------------------------------------------------------------- files

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
#: an OpenVINO IR: ``model.xml`` with its weights ``model.bin`` beside it
IR_SUFFIXES = (".xml",)
#: image files named in messages: the common formats
COMMON_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: every image file read from a folder (training, evaluation, inference, calibration, verification): what OpenCV decodes
IMAGE_SUFFIXES = COMMON_IMAGE_SUFFIXES + (".jp2", ".pgm", ".ppm", ".pbm", ".pnm", ".sr", ".ras", ".exr", ".hdr",
                                          ".pic", ".avif")

# ---------------------------------------------------------------- metadata

FORMAT_KEY = "harmonic.format"
#: the schema's name and version; a graph without it is not ours (the runtime falls back, Triton refuses it)
METADATA_FORMAT = "harmonicdet-onnx"
FORMAT_VERSION_KEY = "harmonic.format_version"
#: the schema version :func:`build_metadata` writes; a file without the key is version 1 (exports
#: made before the key existed); a reader refuses a newer one (:func:`check_format_version`)
METADATA_VERSION = 1
_INT_KEYS = frozenset({"img_size", "max_det", "max_batch", FORMAT_VERSION_KEY})
_FLOAT_KEYS = frozenset({"score_threshold", "iou_threshold"})
_JSON_KEYS = frozenset({"names", "mean", "std", "versions", "profile", "fp16", "category_ids"})


def export_versions() -> dict[str, str]:
    """Versions of the export stack (torch, torchvision, onnx, onnxruntime, onnxslim, harmonic)."""
    import importlib.metadata as md

    import harmonic

    out = {"harmonic": harmonic.__version__}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxslim"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def build_metadata(
    *,
    names: list[str],
    img_size: int,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    score_threshold: float,
    iou_threshold: float,
    max_det: int,
    model: str,
    loss: str,
    checkpoint_sha256: str,
    graph: str,
    max_batch: int | None = None,
    versions: dict[str, str] | None = None,
    category_ids: list[int] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` dict (strings; JSON for structured values). ``max_batch`` for fixed-batch graphs;
    ``category_ids`` (the dataset's id of each class) when they are not ``index + 1``."""
    meta: dict[str, Any] = {
        FORMAT_KEY: METADATA_FORMAT,
        FORMAT_VERSION_KEY: str(METADATA_VERSION),
        "names": json.dumps(list(names)),
        "img_size": str(int(img_size)),
        "input_range": "0-1",
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "score_threshold": repr(float(score_threshold)),
        "iou_threshold": repr(float(iou_threshold)),
        "max_det": str(int(max_det)),
        "model": model,
        "loss": loss,
        "checkpoint_sha256": checkpoint_sha256,
        "versions": json.dumps(versions if versions is not None else export_versions(), sort_keys=True),
        "graph": graph,
    }
    if max_batch is not None:
        meta["max_batch"] = str(int(max_batch))
    if category_ids is not None:
        meta["category_ids"] = json.dumps([int(c) for c in category_ids])
    return meta


def decode_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """ONNX ``metadata_props`` / engine sidecar values (strings, JSON where structured) -> Python values.

    Numbers are converted and JSON values parsed; values that are not strings (a sidecar's) and
    strings that don't parse are kept as they are.
    """
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            out[key] = value
            continue
        try:
            if key in _INT_KEYS:
                out[key] = int(float(value))
            elif key in _FLOAT_KEYS:
                out[key] = float(value)
            elif key in _JSON_KEYS:
                out[key] = json.loads(value)
            else:
                out[key] = value
        except (ValueError, json.JSONDecodeError):
            out[key] = value
    return out


def check_format_version(meta: dict[str, Any], path: str | Path) -> None:
    """Refuse metadata (raw or decoded) of a newer schema than this code reads, one line naming ``path``."""
    raw = meta.get(FORMAT_VERSION_KEY, 1)
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise HarmonicError(f"{path}: {FORMAT_VERSION_KEY} {raw!r} is not a version number") from None
    if version > METADATA_VERSION:
        raise HarmonicError(f"{path}: metadata version {version} is newer than this HarmonicDet reads "
                            f"({METADATA_VERSION}); upgrade harmonic or export the model again with this one")


def class_names(meta: dict[str, Any]) -> list[str] | None:
    """The decoded metadata's class names (``None`` when it has none)."""
    names = meta.get("names")
    return [str(n) for n in names] if isinstance(names, list) else None


def category_ids(meta: dict[str, Any]) -> list[int] | None:
    """The dataset's category id of each class from the decoded metadata (the COCO ``category_id`` to write);
    ``None`` (= class index + 1) when it has none, or a list that does not match the names."""
    ids, names = meta.get("category_ids"), class_names(meta)
    if not isinstance(ids, list) or (names is not None and len(ids) != len(names)):
        return None
    try:
        return [int(c) for c in ids]
    except (TypeError, ValueError):
        return None


class MetadataClasses:
    """The class names and category ids of an object that holds a model's decoded ``metadata``
    (a runtime backend, a runner of the run loop)."""

    metadata: dict[str, Any]

    @property
    def names(self) -> list[str] | None:
        return class_names(self.metadata)

    @property
    def category_ids(self) -> list[int] | None:
        """The dataset's category id of each class (the COCO ``category_id`` to write), ``None`` = index + 1."""
        return category_ids(self.metadata)


def is_ours(meta: dict[str, Any]) -> bool:
    """Whether ``meta`` carries this schema (:data:`FORMAT_KEY` = :data:`METADATA_FORMAT`)."""
    return meta.get(FORMAT_KEY) == METADATA_FORMAT


# ---------------------------------------------------------------- engine sidecar

SIDECAR_SUFFIX = ".json"


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def sidecar_bytes(side: dict[str, Any]) -> bytes:
    """The sidecar file's content (indented JSON and a newline), written beside the engine."""
    return (json.dumps(side, indent=2) + "\n").encode()


def read_sidecar(engine: str | Path) -> dict[str, Any] | None:
    """Decoded sidecar of ``engine`` or ``None`` (with a warning) when there is none."""
    path = sidecar_path(engine)
    if not path.is_file():
        log.warning("%s: no sidecar %s; TensorRT version/GPU can't be checked before loading, "
                    "class names and thresholds are unknown", engine, path.name)
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarmonicError(f"{path}: unreadable engine sidecar ({exc})") from exc
    if not isinstance(raw, dict):
        raise HarmonicError(f"{path}: engine sidecar is not a JSON object")
    check_format_version(raw, path)
    return decode_metadata(raw)
