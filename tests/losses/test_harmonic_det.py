import math

import pytest
import torch

from harmonic.losses import HarmonicConfig, HarmonicDetLoss, harmonic_iou_loss


def _inputs(requires_grad=True):
    cls = torch.tensor([0.2, 1.5], requires_grad=requires_grad)
    reg = torch.tensor([0.1, 0.6], requires_grad=requires_grad)
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]], requires_grad=requires_grad)
    gt = torch.tensor([[0.0, 0.0, 10.0, 5.0], [5.0, 0.0, 15.0, 10.0]])
    probs = torch.tensor([[0.05, 0.9, 0.05], [0.3, 0.3, 0.4]])
    labels = torch.tensor([1, 2])
    return cls, reg, pred, gt, probs, labels


def test_hand_computed_values():
    cls, reg, pred, gt, probs, labels = _inputs()
    cfg = HarmonicConfig()
    out = HarmonicDetLoss(cfg)(cls, reg, pred, gt, probs, labels, torch.tensor(3.0), 2)
    ious = [0.5, 50 / 150]
    loc = [r + 1.5 * (1 + i) ** 0.8 * (1 - i) for r, i in zip([0.1, 0.6], ious)]
    c = [0.2, 1.5]
    loss_cls = (sum((1 + math.exp(-lo)) * ci for lo, ci in zip(loc, c)) + 3.0) / 2
    loss_box = sum((1 + math.exp(-ci)) * lo for lo, ci in zip(loc, c)) / 2
    ent = [-sum(p * math.log(p) for p in row) for row in probs.tolist()]
    tc = [
        max(0.0, abs(pt - i) - 0.2) / (1 + math.exp(h)) for pt, i, h in zip([0.9, 0.4], ious, ent)
    ]
    assert out["loss_classifier"].item() == pytest.approx(loss_cls, rel=1e-5)
    assert out["loss_box_reg"].item() == pytest.approx(loss_box, rel=1e-5)
    assert out["loss_tc"].item() == pytest.approx(sum(tc) / 2, rel=1e-5)
    assert out["stat_factor_r"].item() == pytest.approx(sum(1 + math.exp(-lo) for lo in loc) / 2, rel=1e-5)
    assert out["stat_factor_c"].item() == pytest.approx(sum(1 + math.exp(-ci) for ci in c) / 2, rel=1e-5)
    assert out["stat_aic"].item() == pytest.approx((abs(0.9 - 0.5) + abs(0.4 - 1 / 3)) / 2, rel=1e-5)
    assert out["stat_num_pos"].item() == 2
    for k, v in out.items():
        assert v.dim() == 0
        assert v.requires_grad == (k.startswith("loss_") and k != "loss_tc")  # probs are constants here


def test_iou_gradient_reaches_pred_boxes():
    cls, reg, pred, gt, probs, labels = _inputs()
    out = HarmonicDetLoss()(cls, reg, pred, gt, probs, labels, torch.tensor(0.0), 2)
    out["loss_box_reg"].backward()
    assert pred.grad.abs().sum() > 0
    assert torch.isfinite(pred.grad).all()


def test_tc_iou_detached_by_default_and_optional():
    cls, reg, pred, gt, _, labels = _inputs()
    probs = torch.tensor([[0.05, 0.9, 0.05], [0.1, 0.1, 0.9]], requires_grad=True)
    out = HarmonicDetLoss()(cls, reg, pred, gt, probs, labels, torch.tensor(0.0), 2)
    assert out["loss_tc"].item() > 0
    out["loss_tc"].backward()
    assert pred.grad is None and probs.grad.abs().sum() > 0
    cls, reg, pred, gt, _, labels = _inputs()
    out = HarmonicDetLoss(HarmonicConfig(detach_tc_iou=False))(cls, reg, pred, gt, probs, labels, 0.0, 2)
    out["loss_tc"].backward()
    assert pred.grad.abs().sum() > 0


def test_empty_positives_finite_and_zero_box_gradient():
    pred = torch.zeros(0, 4, requires_grad=True)
    reg = torch.zeros(0, requires_grad=True)
    cls = torch.zeros(0, requires_grad=True)
    neg = torch.tensor(4.0, requires_grad=True)
    out = HarmonicDetLoss()(cls, reg, pred, torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), neg, 0)
    assert out["loss_classifier"].item() == pytest.approx(4.0)  # normaliser clamped to 1
    assert out["loss_box_reg"].item() == 0.0 and out["loss_tc"].item() == 0.0
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    total.backward()
    assert pred.grad is not None and pred.grad.numel() == 0
    assert reg.grad is not None and neg.grad.item() == 1.0
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
    reg = (pred - gt).abs().sum(1)
    probs = torch.stack([1 - prob, prob], 1)
    out = HarmonicDetLoss()(cls, reg, pred, gt, probs, torch.tensor([1]), torch.tensor(0.0), 1)
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    total.backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert torch.isfinite(logit.grad).all() and torch.isfinite(pred.grad).all()


def test_config_validation_and_options():
    with pytest.raises(ValueError, match="gamma"):
        HarmonicConfig(gamma=1.2)
    with pytest.raises(ValueError, match="tc_mode"):
        HarmonicConfig(tc_mode="x")
    with pytest.raises(ValueError, match="unknown"):
        HarmonicConfig.from_options({"alpah": 1.0})
    cfg = HarmonicConfig.from_options({"alpha": 0.0, "tc_weight": 0.0})
    assert cfg.to_dict()["alpha"] == 0.0
    cls, reg, pred, gt, probs, labels = _inputs()
    out = HarmonicDetLoss(cfg)(cls, reg, pred, gt, probs, labels, torch.tensor(0.0), 2)
    # alpha = 0: L_loc is the SmoothL1 alone
    expected = ((1 + math.exp(-0.2)) * 0.1 + (1 + math.exp(-1.5)) * 0.6) / 2
    assert out["loss_box_reg"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss_tc"].item() == 0.0
    assert harmonic_iou_loss(torch.tensor(0.25), cfg.gamma).item() == pytest.approx(1.25**0.8 * 0.75)
