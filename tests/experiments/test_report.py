"""Report tables and the verdict: numbers in, the right cells and words out."""

from __future__ import annotations

from harmonic.experiments import report


def _row(delta, lo, hi, base=0.4, higher_better=True, seeds=3, n=400, verdict="exploratory", sig=False,
         p_holm=None, confirmatory=False):
    return {"b": base, "a": base + delta, "delta": delta, "lo": lo, "hi": hi, "seeds": seeds, "n": n,
            "noise": "seeds+images" if seeds > 1 else "images only", "higher_better": higher_better,
            "significant": sig, "better": ((delta > 0) == higher_better) if sig else None, "verdict": verdict,
            "p_holm": p_holm, "confirmatory": confirmatory}


ROWS = {
    "tp_spearman": _row(0.05, 0.002, 0.1, base=0.7, verdict="better (Holm p = 0.02)", sig=True, p_holm=0.02,
                        confirmatory=True),
    "nms_top1": _row(-0.01, -0.04, 0.02, base=0.48, verdict="not shown (Holm p = 0.4)", p_holm=0.4,
                     confirmatory=True),
    "AP": _row(0.021, 0.005, 0.037),
    "AP50": _row(0.004, -0.01, 0.02),
    "aic": _row(0.03, 0.01, 0.05, base=0.2, higher_better=False),
    "regret": _row(0.0, None, None, base=0.1, n=12),
}


def test_delta_table_cells():
    md = report.delta_table(ROWS, per_seed={"Baseline": [{"AP": 0.39}, {"AP": 0.41}],
                                            "HarmonicDet": [{"AP": 0.42}, {"AP": 0.422}]})
    lines = md.splitlines()
    assert lines[0] == ("| metric | n | Baseline | HarmonicDet | Δ (HarmonicDet − Baseline) | 95 % CI of Δ | "
                        "interval holds | verdict |")
    rho = next(line for line in lines if line.startswith("| **ρ TP"))  # confirmatory rows in bold
    assert rho.endswith("| 400 | 0.700 | 0.750 | +0.050 | [+0.002, +0.100] | seeds and images | better (Holm p = 0.02) |")
    ap = next(line for line in lines if line.startswith("| AP (COCO"))
    assert ap.endswith("| 400 | 40.00 ± 1.00 | 42.10 ± 0.10 | +2.10 | [+0.50, +3.70] | seeds and images | exploratory |")
    aic = next(line for line in lines if line.startswith("| AIC"))
    assert "| +0.030 | [+0.010, +0.050] | seeds and images | exploratory |" in aic  # no verdict on exploratory rows
    regret = next(line for line in lines if line.startswith("| NMS regret"))
    assert "| 12 |" in regret and "| none (n < 30) | – |" in regret
    assert not any(line.startswith("| AP60") for line in lines)  # absent metrics are skipped


def test_verdict_gives_the_design_and_nothing_more():
    text = report.verdict_paragraph(ROWS, seeds=3, floors_missed={"Baseline": [], "HarmonicDet": []})
    assert text.startswith("Both detectors converged")
    assert ("Primary: do scores rank true positives by IoU? Spearman over true positives: the baseline 0.700 → "
            "HarmonicDet 0.750 (Δ +0.050, 95 % CI [+0.002, +0.100]): better, Holm-adjusted p = 0.02.") in text
    assert ("top-scored candidate is within 0.05 IoU of the best: the baseline 0.480 → HarmonicDet 0.470 (Δ -0.010, "
            "95 % CI [-0.040, +0.020]): no difference shown (Holm-adjusted p = 0.4).") in text
    assert "Exploratory: COCO AP: the baseline 40.00 → HarmonicDet 42.10 (Δ +2.10, 95 % CI [+0.50, +3.70])." in text
    assert text.index("Spearman over true positives") < text.index("COCO AP")
    assert "3 seeds paired by seed" in text and "significant" not in text.lower()
    one = {k: _row(r["delta"], r["lo"], r["hi"], base=r["b"], seeds=1, verdict="no test (one seed)",
                   confirmatory=r["confirmatory"]) for k, r in ROWS.items()}
    text1 = report.verdict_paragraph(one, seeds=1, floors_missed={"Baseline": [], "HarmonicDet": []})
    assert "hold image noise only" in text1 and "use `--seeds 3`" in text1
    assert "better" not in text1 and "Holm" not in text1
    missed = report.floor_failures({"Baseline": [{"AP": 0.36, "AP50": 0.579}, {"AP": 0.34, "AP50": 0.61}],
                                    "HarmonicDet": [{"AP": 0.40, "AP50": 0.65}]})
    assert missed == {"Baseline": ["AP50 57.9 (seed 0)", "AP 34.0 (seed 1)"], "HarmonicDet": []}
    weak = report.verdict_paragraph(ROWS, seeds=3, floors_missed=missed)
    assert weak.startswith("**Not converged:** below the demo's floors (AP50 ≥ 60, AP ≥ 35): Baseline: AP50 57.9")


def test_ablation_table_rows_counts_and_no_deltas():
    rows = {"Baseline": [{"AP": 0.40, "tp_spearman": 0.70}, {"AP": 0.42, "tp_spearman": 0.72}],
            "+HL": [{"AP": 0.43, "tp_spearman": 0.80}]}
    eligible = {"Baseline": [{"tp_spearman": 300, "nms_top1": 250}, {"tp_spearman": 310, "nms_top1": 240}],
                "+HL": [{"tp_spearman": 320, "nms_top1": 260}]}
    md = report.ablation_table(rows, eligible)
    lines = md.splitlines()
    assert lines[0].startswith("| variant | seeds | ρ TP | NMS top-1 | NMS ρ | AP (COCO, IoU .50:.95) |")
    base = next(line for line in lines if line.startswith("| Baseline |"))
    assert base.startswith("| Baseline | 2 | 0.710 ± 0.010 (n=300) | n/a (n=240) | n/a | 41.00 ± 1.00 |")
    hl = next(line for line in lines if line.startswith("| +HL |"))
    assert hl.startswith("| +HL | 1 | 0.800 (n=320) |") and "Δ" not in md


def test_contrast_table_stars_only_what_the_design_calls_significant():
    res = {"full − Baseline": ROWS,
           "const − Baseline": {k: _row(r["delta"], r["lo"], r["hi"], seeds=1, verdict="no test (one seed)")
                                for k, r in ROWS.items()}}
    md = report.contrast_table(res)
    lines = md.splitlines()
    full = next(line for line in lines if line.startswith("| full − Baseline |"))
    assert full == ("| full − Baseline | 3 | +0.050 [+0.002, +0.100] * (n=400) | better (Holm p = 0.02) | "
                    "-0.010 [-0.040, +0.020] (n=400) | not shown (Holm p = 0.4) | +2.10 [+0.50, +3.70] (n=400) | "
                    "exploratory |")
    const = next(line for line in lines if line.startswith("| const − Baseline |"))
    assert const.startswith("| const − Baseline | 1 (image noise only) |") and "*" not in const


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
