import math

import pytest
import torch

from harmonic.losses import (
    classification_entropy,
    elementwise_box_iou,
    harmonic_factors,
    harmonic_iou_loss,
    harmonic_loss,
    task_contrastive_loss,
)


def test_harmonic_iou_loss_values():
    iou = torch.tensor([0.0, 0.5, 1.0])
    out = harmonic_iou_loss(iou, gamma=0.8)
    expected = [1.0, 1.5**0.8 * 0.5, 0.0]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    # gamma = 0 is the plain IoU loss 1 - IoU
    assert harmonic_iou_loss(iou, gamma=0.0).tolist() == pytest.approx([1.0, 0.5, 0.0])
    # out-of-range IoU is clamped
    assert harmonic_iou_loss(torch.tensor([-0.1, 1.2])).tolist() == pytest.approx([1.0, 0.0])


def test_harmonic_iou_loss_monotonic_for_gamma_le_one():
    iou = torch.linspace(0, 1, 101)
    for gamma in (0.0, 0.5, 0.8, 1.0):
        diffs = harmonic_iou_loss(iou, gamma).diff()
        assert (diffs <= 1e-7).all()


def test_harmonic_iou_loss_rejects_gamma_above_one():
    with pytest.raises(ValueError, match="gamma"):
        harmonic_iou_loss(torch.tensor([0.5]), gamma=1.5)
    out = harmonic_iou_loss(torch.tensor([0.5]), gamma=1.5, allow_gamma_above_one=True)
    assert out.item() == pytest.approx(1.5**1.5 * 0.5)


def test_harmonic_loss_values_and_factors():
    cls = torch.tensor([0.0, 1.0, 2.0])
    loc = torch.tensor([1.0, 0.0, 0.5])
    out = harmonic_loss(cls, loc)
    expected = [
        (1 + math.exp(-lo)) * c + (1 + math.exp(-c)) * lo for c, lo in zip(cls.tolist(), loc.tolist())
    ]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)
    fr, fc = harmonic_factors(torch.exp(-cls), loc)  # beta_c = p = exp(-CE) for a softmax CE
    assert fr.tolist() == pytest.approx([1 + math.exp(-1.0), 2.0, 1 + math.exp(-0.5)], rel=1e-6)
    assert fc.tolist() == pytest.approx([2.0, 1 + math.exp(-1.0), 1 + math.exp(-2.0)], rel=1e-6)
    assert harmonic_loss(cls, loc, detach_factors=True).tolist() == pytest.approx(expected, rel=1e-6)
    # A focal head passes p_true (sigmoid of the true logit), not exp(-focal loss).
    p = torch.tensor([0.01, 0.5, 0.9])
    out = harmonic_loss(cls, loc, p_true=p)
    assert out.tolist() == pytest.approx(
        [(1 + math.exp(-lo)) * c + (1 + pi) * lo for c, lo, pi in zip(cls.tolist(), loc.tolist(), p.tolist())],
        rel=1e-6)


@pytest.mark.parametrize("p0,loc_value", [(0.3, 0.7), (0.9, 2.0), (0.05, 0.1)])
def test_eq7_gradient(p0, loc_value):
    """d/dp of the harmonic loss with CE = -log p equals L - (1 + exp(-L)) / p (Eq. 7)."""
    p = torch.tensor([p0], dtype=torch.float64, requires_grad=True)
    loc = torch.tensor([loc_value], dtype=torch.float64)
    harmonic_loss(-torch.log(p), loc).sum().backward()
    expected = loc_value - (1 + math.exp(-loc_value)) / p0
    assert p.grad.item() == pytest.approx(expected, rel=1e-9)
    # central finite difference agrees too
    h = 1e-6
    f = lambda x: harmonic_loss(-torch.log(torch.tensor([x], dtype=torch.float64)), loc).item()  # noqa: E731
    assert (f(p0 + h) - f(p0 - h)) / (2 * h) == pytest.approx(expected, rel=1e-5)

    p.grad = None
    harmonic_loss(-torch.log(p), loc, detach_factors=True).sum().backward()
    assert p.grad.item() == pytest.approx(-(1 + math.exp(-loc_value)) / p0, rel=1e-9)


def test_loc_gradient_carries_classification_factor():
    cls = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    loc = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    harmonic_loss(cls, loc).sum().backward()
    # d/dloc = -exp(-loc) * cls + 1 + exp(-cls)
    assert loc.grad.item() == pytest.approx(-math.exp(-0.3) * 0.5 + 1 + math.exp(-0.5))
    assert cls.grad.item() == pytest.approx(1 + math.exp(-0.3) - math.exp(-0.5) * 0.3)


def test_task_contrastive_values():
    probs = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 1])
    iou = torch.tensor([0.4, 0.45, 1.0])
    h = torch.tensor([-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)), math.log(2.0), 0.0])
    w = 1 / (1 + torch.exp(h))
    out = task_contrastive_loss(probs, labels, iou, margin=0.2)
    expected = [w[0].item() * (0.5 - 0.2), 0.0, 0.0]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    step = task_contrastive_loss(probs, labels, iou, margin=0.2, mode="step")
    assert step.tolist() == pytest.approx([w[0].item() * 0.5, 0.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError):
        task_contrastive_loss(probs, labels, iou, mode="nope")
    # An explicit ranking score (e.g. FCOS's sqrt(cls * centerness)) replaces p_y; H stays on the probs.
    score = torch.tensor([0.9, 0.9, 0.3])
    out = task_contrastive_loss(probs, labels, iou, margin=0.2, score=score)
    assert out.tolist() == pytest.approx([w[0].item() * 0.3, w[1].item() * 0.25, w[2].item() * 0.5], abs=1e-6)


def test_entropy_safe_at_zero():
    p = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    h = classification_entropy(p)
    h.sum().backward()
    assert h.item() == 0.0
    assert torch.isfinite(p.grad).all()


def test_elementwise_iou_matches_torchvision():
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 2, generator=g) * 50
    b = torch.rand(20, 2, generator=g) * 50
    boxes1 = torch.cat([a, a + torch.rand(20, 2, generator=g) * 30 + 1], 1)
    boxes2 = torch.cat([b, b + torch.rand(20, 2, generator=g) * 30 + 1], 1)
    assert torch.allclose(elementwise_box_iou(boxes1, boxes2), box_iou(boxes1, boxes2).diagonal(), atol=1e-5)
