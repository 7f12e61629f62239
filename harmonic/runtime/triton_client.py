"""``harmonic infer --triton URL --model NAME``: query a model a Triton Inference Server serves.

Torch-free; ``tritonclient`` (``pip install "harmonicdet[triton]"``) is imported only here.
The model's config is read from the server: a model with a BYTES input is an
end-to-end model (``harmonic export --triton-repo`` writes ``NAME_e2e``: encoded files
in, detections in original pixels out, no client-side pre-processing); a model with a
float32 ``[3, S, S]`` input is the exported graph (the client decodes and letterboxes
with :mod:`harmonic.runtime.preprocess` and un-letterboxes the boxes). Requests carry
``--batch`` images each and ``--concurrency`` of them are in flight at once; the
server's dynamic batcher merges concurrent requests. The outputs are the local
``infer``'s: ``detections.json``, ``report.json`` (with ``--annotations``) and
``bench.json`` (client-side latency percentiles and throughput, with ``--bench``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.contract import OUTPUT_NAMES
from harmonic.data.images import ImageDecodeError, decode_image
from harmonic.errors import HarmonicError, RunFailure
from harmonic.runtime.postprocess import Detections, split_outputs, unletterbox
from harmonic.runtime.preprocess import prepare_image, to_batch

log = logging.getLogger("harmonic.infer")
INSTALL = 'pip install "harmonicdet[triton]"'


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
        c = getattr(self._local, "client", None)
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass


@dataclass
class RequestTiming:
    """One request: its images and client-side latency (send -> outputs decoded) in seconds."""

    n: int
    latency: float


def _prepare(session: TritonSession, paths: Sequence[Path]) -> tuple[np.ndarray, list[Any]]:
    """The request array for ``paths`` and what turns its outputs into original pixels (letterbox infos)."""
    m = session.model
    if m.end_to_end:
        data = []
        for p in paths:
            try:
                data.append(Path(p).read_bytes())
            except OSError as exc:
                raise ImageDecodeError(f"{p}: cannot read ({exc.strerror or exc})") from None
        return np.array([[d] for d in data], dtype=np.object_), [None] * len(paths)
    chws, infos = [], []
    for p in paths:
        chw, info = prepare_image(decode_image(p), int(m.img_size or 0))
        chws.append(chw)
        infos.append(info)
    arr = to_batch(chws)
    if m.max_batch == 0 and m.fixed_batch and arr.shape[0] < m.fixed_batch:
        arr = np.concatenate([arr, np.zeros((m.fixed_batch - arr.shape[0], *arr.shape[1:]), np.float32)])
    return arr, infos


def _detections(session: TritonSession, outs: dict[str, np.ndarray], infos: list[Any],
                conf: float | None) -> list[Detections]:
    dets = split_outputs(outs, len(infos), conf)
    return [d if info is None else unletterbox(d, info) for d, info in zip(dets, infos)]


def infer_paths(session: TritonSession, paths: Sequence[Path], batch: int, concurrency: int,
                conf: float | None = None, timings: list[RequestTiming] | None = None
                ) -> Iterator[tuple[int, Detections | str]]:
    """``(index, detections in original pixels)`` per image of ``paths`` in input order, or ``(index, reason)``
    for an image that failed (unreadable here, or the server's error for it). ``batch`` images per request,
    ``concurrency`` requests in flight; a failed multi-image request is retried image by image."""
    chunks = [list(range(i, min(i + batch, len(paths)))) for i in range(0, len(paths), batch)]
    lock = threading.Lock()

    def one(idx: list[int]) -> list[tuple[int, Detections | str]]:
        sel = [paths[i] for i in idx]
        try:
            arr, infos = _prepare(session, sel)
        except ImageDecodeError as exc:
            if len(idx) == 1:
                return [(idx[0], str(exc))]
            return [r for i in idx for r in one([i])]
        t0 = time.perf_counter()
        try:
            outs = session.infer(arr)
        except Exception as exc:  # the server's error for this request (e.g. an undecodable image)
            if _server_gone(exc):
                raise RunFailure(f"--triton {session.url}: lost the server ({_first_line(exc)})") from None
            if len(idx) == 1:
                return [(idx[0], f"{sel[0]}: the server refused it ({_first_line(exc)})")]
            return [r for i in idx for r in one([i])]
        dt = time.perf_counter() - t0
        if timings is not None:
            with lock:
                timings.append(RequestTiming(len(idx), dt))
        return list(zip(idx, _detections(session, outs, infos, conf)))

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="harmonic-triton") as pool:
        pending: list[Future] = []
        it = iter(chunks)
        for c in it:
            pending.append(pool.submit(one, c))
            if len(pending) >= 2 * concurrency:
                break
        while pending:
            fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(one, nxt))
            yield from fut.result()


def _server_gone(exc: BaseException) -> bool:
    """A connection failure (refused, reset, gRPC UNAVAILABLE), not the server's answer to this request."""
    st = getattr(exc, "status", None)
    status = str(st() if callable(st) else st or "")
    return isinstance(exc, OSError) or "UNAVAILABLE" in status or "UNAVAILABLE" in str(exc)[:200]


def _server_batches(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Executions / inferences and the batch sizes the server formed between two statistics snapshots."""
    def stats(s: dict[str, Any]) -> dict[str, Any]:
        ms = (s.get("model_stats") or [{}])[0]
        return {"inference_count": int(ms.get("inference_count", 0)), "execution_count": int(ms.get("execution_count", 0)),
                "batches": {int(b["batch_size"]): int((b.get("compute_infer") or {}).get("count", 0))
                            for b in ms.get("batch_stats") or []}}
    a, b = stats(before), stats(after)
    sizes = {k: v - a["batches"].get(k, 0) for k, v in b["batches"].items() if v - a["batches"].get(k, 0) > 0}
    inf, ex = b["inference_count"] - a["inference_count"], b["execution_count"] - a["execution_count"]
    return {"inferences": inf, "executions": ex, "mean_batch": inf / ex if ex else None,
            "executions_by_batch_size": dict(sorted(sizes.items()))}


def check_args(args: Any) -> None:
    """``--triton`` / ``--model`` / ``--concurrency`` combinations (before any connection); ``args`` is the
    infer CLI's :class:`~harmonic.runtime.cli.InferConfig` (or anything with its fields)."""
    if args.triton is None:
        if args.model is not None or args.concurrency is not None:
            raise HarmonicError(f"{'--model' if args.model is not None else '--concurrency'}: only used with --triton URL")
        return
    if args.engine is not None:
        raise HarmonicError("--triton with --engine: pass one (a served model or a local file)")
    if not args.model:
        raise HarmonicError("--triton: needs --model NAME (the model in the server's repository)")
    for flag, value in (("--save-vis", args.save_vis), ("--fast-decode", args.fast_decode),
                        ("--provider", args.provider), ("--device", args.device), ("--img-size", args.img_size)):
        if value:
            raise HarmonicError(f"{flag}: not used with --triton (the server runs the model)")
    if args.concurrency is not None and args.concurrency < 1:
        raise HarmonicError(f"--concurrency must be >= 1, got {args.concurrency}")
    parse_url(args.triton)


def main_triton(args: Any) -> int:
    """The ``infer`` run against a Triton server (flags already parsed and checked by the infer CLI).
    detections.json, bench.json and the report replace the old ones together, or none does."""
    from harmonic.atomic import output_group

    with output_group():
        return _main_triton(args)


def _main_triton(args: Any) -> int:
    from harmonic.atomic import JsonListWriter, write_json
    from harmonic.runtime import bench as bench_mod
    from harmonic.runtime.postprocess import coco_results
    from harmonic.runtime.reports import assign_image_ids, evaluate_report, load_annotation_records
    from harmonic.runtime.sources import expand_sources

    check_args(args)
    listed = getattr(args, "image_list", None)
    if listed:
        from harmonic.runtime.sources import read_image_list

        images = expand_sources(args.images, listed=read_image_list(listed))
    else:
        images = expand_sources(args.images)
    session = TritonSession(args.triton, args.model)
    try:
        m = session.model
        concurrency = args.concurrency or 1
        batch = args.batch or 1
        if batch > m.largest_request:
            raise HarmonicError(f"--batch {batch}: model {m.name} takes at most {m.largest_request} image(s) per "
                                f"request (max_batch_size {m.max_batch})")
        names = m.names
        category_ids = m.category_ids
        out = Path(args.out)
        records = None
        gt_names: list[str] = []
        if args.annotations:
            records, gt_names, category_ids = load_annotation_records(Path(args.annotations), names, args.split)
            ids, gt_ids = assign_image_ids(images, records, args.annotations)
        else:
            ids = list(range(1, len(images.paths) + 1))
            gt_ids = set()
        if args.bench and args.warmup and images.paths:  # untimed: the first image, one request at a time
            for _ in range(args.warmup):
                list(infer_paths(session, images.paths[:1] * batch, batch, 1))
        before = _statistics_or_empty(session) if args.bench else {}
        out.mkdir(parents=True, exist_ok=True)
        writer = JsonListWriter(out / "detections.json")
        timings: list[RequestTiming] = []
        kept: list[dict[str, Any]] = []
        evaluated: set[int] = set()
        processed, skipped, n_det = 0, [], 0
        try:
            t0 = time.perf_counter()
            for i, det in infer_paths(session, images.paths, batch, concurrency, args.conf, timings):
                if isinstance(det, str):
                    skipped.append(det)
                    log.warning("skipped %s", det)
                    continue
                processed += 1
                n_det += len(det)
                entries = coco_results(det, ids[i], images.relative_name(i), category_ids)
                writer.extend(entries)
                if records is not None and ids[i] in gt_ids:
                    kept.extend(entries)
                    evaluated.add(int(ids[i]))
            wall = time.perf_counter() - t0
            print(f"images: {processed} processed, {len(skipped) + len(images.missing)} skipped; {n_det} detections; "
                  f"{wall:.2f} s ({processed / max(wall, 1e-9):.1f} img/s) from {m.name} at {args.triton}")
            if processed == 0:
                raise RunFailure(f"--images: none of the {len(images.paths)} image(s) got detections "
                                 f"(first: {skipped[0] if skipped else '?'}); {out} left as it was")
            writer.commit()
        except BaseException:
            writer.discard()
            raise
        print(f"wrote {out / 'detections.json'}")
        if args.bench:
            lat = [t.latency for t in timings]
            report = {
                "backend": f"triton-{session.protocol}", "url": args.triton, "model": m.name,
                "model_kind": "end_to_end" if m.end_to_end else "graph", "batch": batch,
                "concurrency": concurrency, "warmup": args.warmup, "img_size": m.img_size or m.params.get("img_size"),
                "versions": _versions(),
                "note": "client side: latency per request = send -> outputs decoded (includes reading the file, "
                        "and for a graph model decode/letterbox); throughput = images / wall time with "
                        "--concurrency requests in flight; server = batches its dynamic batcher formed; times in ms",
                "end_to_end": {"images": processed, "requests": len(timings), "wall_s": wall,
                               "throughput_img_s": processed / wall if wall > 0 else None,
                               "latency_ms_per_request": bench_mod.summarize(lat),
                               "latency_ms_per_image": bench_mod.summarize(
                                   [t.latency / t.n for t in timings])},
                "server": _server_batches(before, _statistics_or_empty(session)),
            }
            write_json(out / "bench.json", report, indent=2)
            lr, sv = report["end_to_end"]["latency_ms_per_request"], report["server"]
            print(f"triton {m.name} batch {batch} concurrency {concurrency}: "
                  f"{report['end_to_end']['throughput_img_s']:.1f} img/s; latency/request p50 {lr.get('p50', 0):.2f} "
                  f"p90 {lr.get('p90', 0):.2f} p99 {lr.get('p99', 0):.2f} ms; server batches "
                  f"{sv['executions_by_batch_size']} (mean {sv['mean_batch'] or 0:.2f})")
            print(f"wrote {out / 'bench.json'}")
        if records is not None:
            evaluated_records = [r for r in records if int(r.image_id) in evaluated]
            subset = None
            if len(evaluated_records) < len(records):
                subset = {"images_evaluated": len(evaluated_records), "images_annotated": len(records)}
            evaluate_report(evaluated_records, kept, gt_names, out, f"{m.name} on {args.annotations}",
                            category_ids, subset)
            print(f"wrote {out / 'report.json'}")
    finally:
        session.close()
    return 0


def _statistics_or_empty(session: TritonSession) -> dict[str, Any]:
    try:
        return session.statistics()
    except Exception as exc:  # noqa: BLE001 - the figures of the run are still worth writing
        log.warning("server statistics not read: %s", _first_line(exc))
        return {}


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        out["tritonclient"] = md.version("tritonclient")
    except md.PackageNotFoundError:
        pass
    return out
