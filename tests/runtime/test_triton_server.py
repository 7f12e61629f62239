"""A real Triton server (``make triton-env``) serving the repository ``harmonic export --triton-repo`` writes.

The end-to-end model and the Python-backend twin of the graph (the wheel's server has no
onnxruntime backend) get concurrent requests from ``infer --triton`` over HTTP and gRPC;
the server must form batches larger than 1 and every output must equal local ONNX
Runtime's bit for bit. Skipped, with the reason, where the environment can't be built.
Only 127.0.0.1 is used; the server is killed at the end whatever happens.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harmonic.cli import main
from harmonic.runtime import open_backend
from harmonic.runtime.pipeline import infer_sequential
from tests.runtime.runtime_graphs import make_graph, write_images
from tests.runtime.triton_server import Server, ServerEnv, server_env, start_server

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 24

_DUMP = """
import sys, numpy as np
from pathlib import Path
from harmonic.runtime.triton_client import TritonSession, infer_paths
url, model, out, batch, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
paths = sorted(Path(sys.argv[6]).glob("*.jpg"))
s = TritonSession(url, model)
res = dict(infer_paths(s, paths, batch, conc))
arrs = {}
for i in range(len(paths)):
    d = res[i]
    arrs[f"b{i}"], arrs[f"s{i}"], arrs[f"c{i}"] = d.boxes, d.scores, d.classes
np.savez(out, **arrs)
"""


_API = """
import sys, numpy as np
from pathlib import Path
from harmonic import Detector
url, out, video = sys.argv[1], sys.argv[2], sys.argv[3]
paths = sorted(Path(sys.argv[4]).glob("*.jpg"))
arrs = {}
def keep(key, d):
    arrs["b" + key], arrs["s" + key], arrs["c" + key] = d.boxes, d.scores, d.classes
with Detector(url, concurrency=4) as det:
    arrs["names"] = np.array(det.names)
    for i, d in enumerate(det(paths[:6])):
        keep(f"p{i}", d)
    keep("bytes", det(paths[0].read_bytes()))
    for i, frame, d in det.stream(video, batch=2):
        arrs[f"frame{i}"] = frame  # as this environment's OpenCV decodes it
        keep(f"v{i}", d)
        keep(f"a{i}", det(frame))  # a frame in memory: one request of its own
np.savez(out, **arrs)
"""


@pytest.fixture(scope="module")
def env() -> ServerEnv:
    return server_env()


@pytest.fixture(scope="module")
def served(env, tmp_path_factory):
    """(server, graph, images): the tiny graph's repository, the e2e model and the Python twin loaded."""
    tmp = tmp_path_factory.mktemp("triton")
    graph = make_graph(tmp / "model.onnx", max_det=6)
    images = tmp / "images"
    write_images(images, N_IMAGES)
    repo = tmp / "repo"
    # a 20 ms queue delay: concurrent requests on a 2-core box reliably meet in one server batch
    assert main(["export", "--onnx", str(graph), "--triton-repo", str(repo), "--triton-python-twin",
                 "--triton-max-batch", "8", "--triton-queue-delay-us", "20000"]) == 0
    with start_server(env, repo, ["harmonicdet_e2e", "harmonicdet_py"], tmp) as server:
        yield server, graph, images, tmp


def _client(env: ServerEnv, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``infer/run.py`` in the server environment (it has tritonclient; this interpreter may not)."""
    res = subprocess.run([str(env.python), str(ROOT / "infer" / "run.py"), *args], capture_output=True, text=True,
                         timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _local(graph: Path, images: Path) -> list:
    paths = sorted(images.glob("*.jpg"))
    with open_backend(graph, provider="cpu") as backend:
        return [d for _, d in infer_sequential(backend, paths, 1)]


def _batches(server: Server, model: str) -> dict[int, int]:
    status, stats = server.get(f"/v2/models/{model}/stats")
    assert status == 200
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["model_stats"][0]["batch_stats"]}


@pytest.mark.slow
@pytest.mark.parametrize("model,proto", [("harmonicdet_e2e", "http"), ("harmonicdet_py", "grpc")])
def test_served_detections_equal_local_onnxruntime_bit_for_bit(env, served, model, proto):
    server, graph, images, tmp = served
    url = server.http if proto == "http" else f"grpc://{server.grpc}"
    out = tmp / f"dump_{model}.npz"
    res = subprocess.run([str(env.python), "-c", _DUMP, url, model, str(out), "1", "8", str(images)],
                         capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                           "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(out)
    local = _local(graph, images)
    assert sum(len(d) for d in local) > N_IMAGES  # detections to compare, not empty outputs
    for i, d in enumerate(local):
        assert got[f"b{i}"].dtype == np.float32 and np.array_equal(got[f"b{i}"], d.boxes), i
        assert np.array_equal(got[f"s{i}"], d.scores) and np.array_equal(got[f"c{i}"], d.classes), i
    # 24 single-image requests, 8 in flight: the dynamic batcher merged some of them
    sizes = _batches(server, model)
    assert max(sizes) > 1, sizes
    assert sum(k * v for k, v in sizes.items()) >= N_IMAGES


@pytest.mark.slow
def test_infer_triton_cli_reports_equal_local_infer(env, served):
    server, graph, images, tmp = served
    local_out, served_out = tmp / "local", tmp / "served"
    assert main(["infer", "--engine", str(graph), "--images", str(images), "--out", str(local_out)]) == 0
    res = _client(env, "--triton", f"grpc://{server.grpc}", "--model", "harmonicdet_e2e", "--images", str(images),
                  "--out", str(served_out), "--concurrency", "6", "--batch", "2", "--bench", "--warmup", "1")
    assert (served_out / "detections.json").read_text() == (local_out / "detections.json").read_text()
    bench = json.loads((served_out / "bench.json").read_text())
    e2e = bench["end_to_end"]
    assert e2e["images"] == N_IMAGES and e2e["requests"] == N_IMAGES // 2 and e2e["throughput_img_s"] > 0
    lat = e2e["latency_ms_per_request"]
    assert lat["n"] == N_IMAGES // 2 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert bench["server"]["inferences"] == N_IMAGES and bench["backend"] == "triton-grpc"
    assert "server batches" in res.stdout


@pytest.mark.slow
def test_corrupt_image_is_an_error_for_its_request_only(env, served):
    server, graph, images, tmp = served
    mixed = tmp / "mixed"
    mixed.mkdir()
    good = sorted(images.glob("*.jpg"))[:5]
    for p in good:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "img_001x.jpg").write_bytes(good[1].read_bytes()[:200])  # truncated JPEG
    (mixed / "img_002x.jpg").write_bytes(b"not an image")
    res = _client(env, "--triton", server.http, "--model", "harmonicdet_e2e", "--images", str(mixed),
                  "--out", str(tmp / "mixed_out"), "--concurrency", "3", "--batch", "2")
    assert "5 processed, 2 skipped" in res.stdout
    assert res.stderr.count("the server refused it") == 2 and "img_002x.jpg" in res.stderr
    dets = json.loads((tmp / "mixed_out" / "detections.json").read_text())
    assert {d["file_name"] for d in dets} == {p.name for p in good}
    assert server.get("/v2/health/ready")[0] == 200 and server.proc.poll() is None  # the server carried on


@pytest.mark.slow
def test_unknown_model_and_unreachable_server(env, served):
    server, graph, images, tmp = served
    res = _client(env, "--triton", server.http, "--model", "nope", "--images", str(images), "--out",
                  str(tmp / "o_unknown"), check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: --model nope: the server at") and "harmonicdet_e2e" in res.stderr
    from tests.runtime.triton_server import free_port

    res = _client(env, "--triton", f"grpc://127.0.0.1:{free_port()}", "--model", "harmonicdet_e2e", "--images",
                  str(images), "--out", str(tmp / "o_down"), check=False)
    assert res.returncode == 2 and res.stderr.startswith("error: --triton grpc://127.0.0.1:")
    assert "no Triton server answers there" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp / "o_unknown").exists() and not (tmp / "o_down").exists()


def _same(got, key: str, d) -> None:
    assert got["b" + key].dtype == np.float32 and np.array_equal(got["b" + key], d.boxes), key
    assert np.array_equal(got["s" + key], d.scores) and np.array_equal(got["c" + key], d.classes), key


@pytest.mark.slow
@pytest.mark.parametrize("model,proto", [("harmonicdet_e2e", "http"), ("harmonicdet_py", "grpc")])
def test_detector_api_on_a_served_model_equals_the_local_model(env, served, model, proto):
    """``Detector("grpc://host:port/MODEL")``: paths, bytes, frames in memory and a video stream give what
    the local model gives (end-to-end model: the server decodes; graph model: the client letterboxes)."""
    from harmonic import Detector
    from tests.runtime.videos import write_video

    server, graph, images, tmp = served
    video = write_video(tmp / f"clip_{model}.avi", 8)
    url = f"http://{server.http}/{model}" if proto == "http" else f"grpc://{server.grpc}/{model}"
    out = tmp / f"api_{model}.npz"
    res = subprocess.run([str(env.python), "-c", _API, url, str(out), str(video), str(images)], capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(out)
    paths = sorted(images.glob("*.jpg"))
    with Detector(graph) as local:
        assert list(got["names"]) == local.names
        for i, d in enumerate(local(paths[:6])):
            _same(got, f"p{i}", d)
        _same(got, "bytes", local(paths[0]))
        for i in range(8):
            d = local(got[f"frame{i}"])
            _same(got, f"v{i}", d)
            _same(got, f"a{i}", d)
        assert sum(len(local(got[f"frame{i}"])) for i in range(8)) > 8


@pytest.mark.slow
def test_infer_triton_on_a_video_equals_the_local_engine(env, served):
    """``infer --triton ... --source clip`` and ``infer --engine ... --source clip`` in the same environment
    write the same ``detections.jsonl``: one run loop for both."""
    from tests.runtime.videos import write_video

    server, graph, images, tmp = served
    video = write_video(tmp / "clip_cli.mp4", 10)
    _client(env, "--engine", str(graph), "--source", str(video), "--out", str(tmp / "v_local"))
    res = _client(env, "--triton", f"grpc://{server.grpc}", "--model", "harmonicdet_e2e", "--source", str(video),
                  "--out", str(tmp / "v_served"), "--batch", "2", "--concurrency", "2", "--bench", "--warmup", "1")
    assert "frames: 10 processed, 0 dropped, 0 corrupt" in res.stdout
    local = (tmp / "v_local" / "detections.jsonl").read_text()
    assert (tmp / "v_served" / "detections.jsonl").read_text() == local and len(local.splitlines()) == 10
    bench = json.loads((tmp / "v_served" / "bench.json").read_text())
    assert bench["frames"]["processed"] == 10 and bench["requests"]["n"] == 5
    assert bench["end_to_end"]["latency_ms_per_frame"]["n"] == 10
