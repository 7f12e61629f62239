"""A tiny real detector exported with the project's exporter, for the OpenVINO tests (torch, seconds).

RetinaNet with a two-convolution backbone, one feature level and 16 px anchors at 64 px input: the graph
has the exporter's real ``/backbone/``, ``/head/``, ``/decode/``, ``/select/`` and ``/nms_tail/`` sub-graphs
and the contract's outputs, and small enough to export, quantise and compile in a few seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

S = 64
NAMES = ["a", "b", "c"]


def tiny_retinanet(seed: int = 0):  # noqa: ANN201
    """A random-init torchvision RetinaNet (3 classes + background column) with a two-conv backbone."""
    import torch
    from torch import nn
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    torch.manual_seed(seed)

    class Backbone(nn.Module):
        out_channels = 16

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())

        def forward(self, x):  # noqa: ANN001, ANN202
            return OrderedDict([("0", self.body(x))])

    anchors = AnchorGenerator(sizes=((16,),), aspect_ratios=((0.5, 1.0, 2.0),))
    model = RetinaNet(Backbone(), num_classes=len(NAMES) + 1, anchor_generator=anchors, min_size=S, max_size=S)
    with torch.no_grad():  # spread the scores so the NMS has real work and the ranking no ties
        for mod in model.head.classification_head.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.normal_(0, 0.15)
        model.head.classification_head.cls_logits.bias.fill_(-1.0)
    return model.eval()


def export_tiny(out: Path, conf: float = 0.05, raw: bool = False) -> Path:
    """Export :func:`tiny_retinanet` to ``out`` (dynamic batch) with HarmonicDet metadata."""
    import torch

    from harmonic.contract import build_metadata
    from harmonic.export.onnx_export import export_model

    torch.set_num_threads(2)
    model = tiny_retinanet()
    tr = model.transform
    meta = build_metadata(names=NAMES, img_size=S, mean=tr.image_mean, std=tr.image_std, score_threshold=conf,
                          iou_threshold=0.5, max_det=20, model="tiny_retinanet", loss="baseline",
                          checkpoint_sha256="0" * 64, graph="raw" if raw else "nms")
    return export_model(model, out, img_size=S, conf=conf, iou=0.5, max_det=20, raw=raw, metadata=meta,
                        overwrite=True)


def write_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` small PNGs of coloured blocks (sizes vary, so the letterbox pads)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 60, (48 + 8 * (i % 3), 64, 3), dtype=np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, 40)), int(rng.integers(0, 30))
            img[y:y + 16, x:x + 20] = rng.integers(100, 255, 3)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


def batch(n: int = 4, seed: int = 1) -> np.ndarray:
    """A float32 ``[n, 3, S, S]`` batch in ``[0, 1]``."""
    return np.random.default_rng(seed).random((n, 3, S, S), dtype=np.float32)
