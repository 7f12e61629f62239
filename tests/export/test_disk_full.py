"""Export on a full disk (without root: :mod:`tests.faults` makes a folder's disk fill after N bytes).

Each writer of the export is checked three ways: no temporary file is left, the earlier complete
outputs are byte-identical, and the one ``error:`` line (exit 1) names the output being written,
not the input a library happened to put in the exception.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from harmonic.cli import main
from harmonic.errors import RunFailure, WriteFailure
from tests.export.test_quantize import _graph as qdq_graph
from tests.export.test_tensorrt import fake_tensorrt
from tests.faults import full_disk, small_tmpfs, snapshot
from tests.runtime.runtime_graphs import make_graph

EARLIER = b"an earlier complete output"


def _export(*args: object) -> int:
    return main(["export", *map(str, args)])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):].strip()


def _names_full_place(msg: str, place: Path) -> bool:
    return msg.startswith(f"{place}: no space left on device (filesystem of ") and msg.endswith(" free)")


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    return make_graph(tmp_path / "model.onnx", max_det=6)


@pytest.mark.parametrize("extra,place", [(-100, "harmonicdet/1/model.onnx"), (100, "harmonicdet/config.pbtxt"),
                                         (5000, "harmonicdet_e2e/1/model.py")])
def test_triton_repo_from_onnx_names_the_repository_file_not_the_input(tmp_path, graph, capsys, monkeypatch, extra,
                                                                         place):
    """Python's copy puts the source (the input, on a healthy disk) in the exception."""
    disk = tmp_path / "disk"
    full_disk(monkeypatch, disk, free=graph.stat().st_size + extra)
    assert _export("--onnx", graph, "--triton-repo", disk / "repo") == 1
    msg = _error(capsys)
    assert _names_full_place(msg, disk / "repo" / place), msg
    assert "no space left on device (filesystem of " in msg
    assert snapshot(disk) == {}  # nothing half-written, no temporary folder


def test_triton_repo_over_an_earlier_one_keeps_it(tmp_path, graph, capsys, monkeypatch):
    disk = tmp_path / "disk"
    assert _export("--onnx", graph, "--triton-repo", disk / "repo") == 0
    before = snapshot(disk)
    full_disk(monkeypatch, disk, free=1000)
    assert _export("--onnx", graph, "--triton-repo", disk / "repo", "--overwrite") == 1
    assert _names_full_place(_error(capsys), disk / "repo" / "harmonicdet" / "1" / "model.onnx")
    assert snapshot(disk) == before


def test_triton_repo_refused_early_when_it_cannot_fit(tmp_path, graph, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 4096))
    assert _export("--onnx", graph, "--triton-repo", tmp_path / "repo") == 1
    msg = _error(capsys)
    assert msg.startswith(f"{tmp_path / 'repo'}: needs at least ") and msg.endswith("has 4.0 KiB free")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ---------------------------------------------------------------- TensorRT engine + sidecar + timing cache


@pytest.mark.parametrize("free", [10, 4010], ids=["engine", "sidecar"])
def test_engine_and_sidecar_on_a_full_disk_keep_the_earlier_pair(tmp_path, monkeypatch, free):
    from harmonic.export import tensorrt as trtmod

    src = make_graph(tmp_path / "m.onnx")
    disk = tmp_path / "disk"
    disk.mkdir()
    engine = disk / "m.engine"
    engine.write_bytes(EARLIER)
    (disk / "m.engine.json").write_bytes(EARLIER)
    (disk / "t.cache").write_bytes(EARLIER)
    before = snapshot(disk)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(plan=b"P" * 4000))
    full_disk(monkeypatch, disk, free=free)
    with pytest.raises(WriteFailure) as info:
        trtmod.build_engine(src, engine, overwrite=True, timing_cache=disk / "t.cache")
    place = engine if free < 4000 else disk / "m.engine.json"
    assert _names_full_place(str(info.value), place), str(info.value)
    assert snapshot(disk) == before


# ---------------------------------------------------------------- INT8


def test_int8_graph_on_a_full_disk(tmp_path, monkeypatch):
    from harmonic.export.quantize import quantize_int8

    src, calib, disk = tmp_path / "m.onnx", tmp_path / "calib", tmp_path / "disk"
    qdq_graph(src)
    calib.mkdir()
    for i in range(2):
        cv2.imwrite(str(calib / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    disk.mkdir()
    out = disk / "m.int8.onnx"
    out.write_bytes(EARLIER)
    full_disk(monkeypatch, disk, free=2000)
    with pytest.raises(WriteFailure) as info:
        quantize_int8(src, out, calib, count=2, overwrite=True)
    assert _names_full_place(str(info.value), out), str(info.value)
    assert snapshot(disk) == {"m.int8.onnx": EARLIER}  # the calibrator's scratch folder went too


# ---------------------------------------------------------------- from a checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from tests.export.test_cli import _checkpoint

    ckpt, _ = _checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")
    return ckpt


@pytest.mark.slow
@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over-earlier"])
def test_onnx_export_on_a_full_disk(tmp_path, checkpoint, capsys, monkeypatch, earlier):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "model.onnx"
    if earlier:
        out.write_bytes(EARLIER)
        (disk / "model.raw.onnx").write_bytes(EARLIER)
    before = snapshot(disk)
    full_disk(monkeypatch, disk, free=5000)
    assert _export("--checkpoint", checkpoint, "--out", out, "--raw", "--no-verify", "--overwrite") == 1
    assert _names_full_place(_error(capsys), out)
    assert snapshot(disk) == before


@pytest.mark.slow
def test_export_keeps_the_earlier_graph_when_the_repository_fills_the_disk(tmp_path, checkpoint, capsys, monkeypatch):
    """The graph goes to a roomy disk over an earlier complete one, the repository to a
    full one. The new graph is never put in place, so the earlier one survives byte for byte."""
    roomy, small = tmp_path / "roomy", tmp_path / "small"
    roomy.mkdir()
    out = roomy / "model.onnx"
    out.write_bytes(EARLIER)
    full_disk(monkeypatch, small, free=1000)
    assert _export("--checkpoint", checkpoint, "--out", out, "--overwrite", "--no-verify", "--triton-repo",
                   small / "repo") == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out
    err = captured.err.strip()
    assert err.count("\n") == 0 and _names_full_place(err[len("error: "):], small / "repo" / "harmonicdet" / "1" / "model.onnx")
    assert snapshot(roomy) == {"model.onnx": EARLIER} and snapshot(small) == {}


@pytest.mark.slow
def test_export_refused_before_the_work_when_the_graph_cannot_fit(tmp_path, checkpoint, capsys, monkeypatch):
    import shutil

    import torch

    traced = []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: traced.append(1))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 100 << 10))
    assert _export("--checkpoint", checkpoint, "--out", tmp_path / "m.onnx", "--raw") == 1
    msg = _error(capsys)
    assert msg.startswith(f"{tmp_path / 'm.onnx'}, {tmp_path / 'm.raw.onnx'}: need at least ")
    assert msg.endswith("has 100.0 KiB free") and traced == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_on_a_real_small_tmpfs(tmp_path, checkpoint, capsys):
    """A real 1 MiB filesystem for the repository, the graph on the roomy disk over an earlier one: the
    export is refused before any work, or fails writing; either way one line names the place and the
    disk keeps its free space."""
    import shutil

    out = tmp_path / "model.onnx"
    out.write_bytes(EARLIER)
    with small_tmpfs(tmp_path / "small", "1m") as small:
        free = shutil.disk_usage(small).free
        assert _export("--checkpoint", checkpoint, "--out", out, "--overwrite", "--no-verify", "--triton-repo",
                       small / "repo") == 1
        msg = _error(capsys)
        assert msg.startswith(f"{small / 'repo'}") and f"filesystem of {small}" in msg
        assert shutil.disk_usage(small).free == free and snapshot(small) == {}
    assert out.read_bytes() == EARLIER


def test_run_failure_is_exit_1():
    assert RunFailure.exit_code == WriteFailure.exit_code == 1
