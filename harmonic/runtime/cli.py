"""``harmonic infer`` / ``python infer/run.py``: torch-free inference on images, a video, a camera or a
stream; benchmark and accuracy report.

A thin command over :class:`harmonic.runtime.detector.Detector`: the flags are checked, the source
is opened (:mod:`harmonic.runtime.sources`, :mod:`harmonic.runtime.video`), the model is opened
(a local file or ``--triton URL --model NAME``, the same runner either way) and the run writes
its outputs: :mod:`harmonic.runtime.run_images` (``detections.json``, ``report.json``,
``bench.json``, ``vis/``) or :mod:`harmonic.runtime.run_video` (``detections.jsonl``,
``--save-video``, ``bench.json``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harmonic.errors import HarmonicError
from harmonic.runtime.backends.base import BACKENDS, backend_for
from harmonic.runtime.config import InferConfig
from harmonic.runtime.runners import check_model, default_batch

__all__ = ["InferConfig", "check_args", "check_model", "default_batch", "get_args_parser", "main", "open_detector"]

log = logging.getLogger("harmonic.infer")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmonic infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default=None,
                   help="model.onnx | model.engine (.plan/.trt) | model.xml (OpenVINO IR); or --triton")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                   help="runtime for --engine (default auto: from the file suffix, .onnx -> onnxruntime)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "int8"],
                   help="OpenVINO precision (default: the model's own; bf16 needs a CPU with native bf16)")
    p.add_argument("--source", "--images", dest="source", required=True, nargs="+", metavar="SOURCE",
                   help="image files, folders or globs; or one video file, camera index (0) or stream URL "
                        "(rtsp://, http://, ...). --images is the same flag")
    p.add_argument("--out", default="runs/infer", help="output folder (default runs/infer)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (images: default the engine's fixed batch, else min(8, its max); video: 1)")
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
    p.add_argument("--save-vis", action="store_true", help="images: draw labelled boxes into OUT/vis/")
    v = p.add_argument_group("video, camera and stream sources")
    v.add_argument("--save-video", default=None, metavar="FILE",
                   help="write the frames with their boxes drawn (.mp4, .avi, .mkv, .mov, .webm)")
    v.add_argument("--fourcc", default=None, help="codec for --save-video (default: mp4v, MJPG for .avi)")
    v.add_argument("--vid-stride", type=int, default=1, help="infer every N-th frame (default 1)")
    v.add_argument("--realtime", action="store_true",
                   help="drop frames rather than fall behind the source (a file is read at its frame rate)")
    p.add_argument("--conf", type=float, default=None, help="drop detections scoring below this")
    p.add_argument("--device", default=None, help="cpu | cuda[:N]")
    p.add_argument("--provider", default=None, choices=["cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider (default: cuda if available, else cpu)")
    p.add_argument("--img-size", type=int, default=None, help="input size for a model without our metadata")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
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


def check_args(cfg: InferConfig) -> None:
    """Flag checks that need neither the model nor the images (usage errors, exit 2)."""
    from harmonic.validate import check_float, check_in_file, check_int, check_out_dir

    check_int(cfg.batch, "--batch", 1)
    check_int(cfg.warmup, "--warmup", 0)
    check_int(cfg.iters, "--iters", 1)
    check_int(cfg.workers, "--workers", 1)
    check_int(cfg.threads, "--threads", 0)
    check_int(cfg.img_size, "--img-size", 1)
    check_int(cfg.vid_stride, "--vid-stride", 1)
    check_float(cfg.conf, "--conf", 0, 1)
    check_out_dir(cfg.out)
    if cfg.annotations is not None:
        from harmonic.data.readers import split_yaml_spec

        spec = split_yaml_spec(cfg.annotations)
        path = spec[0] if spec is not None else Path(cfg.annotations)
        if not path.exists():
            raise HarmonicError(f"--annotations {path}: not found")
    check_in_file(cfg.image_list, "--image-list")
    if cfg.image_list is not None and (len(cfg.source) != 1 or not Path(cfg.source[0]).is_dir()):
        raise HarmonicError("--image-list: needs exactly one --images folder (the list's paths are relative to it)")


def check_source_flags(cfg: InferConfig, video: Any) -> None:
    """Flags that belong to image sources only, or to a video / camera / stream only."""
    if video is not None:
        for flag, value in (("--image-list", cfg.image_list), ("--annotations", cfg.annotations),
                            ("--fast-decode", cfg.fast_decode), ("--save-vis", cfg.save_vis)):
            if value:
                hint = " (use --save-video FILE)" if flag == "--save-vis" else ""
                raise HarmonicError(f"{flag}: only for image sources, not the video {video.label}{hint}")
        return
    for flag, value in (("--save-video", cfg.save_video), ("--fourcc", cfg.fourcc),
                        ("--vid-stride", cfg.vid_stride != 1), ("--realtime", cfg.realtime)):
        if value:
            raise HarmonicError(f"{flag}: only with a video file, camera index or stream URL as --source")


def open_detector(cfg: InferConfig, max_batch: int | None = None) -> Any:
    """The model of a run: ``--engine`` through its backend (checked against the exported contract), or
    ``--triton URL --model NAME``. ``max_batch``: buffers are sized for this batch (TensorRT)."""
    from harmonic.runtime.detector import Detector

    if cfg.triton:
        from harmonic.runtime.triton_client import TritonRunner, TritonSession

        return Detector.from_runner(TritonRunner(TritonSession(cfg.triton, cfg.model), cfg.concurrency or 1),
                                    cfg.conf)
    options: dict[str, Any] = {} if cfg.precision is None else {"precision": cfg.precision}
    return Detector(Path(cfg.engine), backend=cfg.backend, device=cfg.device, conf=cfg.conf, threads=cfg.threads,
                    provider=cfg.provider, img_size=cfg.img_size, max_batch=max_batch, **options)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = InferConfig.from_args(get_args_parser().parse_args(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_args(cfg)
    from harmonic.runtime import triton_client
    from harmonic.runtime.sources import expand_sources, read_image_list, video_spec
    from harmonic.runtime.video import quiet_opencv

    triton_client.check_args(cfg)
    if cfg.triton is None and cfg.engine is None:
        raise HarmonicError("--engine is required (a model file), or --triton URL --model NAME")
    if cfg.precision is not None and (cfg.triton or backend_for(cfg.engine, cfg.backend) != "openvino"):
        raise HarmonicError("--precision: only used with --backend openvino (or an OpenVINO IR .xml)")
    quiet_opencv()  # OpenCV's and FFmpeg's own log lines would follow our one-line errors
    spec = video_spec(cfg.source)
    check_source_flags(cfg, spec)
    import cv2

    cv2.setNumThreads(1)  # parallelism is across images (decode threads); nested OpenCV pools oversubscribe
    if spec is not None:
        from harmonic.runtime.run_video import run_video
        from harmonic.runtime.video import VideoReader, check_video_writer

        fourcc = check_video_writer(cfg.save_video, cfg.fourcc) if cfg.save_video else None
        reader = VideoReader(spec)
        try:
            det = open_detector(cfg, cfg.batch or 1)
            try:
                return run_video(cfg, det, reader, fourcc)
            finally:
                det.close()
        finally:
            reader.close()
    from harmonic.runtime.run_images import run_images

    images = expand_sources(cfg.source, listed=read_image_list(cfg.image_list) if cfg.image_list else None)
    # buffers are sized for the batch: never more than the images there are
    det = open_detector(cfg, min(cfg.batch, len(images.paths)) if cfg.batch else None)
    try:
        return run_images(cfg, det, images)
    finally:
        det.close()
