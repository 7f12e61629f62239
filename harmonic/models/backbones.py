"""Backbones beyond torchvision's ResNet-18/50, built from torchvision parts.

``resnet10s`` ("slim"): torchvision's ``ResNet`` layout (``conv1, bn1, relu, maxpool,
layer1..layer4``) with one ``BasicBlock`` per stage and half the channels (32, 64, 128, 256).
About 1.2 M parameters, roughly 8x cheaper than ResNet-18: a detector trained from scratch on a
laptop CPU converges in minutes on simple data (the demo's synthetic shapes). There are no
ImageNet weights for it; a local state dict of the same layout loads with ``--backbone-weights``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1


def _stage(inplanes: int, planes: int, blocks: int, stride: int,
           norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), norm_layer(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer)]
    layers += [BasicBlock(planes, planes, norm_layer=norm_layer) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SlimResNet(nn.Module):
    """A ResNet with ``BasicBlock`` stages of ``widths`` channels and ``blocks`` blocks each.

    Same attribute names as torchvision's ``ResNet`` (so ``BackboneWithFPN``'s ``return_layers``,
    the trainable-layer logic and state dicts work unchanged); ``inplanes`` is the last stage's
    width, as in torchvision. ``forward`` returns the classification-free ``layer4`` map
    ``Tensor[B, widths[-1], H/32, W/32]`` (detection uses the FPN's intermediate getter).
    """

    def __init__(self, widths: tuple[int, int, int, int] = (32, 64, 128, 256),
                 blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
                 norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            setattr(self, f"layer{i + 1}", _stage(inplanes, planes, n, 1 if i == 0 else 2, norm_layer))
            inplanes = planes
        self.inplanes = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet10s(weights: None = None, norm_layer: Callable[[int], nn.Module] | None = None) -> SlimResNet:
    """ResNet-10-slim: ``SlimResNet((32, 64, 128, 256), (1, 1, 1, 1))``; ``weights`` must be None."""
    if weights is not None:
        raise ValueError("resnet10s has no torchvision weights")
    return SlimResNet(norm_layer=norm_layer)
