import math

import pytest
import torch

from harmonic.losses import (
    HarmonicConfig,
    HarmonicDetLoss,
    PositiveTerms,
    elementwise_box_iou,
    harmonic_iou_loss,
)


def _terms(requires_grad=True, weight=0.5, neg=3.0, score=None):
    """Two positives with hand-checkable numbers; the boxes' IoUs are 0.5 and 1/3."""
    cls = torch.tensor([0.2, 1.5], requires_grad=requires_grad)
    box = torch.tensor([0.1, 0.6], requires_grad=requires_grad)
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]], requires_grad=requires_grad)
    gt = torch.tensor([[0.0, 0.0, 10.0, 5.0], [5.0, 0.0, 15.0, 10.0]])
    probs = torch.tensor([[0.05, 0.9, 0.05], [0.3, 0.3, 0.4]], requires_grad=requires_grad)
    labels = torch.tensor([1, 2])
    p_true = probs.gather(1, labels[:, None]).squeeze(1)
    terms = PositiveTerms(
        cls_loss=cls, p_true=p_true, box_loss=box, iou=elementwise_box_iou(pred, gt),
        score=p_true if score is None else score, class_probs=probs, labels=labels,
        weight=torch.full((2,), weight), neg_cls_loss=torch.tensor(neg))
    return terms, pred, probs


IOUS = [0.5, 50 / 150]
P = [0.9, 0.4]
C = [0.2, 1.5]
B = [0.1, 0.6]


def _entropy(row):
    return -sum(p * math.log(p) for p in row)


def test_hand_computed_values():
    terms, _, probs = _terms()
    out = HarmonicDetLoss(HarmonicConfig())(terms)
    loc = [b + 1.5 * (1 + i) ** 0.8 * (1 - i) for b, i in zip(B, IOUS)]
    loss_cls = sum((1 + math.exp(-lo)) * c for lo, c in zip(loc, C)) / 2 + 3.0
    loss_box = sum((1 + p) * lo for lo, p in zip(loc, P)) / 2  # beta_c = p_i (Eq. 5)
    tc = [max(0.0, abs(p - i) - 0.2) / (1 + math.exp(_entropy(row)))
          for p, i, row in zip(P, IOUS, probs.tolist())]
    assert out["loss_classifier"].item() == pytest.approx(loss_cls, rel=1e-5)
    assert out["loss_box_reg"].item() == pytest.approx(loss_box, rel=1e-5)
    assert out["loss_tc"].item() == pytest.approx(sum(tc) / 2, rel=1e-5)
    assert out["stat_factor_r"].item() == pytest.approx(sum(1 + math.exp(-lo) for lo in loc) / 2, rel=1e-5)
    assert out["stat_factor_c"].item() == pytest.approx(sum(1 + p for p in P) / 2, rel=1e-5)
    assert out["stat_aic"].item() == pytest.approx((abs(0.9 - 0.5) + abs(0.4 - 1 / 3)) / 2, rel=1e-5)
    assert out["stat_num_pos"].item() == 2
    for k, v in out.items():
        assert v.dim() == 0
        assert v.requires_grad == k.startswith("loss_"), k


def test_switches_give_the_baseline_and_each_part():
    off = HarmonicConfig.from_options({"harmonic_factors": "false", "alpha": "0", "tc_weight": "0"})
    assert off.harmonic_factors is False and off.alpha == 0.0
    terms, _, _ = _terms()
    out = HarmonicDetLoss(off)(terms)
    assert out["loss_classifier"].item() == pytest.approx(sum(C) / 2 + 3.0, rel=1e-6)
    assert out["loss_box_reg"].item() == pytest.approx(sum(B) / 2, rel=1e-6)
    assert out["loss_tc"].item() == 0.0
    # Stats are still the (would-be) factors, for logging.
    assert out["stat_factor_c"].item() == pytest.approx(1 + sum(P) / 2, rel=1e-5)
    hiou_only = HarmonicDetLoss(HarmonicConfig(harmonic_factors=False, tc_weight=0))(_terms()[0])
    expected = sum(b + 1.5 * harmonic_iou_loss(torch.tensor(i)).item() for b, i in zip(B, IOUS)) / 2
    assert hiou_only["loss_box_reg"].item() == pytest.approx(expected, rel=1e-5)


def test_tc_uses_the_ranking_score():
    score = torch.tensor([0.2, 0.9], requires_grad=True)
    terms, _, probs = _terms(score=score)
    out = HarmonicDetLoss()(terms)
    tc = [max(0.0, abs(s - i) - 0.2) / (1 + math.exp(_entropy(row)))
          for s, i, row in zip([0.2, 0.9], IOUS, probs.tolist())]
    assert out["loss_tc"].item() == pytest.approx(sum(tc) / 2, rel=1e-5)
    assert out["stat_aic"].item() == pytest.approx((0.3 + 0.9 - 1 / 3) / 2, rel=1e-5)
    out["loss_tc"].backward()
    assert score.grad.abs().sum() > 0


def test_factors_carry_gradient_unless_detached():
    """d loss_box_reg / d p_i = L_loc_i * w (the paper's gradient through beta_c) or 0 when detached."""
    for detach, expect_grad in ((False, True), (True, False)):
        terms, _, probs = _terms()
        cfg = HarmonicConfig(detach_factors=detach, tc_weight=0)
        HarmonicDetLoss(cfg)(terms)["loss_box_reg"].backward()
        assert (probs.grad is not None and bool(probs.grad.abs().sum() > 0)) == expect_grad


def test_iou_gradient_reaches_pred_boxes_and_tc_iou_detached():
    terms, pred, _ = _terms()
    HarmonicDetLoss()(terms)["loss_box_reg"].backward()
    assert pred.grad.abs().sum() > 0 and torch.isfinite(pred.grad).all()
    terms, pred, probs = _terms()
    HarmonicDetLoss()(terms)["loss_tc"].backward()
    assert pred.grad is None and probs.grad.abs().sum() > 0
    terms, pred, _ = _terms()
    HarmonicDetLoss(HarmonicConfig(detach_tc_iou=False))(terms)["loss_tc"].backward()
    assert pred.grad.abs().sum() > 0


def test_empty_positives_finite_and_zero_box_gradient():
    empty = torch.zeros(0, requires_grad=True)
    pred = torch.zeros(0, 4, requires_grad=True)
    neg = torch.tensor(4.0, requires_grad=True)
    terms = PositiveTerms(cls_loss=empty, p_true=empty, box_loss=empty, iou=elementwise_box_iou(pred, pred),
                          score=empty, class_probs=torch.zeros(0, 3), labels=torch.zeros(0, dtype=torch.long),
                          weight=torch.zeros(0), neg_cls_loss=neg)
    out = HarmonicDetLoss()(terms)
    assert out["loss_classifier"].item() == pytest.approx(4.0)
    assert out["loss_box_reg"].item() == 0.0 and out["loss_tc"].item() == 0.0
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    assert pred.grad is not None and pred.grad.numel() == 0 and neg.grad.item() == 1.0
    assert out["stat_num_pos"].item() == 0 and out["stat_aic"].item() == 0


@pytest.mark.parametrize("p", [0.0, 1e-12, 0.5, 1.0])
@pytest.mark.parametrize("box", [(20.0, 20.0, 30.0, 30.0), (0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 5.0, 5.0)])
def test_edge_cases_finite(p, box):
    """p -> 0 / 1 and IoU 0 (disjoint or degenerate box) / IoU 1 give finite values and gradients."""
    logit = torch.tensor([math.log(max(p, 1e-30)) - math.log(max(1 - p, 1e-30))], requires_grad=True)
    prob = torch.sigmoid(logit)
    cls = torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.ones(1), reduction="none")
    pred = torch.tensor([box], requires_grad=True)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    probs = torch.stack([1 - prob, prob], 1)
    terms = PositiveTerms(cls_loss=cls, p_true=prob, box_loss=(pred - gt).abs().sum(1),
                          iou=elementwise_box_iou(pred, gt), score=prob, class_probs=probs,
                          labels=torch.tensor([1]), weight=torch.ones(1), neg_cls_loss=torch.tensor(0.0))
    out = HarmonicDetLoss()(terms)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.isfinite(logit.grad).all() and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("options,match", [
    ({"alpah": 1.0}, "alpah: unknown"),
    ({"alpha": -1}, "alpha=-1.0: must be >= 0"),
    ({"gamma": 1.2}, "gamma=1.2: must be <= 1"),
    ({"tc_mode": "x"}, "tc_mode"),
    ({"harmonic_factors": "maybe"}, "harmonic_factors='maybe': expected true or false"),
    ({"alpha": "abc"}, "alpha='abc': expected a number"),
    ({"tc_weight": -0.5}, "tc_weight"),
])
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        HarmonicConfig.from_options(options)


def test_config_accepts_cli_strings():
    cfg = HarmonicConfig.from_options({"harmonic_factors": "False", "detach_factors": "true", "alpha": "0.5",
                                       "gamma": 1, "tc_weight": 0})
    assert cfg.to_dict() == {**HarmonicConfig().to_dict(), "harmonic_factors": False, "detach_factors": True,
                             "alpha": 0.5, "gamma": 1.0, "tc_weight": 0.0}
    assert HarmonicConfig().harmonic_factors is True and HarmonicConfig().detach_factors is False


def test_score_per_iou_bin_means_and_empty_bins():
    from harmonic.experiments.pictures import score_per_iou_bin as mean_score_per_iou_bin
    from harmonic.losses.harmonic_det import score_per_iou_bin

    score = torch.tensor([0.2, 0.4, 0.9, 0.7, 0.1])
    iou = torch.tensor([0.55, 0.58, 1.0, 0.95, 0.3])  # 0.3 is not binned; IoU 1.0 falls in the last bin
    out = score_per_iou_bin(score, iou)
    assert len(out) == 10 and all(torch.isfinite(v) for v in out.values())
    assert out["stat_count_iou50"].item() == 2 and out["stat_score_sum_iou50"].item() == pytest.approx(0.6)
    assert out["stat_count_iou90"].item() == 2 and out["stat_score_sum_iou90"].item() == pytest.approx(1.6)
    assert out["stat_count_iou70"].item() == 0
    # window means of sums and counts (two batches: the one above and one with a single 0.65-IoU positive)
    other = score_per_iou_bin(torch.tensor([0.5]), torch.tensor([0.65]))
    record = {k: (out[k].item() + other[k].item()) / 2 for k in out}
    means = mean_score_per_iou_bin(record)
    assert means[50] == pytest.approx(0.3) and means[60] == pytest.approx(0.5) and means[90] == pytest.approx(0.8)
    assert math.isnan(means[70]) and math.isnan(mean_score_per_iou_bin({})[50])


def test_mechanism_variants_hand_computed():
    """beta_c = exp(-cls), constant factors, and the gradients each variant keeps or stops."""
    loc = [b + 1.5 * (1 + i) ** 0.8 * (1 - i) for b, i in zip(B, IOUS)]
    base = {"tc_weight": 0.0}
    terms, _, _ = _terms()
    out = HarmonicDetLoss(HarmonicConfig(beta_c="exp_ce", **base))(terms)
    expected = sum((1 + math.exp(-c)) * lo for c, lo in zip(C, loc)) / 2
    assert out["loss_box_reg"].item() == pytest.approx(expected, rel=1e-5)

    terms, _, _ = _terms()
    out = HarmonicDetLoss(HarmonicConfig(factor_mode="constant", constant_factor=1.5, **base))(terms)
    assert out["loss_box_reg"].item() == pytest.approx(1.5 * sum(loc) / 2, rel=1e-5)
    assert out["loss_classifier"].item() == pytest.approx(1.5 * sum(C) / 2 + 3.0, rel=1e-5)
    out["loss_box_reg"].backward()
    assert terms.p_true.grad_fn is not None
    # constant factors: the box loss sends no gradient to the class probabilities
    probs_grad = terms.class_probs.grad
    assert probs_grad is None or torch.count_nonzero(probs_grad) == 0

    for detach_bc, expect_grad in ((False, True), (True, False)):
        terms, _, probs = _terms()
        out = HarmonicDetLoss(HarmonicConfig(detach_beta_c=detach_bc, **base))(terms)
        out["loss_box_reg"].backward()
        got = probs.grad is not None and bool(torch.count_nonzero(probs.grad))
        assert got == expect_grad, detach_bc
        # beta_r keeps its gradient either way: the classifier loss reaches the box loss
        terms, _, _ = _terms()
        out = HarmonicDetLoss(HarmonicConfig(detach_beta_c=detach_bc, **base))(terms)
        out["loss_classifier"].backward()
        assert torch.count_nonzero(terms.box_loss.grad) == 2


@pytest.mark.parametrize("bad", [{"beta_c": "q"}, {"factor_mode": "fixed"}, {"constant_factor": -1},
                                 {"qfl_beta": -0.5}])
def test_mechanism_options_rejected(bad):
    with pytest.raises(ValueError):
        HarmonicConfig.from_options(bad)


def _one_positive(cls: torch.Tensor, loc: torch.Tensor, p_true: torch.Tensor | None = None) -> PositiveTerms:
    """A positive with classification loss ``cls`` and box loss ``loc`` (weight 1, no negatives)."""
    p = torch.exp(-cls) if p_true is None else p_true
    probs = torch.stack([1 - p, p], dim=1)
    return PositiveTerms(cls_loss=cls, p_true=p, box_loss=loc, iou=torch.ones_like(loc), score=p,
                         class_probs=probs, labels=torch.ones_like(cls, dtype=torch.int64),
                         weight=torch.ones_like(cls), neg_cls_loss=cls.new_zeros(()))


def _objective(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss_"))


_FACTORS_ONLY = {"alpha": 0.0, "tc_weight": 0.0}


@pytest.mark.parametrize("p0,loc_value", [(0.3, 0.7), (0.9, 2.0), (0.05, 0.1)])
def test_eq7_gradient(p0, loc_value):
    """d/dp of the harmonic loss with CE = -log p and beta_c = p equals L - (1 + exp(-L)) / p (Eq. 7)."""
    loc = torch.tensor([loc_value], dtype=torch.float64)

    def objective(p: torch.Tensor, **options) -> torch.Tensor:
        loss = HarmonicDetLoss(HarmonicConfig(**_FACTORS_ONLY, **options))
        return _objective(loss(_one_positive(-torch.log(p), loc, p_true=p)))

    p = torch.tensor([p0], dtype=torch.float64, requires_grad=True)
    objective(p).backward()
    expected = loc_value - (1 + math.exp(-loc_value)) / p0
    assert p.grad.item() == pytest.approx(expected, rel=1e-9)
    # central finite difference agrees too
    h = 1e-6
    f = lambda x: objective(torch.tensor([x], dtype=torch.float64)).item()  # noqa: E731
    assert (f(p0 + h) - f(p0 - h)) / (2 * h) == pytest.approx(expected, rel=1e-5)

    p.grad = None
    objective(p, detach_factors=True).backward()
    assert p.grad.item() == pytest.approx(-(1 + math.exp(-loc_value)) / p0, rel=1e-9)


def test_loc_gradient_carries_classification_factor():
    """Eq. 2-3 with beta_c = exp(-cls): value and gradients of (1 + exp(-loc)) cls + (1 + exp(-cls)) loc."""
    cls = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    loc = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    total = _objective(HarmonicDetLoss(HarmonicConfig(**_FACTORS_ONLY, beta_c="exp_ce"))(_one_positive(cls, loc)))
    assert total.item() == pytest.approx((1 + math.exp(-0.3)) * 0.5 + (1 + math.exp(-0.5)) * 0.3, rel=1e-12)
    total.backward()
    # d/dloc = -exp(-loc) * cls + 1 + exp(-cls)
    assert loc.grad.item() == pytest.approx(-math.exp(-0.3) * 0.5 + 1 + math.exp(-0.5))
    assert cls.grad.item() == pytest.approx(1 + math.exp(-0.3) - math.exp(-0.5) * 0.3)


@pytest.mark.parametrize("options, factor_r, factor_c", [
    ({"factor_mode": "constant", "constant_factor": 1.5}, lambda loc, c: 1.5, lambda p, c: 1.5),
    ({"beta_c": "exp_ce"}, lambda loc, c: 1 + math.exp(-loc), lambda p, c: 1 + math.exp(-c)),
    ({"harmonic_factors": False}, lambda loc, c: 1 + math.exp(-loc), lambda p, c: 1 + p),
])
def test_logged_factors_are_the_variants_own(options, factor_r, factor_c):
    """Fig. 4 logs the factors each variant applies: the constant, ``1+exp(-cls)``; a loss without
    factors logs the paper's (what it would have had)."""
    terms, _, _ = _terms()
    out = HarmonicDetLoss(HarmonicConfig(**options))(terms)
    loc = [b + 1.5 * (1 + i) ** 0.8 * (1 - i) for b, i in zip(B, IOUS)]
    assert out["stat_factor_r"].item() == pytest.approx(sum(factor_r(lo, c) for lo, c in zip(loc, C)) / 2, rel=1e-5)
    assert out["stat_factor_c"].item() == pytest.approx(sum(factor_c(p, c) for p, c in zip(P, C)) / 2, rel=1e-5)
