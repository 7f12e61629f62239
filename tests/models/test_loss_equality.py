"""Harmonic and baseline differ only by the paper's terms, in every detector family.

With ``harmonic_factors=false alpha=0 tc_weight=0`` the harmonic loss must equal torchvision's
baseline loss, value and gradients, on the same weights and batch (relative tolerance 1e-5).
Tiny inputs keep each case at a few seconds on CPU.
"""

from __future__ import annotations

import pytest
import torch

from harmonic.models import MODELS, build_detector

# Strings, as they arrive from ``--loss-option KEY=VALUE``.
OFF = {"harmonic_factors": "false", "alpha": "0", "tc_weight": "0"}
_FRCNN = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, box_batch_size_per_image=32)
# name -> (square input size, builder options)
CASES = {
    "fcos_resnet10s_fpn": (128, {"fpn_channels": 64, "num_convs": 2}),
    "retinanet_resnet10s_fpn": (128, {"fpn_channels": 64, "head_norm": "gn"}),
    "retinanet_resnet18_fpn": (64, {}),
    "retinanet_resnet50_fpn": (64, {}),
    "fcos_resnet18_fpn": (64, {}),
    "fcos_resnet50_fpn": (64, {}),
    "ssdlite320_mobilenet_v3_large": (64, {}),
    "ssd300_vgg16": (268, {"trainable_backbone_layers": 1}),
    "ssd_resnet10s_fpn": (64, {"fpn_channels": 32}),
    "fasterrcnn_resnet18_fpn": (64, _FRCNN),
    "fasterrcnn_resnet50_fpn": (64, _FRCNN),
}
SLOW = {"ssd300_vgg16"}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _batch(size: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    s = size / 64
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 30.0, 35.0], [35.0, 10.0, 60.0, 50.0]]) * s, "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[15.0, 15.0, 45.0, 55.0]]) * s, "labels": torch.tensor([2])},
    ]
    images = list(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)))
    return images, targets


def _pair(name: str, loss_options: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    size, options = CASES[name]
    torch.manual_seed(0)
    baseline = build_detector(name, 3, loss="baseline", img_size=size, **options)
    harmonic = build_detector(name, 3, loss="harmonic", img_size=size, loss_options=loss_options, **options)
    harmonic.load_state_dict(baseline.state_dict(), strict=True)
    return baseline, harmonic


def _train_step(model: torch.nn.Module, size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, list]:
    images, targets = _batch(size)
    model.train()
    torch.manual_seed(1)  # same RPN / RoI sampling in both models
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()
    return losses, total, [p.grad for p in model.parameters() if p.requires_grad]


def test_cases_are_registered_models():
    assert set(CASES) == set(MODELS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_harmonic_without_its_terms_equals_baseline(name):
    baseline, harmonic = _pair(name, OFF)
    size = CASES[name][0]
    lb, tb, gb = _train_step(baseline, size)
    lh, th, gh = _train_step(harmonic, size)
    assert float(lh["loss_tc"].detach()) == 0.0
    for key in lb:
        if key.startswith("loss_"):
            assert float(lh[key].detach()) == pytest.approx(float(lb[key].detach()), rel=1e-5), key
    assert float(th.detach()) == pytest.approx(float(tb.detach()), rel=1e-5)
    # Stats are logged for both losses and computed the same way (factor_r depends on alpha).
    for key in ("stat_factor_c", "stat_aic", "stat_num_pos"):
        assert float(lh[key].detach()) == pytest.approx(float(lb[key].detach()), rel=1e-5), key
    assert float(lb["stat_num_pos"]) >= 3
    assert 1.0 < float(lb["stat_factor_r"]) <= 2.0 and 1.0 < float(lb["stat_factor_c"]) <= 2.0
    assert len(gb) == len(gh)
    scale = max(float(g.abs().max()) for g in gb if g is not None)
    for b, h in zip(gb, gh):
        assert (b is None) == (h is None)
        if b is not None:
            torch.testing.assert_close(h, b, rtol=1e-5, atol=1e-5 * scale)


def test_each_paper_term_changes_the_loss():
    """Switching one part back on moves the loss away from the baseline (fast RetinaNet case)."""
    name = "retinanet_resnet18_fpn"
    size = CASES[name][0]
    totals = {}
    for label, opts in {"off": OFF, "factors": {**OFF, "harmonic_factors": True},
                        "hiou": {**OFF, "alpha": 1.5}, "tc": {**OFF, "tc_weight": 1.0}}.items():
        _, harmonic = _pair(name, opts)
        losses, total, _ = _train_step(harmonic, size)
        totals[label] = (float(total.detach()), float(losses["loss_tc"].detach()))
    assert totals["factors"][0] > totals["off"][0]
    assert totals["hiou"][0] > totals["off"][0]
    assert totals["tc"][1] > 0.0 and totals["off"][1] == 0.0


def test_retinanet_beta_c_is_the_prior_at_init():
    """beta_c = p_i (sigmoid of the true class), ~0.01 with torchvision's prior: 1 + beta_c < 1.1."""
    _, harmonic = _pair("retinanet_resnet18_fpn", {})
    losses, _, _ = _train_step(harmonic, 64)
    assert 1.0 < float(losses["stat_factor_c"]) < 1.1
    assert float(losses["stat_factor_c"]) == pytest.approx(1.01, abs=0.01)


def test_fcos_box_loss_ratio_at_init():
    """FCOS harmonic keeps torchvision's GIoU as L(d): loss_box_reg within 4x of the baseline's."""
    baseline, harmonic = _pair("fcos_resnet18_fpn", {})
    lb, _, _ = _train_step(baseline, 64)
    lh, _, _ = _train_step(harmonic, 64)
    ratio = float(lh["loss_box_reg"].detach()) / float(lb["loss_box_reg"].detach())
    assert 1.0 < ratio <= 4.0
