"""The Triton Python-backend model ``harmonic export --triton-repo`` writes (torch-free, no ``onnx``).

This file is copied as ``NAME_e2e/1/model.py`` (and ``NAME_py/1/model.py``) next to a
copy of the torch-free runtime (``harmonic/``: decode, letterbox, the backends,
un-letterbox), so a Triton server needs only numpy, OpenCV and ONNX Runtime (or
TensorRT) in the Python backend's environment, and clients need no pre-processing code.

Two kinds, chosen by the config parameter ``harmonic.serving``:

- ``end_to_end``: input ``image`` BYTES ``[n, 1]`` (encoded JPEG/PNG/... files) ->
  ``num_dets`` int32 ``[n, 1]``, ``det_boxes`` float32 ``[n, K, 4]`` (x1,y1,x2,y2 in
  *original image* pixels, EXIF orientation applied), ``det_scores`` float32
  ``[n, K]``, ``det_classes`` int32 ``[n, K]`` (0-based); rows past ``num_dets`` are zero.
- ``graph``: the exported graph's own contract (input ``images`` float32
  ``[n, 3, S, S]``, outputs in letterboxed input pixels), for servers without the
  native onnxruntime backend.

A request whose image can't be decoded gets an error response; the other requests
of the same server batch are answered normally.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "harmonic")) and _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # the runtime copy beside model.py (the stub ignores PYTHONPATH)

import numpy as np  # noqa: E402

from harmonic.contract import (  # noqa: E402
    DET_BOXES,
    DET_CLASSES,
    DET_SCORES,
    NUM_DETS,
    OUTPUT_DTYPES,
    OUTPUT_NAMES,
    output_shapes,
)
from harmonic.data.images import ImageDecodeError, decode_buffer  # noqa: E402
from harmonic.data.letterbox import LetterboxInfo  # noqa: E402
from harmonic.errors import HarmonicError  # noqa: E402
from harmonic.runtime.backends import Backend, open_backend  # noqa: E402
from harmonic.runtime.postprocess import split_outputs, unletterbox  # noqa: E402
from harmonic.runtime.preprocess import prepare_image, to_batch  # noqa: E402

SERVING_KEY = "harmonic.serving"
GRAPH_FILE_KEY = "harmonic.graph_file"


def decode_bytes(data: bytes | np.ndarray, label: str = "image") -> np.ndarray:
    """Encoded image bytes -> ``[H, W, 3]`` uint8 RGB, as :func:`harmonic.data.images.decode_image`
    decodes a file (EXIF orientation, truncated-JPEG check); :class:`ImageDecodeError` naming ``label``."""
    arr = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8)
    if arr.size == 0:
        raise ImageDecodeError(f"{label}: empty")
    return decode_buffer(Path(label), arr)


def _to_bytes(x: Any) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, np.ndarray):
        return x.tobytes()
    if isinstance(x, str):
        return x.encode("latin-1")
    raise ImageDecodeError(f"unexpected element type {type(x).__name__}")


@dataclass
class RequestResult:
    """Outputs of one request (arrays with its own leading batch dim) or its error message."""

    outputs: dict[str, np.ndarray] | None
    error: str | None = None


class GraphRunner:
    """The exported graph behind one :class:`~harmonic.runtime.backends.Backend`, run in chunks the graph accepts."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.size = backend.img_size
        self.k = int(backend.metadata.get("max_det", 0)) or None
        self.chunk = backend.fixed_batch or backend.max_batch or 64

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` float32 ``[n, 3, S, S]`` -> the four outputs with ``n`` rows (fixed batches padded)."""
        n = batch.shape[0]
        parts: list[dict[str, np.ndarray]] = []
        fixed = self.backend.fixed_batch
        for i in range(0, n, self.chunk):
            part = batch[i:i + self.chunk]
            m = part.shape[0]
            if fixed and m < fixed:
                part = np.concatenate([part, np.zeros((fixed - m, *part.shape[1:]), np.float32)])
            outs = self.backend.infer(part)
            parts.append({k: np.asarray(outs[k])[:m] for k in OUTPUT_NAMES})
        return {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in OUTPUT_NAMES}


def end_to_end(runner: GraphRunner, requests: list[list[Any]]) -> list[RequestResult]:
    """Each request's encoded images -> detections in original image pixels.

    All decodable images of all requests go through the graph together (the server's
    batch); a request with an undecodable image gets an error and no outputs.
    """
    results: list[RequestResult | None] = [None] * len(requests)
    chws: list[np.ndarray] = []
    infos: list[LetterboxInfo] = []
    owner: list[tuple[int, int]] = []  # (request, position within it) per stacked image
    for r, items in enumerate(requests):
        local_chws, local_infos = [], []
        try:
            for j, item in enumerate(items):
                img = decode_bytes(_to_bytes(item), f"image {j} of the request")
                chw, info = prepare_image(img, runner.size)
                local_chws.append(chw)
                local_infos.append(info)
        except ImageDecodeError as exc:
            results[r] = RequestResult(None, str(exc))
            continue
        for j, (chw, info) in enumerate(zip(local_chws, local_infos)):
            chws.append(chw)
            infos.append(info)
            owner.append((r, j))
    if chws:
        outs = runner.run(to_batch(chws))
        k = outs[DET_SCORES].shape[1]
        dets = split_outputs(outs, len(chws))
        per_req: dict[int, dict[str, np.ndarray]] = {}
        for (r, j), det, info in zip(owner, dets, infos):
            if r not in per_req:
                n = len(requests[r])
                per_req[r] = {name: np.zeros((n, *shape), OUTPUT_DTYPES[name])
                              for name, shape in output_shapes(k).items()}
            d = unletterbox(det, info)
            m = len(d)
            o = per_req[r]
            o[NUM_DETS][j, 0] = m
            o[DET_BOXES][j, :m] = d.boxes
            o[DET_SCORES][j, :m] = d.scores
            o[DET_CLASSES][j, :m] = d.classes
        for r, o in per_req.items():
            results[r] = RequestResult(o)
    for r in range(len(requests)):
        if results[r] is None:  # a request with no image at all
            results[r] = RequestResult(None, "the request has no image")
    return [res for res in results if res is not None]


def graph_batch(runner: GraphRunner, batches: list[np.ndarray]) -> list[RequestResult]:
    """Each request's ``[n, 3, S, S]`` float32 batch -> the graph's four outputs, one server batch for all."""
    results: list[RequestResult] = []
    good = []
    for b in batches:
        if b.ndim != 4 or b.shape[1:] != (3, runner.size, runner.size):
            results.append(RequestResult(None, f"images: expected [n, 3, {runner.size}, {runner.size}], "
                                               f"got {list(b.shape)}"))
        else:
            results.append(RequestResult({}))
            good.append(np.asarray(b, np.float32))
    if good:
        sizes = [g.shape[0] for g in good]
        outs = runner.run(np.concatenate(good) if len(good) > 1 else good[0])
        start = 0
        it = iter(sizes)
        for res in results:
            if res.outputs is not None:
                n = next(it)
                res.outputs = {k: v[start:start + n] for k, v in outs.items()}
                start += n
    return results


def open_runner(model_dir: str | Path, params: dict[str, str], instance_kind: str = "CPU",
                device_id: int = 0) -> GraphRunner:
    """The graph file named by the config parameter ``harmonic.graph_file`` in ``model_dir``, on the
    instance's device (``KIND_GPU`` -> ``cuda:<device_id>``)."""
    path = Path(model_dir) / params.get(GRAPH_FILE_KEY, "model.onnx")
    gpu = instance_kind.upper() == "GPU"
    opts: dict[str, Any] = {"device": f"cuda:{device_id}" if gpu else "cpu"}
    if path.suffix == ".onnx":
        opts["provider"] = "cuda" if gpu else "cpu"
        opts["spin"] = False  # idle ORT threads must not spin while the stub waits for requests
    return GraphRunner(open_backend(path, **opts))


class TritonPythonModel:
    """The Python-backend entry points (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args: dict[str, str]) -> None:
        cfg = json.loads(args["model_config"])
        self.params = {k: v.get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
        self.kind = self.params.get(SERVING_KEY, "end_to_end")
        model_dir = Path(args["model_repository"]) / args["model_version"]
        try:
            self.runner = open_runner(model_dir, self.params, args.get("model_instance_kind", "CPU"),
                                      int(args.get("model_instance_device_id", 0) or 0))
        except HarmonicError as exc:  # one line in the server log instead of a traceback
            raise RuntimeError(f"{args.get('model_name', '?')}: {exc}") from None

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        if self.kind == "graph":
            arrays = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
            results = graph_batch(self.runner, arrays)
        else:
            items = [list(pb_utils.get_input_tensor_by_name(r, "image").as_numpy().reshape(-1)) for r in requests]
            results = end_to_end(self.runner, items)
        responses = []
        for res in results:
            if res.outputs is None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(res.error)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(k, np.ascontiguousarray(res.outputs[k])) for k in OUTPUT_NAMES]))
        return responses

    def finalize(self) -> None:
        self.runner.backend.close()
