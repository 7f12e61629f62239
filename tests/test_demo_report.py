"""The demo's report tables: numbers in, the right means, stds and deltas out."""

from harmonic.demo import latency_table, metrics_table


def _report(ap, rho, regret):
    return {"coco": {"AP": ap, "AP75": ap}, "voc": {"AP50": ap + 0.1, "mean": ap},
            "consistency": {"spearman": rho, "kendall": rho / 2, "aic": 0.3},
            "regret": {"rate": regret}}


def test_metrics_table_means_stds_and_delta():
    reports = {"baseline": [_report(0.30, 0.2, 0.10), _report(0.40, 0.4, 0.20)],
               "harmonic": [_report(0.45, 0.5, 0.05), _report(0.45, 0.7, 0.05)]}
    md, means = metrics_table(reports)
    assert means["baseline"]["AP"] == 35.0
    assert means["harmonic"]["AP"] == 45.0
    assert abs(means["harmonic"]["Spearman ρ(score, IoU) ↑"] - 0.6) < 1e-12
    row = next(line for line in md.splitlines() if line.startswith("| AP |"))
    assert "35.00 ± 5.00" in row and "45.00 ± 0.00" in row and "+10.00" in row
    regret = next(line for line in md.splitlines() if line.startswith("| NMS regret"))
    assert "-0.10" in regret
    # a metric missing from every report is n/a, not a crash
    assert "| AP60 | n/a | n/a | n/a |" in md


def test_latency_table_reads_bench_json():
    bench = {"backend": "onnxruntime", "device": "cpu", "batch": 8,
             "engine_only": {"latency_ms_per_batch": {"p50": 12.345}, "throughput_img_s": 648.0},
             "end_to_end": {"throughput_img_s": 400.0, "stages": {"end_to_end": {"per_batch": {"p50": 20.0}}}},
             "end_to_end_over_engine_only": 400.0 / 648.0}
    md = latency_table({"baseline": bench})
    assert "| Baseline | onnxruntime | cpu | 8 | 12.35 | 20.00 | 648.0 | 400.0 | 62% |" in md
