"""What ``harmonic export`` runs, typed: :class:`ExportConfig`, built from the flags at the edge.

``harmonic.export.cli.get_args_parser`` takes its defaults from here. Torch-free (``--onnx`` repositories
are written without torch).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from harmonic.errors import HarmonicError
from harmonic.export.triton_repo import RepoOptions

_REPO = RepoOptions()  # the repository's defaults are the --triton-* flags' defaults

#: the operating-point errors worded after export's flags (the spec's fields -> --conf/--iou/--max-det)
_OPERATING_POINT_FLAGS = {"score_threshold": "--conf {} must be in [0, 1)", "iou_threshold": "--iou {} must be in (0, 1]",
                          "max_det": "--max-det {} must be >= 1"}


@dataclass(frozen=True)
class ExportConfig:
    """One field per flag of ``harmonic export`` (same name, same default). ``conf``/``iou``/``max_det``/
    ``img_size`` left ``None`` are the checkpoint's; the export states the ones it used in the metadata."""

    checkpoint: str | None = None
    out: str | None = None
    img_size: int | None = None
    max_det: int | None = None
    conf: float | None = None
    iou: float | None = None
    opset: int = 17
    nms_topk: int | None = None
    int8: bool = False
    calib: str | None = None
    calib_count: int = 64
    batch: str = "dynamic"
    raw: str | None = None  # "" = the default path <out>.raw.onnx
    verify_images: str | None = None
    no_verify: bool = False
    overwrite: bool = False
    engine: str | None = None
    fp16: bool = False
    workspace: float = 4.0
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    timing_cache: str | None = None
    # the OpenVINO IR (harmonic.export.openvino)
    openvino: str | None = None
    precision: str | None = None  # None: fp32
    # the Triton model repository (harmonic.export.triton_repo reads these)
    triton_repo: str | None = None
    onnx: str | None = None
    triton_name: str = _REPO.name
    triton_max_batch: int | None = _REPO.max_batch
    triton_instances: int = _REPO.instances
    triton_kind: str = _REPO.kind
    triton_queue_delay_us: int = _REPO.queue_delay_us
    triton_python_twin: bool = _REPO.python_twin

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExportConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})

    def repo_options(self) -> RepoOptions:
        """The Triton repository's options from the ``--triton-*`` flags."""
        return RepoOptions(name=self.triton_name, max_batch=self.triton_max_batch, instances=self.triton_instances,
                           kind=self.triton_kind, queue_delay_us=self.triton_queue_delay_us,
                           python_twin=self.triton_python_twin)


def check_operating_point_flags(conf: float | None, iou: float | None,
                                max_det: int | None) -> tuple[float | None, float | None, int | None]:
    """``--conf/--iou/--max-det`` validated (:func:`harmonic.models.spec.check_operating_point`, ``None``
    passes through), or a ``HarmonicError`` worded after the flag."""
    # harmonic.models' package imports torch: imported here, so the config stays torch-free
    from harmonic.models.spec import OperatingPointError, check_operating_point

    try:
        return check_operating_point(conf, iou, max_det)
    except OperatingPointError as exc:
        raise HarmonicError(_OPERATING_POINT_FLAGS[exc.field].format(exc.value)) from None
