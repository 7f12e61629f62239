"""Report tables and the verdict: numbers in, the right cells and words out."""

from __future__ import annotations

from harmonic.experiments import report


def _boot(delta: float, lo: float | None, hi: float | None, base: float = 0.4, higher_better: bool = True):
    sig = lo is not None and (lo > 0 or hi < 0)
    return {"baseline": base, "harmonic": base + delta, "delta": delta, "lo": lo, "hi": hi,
            "significant": sig, "better": ((delta > 0) == higher_better) if sig else None}


BOOT = {
    "tp_spearman": _boot(0.05, 0.002, 0.1, base=0.7),
    "nms_top1": _boot(-0.01, -0.04, 0.02, base=0.48),
    "AP": _boot(0.021, 0.005, 0.037),
    "AP50": _boot(0.004, -0.01, 0.02),
    "spearman": _boot(0.12, 0.08, 0.16, base=0.35),
    "aic": _boot(0.03, 0.01, 0.05, base=0.2, higher_better=False),
    "regret": _boot(0.0, None, None, base=0.1),
}


def test_delta_table_cells():
    md = report.delta_table(BOOT, per_seed={"Baseline": [{"AP": 0.39}, {"AP": 0.41}],
                                            "HarmonicDet": [{"AP": 0.42}, {"AP": 0.422}]})
    ap = next(line for line in md.splitlines() if line.startswith("| AP (COCO"))
    assert "| 40.00 ± 1.00 | 42.10 ± 0.10 | +2.10 | [+0.50, +3.70] | yes, better |" in ap
    ap50 = next(line for line in md.splitlines() if line.startswith("| AP50 |"))
    assert "[-1.00, +2.00] | no |" in ap50
    aic = next(line for line in md.splitlines() if line.startswith("| AIC"))
    assert "| +0.030 | [+0.010, +0.050] | yes, worse |" in aic  # AIC up is worse
    regret = next(line for line in md.splitlines() if line.startswith("| NMS regret"))
    assert "| n/a | no |" in regret
    assert not any(line.startswith("| AP60") for line in md.splitlines())  # absent metrics are skipped


def test_verdict_says_what_held_and_what_did_not():
    text = report.verdict_paragraph(BOOT, seeds=1, floors_missed={"Baseline": [], "HarmonicDet": []})
    assert text.startswith("Both detectors converged")
    # the ranking metrics lead, then AP
    assert ("Do scores rank true positives by IoU? Spearman over true positives: the baseline 0.700 → "
            "HarmonicDet 0.750 (Δ +0.050, 95 % CI [+0.002, +0.100]), a real difference.") in text
    assert ("candidate is within 0.05 IoU of the best: the baseline 0.480 → HarmonicDet 0.470 (Δ -0.010, "
            "95 % CI [-0.040, +0.020]), not distinguishable from noise.") in text
    assert text.index("Spearman over true positives") < text.index("COCO AP")
    assert "COCO AP: the baseline 40.00 → HarmonicDet 42.10 (Δ +2.10, 95 % CI [+0.50, +3.70]), a real difference." in text
    assert ("Significantly better with HarmonicDet: ρ TP: Spearman(score, IoU), true positives, "
            "AP (COCO, IoU .50:.95), Spearman pooled (all kept boxes, mostly false positives).") in text
    assert "Significantly worse: AIC = mean abs(score − IoU), pooled." in text
    assert "bootstrap over the test images, 1 seed(s)" in text
    assert "use `--seeds 3`" in text
    missed = report.floor_failures({"Baseline": [{"AP": 0.36, "AP50": 0.579}, {"AP": 0.34, "AP50": 0.61}],
                                    "HarmonicDet": [{"AP": 0.40, "AP50": 0.65}]})
    assert missed == {"Baseline": ["AP50 57.9 (seed 0)", "AP 34.0 (seed 1)"], "HarmonicDet": []}
    weak = report.verdict_paragraph(BOOT, seeds=3, floors_missed=missed)
    assert weak.startswith("**Not converged:** below the demo's floors (AP50 ≥ 60, AP ≥ 35): Baseline: AP50 57.9")
    assert "HarmonicDet:" not in weak.split(".")[0] and "seeds resampled as well" in weak


def test_ablation_table_rows_and_intervals():
    rows = {"Baseline": [{"AP": 0.40, "tp_spearman": 0.70}, {"AP": 0.42, "tp_spearman": 0.72}],
            "+HL": [{"AP": 0.43, "tp_spearman": 0.80}, {"AP": 0.43, "tp_spearman": 0.82}]}
    md = report.ablation_table(rows, {"+HL": {"AP": _boot(0.02, 0.01, 0.03), "tp_spearman": _boot(0.1, -0.01, 0.2)}})
    lines = md.splitlines()
    assert lines[0].startswith("| variant | ρ TP | NMS top-1 | NMS ρ | AP (COCO, IoU .50:.95) |")
    base = next(line for line in lines if line.startswith("| Baseline |"))
    assert base.startswith("| Baseline | 0.710 ± 0.010 | n/a | n/a | 41.00 ± 1.00 |") and base.endswith("| – | – | – |")
    hl = next(line for line in lines if line.startswith("| +HL |"))
    # delta columns: ρ TP, NMS top-1 (absent: –), AP
    assert hl.endswith("| +0.100 [-0.010, +0.200] | – | +2.00 [+1.00, +3.00] * |")
    assert "n/a" in hl  # metrics missing from the rows


def test_latency_table_reads_bench_json():
    bench = {"backend": "onnxruntime", "device": "cpu", "batch": 8,
             "engine_only": {"latency_ms_per_batch": {"p50": 12.345}, "throughput_img_s": 648.0},
             "end_to_end": {"throughput_img_s": 400.0, "stages": {"end_to_end": {"per_batch": {"p50": 20.0}}}},
             "end_to_end_over_engine_only": 400.0 / 648.0}
    md = report.latency_table({"Baseline": bench})
    assert "| Baseline | onnxruntime | cpu | 8 | 12.35 | 20.00 | 648.0 | 400.0 | 62% |" in md


def test_write_markdown_is_atomic(tmp_path):
    path = report.write_markdown(tmp_path / "R.md", ["# a", "b"])
    assert path.read_text() == "# a\nb\n" and not list(tmp_path.glob("*.tmp"))
