"""``harmonic infer`` / ``python infer/run.py``: torch-free inference, benchmark and accuracy report."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.atomic import JsonListWriter, write_json
from harmonic.data.images import decode_image
from harmonic.errors import HarmonicError, RunFailure
from harmonic.runtime import bench as bench_mod
from harmonic.runtime.backends import open_backend
from harmonic.runtime.pipeline import RunStats, infer_images, run_engine
from harmonic.runtime.postprocess import coco_results, draw_detections, save_image
from harmonic.runtime.reports import assign_image_ids, evaluate_report, load_annotation_records
from harmonic.runtime.sources import ImageList, expand_sources, read_image_list

log = logging.getLogger("harmonic.infer")
FAIR_SCORE_THRESHOLD = 0.05


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic infer", description=__doc__)
    p.add_argument("--engine", default=None,
                   help="model.onnx | model.engine (.plan/.trt) | model.xml (OpenVINO IR); or --triton")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "openvino"],
                   help="runtime (default auto: from the --engine suffix, .onnx -> onnxruntime)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "int8"],
                   help="OpenVINO precision (default: the model's own; bf16 needs a CPU with native bf16)")
    p.add_argument("--images", required=True, nargs="+", help="image directories, globs or files")
    p.add_argument("--out", default="runs/infer", help="output folder (default runs/infer)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: the engine's fixed batch, else min(8, its max))")
    p.add_argument("--annotations", default=None,
                   help="ground truth: COCO json, Pascal VOC folder, YOLO labels folder (class names from the "
                        "model or --names; images from --images) or DATA.yaml[:split] (+ --split)")
    p.add_argument("--split", default="val", help="split of a dataset.yaml for --annotations (default val)")
    p.add_argument("--names", nargs="+", default=None,
                   help="class names of a VOC / YOLO --annotations folder when the model has none")
    p.add_argument("--image-list", default=None,
                   help="infer only these images: a text file, one path per line relative to the one "
                        "--images folder (the other files there are counted and left out)")
    p.add_argument("--bench", action="store_true", help="benchmark: per-stage latency, throughput")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs with --bench (default 5)")
    p.add_argument("--iters", type=int, default=30, help="timed engine-only runs with --bench (default 30)")
    p.add_argument("--save-vis", action="store_true", help="draw labelled boxes into OUT/vis/")
    p.add_argument("--conf", type=float, default=None, help="drop detections scoring below this")
    p.add_argument("--device", default=None, help="cpu | cuda[:N]")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider (default: cuda if available, else cpu)")
    p.add_argument("--img-size", type=int, default=None, help="input size for a model without our metadata")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op / OpenVINO inference threads")
    p.add_argument("--workers", type=int, default=None, help="decode/preprocess threads (default min(4, cores))")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode large JPEGs scaled down by 2/4/8 in libjpeg (much cheaper; same geometry, "
                        "slightly different resampling than training)")
    t = p.add_argument_group("Triton Inference Server client (harmonic.runtime.triton_client)")
    t.add_argument("--triton", default=None, metavar="URL",
                   help="query a served model instead of --engine: host:port / http://host:port / grpc://host:port")
    t.add_argument("--model", default=None, help="with --triton: the model name in the server's repository")
    t.add_argument("--concurrency", type=int, default=None,
                   help="with --triton: requests in flight at once (default 1; --batch = images per request)")
    return p


@dataclass(frozen=True)
class InferConfig:
    """The ``infer`` flags, built once from argparse (:meth:`from_args`) and passed down instead of the
    ``Namespace``. Fields are the flags (``--img-size`` -> ``img_size``); lists stay as argparse gives them."""

    images: list[str]
    engine: str | None = None
    backend: str = "auto"
    precision: str | None = None
    out: str = "runs/infer"
    batch: int | None = None
    annotations: str | None = None
    split: str = "val"
    names: list[str] | None = None
    image_list: str | None = None
    bench: bool = False
    warmup: int = 5
    iters: int = 30
    save_vis: bool = False
    conf: float | None = None
    device: str | None = None
    provider: str | None = None
    img_size: int | None = None
    threads: int | None = None
    workers: int | None = None
    fast_decode: bool = False
    triton: str | None = None
    model: str | None = None
    concurrency: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InferConfig:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def default_batch(backend: Any) -> int:
    if backend.fixed_batch:
        return int(backend.fixed_batch)
    return min(8, backend.max_batch) if backend.max_batch else 8


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def check_args(cfg: InferConfig) -> None:
    """Flag checks that need neither the model nor the images (usage errors, exit 2)."""
    from harmonic.validate import check_float, check_in_file, check_int, check_out_dir

    check_int(cfg.batch, "--batch", 1)
    check_int(cfg.warmup, "--warmup", 0)
    check_int(cfg.iters, "--iters", 1)
    check_int(cfg.workers, "--workers", 1)
    check_int(cfg.threads, "--threads", 0)
    check_int(cfg.img_size, "--img-size", 1)
    check_float(cfg.conf, "--conf", 0, 1)
    check_out_dir(cfg.out)
    if cfg.annotations is not None:
        from harmonic.data.readers import split_yaml_spec

        spec = split_yaml_spec(cfg.annotations)
        path = spec[0] if spec is not None else Path(cfg.annotations)
        if not path.exists():
            raise HarmonicError(f"--annotations {path}: not found")
    check_in_file(cfg.image_list, "--image-list")
    if cfg.image_list is not None and (len(cfg.images) != 1 or not Path(cfg.images[0]).is_dir()):
        raise HarmonicError("--image-list: needs exactly one --images folder (the list's paths are relative to it)")


def check_model(backend: Any) -> None:
    """Refuse a model whose outputs are not the exported contract before any output is touched.

    A graph without our metadata is run once on a blank batch: its outputs must be
    ``num_dets, det_boxes, det_scores, det_classes`` (or a raw head's boxes and scores).
    """
    from harmonic.contract import OUTPUT_NAMES
    from harmonic.runtime.postprocess import find_raw_outputs

    try:
        outs = backend.infer(np.zeros((backend.fixed_batch or max(1, backend.min_batch), 3, backend.img_size,
                                       backend.img_size), np.float32))
    except HarmonicError:
        raise
    except Exception as exc:  # the runtime's own error types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmonicError(f"{backend.path}: the model does not run on a [B, 3, {backend.img_size}, "
                            f"{backend.img_size}] float32 batch ({first[:200]})") from None
    if backend.graph == "raw":
        try:
            find_raw_outputs(outs)
        except ValueError as exc:
            raise HarmonicError(f"{backend.path}: {exc}") from None
        return
    missing = [n for n in OUTPUT_NAMES if n not in outs]
    if missing:
        raise HarmonicError(f"{backend.path}: not a HarmonicDet detector: outputs {sorted(outs)} lack "
                            f"{', '.join(missing)} (export one with: harmonic export --checkpoint best.pt --out model.onnx)")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = InferConfig.from_args(get_args_parser().parse_args(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(cfg)
    from harmonic.runtime import triton_client

    triton_client.check_args(cfg)
    if cfg.triton:  # a served model: same reports, tritonclient instead of a local backend
        return triton_client.main_triton(cfg)
    if cfg.engine is None:
        raise HarmonicError("--engine is required (a model file), or --triton URL --model NAME")
    from harmonic.runtime.backends import backend_for

    if cfg.precision is not None and backend_for(cfg.engine, cfg.backend) != "openvino":
        raise HarmonicError("--precision: only used with --backend openvino (or an OpenVINO IR .xml)")
    images = expand_sources(cfg.images, listed=read_image_list(cfg.image_list) if cfg.image_list else None)
    import cv2

    cv2.setNumThreads(1)  # parallelism is across images (decode threads); nested OpenCV pools oversubscribe
    engine_path = Path(cfg.engine)
    # buffers are sized for the batch: never more than the images there are
    max_batch = min(cfg.batch, len(images.paths)) if cfg.batch else None
    backend = open_backend(engine_path, cfg.backend, provider=cfg.provider, device=cfg.device, threads=cfg.threads,
                           img_size=cfg.img_size, max_batch=max_batch, precision=cfg.precision)
    try:
        return _run(cfg, backend, images)
    finally:
        backend.close()


def _run(cfg: InferConfig, backend: Any, images: ImageList) -> int:
    batch = cfg.batch or default_batch(backend)
    backend.check_batch(batch)  # above a fixed batch or the engine profile's maximum: a clear error
    if batch > len(images.paths):  # a bigger batch only costs memory (--batch 100000 --bench: 17 GB)
        if cfg.batch:
            log.info("--batch %d capped to the %d image(s) given", batch, len(images.paths))
        batch = len(images.paths)
    check_model(backend)
    out = Path(cfg.out)
    names = backend.names
    thr = backend.score_threshold
    if cfg.conf is not None and thr is not None and cfg.conf < thr:
        log.warning("--conf %.3g is below the score threshold baked into the engine (%.3g): "
                    "it can't bring back what the graph dropped", cfg.conf, thr)

    records: list[Any] | None = None
    gt_names: list[str] = []
    ids: list[int | None]
    category_ids = backend.category_ids
    if cfg.annotations:
        if thr is not None and thr > FAIR_SCORE_THRESHOLD:
            log.warning("%s: the engine drops detections below score %.3g; AP is only fair with <= %.2g "
                        "(re-export with: python export/run.py ... --conf 0.001)", cfg.engine, thr, FAIR_SCORE_THRESHOLD)
        one_dir = Path(cfg.images[0]) if len(cfg.images) == 1 and Path(cfg.images[0]).is_dir() else None
        records, gt_names, category_ids = load_annotation_records(cfg.annotations, names or cfg.names, cfg.split,
                                                            one_dir)
        ids, gt_ids = assign_image_ids(images, records, cfg.annotations)
    else:
        ids = list(range(1, len(images.paths) + 1))
        gt_ids = set()

    if cfg.bench and cfg.warmup:
        dummy = np.zeros((batch, 3, backend.img_size, backend.img_size), np.float32)
        for _ in range(cfg.warmup):
            run_engine(backend, dummy)

    out.mkdir(parents=True, exist_ok=True)
    writer = JsonListWriter(out / "detections.json")
    try:
        rc = _infer_and_report(cfg, backend, images, batch, writer, ids, records, gt_ids, gt_names, category_ids)
        writer.commit()  # last, so a failed or interrupted run keeps the previous complete file
    except BaseException:
        writer.discard()
        raise
    return rc


def _infer_and_report(cfg: InferConfig, backend: Any, images: ImageList, batch: int,
                      writer: JsonListWriter, ids: list[int | None], records: list[Any] | None, gt_ids: set[int],
                      gt_names: list[str], category_ids: list[int] | None) -> int:
    out = Path(cfg.out)
    names = backend.names
    stats = RunStats()
    kept: list[dict[str, Any]] = []
    evaluated: set[int] = set()
    vis_dir = out / "vis"
    t0 = time.perf_counter()

    def on_skip(p: Path, reason: str) -> None:
        log.warning("skipped %s", reason)

    for item, det in infer_images(backend, images.paths, batch, conf=cfg.conf, workers=cfg.workers,
                                  stats=stats, on_skip=on_skip, fast_decode=cfg.fast_decode):
        iid = ids[item.index]
        entries = coco_results(det, iid, images.relative_name(item.index), category_ids)
        writer.extend(entries)
        if records is not None and iid in gt_ids:
            kept.extend(entries)
            evaluated.add(int(iid))
        if cfg.save_vis:
            vis = draw_detections(decode_image(item.path), det, names)
            save_image(vis_dir / (Path(images.relative_name(item.index)).with_suffix(".jpg")), vis)
    writer.close()
    elapsed = time.perf_counter() - t0

    skipped = len(stats.skipped) + len(images.missing)
    print(f"images: {stats.processed} processed, {skipped} skipped "
          f"({len(stats.skipped)} unreadable, {len(images.missing)} missing); "
          f"{stats.detections} detections; {elapsed:.2f} s ({stats.processed / max(elapsed, 1e-9):.1f} img/s)")
    if stats.processed == 0:
        raise RunFailure(f"--images: none of the {len(images.paths)} image(s) could be read "
                         f"(first: {stats.skipped[0][1] if stats.skipped else '?'}); {out} left as it was")
    print(f"wrote {out / 'detections.json'}" + (f" and {vis_dir}/" if cfg.save_vis else ""))

    if cfg.bench:
        first_batch = _bench_batch(backend, images, batch)
        report = {
            "backend": backend.name, "device": backend.device, "engine": str(cfg.engine),
            "batch": batch, "img_size": backend.img_size, "warmup": cfg.warmup, "iters": cfg.iters,
            "versions": bench_mod.library_versions(backend),
            "note": "engine_only = backend.infer on one ready batch in a loop (no decode/pre/post); "
                    "end_to_end throughput = files in -> detections out through the pipeline / wall time; "
                    "end_to_end latency per batch = its first decode start -> its detections out (includes "
                    "the prefetch queue); decode/preprocess = summed worker time of the batch's images, "
                    "overlapped with the engine; times in ms",
            "end_to_end": bench_mod.end_to_end(stats.timings, stats.wall, stats.processed),
            "engine_only": bench_mod.engine_only(backend, first_batch, warmup=min(cfg.warmup, 2),
                                                 iters=cfg.iters),
        }
        e2e_tp, eng_tp = report["end_to_end"].get("throughput_img_s"), report["engine_only"]["throughput_img_s"]
        report["end_to_end_over_engine_only"] = e2e_tp / eng_tp if e2e_tp and eng_tp else None
        write_json(out / "bench.json", report, indent=2, default=_json_default)
        print()
        print(bench_mod.format_table(report))
        print(f"wrote {out / 'bench.json'}")

    if records is not None:
        subset = None
        evaluated_records = [r for r in records if int(r.image_id) in evaluated]
        if len(evaluated_records) < len(records):
            subset = {"images_evaluated": len(evaluated_records), "images_annotated": len(records),
                      "note": "AP covers only the annotated images that were inferred (given in --images and "
                              "readable); the other annotated images are left out, not counted as misses"}
            log.warning("report covers the %d of %d annotated images that were inferred",
                        len(evaluated_records), len(records))
        report = evaluate_report(evaluated_records, kept, gt_names, out,
                                 f"{Path(cfg.engine).name} on {cfg.annotations}", category_ids, subset)
        coco, cons = report.get("coco") or {}, report.get("consistency") or {}
        parts = [f"{k} {coco[k]:.4f}" for k in ("AP", "AP50", "AP75") if isinstance(coco.get(k), float)]
        tp = (report.get("ranking") or {}).get("true_positives") or {}
        parts += [f"TP {k} {tp[k]:.3f}" for k in ("spearman", "kendall") if isinstance(tp.get(k), float)]
        parts += [f"pooled {k} {cons[k]:.3f}" for k in ("spearman", "aic") if isinstance(cons.get(k), float)]
        print(f"wrote {out / 'report.json'}" + (f": {', '.join(parts)}" if parts else ""))
    return 0


def _bench_batch(backend: Any, images: ImageList, batch: int) -> np.ndarray:
    """A real batch of ``batch`` images (repeating when there are fewer) for the engine-only timing."""
    from harmonic.data.images import ImageDecodeError
    from harmonic.runtime.preprocess import prepare_image, to_batch

    chws = []
    for p in images.paths:
        try:
            chws.append(prepare_image(decode_image(p), backend.img_size)[0])
        except ImageDecodeError:
            continue
        if len(chws) == batch:
            break
    while len(chws) < batch:
        chws.append(chws[len(chws) % max(1, len(chws))])
    return to_batch(chws)
