"""harmonic eval / harmonic compare round trips through files, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonic.cli import main as harmonic_main
from harmonic.evaluation import compare_table, evaluate, format_report_table, load_report, save_report

from .helpers import iou_of_shift, make_gt, shifted


def _write_run(tmp_path, gt, dx_frac: float, name: str):
    dets, cands = [], []
    for a in gt["annotations"]:
        w = a["bbox"][2]
        base = {"image_id": a["image_id"], "category_id": a["category_id"]}
        dets.append({**base, "bbox": shifted(a["bbox"], dx_frac * w), "score": 0.9})
        cands += [dets[-1], {**base, "bbox": a["bbox"], "score": 0.5}]
    (tmp_path / f"{name}.json").write_text(json.dumps(dets))
    (tmp_path / f"{name}_cand.json").write_text(json.dumps(cands))
    return iou_of_shift(1.0, dx_frac)


def test_eval_cli_writes_report_pairs_and_plot(tmp_path, capsys):
    gt = make_gt(num_images=3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    iou = _write_run(tmp_path, gt, 0.1, "a")
    rc = harmonic_main(["eval", "--annotations", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "a.json"),
                        "--candidates", str(tmp_path / "a_cand.json"), "--out", str(tmp_path / "a" / "report.json"),
                        "--plot", str(tmp_path / "a" / "scatter.png"), "--score-min", "0.1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Spearman=" in out and "AP50=100.0" in out and "rate=1.000" in out
    raw = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "pairs" not in raw and raw["pairs_file"] == "report.pairs.npz"
    assert raw["settings"]["score_min"] == 0.1
    assert raw["consistency"]["aic"] == pytest.approx(abs(0.9 - iou))
    assert raw["regret"]["rate"] == pytest.approx(1.0)
    rep = load_report(tmp_path / "a" / "report.json")
    np.testing.assert_allclose(rep["pairs"]["iou"], iou, rtol=1e-6)
    assert (tmp_path / "a" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cli_bad_input_is_one_error_line_exit_2(tmp_path, capsys):
    gt = make_gt(num_images=1)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "d.json").write_text(json.dumps([{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    rc = harmonic_main(["eval", "--annotations", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "d.json")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "d.json" in err[0] and "1 with an image_id" in err[0]


def test_compare_cli_markdown_with_delta(tmp_path, capsys):
    gt = make_gt(num_images=3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    paths = []
    for name, dx in (("base", 0.3), ("harm", 0.05)):
        _write_run(tmp_path, gt, dx, name)
        r = evaluate(str(tmp_path / "gt.json"), str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}_cand.json"),
                     return_pairs=True)
        paths.append(save_report(r, tmp_path / name / "report.json"))
    md_path = tmp_path / "table.md"
    rc = harmonic_main(["compare", *map(str, paths), "--labels", "baseline", "harmonic", "--out", str(md_path),
                        "--plot", str(tmp_path / "side.png")])
    assert rc == 0
    md = md_path.read_text()
    assert md in capsys.readouterr().out
    lines = md.splitlines()
    assert lines[0].startswith("| run | ρ TP ↑ | NMS top-1 ↑ | AP | AP50 | AP60 | AP70 | AP80 | AP90 | AP75 | Spearman")
    base = next(ln for ln in lines if ln.startswith("| baseline |")).split("|")
    harm = next(ln for ln in lines if ln.startswith("| harmonic |")).split("|")
    delta = next(ln for ln in lines if ln.startswith("| Δ (harmonic − baseline) |")).split("|")
    # AP50 column: both 100.0 (IoU 0.54 and 0.90 are above 0.5), delta +0.0; AP90 0 -> 100
    assert base[5].strip() == "100.0" and harm[5].strip() == "100.0" and delta[5].strip() == "+0.0"
    assert base[9].strip() == "0.0" and harm[9].strip() == "100.0" and delta[9].strip() == "+100.0"
    # AIC column (13th): |0.9 - IoU|
    aic_b, aic_h = abs(0.9 - iou_of_shift(1, 0.3)), abs(0.9 - iou_of_shift(1, 0.05))
    assert float(base[13]) == pytest.approx(aic_b, abs=1e-3)
    assert float(delta[13]) == pytest.approx(aic_h - aic_b, abs=2e-3)
    assert (tmp_path / "side.png").stat().st_size > 1000


def test_compare_table_and_report_table_handle_missing_metrics():
    a = {"coco": {"AP": 0.25}, "consistency": {"spearman": 0.1}}
    b = {"coco": {"AP": 0.5}, "consistency": {"spearman": None}, "regret": None}
    md = compare_table([a, b], ["x", "y"])
    row = next(ln for ln in md.splitlines() if ln.startswith("| Δ"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells[0] == "n/a" and cells[2] == "+25.0" and cells[9] == "n/a" and cells[-1] == "n/a"
    text = format_report_table(b)
    assert "AP=50.0" in text and "Spearman=n/a" in text


def test_report_and_its_pairs_sidecar_are_one_group_on_a_full_disk(tmp_path, monkeypatch):
    """The sidecar is written first; a disk that fills on report.json keeps the earlier pair, both files."""
    from harmonic.errors import WriteFailure
    from tests.faults import full_disk, snapshot

    rng = np.random.default_rng(0)
    report = {"counts": {"images": 3}, "note": "x" * 4000,
              "pairs": {"score": rng.random(500), "iou": rng.random(500)}}
    out = tmp_path / "out"
    save_report({**report, "pairs": {"score": rng.random(500), "iou": rng.random(500)}}, out / "report.json")
    sidecar = (out / "report.pairs.npz").stat().st_size
    before = snapshot(out)
    full_disk(monkeypatch, out, free=sidecar + 1000)
    with pytest.raises(WriteFailure, match=r"report\.json: no space left on device"):
        save_report(report, out / "report.json")
    assert snapshot(out) == before
