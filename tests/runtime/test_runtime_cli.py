"""``infer/run.py`` end to end, in a subprocess with torch, torchvision and onnx blocked from import."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .runtime_graphs import NAMES, make_graph, write_images

ROOT = Path(__file__).resolve().parents[2]
# torch, torchvision and onnx behave as if not installed: an import hook raises ModuleNotFoundError.
# (``sys.modules[name] = None`` would also block them, but scipy.stats then crashes probing
# ``sys.modules["torch"].Tensor``, which never happens on a box without torch.)
BLOCK_IMPORTS = """
import sys
BLOCKED = {"torch", "torchvision", "onnx"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""
BLOCK = BLOCK_IMPORTS + """
import runpy
sys.argv = ["infer/run.py"] + sys.argv[1:]
try:
    runpy.run_path("infer/run.py", run_name="__main__")
finally:
    leaked = BLOCKED & set(sys.modules)
    assert not leaked, leaked
"""


def run_infer(*args, check_rc=None):
    proc = subprocess.run([sys.executable, "-c", BLOCK, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


def _has_eval_stack() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("harmonic.evaluation", "harmonic.data.readers"))


def _has_plots() -> bool:
    return _has_eval_stack() and importlib.util.find_spec("harmonic.evaluation.plots") is not None


def test_torch_blocked_run_writes_detections_and_bench(tmp_path):
    model = make_graph(tmp_path / "model.onnx")
    write_images(tmp_path / "images", 9)
    (tmp_path / "images" / "zz_broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    proc = run_infer("--engine", model, "--images", tmp_path / "images", tmp_path / "missing.jpg", "--out", out,
                     "--batch", "4", "--bench", "--warmup", "1", "--iters", "3", "--save-vis", "--threads", "1",
                     check_rc=0)
    assert "9 processed, 2 skipped (1 unreadable, 1 missing)" in proc.stdout
    assert "engine-only" in proc.stdout and "end-to-end" in proc.stdout
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == set(range(1, 10))
    assert all(1 <= d["category_id"] <= len(NAMES) and len(d["bbox"]) == 4 and d["score"] > 0.05 for d in dets)
    assert dets[0]["file_name"] == "img_000.jpg"
    bench = json.loads((out / "bench.json").read_text())
    assert bench["batch"] == 4 and bench["backend"] == "onnxruntime" and bench["warmup"] == 1
    assert bench["end_to_end"]["images"] == 9 and bench["end_to_end"]["batches"] == 3
    for stage in ("decode", "preprocess", "engine", "postprocess", "end_to_end"):
        s = bench["end_to_end"]["stages"][stage]["per_batch"]
        assert s["n"] == 3 and s["p50"] <= s["p99"]
    assert bench["engine_only"]["iters"] == 3 and bench["engine_only"]["throughput_img_s"] > 0
    assert {"numpy", "opencv", "onnxruntime"} <= set(bench["versions"])
    assert len(list((out / "vis").glob("*.jpg"))) == 9


@pytest.mark.skipif(not _has_eval_stack(), reason="harmonic.evaluation / harmonic.data.readers not written yet")
def test_torch_blocked_run_with_annotations_writes_report(tmp_path):
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    paths = write_images(tmp_path / "images", 4)
    import cv2

    images, anns = [], []
    for i, p in enumerate(paths):
        h, w = cv2.imread(str(p)).shape[:2]
        images.append({"id": 100 + i, "file_name": p.name, "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": 100 + i, "category_id": 1 + i % 3, "bbox": [1, 1, w / 2, h / 2],
                     "area": w * h / 4, "iscrowd": 0})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]}))
    out = tmp_path / "out"
    run_infer("--engine", model, "--images", tmp_path / "images", "--annotations", gt, "--out", out,
              "--bench", "--warmup", "0", "--iters", "2", check_rc=0)
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {100, 101, 102, 103}
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["images"] == 4 and report["counts"]["gt_objects"] == 4
    assert report["counts"]["detections"] == len(dets) > 0
    assert 0.0 <= report["coco"]["AP"] <= 1.0 and "spearman" in report["consistency"]
    assert (out / "bench.json").is_file()
    if _has_plots():
        assert (out / "score_iou.png").stat().st_size > 0


def test_score_threshold_warning_for_unfair_ap(tmp_path):
    model = make_graph(tmp_path / "model.onnx", score_threshold=0.3)
    write_images(tmp_path / "images", 2)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    proc = run_infer("--engine", model, "--images", tmp_path / "images", "--annotations", gt,
                     "--out", tmp_path / "out")
    if not _has_eval_stack():
        assert "annotations needs" in proc.stderr or "not available" in proc.stderr
        pytest.skip("harmonic.evaluation not written yet")
    assert "AP is only fair with <= 0.05" in proc.stderr


def test_empty_directory_is_an_error(tmp_path):
    model = make_graph(tmp_path / "model.onnx")
    (tmp_path / "empty").mkdir()
    proc = run_infer("--engine", model, "--images", tmp_path / "empty", "--out", tmp_path / "out", check_rc=2)
    assert proc.stderr.startswith("error: ") and "empty: no images in this directory" in proc.stderr


def test_missing_engine_file_is_an_error(tmp_path):
    write_images(tmp_path / "images", 1)
    proc = run_infer("--engine", tmp_path / "nope.engine", "--images", tmp_path / "images", check_rc=2)
    assert proc.stderr == f"error: {tmp_path / 'nope.engine'}: model file not found\n"


def test_nothing_processable_exits_nonzero(tmp_path):
    model = make_graph(tmp_path / "model.onnx")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_text("x")
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = run_infer("--engine", model, "--images", tmp_path / "images", "--out", tmp_path / "out", check_rc=1)
    assert "0 processed, 2 skipped" in proc.stdout and "none of the 2 image(s) could be read" in proc.stderr


def test_batch_above_fixed_batch_graph_is_an_error(tmp_path):
    model = make_graph(tmp_path / "fixed.onnx", batch=2)
    write_images(tmp_path / "images", 1)
    proc = run_infer("--engine", model, "--images", tmp_path / "images", "--batch", "4", check_rc=2)
    assert "--batch 4 is outside the engine's batch range 1..2" in proc.stderr
