"""A model a Triton Inference Server serves, as a runner behind the one run loop.

Torch-free; ``tritonclient`` (``pip install "harmonicdet[triton]"``) is imported only here.
The model's config is read from the server: a model with a BYTES input is an
end-to-end model (``harmonic export --triton-repo`` writes ``NAME_e2e``: encoded files
in, detections in original pixels out, no client-side pre-processing; frames in memory
are sent as lossless PNG); a model with a float32 ``[3, S, S]`` input is the exported graph
(the client decodes and letterboxes with :mod:`harmonic.runtime.preprocess` and
un-letterboxes the boxes). :class:`TritonRunner` is that model behind
:func:`harmonic.runtime.runners.run_batches`, so ``infer --triton URL --model NAME``,
``Detector("grpc://host:port/NAME")`` and a local model share one run: requests carry
``--batch`` images each, ``--concurrency`` of them are in flight at once (the server's
dynamic batcher merges them), and an image the server refuses is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import OUTPUT_NAMES, decode_metadata
from harmonic.data.images import ImageDecodeError
from harmonic.data.letterbox import LetterboxInfo
from harmonic.errors import HarmonicError, RunFailure
from harmonic.runtime.postprocess import Detections, refine, split_outputs, unletterbox
from harmonic.runtime.preprocess import prepare_image, to_batch
from harmonic.runtime.runners import Runner, RunResult

log = logging.getLogger("harmonic.infer")
INSTALL = 'pip install "harmonicdet[triton]"'
#: URL schemes of a Triton server
SCHEMES = ("http", "grpc")


def parse_url(url: str) -> tuple[str, str]:
    """``grpc://host:port`` -> ("grpc", "host:port"); ``http://host:port`` or ``host:port`` -> ("http", ...)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    scheme = scheme.lower()
    if scheme not in ("http", "grpc") or not rest or "/" in rest.rstrip("/"):
        raise HarmonicError(f"--triton {url}: expected host:port, http://host:port or grpc://host:port")
    return scheme, rest.rstrip("/")


def import_client(protocol: str) -> Any:
    """``tritonclient.http`` or ``tritonclient.grpc``; a one-line :class:`HarmonicError` when it is missing."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as exc:
        raise HarmonicError(f"--triton needs tritonclient[{protocol}], which is not installed "
                            f"({exc.name or exc}): {INSTALL}") from None
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


@dataclass
class ServedModel:
    """What the client needs from the model's config on the server."""

    name: str
    end_to_end: bool
    input_name: str
    max_batch: int  # 0: no batching, the input dims carry a fixed batch
    fixed_batch: int | None
    img_size: int | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str] | None:
        try:
            return list(json.loads(self.params["names"]))
        except (KeyError, ValueError):
            return None

    @property
    def category_ids(self) -> list[int] | None:
        try:
            ids = [int(c) for c in json.loads(self.params["category_ids"])]
        except (KeyError, ValueError, TypeError):
            return None
        names = self.names
        return ids if names is None or len(ids) == len(names) else None

    @property
    def score_threshold(self) -> float | None:
        try:
            return float(self.params["score_threshold"])
        except (KeyError, ValueError):
            return None

    @property
    def largest_request(self) -> int:
        """The most images one request may carry."""
        return self.max_batch if self.max_batch > 0 else (self.fixed_batch or 1)


def served_model(config: dict[str, Any], url: str) -> ServedModel:
    """A Triton model config (JSON form) -> :class:`ServedModel`; a model that isn't ours is a HarmonicError."""
    name = str(config.get("name", "?"))
    inputs = config.get("input") or []
    out_names = {o.get("name") for o in config.get("output") or []}
    missing = [n for n in OUTPUT_NAMES if n not in out_names]
    if len(inputs) != 1 or missing:
        raise HarmonicError(f"--model {name}: not a HarmonicDet detector on {url} (needs one input and the "
                            f"outputs {', '.join(OUTPUT_NAMES)}; missing {', '.join(missing) or '-'})")
    inp = inputs[0]
    dims = [int(d) for d in inp.get("dims", [])]
    max_batch = int(config.get("max_batch_size", 0) or 0)
    params = {k: str((v or {}).get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}
    dtype = str(inp.get("data_type", ""))
    if dtype in ("TYPE_STRING", "TYPE_BYTES", "BYTES"):
        return ServedModel(name, True, inp["name"], max_batch, None if max_batch else (dims[0] if dims else 1),
                           None, params)
    if dtype not in ("TYPE_FP32", "FP32"):
        raise HarmonicError(f"--model {name}: input {inp.get('name')} is {dtype}; expected float32 images or bytes")
    chw = dims if max_batch else dims[1:]
    if len(chw) != 3 or chw[0] != 3 or chw[1] != chw[2] or chw[1] <= 0:
        raise HarmonicError(f"--model {name}: input dims {dims} are not [3, S, S]")
    return ServedModel(name, False, inp["name"], max_batch, None if max_batch else dims[0], chw[1], params)


class TritonSession:
    """One server and model; ``infer`` may be called from several threads (each gets its own client)."""

    def __init__(self, url: str, model: str, timeout_s: float = 60.0) -> None:
        self.url = url
        self.protocol, self.address = parse_url(url)
        self.client_mod = import_client(self.protocol)
        self.model_name = model
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        client = self.client()
        try:
            live = client.is_server_live()
        except Exception as exc:  # connection refused, DNS, timeout: the client's own exception types
            raise HarmonicError(f"--triton {url}: no Triton server answers there ({_first_line(exc)})") from None
        if not live:
            raise HarmonicError(f"--triton {url}: the server is not live")
        try:
            if self.protocol == "grpc":
                cfg = client.get_model_config(model, as_json=True)["config"]
            else:
                cfg = client.get_model_config(model)
        except Exception as exc:
            raise HarmonicError(f"--model {model}: the server at {url} has no such model ready "
                                f"(has: {', '.join(self.model_names()) or 'none'}; {_first_line(exc)})") from None
        self.model = served_model(cfg, url)

    def client(self) -> Any:
        """This thread's client (tritonclient clients are not shared across threads)."""
        c = getattr(self._local, "client", None)
        if c is None:
            if self.protocol == "grpc":
                c = self.client_mod.InferenceServerClient(self.address)
            else:
                c = self.client_mod.InferenceServerClient(self.address, connection_timeout=self.timeout_s,
                                                          network_timeout=self.timeout_s)
            self._local.client = c
            with self._clients_lock:
                self._clients.append(c)
        return c

    def model_names(self) -> list[str]:
        try:
            if self.protocol == "grpc":
                index = self.client().get_model_repository_index(as_json=True).get("models", [])
            else:
                index = self.client().get_model_repository_index()
        except Exception:  # noqa: BLE001 - only used to enrich an error message
            return []
        return sorted(str(m.get("name")) for m in index if m.get("state") == "READY")

    def statistics(self) -> dict[str, Any]:
        """The server's statistics of the model (``v2/models/NAME/stats``) as JSON."""
        if self.protocol == "grpc":
            return self.client().get_inference_statistics(self.model_name, as_json=True)
        return self.client().get_inference_statistics(self.model_name)

    def infer(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """One request: ``array`` object ``[n, 1]`` (encoded files) or float32 ``[n, 3, S, S]`` -> outputs."""
        mod = self.client_mod
        dtype = "BYTES" if self.model.end_to_end else "FP32"
        inp = mod.InferInput(self.model.input_name, list(array.shape), dtype)
        if self.protocol == "http":
            inp.set_data_from_numpy(array, binary_data=True)
            outs = [mod.InferRequestedOutput(n, binary_data=True) for n in OUTPUT_NAMES]
        else:
            inp.set_data_from_numpy(array)
            outs = [mod.InferRequestedOutput(n) for n in OUTPUT_NAMES]
        res = self.client().infer(self.model_name, [inp], outputs=outs)
        return {n: res.as_numpy(n) for n in OUTPUT_NAMES}

    def close(self) -> None:
        """Close every thread's client."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass


def is_triton_url(model: Any) -> bool:
    """Whether ``model`` names a served model (``http://`` or ``grpc://``) rather than a model file."""
    return isinstance(model, str) and model.split("://", 1)[0].lower() in SCHEMES and "://" in model


def split_model_url(url: str, model_name: str | None = None) -> tuple[str, str]:
    """``grpc://host:port/NAME`` (or ``.../v2/models/NAME``) -> ``("grpc://host:port", "NAME")``;
    ``model_name`` names the model where the URL does not."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    address, _, path = rest.partition("/")
    parts = [q for q in path.split("/") if q]
    if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
        parts = parts[2:3]
    if len(parts) > 1:
        raise HarmonicError(f"{url}: expected {scheme}://host:port/MODEL")
    name = model_name or (parts[0] if parts else None)
    if not name:
        raise HarmonicError(f"{url}: name the served model: {scheme}://host:port/MODEL")
    return f"{scheme}://{address}", name


class TritonRunner(Runner):
    """A served model behind :func:`~harmonic.runtime.runners.run_batches`: ``concurrency`` requests in
    flight, a failed multi-image request retried image by image (so one image the server refuses is the
    only one skipped), a lost server a :class:`RunFailure`. ``iou`` / ``max_det`` refine the served
    model's output (:func:`~harmonic.runtime.postprocess.refine`)."""

    def __init__(self, session: Any, concurrency: int = 1, iou: float | None = None,
                 max_det: int | None = None) -> None:
        self.session = session
        self.model = session.model
        self.concurrency = max(1, int(concurrency))
        self.name = f"triton-{getattr(session, 'protocol', 'http')}"
        self.device = f"{session.url} ({self.model.name})"
        self.img_size = self.model.img_size
        self.metadata = decode_metadata(dict(self.model.params))
        self.iou, self.max_det = iou, max_det

    @property
    def versions(self) -> dict[str, str]:
        return _versions()

    def default_batch(self) -> int:
        return 1

    def check_batch(self, batch: int) -> None:
        m = self.model
        if batch > m.largest_request:
            raise HarmonicError(f"--batch {batch}: model {m.name} takes at most {m.largest_request} image(s) per "
                                f"request (max_batch_size {m.max_batch})")

    def load_path(self, path: Path, fast_decode: bool = False, keep: str | None = None) -> tuple:
        from harmonic.data.images import decode_image

        t0 = time.perf_counter()
        if self.model.end_to_end:  # the server decodes: send the file as it is
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})") from None
            image = None
            if keep is not None:
                image = _order(decode_image(path), keep)
            return data, None, time.perf_counter() - t0, 0.0, t0, image
        img = decode_image(path)
        t1 = time.perf_counter()
        chw, info = prepare_image(img, int(self.model.img_size or 0))
        return chw, info, t1 - t0, time.perf_counter() - t1, t0, _order(img, keep) if keep else None

    def load_array(self, img: np.ndarray, bgr: bool) -> tuple[Any, LetterboxInfo | None]:
        if not self.model.end_to_end:
            return prepare_image(img, int(self.model.img_size or 0), bgr=bgr)
        import cv2

        ok, buf = cv2.imencode(".png", img if bgr else cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise HarmonicError("image: OpenCV cannot encode it as PNG for the server")
        return buf.tobytes(), None

    def load_encoded(self, data: bytes, label: str) -> tuple[Any, LetterboxInfo | None]:
        if self.model.end_to_end:
            if not data:
                raise ImageDecodeError(f"{label}: empty bytes")
            return bytes(data), None
        return super().load_encoded(data, label)

    def assemble(self, payloads: list[Any]) -> np.ndarray:
        m = self.model
        if m.end_to_end:
            return np.array([[d] for d in payloads], dtype=np.object_)
        arr = to_batch(payloads)
        if m.max_batch == 0 and m.fixed_batch and arr.shape[0] < m.fixed_batch:
            arr = np.concatenate([arr, np.zeros((m.fixed_batch - arr.shape[0], *arr.shape[1:]), np.float32)])
        return arr

    def run(self, array: np.ndarray, infos: list[LetterboxInfo | None], conf: float | None) -> RunResult:
        n = len(infos)
        t0 = time.perf_counter()
        try:
            outs = self.session.infer(array)
        except Exception as exc:  # the server's error for this request (e.g. an undecodable image)
            if _server_gone(exc):
                raise RunFailure(f"--triton {self.session.url}: lost the server ({_first_line(exc)})") from None
            if n == 1:
                return RunResult([f"the server refused it ({_first_line(exc)})"], time.perf_counter() - t0)
            parts = [self.run(self._row(array, i), [infos[i]], conf) for i in range(n)]
            return RunResult([d for p in parts for d in p.dets], sum(p.engine_s for p in parts),
                             sum(p.post_s for p in parts), None, [r for p in parts for r in p.requests])
        t1 = time.perf_counter()
        dets: list[Detections | str] = []
        for d, info in zip(split_outputs(outs, n, conf), infos):
            if self.iou is not None or self.max_det is not None:
                d = refine(d, self.iou, self.max_det)
            dets.append(d if info is None else unletterbox(d, info))
        return RunResult(dets, t1 - t0, time.perf_counter() - t1, None, [(n, t1 - t0)])

    def _row(self, array: np.ndarray, i: int) -> np.ndarray:
        """The request for input ``i`` alone (padded to a fixed batch)."""
        row = array[i:i + 1]
        if not self.model.end_to_end and self.model.max_batch == 0:
            fixed = self.model.fixed_batch or 1
            if row.shape[0] < fixed:
                row = np.concatenate([row, np.zeros((fixed - 1, *row.shape[1:]), np.float32)])
        return row

    def statistics(self) -> dict[str, Any]:
        """The server's statistics of the model, ``{}`` where it won't give them."""
        try:
            return self.session.statistics()
        except Exception as exc:  # noqa: BLE001 - the figures of the run are still worth writing
            log.warning("server statistics not read: %s", _first_line(exc))
            return {}

    def close(self) -> None:
        self.session.close()


def _order(rgb: np.ndarray, keep: str | None) -> np.ndarray | None:
    import cv2

    if keep is None:
        return None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if keep == "bgr" else rgb


@dataclass
class RequestTiming:
    """One request: its images and client-side latency (send -> outputs decoded) in seconds."""

    n: int
    latency: float


def infer_paths(session: Any, paths: Sequence[Path], batch: int, concurrency: int,
                conf: float | None = None, timings: list[RequestTiming] | None = None
                ) -> Iterator[tuple[int, Detections | str]]:
    """``(index, detections in original pixels)`` per image of ``paths`` in input order, or ``(index, reason)``
    for an image that failed (unreadable here, or the server's error for it): the one run loop
    (:func:`~harmonic.runtime.runners.run_batches`) with a :class:`TritonRunner`."""
    from harmonic.runtime.pipeline import RunStats, iter_batches
    from harmonic.runtime.runners import run_batches

    runner = TritonRunner(session, concurrency)
    stats = RunStats()
    batches = iter_batches(paths, int(runner.img_size or 0), batch, load=runner.load_path, assemble=runner.assemble)
    done: dict[int, Detections | str] = {}
    nxt = 0

    def on_skip(s: Any) -> None:
        done[s.index] = s.reason

    for item, det in run_batches(runner, batches, conf, stats, on_skip):
        done[item.index] = det
        while nxt in done:
            yield nxt, done.pop(nxt)
            nxt += 1
    for i in sorted(done):
        yield i, done[i]
    if timings is not None:
        timings.extend(RequestTiming(n, t) for n, t in stats.requests)


def _server_gone(exc: BaseException) -> bool:
    """A connection failure (refused, reset, gRPC UNAVAILABLE), not the server's answer to this request."""
    st = getattr(exc, "status", None)
    status = str(st() if callable(st) else st or "")
    return isinstance(exc, OSError) or "UNAVAILABLE" in status or "UNAVAILABLE" in str(exc)[:200]


def check_args(args: Any) -> None:
    """``--triton`` / ``--model`` / ``--concurrency`` combinations (before any connection); ``args`` is the
    infer CLI's :class:`~harmonic.runtime.config.InferConfig` (or anything with its fields)."""
    if args.triton is None:
        if args.model is not None or args.concurrency is not None:
            raise HarmonicError(f"{'--model' if args.model is not None else '--concurrency'}: only used with --triton URL")
        return
    if args.engine is not None:
        raise HarmonicError("--triton with --engine: pass one (a served model or a local file)")
    if not args.model:
        raise HarmonicError("--triton: needs --model NAME (the model in the server's repository)")
    for flag, value in (("--save-vis", args.save_vis), ("--fast-decode", args.fast_decode),
                        ("--provider", args.provider), ("--device", args.device), ("--img-size", args.img_size),
                        ("--threads", args.threads), ("--backend", args.backend != "auto")):
        if value:
            raise HarmonicError(f"{flag}: not used with --triton (the server runs the model)")
    if args.concurrency is not None and args.concurrency < 1:
        raise HarmonicError(f"--concurrency must be >= 1, got {args.concurrency}")
    parse_url(args.triton)


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        out["tritonclient"] = md.version("tritonclient")
    except md.PackageNotFoundError:
        pass
    return out
