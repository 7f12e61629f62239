"""ssd_resnet10s_fpn: levels and default boxes, options, backbone weights, spec round trip, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d, box_iou

from harmonic.errors import HarmonicError
from harmonic.models import build_detector, build_from_spec, model_spec
from harmonic.models.backbones import resnet10s
from harmonic.models.ssd import RESNET10S_FPN_SCALES, HarmonicSSD

NAME = "ssd_resnet10s_fpn"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _features_and_anchors(model: HarmonicSSD, size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        feats = list(model.backbone(x).values())
        anchors = model.anchor_generator(ImageList(x, [(size, size)]), feats)[0]
    return feats, anchors


def test_levels_default_boxes_and_size():
    torch.manual_seed(0)
    model = build_detector(NAME, 3, loss="harmonic")  # registry defaults: 128 px, FPN width 64
    assert isinstance(model, HarmonicSSD)
    body = model.backbone.body  # resnet10s stages (32, 64, 128, 256 channels), one BasicBlock each
    assert [body[f"layer{i}"][0].conv1.out_channels for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    assert sum(p.numel() for p in body.parameters()) == sum(p.numel() for p in resnet10s().parameters())
    feats, anchors = _features_and_anchors(model, 128)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (64, 8, 8), (64, 4, 4), (64, 2, 2), (64, 1, 1)]
    assert model.anchor_generator.num_anchors_per_location() == [6] * 5
    cells = [16 * 16, 8 * 8, 4 * 4, 2 * 2, 1]
    assert anchors.shape == (6 * sum(cells), 4)
    sides = anchors[:, 2:] - anchors[:, :2]  # torchvision clips the size to the image, not the position
    assert float(sides.min()) > 0.0 and float(sides.max()) <= 128.0
    # The first box of each level's centre-most cell is the s_k square, the second sqrt(s_k * s_k+1).
    start, s = 0, RESNET10S_FPN_SCALES
    for k, n in enumerate(cells):
        side = int(round(n**0.5))
        cell = (side // 2) * side + side // 2 if side > 1 else 0
        first = anchors[start + 6 * cell]
        second = anchors[start + 6 * cell + 1]
        assert float(first[2] - first[0]) == pytest.approx(s[k] * 128, rel=1e-4)
        assert float(second[3] - second[1]) == pytest.approx((s[k] * s[k + 1]) ** 0.5 * 128, rel=1e-4)
        start += 6 * n
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    # Objects of the demo's sizes (long side 20-60 % of 128 px, aspect up to 2:1) each have a default box
    # with IoU >= 0.5 (SSD's positive threshold), not only their forced best match.
    rng = np.random.default_rng(0)
    long_side = rng.uniform(0.2, 0.6, 500) * 128
    short = long_side / rng.uniform(1.0, 2.0, 500)
    tall = rng.random(500) < 0.5
    w, h = np.where(tall, short, long_side), np.where(tall, long_side, short)
    cx, cy = rng.uniform(w / 2, 128 - w / 2), rng.uniform(h / 2, 128 - h / 2)
    boxes = torch.tensor(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), dtype=torch.float32)
    best = box_iou(boxes, anchors).max(1).values
    assert float((best >= 0.5).float().mean()) >= 0.95
    assert float(best.min()) >= 0.4


def test_fpn_width_image_size_and_option_errors():
    model = build_detector(NAME, 2, img_size=64, fpn_channels=32)
    feats, anchors = _features_and_anchors(model, 64)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 8, 8), (32, 4, 4), (32, 2, 2), (32, 1, 1), (32, 1, 1)]
    assert anchors.shape == (6 * (64 + 16 + 4 + 1 + 1), 4)
    assert model.head.classification_head.module_list[0].in_channels == 32
    assert model.head.classification_head.module_list[0].out_channels == 6 * 3
    assert all(p.requires_grad for p in model.parameters())  # from scratch: every stage trains
    with pytest.raises(HarmonicError, match="multiple of 32"):
        build_detector(NAME, 2, img_size=100)
    with pytest.raises(HarmonicError, match="unknown option"):
        build_detector(NAME, 2, reduced_tail=True)
    with pytest.raises(HarmonicError, match="fpn_channels"):
        build_detector(NAME, 2, fpn_channels=0)
    with pytest.raises(HarmonicError, match="no torchvision weights|not found|weights"):
        build_detector(NAME, 2, backbone_weights="DEFAULT")


def test_local_resnet10s_weights_load_and_bad_ones_name_the_file(tmp_path):
    torch.manual_seed(3)
    reference = resnet10s()
    path = tmp_path / "r10s.pt"
    torch.save(reference.state_dict(), path)
    model = build_detector(NAME, 2, backbone_weights=str(path))
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(HarmonicError, match="bad.pt"):
        build_detector(NAME, 2, backbone_weights=str(bad))


def test_spec_round_trip_gives_the_same_detections():
    spec = model_spec(NAME, 3, ["a", "b", "c"], loss="baseline", img_size=96, options={"fpn_channels": 32})
    assert spec.stride == 32
    torch.manual_seed(0)
    model = build_detector(NAME, 3, loss="baseline", img_size=96, fpn_channels=32).eval()
    rebuilt = build_from_spec(spec).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = list(torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert len(a[0]["boxes"]) == 100  # the operating point's max_det, not torchvision's 200
    for da, db in zip(a, b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(da[key], db[key]), key


def test_a_few_steps_fit_a_fixed_batch():
    """From scratch, 25 AdamW steps on one batch cut both torchvision losses sharply."""
    torch.manual_seed(0)
    model = build_detector(NAME, 3, loss="baseline", img_size=64, fpn_channels=32).train()
    images = list(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 34.0], [34.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[14.0, 14.0, 44.0, 54.0]]), "labels": torch.tensor([2])}]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = last = None
    for _ in range(25):
        losses = model(images, targets)
        total = losses["loss_classifier"] + losses["loss_box_reg"]
        opt.zero_grad()
        total.backward()
        opt.step()
        values = {k: float(losses[k].detach()) for k in ("loss_classifier", "loss_box_reg")}
        first = first or values
        last = values
    assert last["loss_classifier"] < 0.3 * first["loss_classifier"]
    assert last["loss_box_reg"] < 0.5 * first["loss_box_reg"]


def _export_ready(size: int) -> torch.nn.Module:
    """A random-init model whose scores are spread (a fresh head predicts nearly the same everywhere)."""
    torch.manual_seed(0)
    model = build_detector(NAME, 3, loss="harmonic", img_size=size, fpn_channels=32)
    with torch.no_grad():
        for conv in model.head.classification_head.module_list:
            conv.weight.normal_(0, 0.2)
    return model.eval()


def test_export_nms_and_raw_graphs_match_pytorch(tmp_path):
    from harmonic.boxes import batched_nms
    from harmonic.export.onnx_export import export_model
    from harmonic.export.verify import run_onnx, synthetic_images, verify_onnx
    from harmonic.export.wrapper import build_wrapper

    size, conf, iou, k = 96, 0.01, 0.6, 50
    model = _export_ready(size)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=conf, iou=iou, max_det=k)
    images = synthetic_images(3, size, seed=1)
    res = verify_onnx(out, model, size, conf, iou, k, images=images)
    assert res.ok, res.message
    assert res.num_images == 3 and res.num_detections > 0
    wrapper = build_wrapper(model, size, conf, iou, k)
    assert wrapper.family.name == "ssd" and not wrapper.cap_binds
    assert wrapper.nms_topk == min(3 * model.topk_candidates, 5000)  # per-class top-k, as torchvision's SSD

    raw = export_model(model, tmp_path / "m.raw.onnx", img_size=size, conf=conf, iou=iou, max_det=k, raw=True)
    r, g = run_onnx(raw, images[:2]), run_onnx(out, images[:2])
    num_anchors = 6 * (12 * 12 + 6 * 6 + 3 * 3 + 2 * 2 + 1)
    assert r["boxes"].shape == (2, num_anchors, 4) and r["scores"].shape == (2, num_anchors, 3)
    # softmax over C + 1 columns with the background dropped: each row sums to 1 - p(background) < 1
    assert r["scores"].min() >= 0 and r["scores"].sum(-1).max() < 1.0
    for i in range(2):
        a, c = np.nonzero(r["scores"][i] > conf)
        keep = batched_nms(r["boxes"][i][a], r["scores"][i][a, c], c, iou)
        assert r["scores"][i][a, c][keep[0]] == pytest.approx(g["det_scores"][i, 0], abs=1e-5)
        np.testing.assert_allclose(r["boxes"][i][a][keep[0]], g["det_boxes"][i, 0], atol=1e-3)
