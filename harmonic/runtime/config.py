"""The ``infer`` command's typed configuration, built once from argparse and passed down."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class InferConfig:
    """The ``infer`` flags (``--img-size`` -> ``img_size``); lists stay as argparse gives them.

    ``source`` is ``--source`` (``--images`` is its alias): image files, folders and globs, or one
    video file, camera index or stream URL.
    """

    source: list[str]
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
    save_video: str | None = None
    fourcc: str | None = None
    vid_stride: int = 1
    realtime: bool = False
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
