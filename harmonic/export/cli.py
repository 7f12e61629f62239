"""``harmonic export`` / ``python export/run.py``: checkpoint -> verified ONNX (+ raw graph) -> TensorRT engine."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harmonic.errors import HarmonicError
from harmonic.export.config import ExportConfig

if TYPE_CHECKING:
    from harmonic.export.openvino import OpenVinoPlan

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    """The flags of ``harmonic export``; their defaults are :class:`~harmonic.export.config.ExportConfig`'s."""
    D = ExportConfig()  # noqa: N806
    p = argparse.ArgumentParser(prog="harmonic export", description=__doc__)
    p.add_argument("--checkpoint", default=D.checkpoint, help="HarmonicDet checkpoint (.pt); required unless --onnx")
    p.add_argument("--out", default=D.out, help="ONNX file to write; required unless --onnx")
    p.add_argument("--img-size", type=int, default=D.img_size, help="square input size (default: the checkpoint's)")
    p.add_argument("--max-det", type=int, default=D.max_det, help="K, detections per image (default: the checkpoint's)")
    p.add_argument("--conf", type=float, default=D.conf, help="score threshold (default: the checkpoint's)")
    p.add_argument("--iou", type=float, default=D.iou, help="NMS IoU threshold (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=D.opset)
    p.add_argument("--nms-topk", type=int, default=D.nms_topk,
                   help="most candidates the NMS sees per image, 1..5000 (default: the model's own budget, <= 5000)")
    p.add_argument("--int8", action="store_true",
                   help="also write <out>.int8.onnx: INT8 Q/DQ graph calibrated on --calib (ONNX Runtime quantiser)")
    p.add_argument("--calib", default=D.calib, help="folder of calibration images for --int8")
    p.add_argument("--calib-count", type=int, default=D.calib_count, help="calibration images used for --int8")
    p.add_argument("--batch", default=D.batch, help="'dynamic' or a fixed batch size")
    p.add_argument("--raw", nargs="?", const="", default=D.raw, metavar="PATH",
                   help="also write the pre-NMS graph (default path <out>.raw.onnx)")
    p.add_argument("--verify-images", default=D.verify_images, help="folder of images for verification (default: synthetic)")
    p.add_argument("--no-verify", action="store_true", help="skip ONNX Runtime vs PyTorch verification")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--engine", default=D.engine, help="also build this TensorRT engine (from the INT8 graph with --int8)")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--workspace", type=float, default=D.workspace, help="TensorRT workspace (GiB)")
    p.add_argument("--min-batch", type=int, default=D.min_batch)
    p.add_argument("--opt-batch", type=int, default=D.opt_batch)
    p.add_argument("--max-batch", type=int, default=D.max_batch)
    p.add_argument("--timing-cache", default=D.timing_cache, help="TensorRT timing cache file (read and updated)")
    o = p.add_argument_group("OpenVINO IR (harmonic.export.openvino)")
    o.add_argument("--openvino", default=D.openvino, metavar="DIR",
                   help="also write the OpenVINO IR DIR/model.xml + model.bin (with --onnx: from that graph)")
    o.add_argument("--precision", default=D.precision, choices=["fp32", "bf16", "int8"],
                   help="the IR's precision (default fp32); int8: NNCF quantisation calibrated on --calib")
    t = p.add_argument_group("Triton model repository (harmonic.export.triton_repo)")
    t.add_argument("--triton-repo", default=D.triton_repo, metavar="DIR",
                   help="also write a Triton Inference Server model repository for the exported graph")
    t.add_argument("--onnx", default=D.onnx, help="with --triton-repo: an already exported graph (no checkpoint, "
                   "no export; --engine then names an existing engine + its .json sidecar)")
    t.add_argument("--triton-name", default=D.triton_name, help="model name in the repository (default harmonicdet)")
    t.add_argument("--triton-max-batch", type=int, default=D.triton_max_batch,
                   help="max_batch_size (default: the engine profile's max, else 8; 0 only for a fixed-batch graph)")
    t.add_argument("--triton-instances", type=int, default=D.triton_instances, help="instance_group count (default 1)")
    t.add_argument("--triton-kind", default=D.triton_kind, choices=["cpu", "gpu"], help="instance_group kind (default cpu)")
    t.add_argument("--triton-queue-delay-us", type=int, default=D.triton_queue_delay_us,
                   help="dynamic_batching max_queue_delay_microseconds (default 100)")
    t.add_argument("--triton-python-twin", action="store_true",
                   help="also serve the graph through the Python backend (NAME_py) for servers without onnxruntime")
    return p


def parse_batch(value: str) -> int | None:
    """``'dynamic'`` -> None, ``'N'`` -> N (>= 1)."""
    if value == "dynamic":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise HarmonicError(f"--batch {value!r}: expected 'dynamic' or a positive integer")
    return n


def check_args(args: ExportConfig) -> None:
    """Flag checks that need no checkpoint (run before any work)."""
    from harmonic.export.onnx_export import check_opset
    from harmonic.validate import check_float, check_in_file, check_int, check_out_file

    check_opset(args.opset)
    check_int(args.img_size, "--img-size", 32)
    check_float(args.workspace, "--workspace", 0, None, lo_open=True)
    check_int(args.min_batch, "--min-batch", 1)
    check_int(args.opt_batch, "--opt-batch", 1)
    check_int(args.max_batch, "--max-batch", 1)
    check_out_file(args.out)
    check_out_file(args.engine, "--engine")
    if args.verify_images is not None and not Path(args.verify_images).is_dir():
        raise HarmonicError(f"--verify-images {args.verify_images}: not a folder")
    if Path(args.checkpoint).is_dir():
        check_in_file(args.checkpoint, "--checkpoint")


def check_int8_args(args: ExportConfig, out: Path) -> Path | None:
    """``<out>.int8.onnx`` for ``--int8`` (which needs ``--calib`` with a readable image), else None."""
    if not args.int8:
        if args.calib is not None and not (args.openvino is not None and args.precision == "int8"):
            raise HarmonicError("--calib: only used with --int8 or --openvino DIR --precision int8")
        return None
    if args.calib is None:
        raise HarmonicError("--int8: needs --calib DIR (calibration images)")
    if args.fp16 and args.engine:
        raise HarmonicError("--int8 with --fp16: the INT8 engine keeps its float layers FP32; pass one of them")
    from harmonic.export.quantize import calibration_files

    calibration_files(args.calib, args.calib_count)  # fails now, before any export work
    return out.with_suffix(".int8.onnx")


@dataclass(frozen=True)
class ExportPlan:
    """The files an export writes, worked out (and checked) before any export work."""

    out: Path
    raw: Path | None
    int8_out: Path | None
    engine: Path | None
    batch: int | None  # None: dynamic
    openvino: OpenVinoPlan | None = None


def check_triton_flags(cfg: ExportConfig, fixed_batch: int | None) -> None:
    """Before any export work: the ``--triton-*`` flags, the repository folder, and the batch limits
    the export flags already fix (``--batch N``, the engine profile ``--min/--max-batch``)."""
    from harmonic.export.triton_repo import check_options, check_repo_dir

    opts = cfg.repo_options()
    check_options(opts)
    check_repo_dir(cfg.triton_repo, cfg.overwrite)
    req = opts.max_batch
    if fixed_batch is not None and req not in (None, 0):
        raise HarmonicError(f"--triton-max-batch {req}: --batch {fixed_batch} exports a fixed batch; Triton serves "
                            "it with max_batch_size 0 (leave the flag out)")
    if fixed_batch is None and req == 0:
        raise HarmonicError("--triton-max-batch 0: the graph has a dynamic batch; 0 would turn off Triton's "
                            "batching (use 1.. the batch you want the server to form)")
    if cfg.engine and fixed_batch is None:
        if cfg.min_batch > 1:
            raise HarmonicError(f"--min-batch {cfg.min_batch}: Triton sends batches from 1; build the engine "
                                "with --min-batch 1 for --triton-repo")
        if req is not None and req > cfg.max_batch:
            raise HarmonicError(f"--triton-max-batch {req}: above the engine profile's maximum "
                                f"(--max-batch {cfg.max_batch})")


def from_files(cfg: ExportConfig) -> int:
    """``harmonic export --onnx model.onnx [--engine model.engine] [--openvino DIR] [--triton-repo DIR]``: the
    OpenVINO IR and the Triton repository of a graph exported before (no checkpoint, no torch). Both
    appear together, or neither does."""
    from harmonic.atomic import output_group

    if not cfg.triton_repo and cfg.openvino is None:
        raise HarmonicError("--onnx: only used with --triton-repo or --openvino (they are written from that graph)")
    if cfg.checkpoint is not None:
        raise HarmonicError("--onnx with --checkpoint: pass one (--onnx uses a graph exported before)")
    onnx_path = Path(cfg.onnx)
    plan = None
    if cfg.openvino is not None:
        from harmonic.export.openvino import plan_openvino, write_ir

        if not onnx_path.is_file():
            raise HarmonicError(f"--onnx {onnx_path}: not found")
        plan = plan_openvino(cfg)
    if cfg.triton_repo:
        from harmonic.export.triton_repo import check_options, check_repo_dir, describe, write_repository

        check_options(cfg.repo_options())
        check_repo_dir(cfg.triton_repo, cfg.overwrite)
    repo = None
    with output_group():
        if plan is not None:
            written = write_ir(onnx_path, plan, cfg)
        if cfg.triton_repo:
            repo = write_repository(cfg.triton_repo, onnx_path, cfg.engine, cfg.repo_options(), overwrite=cfg.overwrite)
    if plan is not None:
        print(f"wrote {', '.join(str(p) for p in written)} ({plan.precision})")
    if repo is not None:
        print(f"wrote Triton model repository {repo}: {', '.join(describe(repo))}")
    return 0


def plan_export(cfg: ExportConfig) -> ExportPlan:
    """Every check that needs no model, in order, each a one-line error: the flags, the Triton options,
    ``--nms-topk``, ``--int8``, TensorRT and its profile, files that exist without ``--overwrite``."""
    if cfg.checkpoint is None or cfg.out is None:
        raise HarmonicError("--checkpoint and --out are required (or --onnx model.onnx --triton-repo DIR)")
    check_args(cfg)
    batch = parse_batch(cfg.batch)
    if cfg.triton_repo:  # fail before any export work
        check_triton_flags(cfg, batch)
    out = Path(cfg.out)
    raw = None if cfg.raw is None else Path(cfg.raw or out.with_suffix(".raw.onnx"))
    engine = Path(cfg.engine) if cfg.engine else None
    from harmonic.export.wrapper import check_nms_topk

    check_nms_topk(cfg.nms_topk)
    int8_out = check_int8_args(cfg, out)
    from harmonic.export.openvino import plan_openvino

    openvino = plan_openvino(cfg)
    if engine is not None:  # fail before any export work
        from harmonic.contract import sidecar_path
        from harmonic.export.tensorrt import import_tensorrt, profile_shapes

        import_tensorrt()
        profile_shapes(32, cfg.min_batch, cfg.opt_batch, cfg.max_batch, fixed_batch=batch)
        for p in (engine, sidecar_path(engine)):
            if p.exists() and not cfg.overwrite:
                raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")
    for p in (out, raw, int8_out):
        if p is not None and p.exists() and not cfg.overwrite:
            raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")
    return ExportPlan(out, raw, int8_out, engine, batch, openvino)


def run_export(cfg: ExportConfig, plan: ExportPlan) -> tuple[list[Path], Path | None]:
    """Export (ONNX, raw graph), verify, quantise, build the engine, write the Triton repository:
    ``(the files written, the repository or None)``.

    Refused after loading the checkpoint when the outputs' filesystems clearly cannot hold them.
    Everything appears together at the end (:func:`harmonic.atomic.output_group`): a failure anywhere
    removes this run's temporary files and leaves every earlier output as it was.
    """
    from harmonic.atomic import output_group, resolve
    from harmonic.export.onnx_export import export_model, load_for_export

    model, spec, meta = load_for_export(cfg.checkpoint, cfg.img_size, cfg.conf, cfg.iou, cfg.max_det, plan.batch)
    # the checkpoint's operating point unless overridden on the command line
    conf, iou, max_det = float(meta["score_threshold"]), float(meta["iou_threshold"]), int(meta["max_det"])
    size = int(meta["img_size"])
    batch = int(meta["max_batch"]) if "max_batch" in meta else None  # Faster R-CNN: fixed at 1
    opts = dict(img_size=size, conf=conf, iou=iou, max_det=max_det, opset=cfg.opset,
                batch=batch, metadata=meta, overwrite=cfg.overwrite, nms_topk=cfg.nms_topk)
    out, engine, int8_out = plan.out, plan.engine, plan.int8_out
    check_space(cfg, plan, model)
    written, repo = [out], None
    with output_group():
        export_model(model, out, **opts)
        if plan.raw is not None:
            written.append(export_model(model, plan.raw, raw=True, **opts))
        if not cfg.no_verify:
            from harmonic.export.verify import load_images, verify_onnx

            images = load_images(cfg.verify_images, size) if cfg.verify_images else None
            res = verify_onnx(resolve(out), model, size, conf, iou, max_det, images=images, batch=batch,
                              nms_topk=cfg.nms_topk)
            if not res.ok:
                raise HarmonicError(f"{out}: ONNX Runtime differs from PyTorch: {res.message}")
            print(f"verify: OK, ONNX Runtime matches PyTorch ({res.message})")
        if int8_out is not None:
            from harmonic.export.quantize import quantize_int8

            written.append(quantize_int8(resolve(out), int8_out, cfg.calib, count=cfg.calib_count,
                                         overwrite=cfg.overwrite))
        if plan.openvino is not None:
            from harmonic.export.openvino import write_ir

            written += write_ir(resolve(out), plan.openvino, cfg)
        if engine is not None:
            from harmonic.export.tensorrt import build_engine

            # with --int8 the engine is built from the Q/DQ graph (explicit quantisation, strongly typed)
            build_engine(resolve(int8_out or out), engine, fp16=cfg.fp16,
                         profile=(cfg.min_batch, cfg.opt_batch, cfg.max_batch), workspace_gb=cfg.workspace,
                         timing_cache=cfg.timing_cache, overwrite=cfg.overwrite, int8=int8_out is not None)
        if cfg.triton_repo:
            from harmonic.export.triton_repo import write_repository

            repo = write_repository(cfg.triton_repo, out, engine, cfg.repo_options(), overwrite=cfg.overwrite)
    return written, repo


#: lower bounds of each output's size per byte of the model's float weights. Measured: an FP32 graph is
#: 1.00-1.20x (RetinaNet, FCOS, SSD300, Faster R-CNN, ResNet-10s FCOS), a Q/DQ graph 0.26x (RetinaNet).
#: Engines (not measured: no TensorRT here) hold the weights in their precision; half of that is assumed.
SIZE_PER_WEIGHT_BYTE = {"graph": 0.9, "int8": 0.2, "engine": 0.5, "engine_fp16": 0.25, "engine_int8": 0.1}


def check_space(cfg: ExportConfig, plan: ExportPlan, model) -> None:  # noqa: ANN001 - a torch module
    """Refuse before the export when the outputs' filesystems clearly cannot hold what it will write:
    every graph, the engine and the repository's copies, at their smallest likely size."""
    from harmonic.atomic import require_space

    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    graph = int(weights * SIZE_PER_WEIGHT_BYTE["graph"])
    kind = "engine_int8" if plan.int8_out else "engine_fp16" if cfg.fp16 else "engine"
    engine = int(weights * SIZE_PER_WEIGHT_BYTE[kind]) if plan.engine else None
    needs: list[tuple[Path | None, int]] = [
        (plan.out, graph), (plan.raw, graph), (plan.int8_out, int(weights * SIZE_PER_WEIGHT_BYTE["int8"])),
        (plan.engine, engine or 0)]
    if cfg.triton_repo:
        from harmonic.export.triton_repo import repository_bytes

        needs.append((Path(cfg.triton_repo), repository_bytes(graph, engine, cfg.repo_options())))
    require_space(needs)


def main(argv: list[str] | None = None) -> int:
    cfg = ExportConfig.from_args(get_args_parser().parse_args(argv))
    if cfg.onnx is not None:  # an IR or a repository from a graph exported before: no checkpoint, no torch
        return from_files(cfg)
    plan = plan_export(cfg)
    written, repo = run_export(cfg, plan)
    engine = plan.engine
    print(f"wrote {', '.join(str(p) for p in written)}{f', {engine}' if engine else ''}"
          f"{f', {repo}/' if cfg.triton_repo else ''}")
    return 0


if __name__ == "__main__":
    from harmonic.cli import run_guarded

    sys.exit(run_guarded(main, sys.argv[1:]))
