"""Tiny torchvision detectors for export tests (random init, CPU, no downloads)."""

from __future__ import annotations

import pytest
import torch


def tiny_detector(family: str, img_size: int = 128, num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A small detector of ``family`` built with ``num_classes + 1`` outputs (docs/CONTRACTS.md).

    The last classification layer is re-drawn with a larger spread so scores are not all
    equal (a fresh head predicts the prior everywhere, which makes NMS order ties).
    """
    from torchvision.models.detection import fcos, retinanet, ssdlite
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(seed)
    k = num_classes + 1
    if family in ("retinanet", "fcos"):
        backbone = resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
            extra_blocks=LastLevelP6P7(256, 256),
        )
        cls = retinanet.RetinaNet if family == "retinanet" else fcos.FCOS
        model = cls(backbone, num_classes=k, min_size=img_size, max_size=img_size)
        last = model.head.classification_head.cls_logits
    elif family == "fasterrcnn":
        from torchvision.models.detection.faster_rcnn import FasterRCNN

        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
        model = FasterRCNN(backbone, num_classes=k, min_size=img_size, max_size=img_size)
        last = model.roi_heads.box_predictor.cls_score
    else:
        model = ssdlite.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k)
        last = model.head.classification_head.module_list[-1][-1]
    with torch.no_grad():
        last.weight.normal_(0, 0.05)
        if family == "ssd":  # fresh BatchNorm stats make MobileNet's features constant: equal scores
            for mod in model.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_var.uniform_(0.5, 2.0)
                    mod.running_mean.normal_(0, 0.1)
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_detector():
    """``make_detector(family, img_size)`` -> a tiny eval-mode detector."""
    return tiny_detector
