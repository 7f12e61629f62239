"""The typed training config: one field per flag, the parser's defaults are the config's."""

from __future__ import annotations

import pytest

from harmonic.errors import HarmonicError
from harmonic.export.config import check_operating_point_flags
from harmonic.training.cli import get_args_parser
from harmonic.training.config import TrainConfig


def test_the_parser_defaults_are_the_config_and_its_record():
    args = get_args_parser().parse_args([])
    assert TrainConfig.from_args(args) == TrainConfig()
    assert TrainConfig.from_args(args).record() == vars(args)  # same keys, same order: recorded as "args"
    assert list(TrainConfig.from_args(args).record()) == list(vars(args))


def test_operating_point_defaults_and_one_check():
    assert TrainConfig(conf=0.25).operating_point() == {"score_threshold": 0.25, "iou_threshold": 0.6, "max_det": 100}
    with pytest.raises(HarmonicError, match=r"^--conf/--iou/--max-det: NMS IoU threshold 0.0: must be in \(0, 1\]$"):
        TrainConfig(iou=0.0).operating_point()
    assert check_operating_point_flags(None, 0.5, None) == (None, 0.5, None)
    with pytest.raises(HarmonicError, match=r"^--max-det 0 must be >= 1$"):
        check_operating_point_flags(0.1, 0.5, 0)
