"""Shared fixtures: one tiny synthetic dataset per session (8 train / 4 val images, 64 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .training_helpers import IMG


@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory) -> Path:
    from harmonic.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    return Path(generate(out, num_train=8, num_val=4, seed=0, img_size=IMG, num_classes=2))


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)
