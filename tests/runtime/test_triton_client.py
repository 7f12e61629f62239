"""``infer --triton`` without a server: URL and flag checks, the served model's config, the missing-client
error; and the end-to-end serving model's logic run in-process (no Triton needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from harmonic.cli import main
from harmonic.errors import HarmonicError
from harmonic.runtime import open_backend
from harmonic.runtime.pipeline import infer_sequential
from harmonic.runtime.triton_client import parse_url, served_model
from tests.runtime.runtime_graphs import make_graph, write_images

GRAPH_CFG = {
    "name": "harmonicdet", "platform": "onnxruntime_onnx", "max_batch_size": 8,
    "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": ["3", "64", "64"]}],
    "output": [{"name": n} for n in ("num_dets", "det_boxes", "det_scores", "det_classes")],
    "parameters": {"names": {"string_value": '["a", "b"]'}, "category_ids": {"string_value": "[7, 9]"},
                   "score_threshold": {"string_value": "0.05"}},
}


def test_parse_url():
    assert parse_url("localhost:8000") == ("http", "localhost:8000")
    assert parse_url("http://127.0.0.1:8000/") == ("http", "127.0.0.1:8000")
    assert parse_url("grpc://10.0.0.2:8001") == ("grpc", "10.0.0.2:8001")
    for bad in ("ftp://x:1", "http://", "http://h:1/v2/models"):
        with pytest.raises(HarmonicError, match="--triton"):
            parse_url(bad)


def test_served_model_from_config():
    m = served_model(GRAPH_CFG, "u")
    assert (m.end_to_end, m.input_name, m.max_batch, m.img_size, m.fixed_batch) == (False, "images", 8, 64, None)
    assert m.names == ["a", "b"] and m.category_ids == [7, 9] and m.score_threshold == 0.05 and m.largest_request == 8
    fixed = dict(GRAPH_CFG, max_batch_size=0, input=[{"name": "images", "data_type": "TYPE_FP32",
                                                      "dims": [1, 3, 64, 64]}])
    m = served_model(fixed, "u")
    assert (m.max_batch, m.fixed_batch, m.img_size, m.largest_request) == (0, 1, 64, 1)
    e2e = dict(GRAPH_CFG, input=[{"name": "image", "data_type": "TYPE_STRING", "dims": ["1"]}])
    m = served_model(e2e, "u")
    assert m.end_to_end and m.input_name == "image" and m.img_size is None
    with pytest.raises(HarmonicError, match="--model other: not a HarmonicDet detector on u .*missing det_boxes"):
        served_model({"name": "other", "input": [{"name": "x"}], "output": [{"name": "num_dets"}]}, "u")
    with pytest.raises(HarmonicError, match=r"input dims \[3, 64, 32\] are not \[3, S, S\]"):
        served_model(dict(GRAPH_CFG, input=[{"name": "images", "data_type": "TYPE_FP32", "dims": [3, 64, 32]}]), "u")


@pytest.mark.parametrize("args,message", [
    (["--model", "m"], "--model: only used with --triton URL"),
    (["--concurrency", "2"], "--concurrency: only used with --triton URL"),
    (["--triton", "h:1"], "--triton: needs --model NAME"),
    (["--triton", "h:1", "--model", "m", "--engine", "x.onnx"], "--triton with --engine: pass one"),
    (["--triton", "h:1", "--model", "m", "--concurrency", "0"], "--concurrency must be >= 1"),
    (["--triton", "ftp://h:1", "--model", "m"], "--triton ftp://h:1: expected host:port"),
    (["--triton", "h:1", "--model", "m", "--save-vis"], "--save-vis: not used with --triton"),
    ([], "--engine is required (a model file), or --triton URL --model NAME"),
])
def test_bad_triton_flags(tmp_path, capsys, args, message):
    rc = main(["infer", "--images", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_tritonclient_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    write_images(tmp_path / "im", 1)
    rc = main(["infer", "--triton", "grpc://127.0.0.1:1", "--model", "m", "--images", str(tmp_path / "im"),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --triton needs tritonclient[grpc], which is not installed")
    assert 'pip install "harmonicdet[triton]"' in err and len(err.splitlines()) == 1


# ------------------------------------------------ the serving model (harmonic/runtime/triton_model.py) in-process


def _runner(graph: Path):
    from harmonic.runtime.triton_model import GraphRunner

    return GraphRunner(open_backend(graph, provider="cpu"))


def test_end_to_end_model_equals_local_inference_and_isolates_a_corrupt_image(tmp_path):
    from harmonic.runtime.triton_model import end_to_end

    graph = make_graph(tmp_path / "m.onnx", max_det=6)
    paths = write_images(tmp_path / "im", 5)
    with open_backend(graph, provider="cpu") as b:
        local = [d for _, d in infer_sequential(b, paths, 1)]
    data = [p.read_bytes() for p in paths]
    # one server batch of three requests: [0, 1], [corrupt], [2, 3, 4]
    res = end_to_end(_runner(graph), [data[:2], [data[1][:150]], data[2:]])
    assert res[1].outputs is None and "image 0 of the request" in res[1].error
    got = [(res[0].outputs, 0), (res[0].outputs, 1), (res[2].outputs, 0), (res[2].outputs, 1), (res[2].outputs, 2)]
    assert res[0].outputs["det_boxes"].shape == (2, 6, 4) and res[2].outputs["num_dets"].shape == (3, 1)
    for d, (o, j) in zip(local, got):
        k = int(o["num_dets"][j, 0])
        assert k == len(d) > 0
        assert np.array_equal(o["det_boxes"][j, :k], d.boxes)  # original-image pixels, bit for bit
        assert np.array_equal(o["det_scores"][j, :k], d.scores)
        assert np.array_equal(o["det_classes"][j, :k], d.classes)
        assert not o["det_scores"][j, k:].any() and o["det_classes"].dtype == np.int32


def test_graph_model_runs_fixed_batch_graphs_in_chunks(tmp_path):
    from harmonic.runtime.triton_model import end_to_end, graph_batch

    g1 = make_graph(tmp_path / "b1.onnx", batch=1, max_det=6)  # like Faster R-CNN's batch-1 graph
    gd = make_graph(tmp_path / "bd.onnx", max_det=6)
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    a = graph_batch(_runner(g1), [x[:1], x[1:]])
    b = graph_batch(_runner(gd), [x[:1], x[1:]])
    for ra, rb in zip(a, b):
        for k in ra.outputs:
            assert np.array_equal(ra.outputs[k], rb.outputs[k])
    assert a[1].outputs["det_boxes"].shape == (2, 6, 4)
    bad = graph_batch(_runner(gd), [x[:, :, :32]])
    assert bad[0].outputs is None and "expected [n, 3, 64, 64]" in bad[0].error
    paths = write_images(tmp_path / "im", 3)
    e = end_to_end(_runner(g1), [[p.read_bytes() for p in paths]])
    assert e[0].outputs["num_dets"].shape == (3, 1)


class _FakeSession:
    """Stands in for TritonSession: an end-to-end model answered by the in-process serving model."""

    def __init__(self, graph: Path, fail: BaseException | None = None) -> None:
        from harmonic.runtime.triton_client import ServedModel

        self.url = "fake:1"
        self.model = ServedModel("m", True, "image", 8, None, None, {})
        self.runner = _runner(graph)
        self.fail = fail
        self.requests: list[int] = []

    def infer(self, array: np.ndarray) -> dict[str, np.ndarray]:
        from harmonic.runtime.triton_model import end_to_end

        self.requests.append(array.shape[0])
        if self.fail is not None:
            raise self.fail
        res = end_to_end(self.runner, [list(array.reshape(-1))])[0]
        if res.outputs is None:
            raise RuntimeError(f"[500] {res.error}")
        return res.outputs


def test_infer_paths_retries_a_failed_batch_image_by_image(tmp_path):
    from harmonic.runtime.triton_client import RequestTiming, infer_paths

    graph = make_graph(tmp_path / "m.onnx", max_det=6)
    paths = write_images(tmp_path / "im", 5)
    (tmp_path / "im" / "img_001.jpg").write_bytes(b"broken")
    with open_backend(graph, provider="cpu") as b:
        local = dict(infer_sequential(b, paths, 1))
    s = _FakeSession(graph)
    timings: list[RequestTiming] = []
    got = list(infer_paths(s, paths, batch=2, concurrency=2, timings=timings))
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]  # input order
    assert isinstance(got[1][1], str) and "the server refused it" in got[1][1]
    for i, d in got:
        if i != 1:
            assert np.array_equal(d.boxes, local[i].boxes) and np.array_equal(d.scores, local[i].scores)
    # [0,1] failed and was retried as [0] and [1]; [2,3] and [4] went through
    assert sorted(s.requests) == [1, 1, 1, 2, 2] and sorted(t.n for t in timings) == [1, 1, 2]


def test_infer_paths_stops_at_a_lost_server(tmp_path):
    from harmonic.errors import RunFailure
    from harmonic.runtime.triton_client import infer_paths

    graph = make_graph(tmp_path / "m.onnx", max_det=6)
    paths = write_images(tmp_path / "im", 6)
    s = _FakeSession(graph, fail=ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(RunFailure, match="--triton fake:1: lost the server"):
        list(infer_paths(s, paths, batch=2, concurrency=1))
