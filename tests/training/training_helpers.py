"""Helpers for the training tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

from pathlib import Path

from harmonic.training.cli import get_args_parser

IMG = 64


def make_args(data: Path, out: Path, *extra: str, model: str = "retinanet_resnet18_fpn", loss: str = "harmonic",
              epochs: int = 1, img_size: int = IMG, batch_size: int = 2):
    argv = ["--data", str(data), "--model", model, "--loss", loss, "--epochs", str(epochs),
            "--batch-size", str(batch_size), "--img-size", str(img_size), "--out", str(out),
            "--device", "cpu", "--workers", "0", "--warmup-iters", "2", "--log-every", "1", *extra]
    return get_args_parser().parse_args(argv)
