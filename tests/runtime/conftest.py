"""Fixtures for the runtime tests; the graph builders live in ``runtime_graphs``."""

from pathlib import Path

import pytest

from .runtime_graphs import make_graph, write_images


@pytest.fixture
def nms_graph(tmp_path: Path) -> Path:
    return make_graph(tmp_path / "model.onnx")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    write_images(tmp_path / "images", 7)
    return tmp_path / "images"
