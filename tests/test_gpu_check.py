"""``scripts/gpu_check.py`` keeps working on a CPU-only machine: GPU steps skipped with a reason, the rest ok."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_quick_on_cpu(tmp_path, monkeypatch, capsys):
    mod = _load()
    monkeypatch.setattr(mod, "cuda_available", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    rc = mod.main(["--out", str(tmp_path), "--quick", "--steps",
                   "environment,data,train_cuda,train_cpu_smoke,export,ort_cuda,trt_fp16,trt_int8"])
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["step"]: s for s in summary["steps"]}
    assert rc == 0, capsys.readouterr().out
    assert summary["ok"] is True
    assert [s["step"] for s in summary["steps"]] == ["environment", "data", "train_cuda", "train_cpu_smoke", "export",
                                                      "ort_cpu", "ort_cuda", "trt_fp16", "trt_int8"]
    for name in ("environment", "data", "train_cpu_smoke", "export"):
        assert status[name]["status"] == "ok", status[name]
    assert status["train_cuda"] == {**status["train_cuda"], "status": "skipped", "reason": "no CUDA device"}
    assert status["trt_fp16"]["reason"] == status["trt_int8"]["reason"] == "no CUDA device"
    assert status["ort_cpu"]["reason"] == "not in --steps"
    assert status["ort_cuda"]["status"] == "skipped" and "CUDAExecutionProvider" in status["ort_cuda"]["reason"]
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.int8.onnx").is_file()


def test_a_failing_step_is_reported_and_the_run_fails(tmp_path, monkeypatch):
    mod = _load()
    monkeypatch.setattr(mod, "cuda_available", lambda: False)
    rc = mod.main(["--out", str(tmp_path), "--quick", "--steps", "environment,export"])
    status = {s["step"]: s for s in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]}
    assert rc == 0 and status["export"]["reason"] == "no checkpoint (training did not run)"
    monkeypatch.setattr(mod, "cuda_available", lambda: True)  # claims CUDA, but torch here has none
    rc = mod.main(["--out", str(tmp_path / "b"), "--quick", "--steps", "data,train_cuda"])
    status = {s["step"]: s for s in json.loads((tmp_path / "b" / "gpu_check.json").read_text())["steps"]}
    assert rc == 1 and status["train_cuda"]["status"] == "failed" and status["train_cuda"]["error"]
