"""The statistical design: Holm within a family, families in order, verdicts only where testable."""

from __future__ import annotations

import pytest

from harmonic.experiments.design import CONFIRMATORY, apply_design, holm


def test_holm_adjusts_step_down_and_keeps_the_input_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.002, 0.2]) == pytest.approx([0.004, 0.2])
    assert holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])  # monotone: never below an earlier step
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def _row(delta, p, seeds=3, n=500, higher_better=True):
    return {"delta": delta, "lo": None if p is None else delta - 0.01, "hi": None if p is None else delta + 0.01,
            "p": p, "seeds": seeds, "n": n, "higher_better": higher_better}


def _results(**contrasts):
    return {name: {"tp_spearman": _row(*spec[0]), "nms_top1": _row(*spec[1]), "AP": _row(0.01, 0.001)}
            for name, spec in contrasts.items()}


def test_headline_family_holds_then_the_second_family_is_tested():
    res = _results(full=((0.05, 0.001), (0.06, 0.02)), ctrl=((0.04, 0.004), (0.01, 0.3)), mech=((0.02, 0.01), (0.0, 0.9)))
    apply_design(res, [["full"], ["ctrl", "mech"]])
    full = res["full"]
    assert full["tp_spearman"]["significant"] and full["tp_spearman"]["better"] is True
    assert full["tp_spearman"]["p_holm"] == pytest.approx(0.002) and full["nms_top1"]["p_holm"] == pytest.approx(0.02)
    assert full["tp_spearman"]["verdict"] == "better (Holm p = 0.002)"
    # second family: Holm over its four hypotheses
    assert res["ctrl"]["tp_spearman"]["p_holm"] == pytest.approx(0.016) and res["ctrl"]["tp_spearman"]["significant"]
    assert res["mech"]["tp_spearman"]["p_holm"] == pytest.approx(0.03) and res["mech"]["tp_spearman"]["significant"]
    assert not res["ctrl"]["nms_top1"]["significant"] and res["ctrl"]["nms_top1"]["better"] is None
    # AP is exploratory everywhere, whatever its p
    for name in res:
        assert res[name]["AP"]["confirmatory"] is False and res[name]["AP"]["significant"] is False
        assert res[name]["AP"]["verdict"] == "exploratory"


def test_a_headline_that_does_not_hold_closes_the_gate():
    res = _results(full=((0.05, 0.001), (0.01, 0.4)), ctrl=((0.04, 0.0001), (0.05, 0.0001)))
    apply_design(res, [["full"], ["ctrl"]])
    assert res["full"]["tp_spearman"]["significant"] and not res["full"]["nms_top1"]["significant"]
    for m in CONFIRMATORY:
        assert res["ctrl"][m]["significant"] is False and res["ctrl"][m]["p_holm"] is None
        assert res["ctrl"][m]["verdict"] == "not tested (an earlier family did not hold)"


def test_one_seed_and_small_counts_are_never_tested():
    res = {"one": {"tp_spearman": _row(0.2, None, seeds=1), "nms_top1": _row(0.3, None, seeds=1)},
           "few": {"tp_spearman": _row(0.2, None, n=12), "nms_top1": _row(0.1, 0.001)}}
    apply_design(res, [["one"], ["few"]])
    assert res["one"]["tp_spearman"]["verdict"] == "no test (one seed: interval over images only)"
    assert not any(r["significant"] for r in res["one"].values())
    # the gate stays closed after a family with an untestable hypothesis
    assert res["few"]["nms_top1"]["verdict"] == "not tested (an earlier family did not hold)"
    assert res["few"]["tp_spearman"]["verdict"] == "no test (12 eligible (< 30): no interval)"


def test_a_significant_worsening_is_called_worse():
    res = _results(full=((-0.05, 0.001), (0.06, 0.001)))
    res["full"]["aic"] = _row(0.05, 0.001, higher_better=False)
    apply_design(res, [["full"]])
    assert res["full"]["tp_spearman"]["better"] is False and res["full"]["tp_spearman"]["verdict"].startswith("worse")
    assert res["full"]["aic"]["verdict"] == "exploratory"
