"""Defaults that suit a small dataset: warm-up is a capped share of the run; short runs are flagged."""

from __future__ import annotations

import logging

import pytest

from harmonic.errors import HarmonicError
from harmonic.training.trainer import MAX_WARMUP, resolve_optimizer, warmup_iters, warn_short_schedule


def test_warmup_is_a_capped_share_of_the_run():
    assert warmup_iters(168, None, 0.1) == 17  # 28 images, batch 4, 24 epochs: 7 it/epoch
    assert warmup_iters(1500, None, 0.1) == 150
    assert warmup_iters(100_000, None, 0.1) == MAX_WARMUP == 500
    assert warmup_iters(3, None, 0.1) == 1
    assert warmup_iters(1500, 40, 0.1) == 40  # explicit wins


def test_explicit_warmup_is_cut_to_a_third_of_the_run(caplog):
    with caplog.at_level(logging.WARNING):
        assert warmup_iters(168, 500, 0.1) == 56
    assert "more than a third" in caplog.text


@pytest.mark.parametrize("share, requested", [(1.0, None), (-0.1, None), (0.1, -5)])
def test_bad_warmup_settings(share, requested):
    with pytest.raises(HarmonicError):
        warmup_iters(100, requested, share)


def test_auto_optimizer_from_scratch_and_pretrained():
    assert resolve_optimizer("auto", None, None) == ("adamw", 1e-3)
    assert resolve_optimizer("auto", 5e-4, None) == ("adamw", 5e-4)
    assert resolve_optimizer("auto", None, "DEFAULT") == ("sgd", None)
    assert resolve_optimizer("sgd", 0.02, None) == ("sgd", 0.02)


def test_short_schedule_warning(caplog):
    with caplog.at_level(logging.WARNING):
        warn_short_schedule(168, 17, pretrained=False)
    assert "only 168 optimizer steps" in caplog.text and "from scratch" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_short_schedule(1500, 150, pretrained=False)
        warn_short_schedule(600, 60, pretrained=True)
    assert caplog.text == ""
