"""``scripts/gpu_check.py`` (its steps: ``scripts/gpucheck/``) and ``scripts/gpu_bundle.py`` on a CPU-only machine.

Bad input fails in one line with exit 2 before any step runs; the bundle is validated (size,
manifest, SHA-256, the checkpoint's model); wheels unpack only where their package is missing;
the summary names every step that was not verified and ``--require`` turns a skip into a
failure; the loss-dtype recorder catches low-precision maths; and the CPU mode of the check
runs its CPU steps end to end. What needs a GPU (CUDA, NCCL, TensorRT) is not run here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # the GPU check's package and its bundle helpers live beside the scripts

from gpucheck.bundle import activate, check_bundle  # noqa: E402


def _load(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _gpucheck(module: str):
    """A module of the GPU check's package ``scripts/gpucheck``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    return importlib.import_module(f"gpucheck.{module}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: two threads waiting on each other on a shared, busy 2-core CPU slow a forward 100x."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, _one_thread):
    """A bundle (no wheels) whose checkpoint is the demo recipe's model, randomly initialised."""
    import torch

    gb = _load("gpu_bundle")
    from harmonic.models import build_detector, model_spec
    from harmonic.training.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("bundle")
    r = gb.RECIPE
    options = {"fpn_channels": r["fpn_channels"], "num_convs": 2}
    torch.manual_seed(0)
    model = build_detector(r["model"], 3, loss=r["loss"], img_size=r["img_size"], **options)
    from harmonic.data.synth import class_names

    spec = model_spec(r["model"], 3, class_names(3), img_size=r["img_size"], loss=r["loss"],
                      options=options)
    (tmp / "run").mkdir()
    save_checkpoint(tmp / "run" / "last.pt", {"spec": spec.to_dict(), "model": model.state_dict(), "epoch": 0})
    manifest = gb.make_bundle(tmp / "bundle", tmp / "run" / "last.pt", tmp / "work", wheels=False)
    return tmp / "bundle", manifest, tmp


def _other_model_checkpoint(path: Path) -> Path:
    from harmonic.models import model_spec
    from harmonic.training.checkpoint import save_checkpoint

    spec = model_spec("retinanet_resnet18_fpn", 3, ["a", "b", "c"], img_size=320, loss="harmonic")
    return save_checkpoint(path, {"spec": spec.to_dict(), "model": {}})


def test_make_bundle_writes_a_checked_manifest(tiny_bundle):
    gb = _load("gpu_bundle")
    bundle, manifest, _ = tiny_bundle
    assert sorted(p.name for p in bundle.iterdir()) == ["demo.pt", "manifest.json"]
    assert manifest["total_bytes"] == gb.folder_bytes(bundle) <= gb.LIMIT_BYTES
    assert manifest["checkpoint"]["model"] == "fcos_resnet10s_fpn" and manifest["checkpoint"]["img_size"] == 128
    assert manifest["checkpoint"]["sha256"] == gb.sha256(bundle / "demo.pt")
    assert check_bundle(bundle)["checkpoint"]["file"] == "demo.pt"
    import torch

    ckpt = torch.load(bundle / "demo.pt", weights_only=True)  # weights only: no optimizer state carried
    assert "optimizer" not in ckpt and "model" in ckpt and "spec" in ckpt


def test_make_bundle_refuses_over_the_limit_and_another_model(tiny_bundle, tmp_path, monkeypatch):
    gb = _load("gpu_bundle")
    from harmonic.errors import HarmonicError

    _, _, tmp = tiny_bundle
    monkeypatch.setattr(gb, "LIMIT_BYTES", 1000)
    with pytest.raises(HarmonicError, match=r"over 0 MiB"):
        gb.make_bundle(tmp_path / "b", tmp / "run" / "last.pt", tmp_path / "w", wheels=False)
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]
    with pytest.raises(HarmonicError, match="a retinanet_resnet18_fpn checkpoint.*needs the demo recipe's "
                                            "fcos_resnet10s_fpn"):
        gb.make_bundle(tmp_path / "c", _other_model_checkpoint(tmp_path / "r.pt"), tmp_path / "w", wheels=False)


def _copy_bundle(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", ["unknown_require", "unknown_steps", "require_not_in_steps", "missing_bundle",
                                  "oversized_bundle", "tampered_checkpoint", "other_model"])
def test_bad_input_is_one_line_exit_2_before_any_step(tiny_bundle, tmp_path, monkeypatch, capsys, case):
    gc = _gpucheck("runner")
    bundle, _, _ = tiny_bundle
    ran = []
    for st in gc.STEPS:
        monkeypatch.setattr(st, "fn", lambda ctx, n=st.name: ran.append(n))
    args = ["--out", str(tmp_path / "out"), "--bundle", str(bundle), "--device", "cpu"]
    expect = {
        "unknown_require": (["--require", "ort,warp_drive"], "--require: unknown step(s) warp_drive; the steps are "),
        "unknown_steps": (["--steps", "nope"], "--steps: unknown step(s) nope"),
        "require_not_in_steps": (["--steps", "environment", "--require", "ort"], "--require ort: not in --steps"),
        "missing_bundle": (["--bundle", str(tmp_path / "none")], "--bundle folder not found (make it here with: "
                                                                 "make gpu-bundle)"),
        "oversized_bundle": ([], "over the 64 MiB that can travel"),
        "tampered_checkpoint": ([], "demo.pt: SHA-256 differs from the bundle manifest"),
        "other_model": ([], "a retinanet_resnet18_fpn checkpoint (3 classes, 320 px); the GPU check needs"),
    }[case]
    extra, message = expect
    if case == "oversized_bundle":
        b = _copy_bundle(bundle, tmp_path / "big")
        with open(b / "padding.bin", "wb") as f:  # sparse: 65 MiB of size, no disk
            f.truncate(65 * 2**20)
        extra = ["--bundle", str(b)]
    elif case == "tampered_checkpoint":
        b = _copy_bundle(bundle, tmp_path / "t")
        with open(b / "demo.pt", "ab") as f:
            f.write(b"x")
        extra = ["--bundle", str(b)]
    elif case == "other_model":
        extra = ["--checkpoint", str(_other_model_checkpoint(tmp_path / "r.pt"))]
    rc = gc.main(args + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert ran == [] and not (tmp_path / "out").exists()


def test_the_documented_command_runs_from_anywhere_without_an_install(tmp_path):
    """``python3 scripts/gpu_check.py``: the entry finds the project and its ``gpucheck`` package itself."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "out"),
                           "--bundle", str(tmp_path / "none"), "--require", "warp_drive"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --require: unknown step(s) warp_drive; the steps are environment, bundle")
    assert not (tmp_path / "out").exists()

def test_activate_unpacks_only_what_does_not_import(tmp_path, monkeypatch):
    gb = _load("gpu_bundle")
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    whl = bundle / "wheels" / "hd_fake_pkg_q7-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("hd_fake_pkg_q7/__init__.py", "VALUE = 42\n")
        z.writestr("hd_fake_pkg_q7-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: hd_fake_pkg_q7\nVersion: 1.0\n")
    np_whl = bundle / "wheels" / "numpy-9.9-cp312-none-any.whl"
    with zipfile.ZipFile(np_whl, "w") as z:
        z.writestr("numpy/__init__.py", "raise ImportError('the bundled copy must not shadow the installed one')\n")
    entries = [{"file": f"wheels/{w.name}", "dist": gb.dist_name(w), "module": gb.MODULES.get(gb.dist_name(w), gb.dist_name(w)),
                "sha256": gb.sha256(w)} for w in (whl, np_whl)]
    (bundle / "manifest.json").write_text(json.dumps({"wheels": entries}))
    monkeypatch.setattr(sys, "path", list(sys.path))
    res = activate(bundle, tmp_path / "site")
    assert res == {"unpacked": ["hd_fake_pkg_q7"], "already_here": ["numpy"]}
    import importlib.metadata as md

    import hd_fake_pkg_q7

    assert hd_fake_pkg_q7.VALUE == 42 and md.version("hd_fake_pkg_q7") == "1.0"
    assert not (tmp_path / "site" / "numpy").exists()
    sys.modules.pop("hd_fake_pkg_q7", None)


def test_summary_names_what_was_not_verified_and_require_fails_a_skip(tiny_bundle, tmp_path, capsys):
    gc = _gpucheck("runner")
    bundle, _, _ = tiny_bundle
    rc = gc.main(["--out", str(tmp_path / "a"), "--bundle", str(bundle), "--device", "cpu", "--quick",
                  "--steps", "environment,bundle,trt_int8"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads((tmp_path / "a" / "gpu_check.json").read_text())
    status = {s["step"]: s for s in summary["steps"]}
    assert rc == 0 and summary["ok"] is True
    assert status["environment"]["status"] == status["bundle"]["status"] == "ok"
    assert status["trt_int8"]["reason"] == "--device cpu" and status["ort"]["reason"] == "not in --steps"
    assert summary["not_verified"] == [s for s in gc.STEP_NAMES if s not in ("environment", "bundle")]
    assert summary["versions"]["torch"] and summary["device"] == "cpu"
    last = lines[-1]
    assert last.startswith("gpu_check: 2 ok, 12 skipped, 0 failed") and "CPU mode: nothing on a GPU was verified" in last
    assert "passed with gaps; NOT verified: data (not in --steps)" in last and "trt_int8 (--device cpu)" in last
    assert " ok " not in last.split(";")[-1]  # never a bare ok
    # --require: the same skip is now a failure
    rc = gc.main(["--out", str(tmp_path / "b"), "--bundle", str(bundle), "--device", "cpu", "--quick",
                  "--steps", "environment,trt_int8", "--require", "trt_int8"])
    summary = json.loads((tmp_path / "b" / "gpu_check.json").read_text())
    trt = {s["step"]: s for s in summary["steps"]}["trt_int8"]
    assert rc == 1 and summary["ok"] is False
    assert trt["status"] == "failed" and trt["error"] == "required (--require) but skipped: --device cpu"
    assert "FAILED; NOT verified:" in capsys.readouterr().out.strip().splitlines()[-1]


def test_low_precision_recorder_catches_half_maths_in_a_loss():
    """The amp_train dtype check: a loss with a matmul under autocast runs it in bf16; .float() + pointwise don't."""
    import torch

    gc = _gpucheck("training")

    def bad_loss(x):
        return (x @ x.T).sum()

    def good_loss(x):
        x = x.float()
        return ((x - 1) ** 2).mean()

    x = torch.rand(4, 4)
    for fn, want_low in ((bad_loss, True), (good_loss, False)):
        rec = gc.LowPrecisionRecorder()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = rec.wrap(fn)(x)
        assert rec.ops > 0 and bool(rec.low) is want_low, (fn.__name__, rec.low)
        assert out.dtype == (torch.bfloat16 if want_low else torch.float32)


def test_torchrun_with_one_process_joins_a_process_group(monkeypatch):
    """torchrun --nproc_per_node 1 sets RANK=0, WORLD_SIZE=1, MASTER_ADDR: DDP (gloo on CPU) is used."""
    import socket

    import torch.distributed as dist

    from harmonic.training.distributed import cleanup, init_distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("RANK", raising=False)
    assert init_distributed("cpu")[0].enabled is False  # a plain run, WORLD_SIZE alone
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    info, dev = init_distributed("cpu")
    try:
        assert info.enabled and info.world_size == 1 and dist.get_backend() == "gloo" and dev.type == "cpu"
    finally:
        cleanup(info)


@pytest.mark.slow
def test_cpu_mode_runs_the_cpu_steps(tiny_bundle, tmp_path, capsys):
    """``--device cpu --quick``: every step that needs no GPU passes; the GPU ones are skipped and named."""
    gc, context = _gpucheck("runner"), _gpucheck("context")
    bundle, _, _ = tiny_bundle
    # (ort is left out: its parity threshold needs a trained checkpoint, this bundle's is random)
    rc = gc.main(["--out", str(tmp_path), "--bundle", str(bundle), "--device", "cpu", "--quick",
                  "--steps", "environment,bundle,data,amp_train,ddp,export,trt_fp16", "--iters", "1"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["step"]: s for s in summary["steps"]}
    assert rc == 0, out[-3000:]
    for name in ("environment", "bundle", "data", "amp_train", "ddp", "export"):
        assert status[name]["status"] == "ok", status[name]
        assert all(c["pass"] for c in status[name]["checks"])
    runs = status["amp_train"]["result"]["runs"]
    assert sorted(runs) == sorted(f"{f}/{loss}" for f in context.FAMILIES for loss in context.LOSSES)
    checks = {c["check"]: c for c in status["amp_train"]["checks"]}
    assert checks["ssd/harmonic: low-precision ops in the loss maths"]["value"] == []
    assert checks["faster_rcnn/baseline: bf16 autocast active in the loss region"]["value"] is True
    assert status["ddp"]["result"]["backend"] == "gloo" and status["export"]["result"]["quantize_nodes"] > 0
    assert status["trt_fp16"]["reason"] == "--device cpu" and status["ort"]["reason"] == "not in --steps"
    assert "[ 4/14] amp_train" in out  # progress as it goes
    assert os.path.isfile(tmp_path / "model.int8.onnx")
