"""What ``harmonic train`` runs, typed: :class:`TrainConfig`, built from the flags at the edge.

``harmonic.training.cli.get_args_parser`` takes its defaults from here; ``train`` reads only the config.
Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonic.errors import HarmonicError


@dataclass(frozen=True)
class TrainConfig:
    """One field per flag of ``harmonic train`` (same name, same default, same order: the checkpoint and
    ``log.jsonl`` record them as ``args``). ``None`` means "the default the flag's help names"."""

    data: Path | None = None
    model: str = "retinanet_resnet18_fpn"
    loss: str = "harmonic"
    epochs: int = 12
    batch_size: int = 8
    img_size: int | None = None
    out: Path | None = None
    device: str | None = None
    amp: bool = False
    resume: Path | None = None
    seed: int = 0
    workers: int = 2
    optimizer: str = "auto"
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_iters: int | None = None
    warmup_share: float = 0.1
    clip_grad: float = 10.0
    backbone_weights: str | None = None
    fpn_channels: int | None = None
    model_option: list[str] = field(default_factory=list)
    loss_option: list[str] = field(default_factory=list)
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    augment: str = "full"
    max_iters_per_epoch: int | None = None
    log_every: int = 20
    val_every: int = 1
    find_unused_parameters: bool = False
    list_models: bool = False  # a command (print the detector names), not a setting; recorded like the others
    skip_bad_images: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of parsed flags (a flag missing from ``args`` takes its default)."""
        values = {}
        for f in dataclasses.fields(cls):
            if hasattr(args, f.name):
                values[f.name] = getattr(args, f.name)
        return cls(**values)

    def record(self) -> dict[str, Any]:
        """The flags as recorded in ``log.jsonl`` and the checkpoint (``args``)."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Flag checks that need no data or model (usage errors, one line, exit 2)."""
        from harmonic.validate import check_float, check_in_file, check_int, check_out_dir

        for flag in ("epochs", "batch_size"):
            if getattr(self, flag) < 1:
                raise HarmonicError(f"--{flag.replace('_', '-')} must be >= 1")
        if self.img_size is not None and self.img_size < 32:
            raise HarmonicError("--img-size must be >= 32")
        if self.max_iters_per_epoch is not None and self.max_iters_per_epoch < 1:
            raise HarmonicError("--max-iters-per-epoch must be >= 1")
        check_int(self.workers, "--workers", 0)
        check_int(self.warmup_iters, "--warmup-iters", 0)
        check_int(self.log_every, "--log-every", 0)
        check_int(self.val_every, "--val-every", 0)
        check_float(self.lr, "--lr", 0, None, lo_open=True)
        check_float(self.weight_decay, "--weight-decay", 0)
        check_float(self.momentum, "--momentum", 0, 1)
        check_float(self.clip_grad, "--clip-grad", 0)
        check_in_file(self.data, "--data")
        check_in_file(self.resume, "--resume")
        check_out_dir(self.out)
        check_float(self.warmup_share, "--warmup-share", 0, 1, hi_open=True)
        self.operating_point()

    def operating_point(self) -> dict[str, Any]:
        """The ``--conf/--iou/--max-det`` given (validated); the spec's defaults fill the rest."""
        from harmonic.models.spec import (
            DEFAULT_IOU_THRESHOLD,
            DEFAULT_MAX_DET,
            DEFAULT_SCORE_THRESHOLD,
            check_operating_point,
        )

        conf = DEFAULT_SCORE_THRESHOLD if self.conf is None else self.conf
        iou = DEFAULT_IOU_THRESHOLD if self.iou is None else self.iou
        max_det = DEFAULT_MAX_DET if self.max_det is None else self.max_det
        try:
            conf, iou, max_det = check_operating_point(conf, iou, max_det)
        except HarmonicError as exc:
            raise HarmonicError(f"--conf/--iou/--max-det: {exc}") from None
        return {"score_threshold": conf, "iou_threshold": iou, "max_det": max_det}

    def model_options(self) -> dict[str, Any]:
        """Builder options: ``--model-option`` pairs, then ``--fpn-channels``."""
        options = parse_key_values(self.model_option, "--model-option")
        if self.fpn_channels is not None:
            options["fpn_channels"] = self.fpn_channels
        return options

    def loss_options(self) -> dict[str, Any]:
        return parse_key_values(self.loss_option, "--loss-option")

    def out_dir(self) -> Path:
        """``--out``; by default a resumed run continues in its own folder, a new one in runs/<model>-<loss>."""
        default = Path(self.resume).parent if self.resume is not None else Path("runs") / f"{self.model}-{self.loss}"
        return Path(self.out or default)


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``["a=1", "b=true", "c=gn"]`` -> ``{"a": 1, "b": True, "c": "gn"}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarmonicError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out
