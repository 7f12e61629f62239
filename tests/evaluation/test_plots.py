"""Plots write real PNGs from reports, pairs and training logs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonic.errors import HarmonicError
from harmonic.evaluation import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _png_ok(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def test_scatter_from_pairs_dense_and_sparse(tmp_path):
    rng = np.random.default_rng(0)
    iou = rng.uniform(0, 1, 5000)
    score = np.clip(iou + rng.normal(0, 0.1, iou.size), 0, 1)
    dense = plots.scatter_score_iou({"pairs": {"score": score, "iou": iou}}, tmp_path / "dense.png", "dense")
    sparse = plots.scatter_score_iou((score[:50], iou[:50]), tmp_path / "sparse.png")
    empty = plots.scatter_score_iou(([], []), tmp_path / "empty.png")
    assert _png_ok(dense) and _png_ok(sparse) and _png_ok(empty)
    with pytest.raises(HarmonicError, match="no score-IoU pairs"):
        plots.scatter_score_iou({"coco": {}}, tmp_path / "x.png")


def test_side_by_side_and_training_curves(tmp_path):
    pairs = [{"pairs": {"score": [0.9, 0.6, 0.3], "iou": [0.8, 0.5, 0.0]}},
             {"pairs": {"score": [0.7, 0.8], "iou": [0.75, 0.9]}}]
    out = plots.scatter_side_by_side(pairs, tmp_path / "side.png", labels=["baseline", "harmonic"])
    assert _png_ok(out)
    logs = []
    for k, has_factors in ((0, False), (1, True)):
        p = tmp_path / f"run{k}" / "log.jsonl"
        p.parent.mkdir()
        rows = []
        for it in range(200):
            row = {"iter": it, "epoch": it // 50, "lr": 0.01, "loss": 1.0 / (1 + it), "stat_aic": 0.5 - it / 1000}
            if has_factors:
                row.update(stat_factor_r=1.2 + 0.1 * np.exp(-it / 50), stat_factor_c=1.6 - 0.2 * (1 - np.exp(-it / 50)))
            rows.append(json.dumps(row))
        rows.insert(100, json.dumps({"epoch": 1, "val": {"AP": 0.3}}))  # epoch summary lines are skipped
        p.write_text("\n".join(rows) + "\n\n")
        logs.append(p)
    out = plots.training_curves(logs, tmp_path / "curves.png", labels=["baseline", "harmonic"])
    assert _png_ok(out)
    assert _png_ok(plots.training_curves(logs[0], tmp_path / "one.png"))
    x, y = plots._series(plots.read_training_log(logs[1]), "stat_factor_r")
    assert x.size == 200 and y[0] == pytest.approx(1.3)
    (tmp_path / "bad.jsonl").write_text('{"iter": 1}\n{oops\n')
    with pytest.raises(HarmonicError, match="bad.jsonl: line 2 is not JSON"):
        plots.training_curves(tmp_path / "bad.jsonl", tmp_path / "bad.png")
