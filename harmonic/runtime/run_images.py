"""The ``infer`` run over image files, local or served: ``detections.json`` (COCO results), ``report.json``
with ``--annotations``, ``bench.json`` with ``--bench``, ``vis/`` with ``--save-vis``.

``detections.json`` is streamed to a temporary file and renamed last, so a failed or interrupted run
keeps the previous complete file. Image sources write no ``detections.jsonl`` (that is the per-frame
file of a video or stream run).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from harmonic.atomic import JsonListWriter, output_group, write_json
from harmonic.data.images import decode_image
from harmonic.errors import RunFailure
from harmonic.runtime import bench as bench_mod
from harmonic.runtime.config import InferConfig
from harmonic.runtime.pipeline import RunStats, Skipped
from harmonic.runtime.postprocess import coco_results, draw_detections, save_image
from harmonic.runtime.reports import assign_image_ids, evaluate_report, load_annotation_records
from harmonic.runtime.runners import LocalRunner
from harmonic.runtime.sources import ImageList

log = logging.getLogger("harmonic.infer")
FAIR_SCORE_THRESHOLD = 0.05


def pick_batch(cfg: InferConfig, runner: Any, n: int | None) -> int:
    """``--batch`` (default the runner's), checked against what the model takes and capped to ``n`` inputs."""
    batch = cfg.batch or runner.default_batch()
    runner.check_batch(batch)  # above a fixed batch or the engine profile's maximum: a clear error
    if n is not None and batch > n:  # a bigger batch only costs memory (--batch 100000 --bench: 17 GB)
        if cfg.batch:
            log.info("--batch %d capped to the %d image(s) given", batch, n)
        batch = n
    return batch


def warn_operating_point(cfg: InferConfig, runner: Any) -> None:
    thr = runner.score_threshold
    if cfg.conf is not None and thr is not None and cfg.conf < thr:
        log.warning("--conf %.3g is below the score threshold baked into the engine (%.3g): "
                    "it can't bring back what the graph dropped", cfg.conf, thr)
    if cfg.annotations and thr is not None and thr > FAIR_SCORE_THRESHOLD:
        log.warning("%s: the engine drops detections below score %.3g; AP is only fair with <= %.2g "
                    "(re-export with: python export/run.py ... --conf 0.001)", cfg.engine or cfg.model, thr,
                    FAIR_SCORE_THRESHOLD)


def run_images(cfg: InferConfig, det: Any, images: ImageList) -> int:
    """The run over ``images`` with the opened :class:`~harmonic.runtime.detector.Detector` ``det``."""
    runner = det.runner
    batch = pick_batch(cfg, runner, len(images.paths))
    warn_operating_point(cfg, runner)
    records: list[Any] | None = None
    gt_names: list[str] = []
    category_ids = runner.category_ids
    if cfg.annotations:
        one_dir = Path(cfg.source[0]) if len(cfg.source) == 1 and Path(cfg.source[0]).is_dir() else None
        records, gt_names, category_ids = load_annotation_records(cfg.annotations, runner.names or cfg.names,
                                                                  cfg.split, one_dir)
        ids, gt_ids = assign_image_ids(images, records, cfg.annotations)
    else:
        ids = list(range(1, len(images.paths) + 1))
        gt_ids = set()
    if cfg.bench and cfg.warmup:
        runner.warmup(batch, cfg.warmup, images.paths[0])
    before = runner.statistics() if cfg.bench and hasattr(runner, "statistics") else {}
    out = Path(cfg.out)
    wrote = [f"wrote {out / 'detections.json'}" + (f" and {out / 'vis'}/" if cfg.save_vis else "")]
    # detections.json, the pictures, bench.json and report.json replace the old ones together, or none does
    with output_group(out):
        writer = JsonListWriter(out / "detections.json")
        try:
            stats, kept, evaluated = _infer(cfg, det, images, batch, writer, ids, records, gt_ids, category_ids)
            writer.commit()
        except BaseException:
            writer.discard()
            raise
        if cfg.bench:
            wrote.append(_bench(cfg, runner, images, batch, stats, before))
        if records is not None:
            wrote.append(_report(cfg, records, kept, evaluated, gt_names, category_ids))
    print("\n".join(wrote))
    return 0


def _infer(cfg: InferConfig, det: Any, images: ImageList, batch: int, writer: JsonListWriter,
           ids: list[int | None], records: list[Any] | None, gt_ids: set[int],
           category_ids: list[int] | None) -> tuple[RunStats, list[dict[str, Any]], set[int]]:
    """Run every image, stream its COCO entries into ``writer``; print the counts."""
    out = Path(cfg.out)
    stats = RunStats()
    kept: list[dict[str, Any]] = []
    evaluated: set[int] = set()
    t0 = time.perf_counter()

    def on_skip(s: Skipped) -> None:
        log.warning("skipped %s", s.reason)

    for item, d in det.run_paths(images.paths, batch, cfg.workers, cfg.fast_decode, stats, on_skip):
        iid = ids[item.index]
        entries = coco_results(d, iid, images.relative_name(item.index), category_ids)
        writer.extend(entries)
        if records is not None and iid in gt_ids:
            kept.extend(entries)
            evaluated.add(int(iid))
        if cfg.save_vis:
            vis = draw_detections(decode_image(item.path), d, det.names)
            save_image(out / "vis" / (Path(images.relative_name(item.index)).with_suffix(".jpg")), vis)
    writer.close()
    elapsed = time.perf_counter() - t0
    unreadable = len(stats.skipped) - stats.refused
    refused = f"{stats.refused} refused by the server, " if stats.refused else ""
    served = f" from {det.runner.model.name} at {cfg.triton}" if cfg.triton else ""
    print(f"images: {stats.processed} processed, {len(stats.skipped) + len(images.missing)} skipped "
          f"({unreadable} unreadable, {refused}{len(images.missing)} missing); "
          f"{stats.detections} detections; {elapsed:.2f} s ({stats.processed / max(elapsed, 1e-9):.1f} img/s)"
          + served)
    if stats.processed == 0:
        raise RunFailure(f"--source: none of the {len(images.paths)} image(s) could be read "
                         f"(first: {stats.skipped[0].reason if stats.skipped else '?'}); {out} left as it was")
    return stats, kept, evaluated


def _bench(cfg: InferConfig, runner: Any, images: ImageList, batch: int, stats: RunStats,
           before: dict[str, Any]) -> str:
    """Write ``bench.json`` and print its table; returns the "wrote" line to print once the run's outputs are in."""
    out = Path(cfg.out)
    if isinstance(runner, LocalRunner):
        report = bench_mod.local_report(runner.backend, str(cfg.engine), batch, cfg.warmup, cfg.iters, stats,
                                        _bench_batch(runner, images, batch))
        text = bench_mod.format_table(report)
    else:
        report = bench_mod.served_report(runner, cfg.triton, batch, cfg.warmup, stats, before, runner.statistics())
        text = bench_mod.format_served(report)
    write_json(out / "bench.json", report, indent=2, default=bench_mod.json_default)
    if isinstance(runner, LocalRunner):
        print()
    print(text)
    return f"wrote {out / 'bench.json'}"


def _report(cfg: InferConfig, records: list[Any], kept: list[dict[str, Any]], evaluated: set[int],
            gt_names: list[str], category_ids: list[int] | None) -> str:
    """Write ``report.json`` (and its plot); returns the "wrote" line with the headline metrics."""
    out = Path(cfg.out)
    subset = None
    evaluated_records = [r for r in records if int(r.image_id) in evaluated]
    if len(evaluated_records) < len(records):
        subset = {"images_evaluated": len(evaluated_records), "images_annotated": len(records),
                  "note": "AP covers only the annotated images that were inferred (given in --images and "
                          "readable); the other annotated images are left out, not counted as misses"}
        log.warning("report covers the %d of %d annotated images that were inferred",
                    len(evaluated_records), len(records))
    title = f"{Path(cfg.engine).name if cfg.engine else cfg.model} on {cfg.annotations}"
    report = evaluate_report(evaluated_records, kept, gt_names, out, title, category_ids, subset)
    coco, cons = report.get("coco") or {}, report.get("consistency") or {}
    parts = [f"{k} {coco[k]:.4f}" for k in ("AP", "AP50", "AP75") if isinstance(coco.get(k), float)]
    tp = (report.get("ranking") or {}).get("true_positives") or {}
    parts += [f"TP {k} {tp[k]:.3f}" for k in ("spearman", "kendall") if isinstance(tp.get(k), float)]
    parts += [f"pooled {k} {cons[k]:.3f}" for k in ("spearman", "aic") if isinstance(cons.get(k), float)]
    return f"wrote {out / 'report.json'}" + (f": {', '.join(parts)}" if parts else "")


def _bench_batch(runner: LocalRunner, images: ImageList, batch: int) -> np.ndarray:
    """A real batch of ``batch`` images (repeating when there are fewer) for the engine-only timing."""
    from harmonic.data.images import ImageDecodeError
    from harmonic.runtime.preprocess import prepare_image, to_batch

    chws = []
    for p in images.paths:
        try:
            chws.append(prepare_image(decode_image(p), runner.img_size)[0])
        except ImageDecodeError:
            continue
        if len(chws) == batch:
            break
    while len(chws) < batch:
        chws.append(chws[len(chws) % max(1, len(chws))])
    return to_batch(chws)
