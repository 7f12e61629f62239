"""One operating point from training to export, the loss options through the CLI, and the
first-iteration figures (equal loss with the paper's terms off, 1+beta_c at init)."""

from __future__ import annotations

import pytest
import torch

from harmonic.cli import main as harmonic_main
from harmonic.models import build_detector, build_from_spec, model_spec
from harmonic.training.checkpoint import load_checkpoint, model_from_checkpoint
from harmonic.training.cli import train
from harmonic.training.logging_utils import read_jsonl

from .training_helpers import make_args

OFF = ("--loss-option", "harmonic_factors=false", "--loss-option", "alpha=0", "--loss-option", "tc_weight=0")


def _point(model):
    target = model.roi_heads if hasattr(model, "roi_heads") else model
    return target.score_thresh, target.nms_thresh, target.detections_per_img


@pytest.mark.parametrize("name", ["retinanet_resnet18_fpn", "fasterrcnn_resnet18_fpn"])
def test_spec_operating_point_sets_the_post_processing(name):
    point = {"score_threshold": 0.05, "iou_threshold": 0.5, "max_det": 7}
    spec = model_spec(name, 2, img_size=64, operating_point=point, options={"fpn_channels": 32})
    assert spec.operating_point() == point
    assert _point(build_from_spec(spec)) == (0.05, 0.5, 7)
    # default: the export defaults, not the family's own (e.g. FCOS 0.2, Faster R-CNN 0.05)
    assert _point(build_detector("fcos_resnet18_fpn", 2, img_size=64, fpn_channels=32)) == (0.001, 0.6, 100)


def test_checkpoint_validation_log_and_export_share_the_operating_point(synth_yaml, tmp_path, capsys):
    from harmonic.export.cli import main as export_main
    from harmonic.export.metadata import read_metadata

    out = tmp_path / "run"
    train(make_args(synth_yaml, out, "--max-iters-per-epoch", "1", "--conf", "0.01", "--iou", "0.55",
                    "--max-det", "50", epochs=1))
    point = {"score_threshold": 0.01, "iou_threshold": 0.55, "max_det": 50}
    ckpt = load_checkpoint(out / "best.pt")
    assert {k: ckpt["spec"][k] for k in point} == point
    epoch = [r for r in read_jsonl(out / "log.jsonl") if r["type"] == "epoch"][0]
    assert epoch["val"]["operating_point"] == point
    model, _, _ = model_from_checkpoint(out / "best.pt")
    assert _point(model) == (0.01, 0.55, 50)

    onnx_path = tmp_path / "m.onnx"
    assert export_main(["--checkpoint", str(out / "best.pt"), "--out", str(onnx_path), "--no-verify"]) == 0
    meta = read_metadata(onnx_path)
    assert (float(meta["score_threshold"]), float(meta["iou_threshold"]), int(meta["max_det"])) == (0.01, 0.55, 50)
    override = tmp_path / "o.onnx"
    assert export_main(["--checkpoint", str(out / "best.pt"), "--out", str(override), "--no-verify",
                        "--conf", "0.2"]) == 0
    meta = read_metadata(override)
    assert (float(meta["score_threshold"]), float(meta["iou_threshold"]), int(meta["max_det"])) == (0.2, 0.55, 50)


@pytest.mark.parametrize("option,message", [
    ("alpha=-1", "error: loss option alpha=-1.0: must be >= 0"),
    ("gamma=1.5", "error: loss option gamma=1.5: must be <= 1"),
    ("alpah=1", "error: loss option alpah: unknown"),
    ("harmonic_factors=maybe", "error: loss option harmonic_factors='maybe': expected true or false"),
])
def test_bad_loss_option_is_one_line_exit_2_before_training(synth_yaml, tmp_path, capsys, option, message):
    out = tmp_path / "bad"
    rc = harmonic_main(["train", "--data", str(synth_yaml), "--out", str(out), "--device", "cpu",
                        "--loss-option", option])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(message) and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_operating_point_is_one_line_exit_2(synth_yaml, tmp_path, capsys):
    rc = harmonic_main(["train", "--data", str(synth_yaml), "--out", str(tmp_path / "x"), "--conf", "1.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --conf/--iou/--max-det: score threshold 1.5") and "\n" not in err


def _first_train_record(synth_yaml, out, model, loss, *extra):
    train(make_args(synth_yaml, out, "--max-iters-per-epoch", "1", "--val-every", "0", "--seed", "3", *extra,
                    model=model, loss=loss, epochs=1))
    return [r for r in read_jsonl(out / "log.jsonl") if r["type"] == "train"][0]


@pytest.mark.parametrize("model", ["retinanet_resnet18_fpn", "fcos_resnet18_fpn"])
def test_cli_first_iteration_harmonic_off_equals_baseline(synth_yaml, tmp_path, model):
    """Same seed: ``--loss harmonic`` with its three parts off logs the baseline's first ``loss``."""
    base = _first_train_record(synth_yaml, tmp_path / "b", model, "baseline")
    harm = _first_train_record(synth_yaml, tmp_path / "h", model, "harmonic", *OFF)
    assert harm["loss"] == pytest.approx(base["loss"], rel=1e-5)
    for key in ("loss_classifier", "loss_box_reg", "stat_factor_c", "stat_aic", "stat_num_pos"):
        assert harm[key] == pytest.approx(base[key], rel=1e-5), key
    assert harm["loss_tc"] == 0.0


def test_cli_first_iteration_figures(synth_yaml, tmp_path):
    """RetinaNet: 1+beta_c ~ 1 + prior (< 1.1) at init; FCOS: harmonic/baseline loss_box_reg <= 4."""
    retina = _first_train_record(synth_yaml, tmp_path / "r", "retinanet_resnet18_fpn", "harmonic")
    assert 1.0 < retina["stat_factor_c"] < 1.1
    fcos_h = _first_train_record(synth_yaml, tmp_path / "fh", "fcos_resnet18_fpn", "harmonic")
    fcos_b = _first_train_record(synth_yaml, tmp_path / "fb", "fcos_resnet18_fpn", "baseline")
    assert fcos_h["loss_box_reg"] / fcos_b["loss_box_reg"] <= 4.0
    assert torch.isfinite(torch.tensor(fcos_h["loss"]))
