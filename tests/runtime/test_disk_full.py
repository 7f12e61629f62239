"""``harmonic infer`` on a full disk: detections.json, bench.json, report.json and the pictures appear
together or not at all; no temporary file is left; the one ``error:`` line (exit 1) names the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harmonic.cli import main
from tests.faults import full_disk, small_tmpfs, snapshot

from .runtime_graphs import make_graph, write_images


def _infer(model: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--engine", str(model), "--images", str(images), "--out", str(out), "--batch", "2",
                 "--warmup", "0", "--iters", "1", *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: "):].strip()


def _full_disk_line(msg: str, place: Path) -> bool:
    return msg.startswith(f"{place}: no space left on device (filesystem of ") and msg.endswith(" free)")


@pytest.fixture
def setup(tmp_path):
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    images = tmp_path / "images"
    write_images(images, 5)
    roomy = tmp_path / "roomy"
    assert _infer(model, images, roomy, "--bench") == 0  # what a complete run writes, and how big
    return model, images, roomy


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over-earlier"])
def test_detections_fail_on_their_last_flush(tmp_path, setup, capsys, monkeypatch, earlier):
    """The disk fills at the list's last bytes: the final flush fails, nothing is left behind."""
    model, images, roomy = setup
    disk = tmp_path / "disk"
    out = disk / "runs" / "out"
    if earlier:
        shutil.copytree(roomy, out)
    before = snapshot(disk)
    capsys.readouterr()
    full_disk(monkeypatch, disk, free=(roomy / "detections.json").stat().st_size - 1)
    assert _infer(model, images, out, "--bench") == 1
    assert _full_disk_line(_error(capsys), out / "detections.json")
    assert snapshot(disk) == before
    assert earlier or list(disk.iterdir()) == []  # the folders the run made went with it


def test_bench_json_on_a_full_disk_keeps_the_earlier_pair(tmp_path, setup, capsys, monkeypatch):
    model, images, roomy = setup
    out = tmp_path / "out"
    shutil.copytree(roomy, out)
    (out / "bench.json").write_text('{"earlier": true}\n')
    before = snapshot(out)
    capsys.readouterr()
    full_disk(monkeypatch, out, free=(roomy / "detections.json").stat().st_size + 100)
    assert _infer(model, images, out, "--bench") == 1
    assert _full_disk_line(_error(capsys), out / "bench.json")
    assert snapshot(out) == before  # the new detections.json was written, but is not put beside the old bench


def test_pictures_on_a_full_disk(tmp_path, setup, capsys, monkeypatch):
    model, images, roomy = setup
    out = tmp_path / "out"
    shutil.copytree(roomy, out)
    before = snapshot(out)
    capsys.readouterr()
    full_disk(monkeypatch, out, free=(roomy / "detections.json").stat().st_size + 100)
    assert _infer(model, images, out, "--save-vis") == 1
    msg = _error(capsys)
    assert msg.startswith(f"{out / 'vis'}/") and "no space left on device" in msg
    assert snapshot(out) == before and not (out / "vis").exists()


def test_infer_on_a_real_full_tmpfs(tmp_path, capsys):
    """A real 64 KiB filesystem: the run fails, the disk gets its free space back, the earlier outputs stay."""
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.0)
    images = tmp_path / "images"
    write_images(images, 300)
    with small_tmpfs(tmp_path / "small", "64k") as small:
        out = small / "out"
        out.mkdir()
        (out / "detections.json").write_text("[]\n")
        free = shutil.disk_usage(small).free
        capsys.readouterr()
        rc = _infer(model, images, out, "--bench", "--save-vis")
        msg = _error(capsys)
        assert rc == 1 and msg.startswith(f"{out}/") and msg.endswith(f"(filesystem of {small}: 0 bytes free)"), msg
        assert shutil.disk_usage(small).free == free
        assert snapshot(small) == {"out/detections.json": b"[]\n"}
        assert json.loads((out / "detections.json").read_text()) == []


def test_score_iou_plot_on_a_full_disk_fails_the_group(tmp_path, setup, capsys, monkeypatch):
    """With --annotations the report, its pairs sidecar and the score-IoU picture join the group: a disk
    that fills on the picture keeps every earlier output (no new report beside an old picture), exit 1."""
    import cv2

    model, images, _ = setup
    imgs, anns = [], []
    for i, p in enumerate(sorted(images.iterdir())):
        h, w = cv2.imread(str(p)).shape[:2]
        imgs.append({"id": i + 1, "file_name": p.name, "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, w / 2, h / 2],
                     "area": w * h / 4, "iscrowd": 0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "red"}]}))
    out = tmp_path / "out"
    assert _infer(model, images, out, "--annotations", str(gt)) == 0
    plot = (out / "score_iou.png").stat().st_size
    others = sum(p.stat().st_size for p in out.iterdir() if p.name != "score_iou.png")
    before = snapshot(out)
    capsys.readouterr()
    full_disk(monkeypatch, out, free=others + plot // 2)
    assert _infer(model, images, out, "--annotations", str(gt)) == 1
    assert _full_disk_line(_error(capsys), out / "score_iou.png")
    assert snapshot(out) == before
