"""``harmonic export --triton-repo``: the model repository, its configs parsed with Triton's own schema,
the engine's TensorRT version, the copied runtime, and the bad-input paths (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harmonic.cli import main
from tests.export.triton_helpers import parse_config
from tests.runtime.runtime_graphs import NAMES, make_graph

K = 6


def _export(*args: object) -> int:
    return main(["export", *map(str, args)])


def _config(repo: Path, model: str) -> dict:
    return parse_config((repo / model / "config.pbtxt").read_text())


def _params(cfg: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in cfg["parameters"].items()}


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    return make_graph(tmp_path / "model.onnx", max_det=K)


def _fake_engine(tmp_path: Path, profile=(1, 4, 16), trt="10.13.3.9") -> Path:
    """A stand-in plan file + the sidecar the exporter writes (the repository only copies the plan)."""
    eng = tmp_path / "model.engine"
    eng.write_bytes(b"plan bytes")
    side = {"harmonic.format": "harmonicdet-onnx", "img_size": 64, "max_det": K, "tensorrt": trt,
            "gpu": "NVIDIA T4", "compute_capability": "7.5", "fp16": True,
            "profile": dict(zip(("min", "opt", "max"), profile))}
    (tmp_path / "model.engine.json").write_text(json.dumps(side))
    return eng


def test_repository_layout_and_configs_parse_with_tritons_schema(tmp_path, graph, capsys):
    repo = tmp_path / "repo"
    rc = _export("--onnx", graph, "--triton-repo", repo, "--triton-max-batch", 4, "--triton-instances", 3,
                 "--triton-queue-delay-us", 250, "--triton-python-twin")
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "harmonicdet", "harmonicdet_e2e", "harmonicdet_py"]
    assert (repo / "harmonicdet/1/model.onnx").read_bytes() == graph.read_bytes()
    cfg = _config(repo, "harmonicdet")
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 4
    assert cfg["input"] == [{"name": "images", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                             "dims": ["3", "64", "64"]}]  # no batch dim (int64 dims are strings in JSON)
    outs = {o["name"]: (o["data_type"], [int(d) for d in o["dims"]]) for o in cfg["output"]}
    assert outs == {"num_dets": ("TYPE_INT32", [1]), "det_boxes": ("TYPE_FP32", [K, 4]),
                    "det_scores": ("TYPE_FP32", [K]), "det_classes": ("TYPE_INT32", [K])}
    assert cfg["dynamic_batching"] == {"max_queue_delay_microseconds": "250"}
    assert cfg["instance_group"] == [{"count": 3, "kind": "KIND_CPU"}]
    params = _params(cfg)
    assert json.loads(params["names"]) == NAMES and params["img_size"] == "64" and params["max_det"] == str(K)

    e2e = _config(repo, "harmonicdet_e2e")
    assert e2e["backend"] == "python" and e2e["max_batch_size"] == 4 and "platform" not in e2e
    assert e2e["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": ["1"]}]
    assert {o["name"]: [int(d) for d in o["dims"]] for o in e2e["output"]} == {k: v[1] for k, v in outs.items()}
    p = _params(e2e)
    assert p["harmonic.serving"] == "end_to_end" and p["harmonic.graph_file"] == "model.onnx"
    assert (repo / "harmonicdet_e2e/1/model.py").read_text() == Path("harmonic/runtime/triton_model.py").read_text()
    twin = _config(repo, "harmonicdet_py")
    assert twin["backend"] == "python" and twin["input"] == cfg["input"] and twin["output"] == cfg["output"]
    assert _params(twin)["harmonic.serving"] == "graph"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_fixed_batch_graph_is_max_batch_size_0_without_dynamic_batching(tmp_path):
    g = make_graph(tmp_path / "frcnn.onnx", batch=1, max_det=K)  # like Faster R-CNN's batch-1 graph
    repo = tmp_path / "repo"
    assert _export("--onnx", g, "--triton-repo", repo, "--triton-kind", "gpu") == 0
    cfg = _config(repo, "harmonicdet")
    assert cfg.get("max_batch_size", 0) == 0  # proto3 JSON leaves out a zero
    assert "dynamic_batching" not in cfg
    assert cfg["input"][0]["dims"] == ["1", "3", "64", "64"]
    assert {o["name"]: o["dims"] for o in cfg["output"]}["det_boxes"] == ["1", str(K), "4"]
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    e2e = _config(repo, "harmonicdet_e2e")  # the end-to-end model still batches requests (image by image inside)
    assert e2e["max_batch_size"] == 8 and "dynamic_batching" in e2e
    assert e2e["input"][0]["dims"] == ["1"]


def test_engine_plan_config_names_the_tensorrt_version(tmp_path, graph):
    eng = _fake_engine(tmp_path)
    repo = tmp_path / "repo"
    assert _export("--onnx", graph, "--engine", eng, "--triton-repo", repo) == 0
    text = (repo / "harmonicdet_trt/config.pbtxt").read_text()
    assert text.startswith("# model.plan needs TensorRT 10.13.3.9")
    cfg = parse_config(text)
    assert cfg["platform"] == "tensorrt_plan" and cfg["max_batch_size"] == 16  # the profile's max
    assert _params(cfg)["tensorrt"] == "10.13.3.9"
    assert (repo / "harmonicdet_trt/1/model.plan").read_bytes() == b"plan bytes"
    assert _config(repo, "harmonicdet")["max_batch_size"] == 16
    assert "TensorRT 10.13.3.9" in (repo / "README.md").read_text()
    # CPU instances: the end-to-end model runs the ONNX graph; GPU instances would run the plan
    assert _params(_config(repo, "harmonicdet_e2e"))["harmonic.graph_file"] == "model.onnx"


def test_copied_runtime_is_self_contained(tmp_path, graph):
    """model.py imports the runtime copied beside it (not the installed package), with torch unavailable."""
    repo = tmp_path / "repo"
    assert _export("--onnx", graph, "--triton-repo", repo) == 0
    ver = repo / "harmonicdet_e2e" / "1"
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; sys.modules['torchvision'] = None\n"
            "import importlib.util as u\n"
            "spec = u.spec_from_file_location('model', 'model.py'); model = sys.modules['model'] = u.module_from_spec(spec)\n"
            "spec.loader.exec_module(model)\n"
            "import harmonic\n"
            "print(harmonic.__file__)\n"
            "r = model.open_runner('.', {})\n"
            "print(r.size, r.k)\n")
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=ver, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    first, second = res.stdout.split("\n")[:2]
    assert Path(first).resolve() == (ver / "harmonic" / "__init__.py").resolve()
    assert second == f"64 {K}"


def test_repository_from_an_onnx_file_needs_neither_torch_nor_onnx(tmp_path, graph):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; sys.modules['torchvision'] = None\n"
            "from harmonic.cli import main\n"
            f"sys.exit(main(['export', '--onnx', {str(graph)!r}, '--triton-repo', {str(tmp_path / 'repo')!r}]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "repo" / "harmonicdet_e2e" / "config.pbtxt").is_file()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_graph_without_our_metadata_is_refused(tmp_path, capsys):
    g = make_graph(tmp_path / "foreign.onnx", metadata={})
    repo = tmp_path / "repo"
    assert _export("--onnx", g, "--triton-repo", repo) == 2
    err = _one_line_error(capsys)
    assert err.startswith(f"error: {g}: no HarmonicDet metadata")
    assert not repo.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["foreign.onnx"]


@pytest.mark.parametrize("flags,message", [
    (["--triton-max-batch", "32"], "--triton-max-batch 32: above the engine profile's maximum 16"),
    (["--triton-max-batch", "0"], "--triton-max-batch 0: "),
])
def test_max_batch_against_the_engine_profile(tmp_path, graph, capsys, flags, message):
    eng = _fake_engine(tmp_path)
    repo = tmp_path / "repo"
    assert _export("--onnx", graph, "--engine", eng, "--triton-repo", repo, *flags) == 2
    assert message in _one_line_error(capsys)
    assert not repo.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_engine_profile_must_start_at_batch_1(tmp_path, graph, capsys):
    eng = _fake_engine(tmp_path, profile=(2, 4, 8))
    assert _export("--onnx", graph, "--engine", eng, "--triton-repo", tmp_path / "repo") == 2
    assert "its profile starts at batch 2" in _one_line_error(capsys)


def test_max_batch_for_a_fixed_batch_graph_is_refused(tmp_path, capsys):
    g = make_graph(tmp_path / "b1.onnx", batch=1)
    assert _export("--onnx", g, "--triton-repo", tmp_path / "repo", "--triton-max-batch", "4") == 2
    assert "has a fixed batch of 1" in _one_line_error(capsys)


def test_existing_repository_needs_overwrite(tmp_path, graph, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("mine")
    assert _export("--onnx", graph, "--triton-repo", repo) == 2
    assert "folder exists and is not empty (pass --overwrite" in _one_line_error(capsys)
    assert [p.name for p in repo.iterdir()] == ["keep.txt"]
    assert _export("--onnx", graph, "--triton-repo", repo, "--overwrite") == 0
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "harmonicdet", "harmonicdet_e2e"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine without --overwrite
    assert _export("--onnx", graph, "--triton-repo", empty) == 0


def test_failure_mid_write_keeps_the_old_repository(tmp_path, graph, monkeypatch):
    from harmonic.errors import HarmonicError
    from harmonic.export import triton_repo

    repo = tmp_path / "repo"
    assert _export("--onnx", graph, "--triton-repo", repo) == 0
    before = (repo / "harmonicdet/config.pbtxt").read_text()

    def boom(*a, **k):
        raise HarmonicError("disk full (simulated)")

    monkeypatch.setattr(triton_repo, "_readme", boom)
    with pytest.raises(HarmonicError):
        triton_repo.write_repository(repo, graph, opts=triton_repo.RepoOptions(max_batch=2), overwrite=True)
    assert (repo / "harmonicdet/config.pbtxt").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "repo"]


@pytest.mark.parametrize("flags,message", [
    (["--triton-instances", "0"], "--triton-instances must be >= 1"),
    (["--triton-name", "a/b"], "--triton-name 'a/b'"),
    (["--triton-queue-delay-us", "-1"], "--triton-queue-delay-us must be >= 0"),
])
def test_bad_triton_flags(tmp_path, graph, capsys, flags, message):
    assert _export("--onnx", graph, "--triton-repo", tmp_path / "repo", *flags) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "repo").exists()


def test_onnx_needs_triton_repo_and_checkpoint_needs_out(tmp_path, graph, capsys):
    assert _export("--onnx", graph) == 2
    assert "--onnx: only used with --triton-repo" in _one_line_error(capsys)
    assert _export("--out", tmp_path / "m.onnx") == 2
    assert "--checkpoint and --out are required" in _one_line_error(capsys)


def test_checkpoint_export_prechecks_triton_flags_before_any_work(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    assert _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--triton-repo", tmp_path / "r",
                   "--triton-max-batch", "0") == 2
    assert "--triton-max-batch 0: the graph has a dynamic batch" in _one_line_error(capsys)
    assert _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--batch", "2", "--triton-repo",
                   tmp_path / "r", "--triton-max-batch", "4") == 2
    assert "--batch 2 exports a fixed batch" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def _family_checkpoint(path: Path, name: str, img_size: int = 64):
    """A random-init checkpoint of model ``name`` (as tests/export/test_cli.py writes them)."""
    import torch

    from harmonic import models
    from harmonic.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    opts = {"fpn_channels": 64} if "fpn" in name else {}
    model = models.build_detector(name, 3, loss="harmonic", img_size=img_size, **opts)
    spec = models.model_spec(name, 3, ["a", "b", "c"], img_size=img_size, options=opts)
    save_checkpoint(path, {"spec": spec.to_dict(), "model": model.state_dict(), "epoch": 0})
    return path, spec


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet_resnet10s_fpn", "fcos_resnet10s_fpn", "ssdlite320_mobilenet_v3_large",
                                  "fasterrcnn_resnet18_fpn"])
def test_every_family_exports_a_repository(tmp_path, capsys, name):
    ckpt, spec = _family_checkpoint(tmp_path / "best.pt", name)
    repo = tmp_path / "repo"
    rc = _export("--checkpoint", ckpt, "--out", tmp_path / "m.onnx", "--no-verify", "--max-det", "10",
                 "--triton-repo", repo)
    assert rc == 0, capsys.readouterr().err
    cfg = _config(repo, "harmonicdet")
    s = str(spec.img_size)
    if name.startswith("fasterrcnn"):  # batch-1 graph
        assert cfg.get("max_batch_size", 0) == 0 and "dynamic_batching" not in cfg
        assert cfg["input"][0]["dims"] == ["1", "3", s, s]
    else:
        assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == ["3", s, s]
    assert {o["name"]: o["dims"][-1] for o in cfg["output"]}["det_scores"] == "10"
    assert _params(cfg)["model"] == spec.name
    assert _config(repo, "harmonicdet_e2e")["max_batch_size"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "m.onnx", "repo"]
