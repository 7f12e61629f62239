"""ResNet-10-slim: torchvision's layout at a fraction of the cost; the demo's detector builds on it."""

from __future__ import annotations

import pytest
import torch

from harmonic.errors import HarmonicError
from harmonic.models import build_detector
from harmonic.models.backbones import SlimResNet, resnet10s, resnet_fpn_backbone


def test_resnet10s_shapes_and_size():
    net = resnet10s()
    assert isinstance(net, SlimResNet) and net.inplanes == 256
    n_params = sum(p.numel() for p in net.parameters())
    assert 1.0e6 < n_params < 1.4e6  # ~1.2 M (ResNet-18: 11.7 M)
    x = torch.zeros(2, 3, 128, 96)
    assert net(x).shape == (2, 256, 4, 3)
    with pytest.raises(ValueError):
        resnet10s(weights="IMAGENET1K_V1")


def test_resnet10s_fpn_levels_and_channels():
    bb = resnet_fpn_backbone("resnet10s", None, fpn_channels=64)
    feats = bb(torch.zeros(1, 3, 128, 128))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(f.shape[1] == 64 for f in feats.values())


def test_resnet10s_has_no_torchvision_weights(tmp_path):
    with pytest.raises(HarmonicError, match="no torchvision weights"):
        resnet_fpn_backbone("resnet10s", "DEFAULT", fpn_channels=64)
    # a local state dict of the same layout loads
    path = tmp_path / "r10s.pth"
    torch.save(resnet10s().state_dict(), path)
    bb = resnet_fpn_backbone("resnet10s", str(path), fpn_channels=64)
    assert sum(p.numel() for p in bb.parameters()) > 0


@pytest.mark.parametrize("name", ["fcos_resnet10s_fpn", "retinanet_resnet10s_fpn"])
def test_slim_detectors_train_step(name):
    torch.manual_seed(0)
    model = build_detector(name, 3, loss="harmonic", img_size=128, fpn_channels=64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.tensor([2])}]
    losses = model([torch.rand(3, 128, 128)], targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
