"""``harmonic export`` / ``python export/run.py``: checkpoint -> verified ONNX (+ raw graph) -> TensorRT engine."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harmonic.errors import HarmonicError

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic export", description=__doc__)
    p.add_argument("--checkpoint", default=None, help="HarmonicDet checkpoint (.pt); required unless --onnx")
    p.add_argument("--out", default=None, help="ONNX file to write; required unless --onnx")
    p.add_argument("--img-size", type=int, default=None, help="square input size (default: the checkpoint's)")
    p.add_argument("--max-det", type=int, default=None, help="K, detections per image (default: the checkpoint's)")
    p.add_argument("--conf", type=float, default=None, help="score threshold (default: the checkpoint's)")
    p.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--nms-topk", type=int, default=None,
                   help="most candidates the NMS sees per image, 1..5000 (default: the model's own budget, <= 5000)")
    p.add_argument("--int8", action="store_true",
                   help="also write <out>.int8.onnx: INT8 Q/DQ graph calibrated on --calib (ONNX Runtime quantiser)")
    p.add_argument("--calib", default=None, help="folder of calibration images for --int8")
    p.add_argument("--calib-count", type=int, default=64, help="calibration images used for --int8")
    p.add_argument("--batch", default="dynamic", help="'dynamic' or a fixed batch size")
    p.add_argument("--raw", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the pre-NMS graph (default path <out>.raw.onnx)")
    p.add_argument("--verify-images", default=None, help="folder of images for verification (default: synthetic)")
    p.add_argument("--no-verify", action="store_true", help="skip ONNX Runtime vs PyTorch verification")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--engine", default=None, help="also build this TensorRT engine (from the INT8 graph with --int8)")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace (GiB)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    t = p.add_argument_group("Triton model repository (harmonic.export.triton_repo)")
    t.add_argument("--triton-repo", default=None, metavar="DIR",
                   help="also write a Triton Inference Server model repository for the exported graph")
    t.add_argument("--onnx", default=None, help="with --triton-repo: an already exported graph (no checkpoint, "
                   "no export; --engine then names an existing engine + its .json sidecar)")
    t.add_argument("--triton-name", default="harmonicdet", help="model name in the repository (default harmonicdet)")
    t.add_argument("--triton-max-batch", type=int, default=None,
                   help="max_batch_size (default: the engine profile's max, else 8; 0 only for a fixed-batch graph)")
    t.add_argument("--triton-instances", type=int, default=1, help="instance_group count (default 1)")
    t.add_argument("--triton-kind", default="cpu", choices=["cpu", "gpu"], help="instance_group kind (default cpu)")
    t.add_argument("--triton-queue-delay-us", type=int, default=100,
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


def check_args(args: argparse.Namespace) -> None:
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


def check_int8_args(args: argparse.Namespace, out: Path) -> Path | None:
    """``<out>.int8.onnx`` for ``--int8`` (which needs ``--calib`` with a readable image), else None."""
    if not args.int8:
        if args.calib is not None:
            raise HarmonicError("--calib: only used with --int8")
        return None
    if args.calib is None:
        raise HarmonicError("--int8: needs --calib DIR (calibration images)")
    if args.fp16 and args.engine:
        raise HarmonicError("--int8 with --fp16: the INT8 engine keeps its float layers FP32; pass one of them")
    from harmonic.export.quantize import calibration_files

    calibration_files(args.calib, args.calib_count)  # fails now, before any export work
    return out.with_suffix(".int8.onnx")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.onnx is not None:  # a repository from files exported before: no checkpoint, no torch
        from harmonic.export.triton_repo import main_export

        return main_export(args)
    if args.checkpoint is None or args.out is None:
        raise HarmonicError("--checkpoint and --out are required (or --onnx model.onnx --triton-repo DIR)")
    check_args(args)
    batch = parse_batch(args.batch)
    if args.triton_repo:  # fail before any export work
        from harmonic.export.triton_repo import precheck

        precheck(args, batch)
    out = Path(args.out)
    raw = None if args.raw is None else Path(args.raw or out.with_suffix(".raw.onnx"))
    engine = Path(args.engine) if args.engine else None
    from harmonic.export.wrapper import check_nms_topk

    check_nms_topk(args.nms_topk)
    int8_out = check_int8_args(args, out)
    if engine is not None:  # fail before any export work
        from harmonic.contract import sidecar_path
        from harmonic.export.tensorrt import import_tensorrt, profile_shapes

        import_tensorrt()
        profile_shapes(32, args.min_batch, args.opt_batch, args.max_batch, fixed_batch=batch)
        for p in (engine, sidecar_path(engine)):
            if p.exists() and not args.overwrite:
                raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")
    for p in (out, raw, int8_out):
        if p is not None and p.exists() and not args.overwrite:
            raise HarmonicError(f"{p}: already exists (pass --overwrite to replace it)")

    from harmonic.export.onnx_export import export_model, load_for_export

    model, spec, meta = load_for_export(args.checkpoint, args.img_size, args.conf, args.iou, args.max_det, batch)
    # the checkpoint's operating point unless overridden on the command line
    args.conf, args.iou = float(meta["score_threshold"]), float(meta["iou_threshold"])
    args.max_det = int(meta["max_det"])
    size = int(meta["img_size"])
    batch = int(meta["max_batch"]) if "max_batch" in meta else None  # Faster R-CNN: fixed at 1
    opts = dict(img_size=size, conf=args.conf, iou=args.iou, max_det=args.max_det, opset=args.opset,
                batch=batch, metadata=meta, overwrite=args.overwrite, nms_topk=args.nms_topk)
    written = [export_model(model, out, **opts)]
    try:
        if raw is not None:
            written.append(export_model(model, raw, raw=True, **opts))
        if not args.no_verify:
            from harmonic.export.verify import load_images, verify_onnx

            images = load_images(args.verify_images, size) if args.verify_images else None
            res = verify_onnx(out, model, size, args.conf, args.iou, args.max_det, images=images, batch=batch,
                              nms_topk=args.nms_topk)
            if not res.ok:
                raise HarmonicError(f"{out}: ONNX Runtime differs from PyTorch: {res.message}")
            print(f"verify: OK, ONNX Runtime matches PyTorch ({res.message})")
        if int8_out is not None:
            from harmonic.export.quantize import quantize_int8

            written.append(quantize_int8(out, int8_out, args.calib, count=args.calib_count, overwrite=args.overwrite))
        if engine is not None:
            from harmonic.export.tensorrt import build_engine

            # with --int8 the engine is built from the Q/DQ graph (explicit quantisation, strongly typed)
            build_engine(int8_out or out, engine, fp16=args.fp16, profile=(args.min_batch, args.opt_batch, args.max_batch),
                         workspace_gb=args.workspace, timing_cache=args.timing_cache, overwrite=args.overwrite,
                         int8=int8_out is not None)
        if args.triton_repo:
            from harmonic.export.triton_repo import options_from_args, write_repository

            written_repo = write_repository(args.triton_repo, out, engine, options_from_args(args),
                                            overwrite=args.overwrite)
    except BaseException:
        for p in written:  # no half-done export: a failed verification or build removes the ONNX too
            p.unlink(missing_ok=True)
        raise
    print(f"wrote {', '.join(str(p) for p in written)}{f', {engine}' if engine else ''}"
          f"{f', {written_repo}/' if args.triton_repo else ''}")
    return 0


if __name__ == "__main__":
    from harmonic.cli import run_guarded

    sys.exit(run_guarded(main, sys.argv[1:]))
