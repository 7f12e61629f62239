import math

import pytest
import torch

from harmonic.losses import (
    classification_entropy,
    elementwise_box_iou,
    harmonic_factors,
    harmonic_iou_loss,
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


def test_harmonic_factors_values():
    cls = torch.tensor([0.0, 1.0, 2.0])
    loc = torch.tensor([1.0, 0.0, 0.5])
    fr, fc = harmonic_factors(torch.exp(-cls), loc)  # beta_c = p = exp(-CE) for a softmax CE
    assert fr.tolist() == pytest.approx([1 + math.exp(-1.0), 2.0, 1 + math.exp(-0.5)], rel=1e-6)
    assert fc.tolist() == pytest.approx([2.0, 1 + math.exp(-1.0), 1 + math.exp(-2.0)], rel=1e-6)


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
