"""One tiny trained + exported model per session for the bad-input tests.

The dataset is synthetic (8 train / 4 val images, 64 px, 2 classes) with its COCO
category ids rewritten to ``{circle: 7, triangle: 3}``: non-contiguous and permuted,
so every test also checks that the dataset's own ids survive train -> export -> infer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CATEGORY_IDS = {"circle": 7, "triangle": 3}
IMG = 64


def _permute_ids(json_path: Path) -> None:
    data = json.loads(json_path.read_text())
    old = {c["id"]: c["name"] for c in data["categories"]}
    for c in data["categories"]:
        c["id"] = CATEGORY_IDS[c["name"]]
    for a in data["annotations"]:
        a["category_id"] = CATEGORY_IDS[old[a["category_id"]]]
    json_path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """``dataset.yaml`` of the permuted-id synthetic set."""
    from harmonic.data.synth import generate

    out = tmp_path_factory.mktemp("fuzz_data")
    yaml_path = Path(generate(out, num_train=8, num_val=4, seed=0, img_size=IMG, num_classes=2, workers=1))
    for split in ("train", "val"):
        _permute_ids(out / "annotations" / f"{split}.json")
    return yaml_path


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A finished one-epoch, one-iteration run folder (``last.pt``, ``best.pt``, ``log.jsonl``)."""
    import torch

    from harmonic.training.cli import get_args_parser, train

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("fuzz_run") / "run"
    args = get_args_parser().parse_args([
        "--data", str(tiny_data), "--model", "retinanet_resnet18_fpn", "--epochs", "1", "--batch-size", "2",
        "--img-size", str(IMG), "--out", str(out), "--device", "cpu", "--workers", "0", "--warmup-iters", "1",
        "--max-iters-per-epoch", "1", "--val-every", "0", "--fpn-channels", "32"])
    try:
        train(args)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    """``tiny_run``'s ``best.pt`` exported (NMS graph, score threshold 0.001, not verified: speed)."""
    from harmonic.cli import main

    out = tmp_path_factory.mktemp("fuzz_onnx") / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(out), "--no-verify"]) == 0
    return out
