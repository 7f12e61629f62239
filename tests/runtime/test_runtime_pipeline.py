import threading

import numpy as np
import pytest

from harmonic.errors import HarmonicError
from harmonic.runtime import open_backend
from harmonic.runtime.bench import end_to_end, format_table, summarize
from harmonic.runtime.pipeline import BatchTiming, RunStats, infer_sequential, iter_batches
from harmonic.runtime.runners import infer_images
from harmonic.runtime.sources import expand_sources

from .runtime_graphs import write_images


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_pipeline_equals_sequential_loop(tmp_path, nms_graph, batch):
    paths = write_images(tmp_path / "im", 10, seed=1)
    (tmp_path / "im" / "img_004.jpg").write_text("broken")  # skipped in both
    with open_backend(nms_graph, provider="cpu", threads=1) as be:
        ref = infer_sequential(be, paths, batch)
        stats = RunStats()
        got = [(it.index, d) for it, d in infer_images(be, paths, batch, workers=3, prefetch=1, stats=stats)]
    assert [i for i, _ in got] == [i for i, _ in ref] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert stats.processed == 9 and len(stats.skipped) == 1 and "img_004.jpg" in stats.skipped[0][1]
    assert sum(t.n for t in stats.timings) == 9 and len(stats.timings) == -(-9 // batch)
    assert stats.detections == sum(len(d) for _, d in ref) > 0
    for (_, a), (_, b) in zip(got, ref):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_pipeline_bounds_in_flight_images_and_stops_early(tmp_path, monkeypatch):
    import harmonic.runtime.pipeline as pl

    paths = write_images(tmp_path / "im", 30)
    live, peak, lock = [0], [0], threading.Lock()
    real = pl.load_one

    def counting(path, size, fast=False):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        return real(path, size, fast)

    monkeypatch.setattr(pl, "load_one", counting)
    it = iter_batches(paths, 32, batch_size=2, workers=2, prefetch=1)
    first = next(it)
    assert len(first.items) == 2 and first.array.shape == (2, 3, 32, 32)
    it.close()  # consumer stops: producer thread and pool must end
    assert peak[0] <= 30
    # submitted images never exceed the decode window (2 * (1 + 1)) + the queued batches (1 * 2) + the batch
    # assembled while its put waits for room (2) + the one handed out (2); a slow consumer reaches all of them
    assert peak[0] <= 2 * 2 + 2 + 2 + 2
    assert not any(t.name == "harmonic-prefetch" and t.is_alive() for t in threading.enumerate())


def test_percentiles_on_known_data():
    s = summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s["n"] == 100 and s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)
    assert s["min"] == pytest.approx(1) and s["max"] == pytest.approx(100)
    assert summarize([]) == {"n": 0}


def test_end_to_end_stats_and_table():
    timings = [BatchTiming(4, 0.004, 0.002, 0.010, None, 0.001, 0.02),
               BatchTiming(2, 0.002, 0.001, 0.006, None, 0.001, 0.01)]
    e2e = end_to_end(timings, wall_s=0.03, images=6)
    assert e2e["throughput_img_s"] == pytest.approx(200)
    assert e2e["stages"]["engine"]["per_batch"]["mean"] == pytest.approx(8.0)
    assert e2e["stages"]["decode"]["per_image"]["mean"] == pytest.approx(1.0)
    table = format_table({"backend": "onnxruntime", "device": "cpu", "batch": 4, "img_size": 64, "warmup": 2,
                          "end_to_end": e2e, "engine_only": {"throughput_img_s": 400.0,
                                                             "latency_ms_per_batch": summarize([0.01] * 3)}})
    assert "engine-only" in table and "end-to-end" in table and "50%" in table


def test_sources_dir_glob_file_missing_and_empty(tmp_path, caplog):
    write_images(tmp_path / "a" / "sub", 2)
    write_images(tmp_path / "b", 3)
    (tmp_path / "a" / "notes.txt").write_text("x")
    lst = expand_sources([tmp_path / "a", str(tmp_path / "b" / "*.jpg"), tmp_path / "b" / "img_000.jpg",
                          tmp_path / "missing.jpg"])
    assert [lst.relative_name(i) for i in range(len(lst.paths))] == [
        "sub/img_000.jpg", "sub/img_001.jpg", "img_000.jpg", "img_001.jpg", "img_002.jpg"]
    assert lst.missing == [str(tmp_path / "missing.jpg")] and "no such file" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarmonicError, match="empty: no images in this directory"):
        expand_sources([tmp_path / "empty"])
    with pytest.raises(HarmonicError, match="no images found"):
        expand_sources([tmp_path / "nothing_here"])
