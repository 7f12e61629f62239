"""Backbones for the detectors: torchvision's ResNet-18/50 and a slim ResNet-10, each with an FPN.

:func:`resnet_fpn_backbone` builds a ResNet + FPN from random init, torchvision's ImageNet weights
or a local state dict (:func:`resolve_backbone_weights`, :func:`load_state_dict_file`; SSD's
VGG/MobileNet backbones take their weights the same way).

``resnet10s`` ("slim"): torchvision's ``ResNet`` layout (``conv1, bn1, relu, maxpool,
layer1..layer4``) with one ``BasicBlock`` per stage and half the channels (32, 64, 128, 256).
About 1.2 M parameters, roughly 8x cheaper than ResNet-18: a detector trained from scratch on a
laptop CPU converges in minutes on simple data (the demo's synthetic shapes). There are no
ImageNet weights for it; a local state dict of the same layout loads with ``--backbone-weights``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock, conv1x1
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from harmonic.errors import HarmonicError


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


RESNETS: dict[str, tuple[Callable[..., nn.Module], Any]] = {
    "resnet18": (resnet18, ResNet18_Weights),
    "resnet50": (resnet50, ResNet50_Weights),
    "resnet10s": (resnet10s, None),  # no ImageNet weights: random init or a local state dict
}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a local torchvision state dict saved with ``torch.save(model.state_dict(), path)``."""
    p = Path(path)
    if not p.is_file():
        raise HarmonicError(f"{p}: backbone weights file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, unsupported pickle, ...
        raise HarmonicError(f"{p}: cannot read backbone weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise HarmonicError(f"{p}: backbone weights must be a plain state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resolve_backbone_weights(backbone_weights: str | None, enum: Any) -> tuple[Any, Path | None]:
    """Split ``backbone_weights`` into ``(torchvision weights, local path)``; at most one is set.

    ``None`` -> random init (nothing is downloaded); ``"DEFAULT"`` or a member name of ``enum``
    (e.g. ``"IMAGENET1K_V1"``) -> torchvision's weights, downloaded by torchvision; anything else
    is a path to a local state dict and must exist.
    """
    if backbone_weights is None:
        return None, None
    text = str(backbone_weights)
    if enum is None and text == "DEFAULT":
        raise HarmonicError("this backbone has no torchvision weights: --backbone-weights takes a local "
                            "state-dict path here, or omit it to train from scratch")
    if enum is not None and text == "DEFAULT" or text in getattr(enum, "__members__", {}):
        return enum.verify(text), None
    path = Path(text)
    if not path.is_file():
        raise HarmonicError(
            f"{path}: backbone weights file not found"
            + (f" (use DEFAULT for torchvision's {enum.__name__})" if enum is not None else "")
        )
    return None, path


def resnet_fpn_backbone(
    arch: str,
    backbone_weights: str | None = None,
    fpn_channels: int = 256,
    returned_layers: tuple[int, ...] = (2, 3, 4),
    extra_blocks: ExtraFPNBlock | None = None,
    trainable_layers: int | None = None,
) -> BackboneWithFPN:
    """A torchvision ResNet + FPN for detection.

    Args:
        arch: ``"resnet18"``, ``"resnet50"`` or ``"resnet10s"`` (:mod:`harmonic.models.backbones`).
        backbone_weights: ``None`` (random init: trainable ``nn.BatchNorm2d``, all layers trainable,
            because FrozenBatchNorm2d with identity statistics cannot learn), ``"DEFAULT"``
            (torchvision ImageNet weights: FrozenBatchNorm2d, 3 trainable stages, as torchvision)
            or a path to a local torchvision ResNet state dict (same layout as ``"DEFAULT"``).
        fpn_channels: FPN output channels (a lighter head with fewer channels).
        returned_layers: ResNet stages fed to the FPN (2, 3, 4 = C3-C5 for RetinaNet/FCOS).
        extra_blocks: extra FPN levels; default ``LastLevelP6P7(fpn_channels, fpn_channels)``
            (P6/P7 from P5, as torchvision's RetinaNet/FCOS).
        trainable_layers: 0-5 trainable stages from the top; default 5 from scratch, 3 pretrained.

    Returns:
        ``BackboneWithFPN`` with ``out_channels == fpn_channels``.
    """
    if arch not in RESNETS:
        raise HarmonicError(f"unknown backbone {arch!r}; expected one of {list(RESNETS)}")
    fn, enum = RESNETS[arch]
    weights, path = resolve_backbone_weights(backbone_weights, enum)
    pretrained = backbone_weights is not None
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    body = fn(weights=weights, norm_layer=norm_layer)
    if path is not None:
        state = load_state_dict_file(path)
        try:
            body.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).strip().splitlines()[:2])[:300]
            raise HarmonicError(f"{path}: backbone weights do not fit {arch} ({first})") from exc
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= int(trainable_layers) <= 5:
        raise HarmonicError(f"trainable_backbone_layers must be in [0, 5] (got {trainable_layers})")
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][: int(trainable_layers)]
    if trainable_layers == 5:
        layers.append("bn1")
    for pname, param in body.named_parameters():
        if not any(pname.startswith(layer) for layer in layers):
            param.requires_grad_(False)
    stage1 = body.inplanes // 8  # channels of layer1's output: 64 (resnet18) or 256 (resnet50)
    if extra_blocks is None:
        extra_blocks = LastLevelP6P7(fpn_channels, fpn_channels)
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned_layers)},
        in_channels_list=[stage1 * 2 ** (k - 1) for k in returned_layers],
        out_channels=fpn_channels,
        extra_blocks=extra_blocks,
    )
