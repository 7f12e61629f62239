"""End to end on a really trained + exported tiny model: synth -> train (2 iterations) -> export -> infer (torch blocked).

Skipped cleanly while the synth generator, the training CLI or the exporter are not there.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from .test_runtime_cli import ROOT, run_infer


def _missing() -> list[str]:
    mods = ("harmonic.data.synth", "harmonic.training.cli", "harmonic.export.cli", "harmonic.models")
    return [m for m in mods if importlib.util.find_spec(m) is None]


def _harmonic(*args, timeout=300):
    code = "import sys, torch; torch.set_num_threads(1); from harmonic.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _tiny_model() -> tuple[str, list[str]]:
    from harmonic.models import MODELS

    for name in MODELS:
        if "ssdlite" in name:
            return name, []
    return "retinanet_resnet18_fpn", ["--fpn-channels", "32"]


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing()), reason=f"not written yet: {', '.join(_missing())}")
def test_trained_exported_model_runs_torch_free(tmp_path):
    from harmonic.data import dataset_file, synth

    data = synth.generate(tmp_path / "data", num_train=4, num_val=3, seed=0, img_size=96, num_classes=3)
    val_images = dataset_file.load_dataset_config(data).splits["val"].images
    model, extra = _tiny_model()
    run = tmp_path / "run"
    _harmonic("train", "--data", data, "--model", model, *extra, "--epochs", "1", "--max-iters-per-epoch", "2",
              "--batch-size", "2", "--img-size", "64", "--out", run, "--device", "cpu", "--workers", "0",
              "--val-every", "0")
    ckpt = run / "last.pt" if (run / "last.pt").exists() else next(run.glob("*.pt"))
    onnx_path = tmp_path / "model.onnx"
    _harmonic("export", "--checkpoint", ckpt, "--out", onnx_path, "--no-verify", "--conf", "0.001", "--raw")
    out = tmp_path / "out"
    run_infer("--engine", onnx_path, "--images", val_images, "--annotations", data,
              "--split", "val", "--out", out, "--bench", "--warmup", "1", "--iters", "2", "--batch", "2",
              "--threads", "1", check_rc=0)
    dets = json.loads((out / "detections.json").read_text())
    report = json.loads((out / "report.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    assert report["counts"]["images"] == 3 and report["counts"]["detections"] == len(dets)
    assert bench["end_to_end"]["images"] == 3 and bench["batch"] == 2
    # the raw graph + numpy NMS runs through the same CLI
    run_infer("--engine", tmp_path / "model.raw.onnx", "--images", val_images,
              "--out", tmp_path / "out_raw", "--batch", "2", check_rc=0)
    raw = json.loads((tmp_path / "out_raw" / "detections.json").read_text())
    assert abs(len(raw) - len(dets)) <= max(3, 0.2 * len(dets))
