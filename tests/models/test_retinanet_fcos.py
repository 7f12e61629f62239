import math

import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou, sigmoid_focal_loss

from harmonic.losses import harmonic_iou_loss
from harmonic.models import build_detector

torch.set_num_threads(2)

SIZE = 128
NAMES = ["retinanet_resnet18_fpn", "fcos_resnet18_fpn"]
EXPECTED_KEYS = {
    ("retinanet_resnet18_fpn", "harmonic"): {"loss_classifier", "loss_box_reg", "loss_tc"},
    ("retinanet_resnet18_fpn", "baseline"): {"loss_classifier", "loss_box_reg"},
    ("fcos_resnet18_fpn", "harmonic"): {"loss_classifier", "loss_box_reg", "loss_tc", "loss_bbox_ctrness"},
    ("fcos_resnet18_fpn", "baseline"): {"loss_classifier", "loss_box_reg", "loss_bbox_ctrness"},
}


def _batch():
    torch.manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 64.0, 120.0, 118.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[30.0, 20.0, 100.0, 90.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


@pytest.mark.parametrize("loss", ["harmonic", "baseline"])
@pytest.mark.parametrize("name", NAMES)
def test_train_forward_backward_and_eval(name, loss):
    torch.manual_seed(0)
    model = build_detector(name, 3, loss=loss, img_size=SIZE, fpn_channels=64, score_thresh=0.0)
    model.train()
    images, targets = _batch()
    out = model(images, targets)
    loss_keys = {k for k in out if k.startswith("loss_")}
    assert loss_keys == EXPECTED_KEYS[(name, loss)]
    assert {"stat_aic", "stat_num_pos", "stat_factor_r", "stat_factor_c"} <= set(out)  # both losses
    assert 1.0 <= out["stat_factor_r"].item() <= 2.0 and 1.0 <= out["stat_factor_c"].item() <= 2.0
    assert out["stat_num_pos"].item() > 0
    assert all(torch.isfinite(v).all() for v in out.values())
    assert all(not v.requires_grad for k, v in out.items() if k.startswith("stat_"))
    total = sum(out[k] for k in loss_keys)
    assert total.item() > 0
    total.backward()
    head_grad = sum(p.grad.abs().sum() for p in model.head.parameters() if p.grad is not None)
    body_grad = model.backbone.body.conv1.weight.grad
    assert head_grad > 0 and body_grad is not None and torch.isfinite(body_grad).all()

    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2
    assert dets[0]["boxes"].shape[1] == 4 and dets[0]["boxes"].shape[0] > 0
    assert dets[0]["labels"].min() >= 1 and dets[0]["labels"].max() <= 3
    assert (dets[0]["boxes"] >= 0).all() and (dets[0]["boxes"] <= SIZE).all()


@pytest.mark.parametrize("name", NAMES)
def test_no_objects_gives_finite_loss_and_zero_box_gradient(name):
    model = build_detector(name, 2, loss="harmonic", img_size=SIZE, fpn_channels=64)
    model.train()
    images = [torch.rand(3, SIZE, SIZE)]
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    out = model(images, targets)
    assert out["stat_num_pos"].item() == 0
    assert out["loss_box_reg"].item() == 0.0 and out["loss_tc"].item() == 0.0
    assert out["loss_classifier"].item() > 0 and math.isfinite(out["loss_classifier"].item())
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    reg_head = model.head.regression_head
    box_layer = reg_head.bbox_reg
    assert box_layer.weight.grad is None or box_layer.weight.grad.abs().sum() == 0


def _focal(logits, label):
    target = torch.zeros_like(logits)
    if label is not None:
        target[label] = 1.0
    return sigmoid_focal_loss(logits, target, reduction="sum").item()


def _expected(cls_pos, reg, iou, p_true, probs, neg_sum, score=None, margin=0.2, alpha=1.5, gamma=0.8):
    """Eq. 2-13 for one positive: beta_r = exp(-L_loc), beta_c = p_true, TC on the ranking score."""
    loc = reg + alpha * harmonic_iou_loss(torch.tensor(iou), gamma).item()
    entropy = -sum(p * math.log(p) for p in probs)
    score = p_true if score is None else score
    tc = max(0.0, abs(score - iou) - margin) / (1 + math.exp(entropy))
    return {
        "loss_classifier": (1 + math.exp(-loc)) * cls_pos + neg_sum,
        "loss_box_reg": (1 + p_true) * loc,
        "loss_tc": tc,
    }


def test_retinanet_harmonic_head_matches_formula():
    """One positive, one negative, one ignored anchor, computed by hand."""
    model = build_detector("retinanet_resnet18_fpn", 2, loss="harmonic", img_size=64, fpn_channels=32)
    head = model.head
    anchors = [torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 40.0, 60.0, 60.0], [0.0, 0.0, 5.0, 5.0]])]
    gt = torch.tensor([[12.0, 8.0, 34.0, 36.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([2])}]
    logits = torch.tensor([[[-1.0, 0.5, 1.2], [-2.0, 0.3, -0.7], [3.0, 3.0, 3.0]]])
    deltas = torch.tensor([[[0.05, -0.1, 0.2, -0.05], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    out = head.compute_loss(targets, {"cls_logits": logits, "bbox_regression": deltas}, anchors,
                            [torch.tensor([0, -1, -2])])
    # encoded target (BoxCoder weights 1): centre offsets / anchor size, log size ratios
    aw, ah, ax, ay = 20.0, 30.0, 20.0, 25.0
    gw, gh, gx, gy = 22.0, 28.0, 23.0, 22.0
    target = [(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)]
    d = deltas[0, 0].tolist()
    reg = sum(abs(a - b) for a, b in zip(d, target))  # torchvision RetinaNet's L1 on encoded deltas
    cx, cy, w, h = ax + d[0] * aw, ay + d[1] * ah, aw * math.exp(d[2]), ah * math.exp(d[3])
    pred = torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
    iou = box_iou(pred, gt).item()
    probs = torch.sigmoid(logits[0, 0]).tolist()
    expected = _expected(_focal(logits[0, 0], 2), reg, iou, probs[2], probs, _focal(logits[0, 1], None))
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert out["stat_num_pos"].item() == 1
    assert out["stat_factor_c"].item() == pytest.approx(1 + probs[2], rel=1e-5)
    assert out["stat_aic"].item() == pytest.approx(abs(probs[2] - iou), rel=1e-4)


def test_fcos_harmonic_head_matches_formula():
    model = build_detector("fcos_resnet18_fpn", 2, loss="harmonic", img_size=64, fpn_channels=32)
    head = model.head
    anchors = [torch.tensor([[16.0, 16.0, 24.0, 24.0], [40.0, 40.0, 48.0, 48.0]])]  # centres (20,20), (44,44)
    gt = torch.tensor([[8.0, 6.0, 40.0, 30.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    logits = torch.tensor([[[-1.0, 0.4, -0.3], [-2.0, -0.5, 0.1]]])
    ltrb = torch.tensor([[[1.2, 1.5, 2.2, 1.0], [0.5, 0.5, 0.5, 0.5]]])
    ctr = torch.tensor([[[0.3], [-0.2]]])
    out = head.compute_loss(targets, {"cls_logits": logits, "bbox_regression": ltrb, "bbox_ctrness": ctr},
                            anchors, [torch.tensor([0, -1])])
    s = 8.0  # anchor size normalises l, t, r, b
    target = [(20 - 8) / s, (20 - 6) / s, (40 - 20) / s, (30 - 20) / s]
    d = ltrb[0, 0].tolist()
    pred = torch.tensor([[20 - d[0] * s, 20 - d[1] * s, 20 + d[2] * s, 20 + d[3] * s]])
    reg = 1 - generalized_box_iou(pred, gt).item()  # torchvision FCOS's GIoU loss
    iou = box_iou(pred, gt).item()
    probs = torch.sigmoid(logits[0, 0]).tolist()
    score = math.sqrt(probs[1] / (1 + math.exp(-0.3)))  # FCOS ranks by sqrt(cls * centerness)
    expected = _expected(_focal(logits[0, 0], 1), reg, iou, probs[1], probs, _focal(logits[0, 1], None), score)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert out["stat_aic"].item() == pytest.approx(abs(score - iou), rel=1e-4)
    ctr_target = math.sqrt(min(target[0], target[2]) / max(target[0], target[2])
                           * min(target[1], target[3]) / max(target[1], target[3]))
    p = 1 / (1 + math.exp(-0.3))
    bce = -(ctr_target * math.log(p) + (1 - ctr_target) * math.log(1 - p))
    assert out["loss_bbox_ctrness"].item() == pytest.approx(bce, rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_baseline_equals_torchvision_loss(name):
    """The baseline adapter only renames torchvision's loss entries."""
    torch.manual_seed(0)
    model = build_detector(name, 3, loss="baseline", img_size=SIZE, fpn_channels=64)
    model.train()
    images, targets = _batch()
    torch.manual_seed(1)
    ours = model(images, targets)
    # torchvision's RetinaNetHead / FCOSHead (after our LossAdapter mixin in the MRO)
    head_cls = next(c for c in type(model.head).__mro__ if c.__module__.startswith("torchvision."))
    original = model.head.compute_loss
    captured = {}

    def hook(targets_, head_outputs, anchors, matched_idxs):
        captured.update(head_cls.compute_loss(model.head, targets_, head_outputs, anchors, matched_idxs))
        return original(targets_, head_outputs, anchors, matched_idxs)

    model.head.compute_loss = hook
    model(images, targets)
    assert ours["loss_classifier"].item() == pytest.approx(captured["classification"].item(), rel=1e-6)
    assert ours["loss_box_reg"].item() == pytest.approx(captured["bbox_regression"].item(), rel=1e-6)


def test_quality_focal_loss_values():
    from harmonic.losses import quality_focal_loss

    logits = torch.tensor([0.0, 2.0, -1.0])
    target = torch.tensor([0.7, 0.0, 1.0])
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log())
    expected = bce * (target - p).abs() ** 2
    assert torch.allclose(quality_focal_loss(logits, target), expected, atol=1e-6)
    # the target itself is a minimum: sigma(x) = y costs only the BCE's entropy floor, no modulation left
    y = torch.tensor([0.3])
    assert quality_focal_loss(torch.logit(y), y).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_qfl_control_classification_target_is_detached_iou(name):
    """The QFL control: positives' class target is their IoU (detached); FCOS's centre-ness target too."""
    from harmonic.losses import quality_focal_loss

    opts = {"harmonic_factors": False, "alpha": 0.0, "tc_weight": 0.0, "quality_focal": True,
            "iou_centerness": name.startswith("fcos")}
    torch.manual_seed(0)
    model = build_detector(name, 3, loss="harmonic", img_size=SIZE, fpn_channels=64, loss_options=opts)
    model.train()
    images, targets = _batch()
    captured = {}
    head = model.head
    original = head.positive_terms

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        captured["out"] = out
        captured["head_outputs"] = args[1]
        return out

    head.positive_terms = spy
    out = model(images, targets)
    terms = captured["out"][0] if isinstance(captured["out"], tuple) else captured["out"]
    iou = terms.iou.detach()
    logits = captured["head_outputs"]["cls_logits"]
    probs = terms.class_probs
    p_true = terms.p_true
    # each positive's classification loss = QFL at the true column (target IoU) + QFL of its other columns
    # (target 0): recompute the true column's part from p_true and compare to the full sum minus the rest
    others = probs.clone()
    others[torch.arange(len(p_true)), terms.labels] = 0.0
    rest = quality_focal_loss(torch.logit(others.clamp(1e-6, 1 - 1e-6)), torch.zeros_like(others)).sum(1)
    true_part = quality_focal_loss(torch.logit(p_true.detach()), iou)
    assert torch.allclose(terms.cls_loss.detach(), true_part + rest, atol=1e-4)
    assert logits.shape[-1] == 4 and iou.numel() > 0
    assert torch.isfinite(sum(v for k, v in out.items() if k.startswith("loss_")))
    if name.startswith("fcos"):
        ctr = captured["out"][1]
        assert ctr["target"] is not None
        assert torch.allclose(ctr["target"], iou.clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("opt", ["quality_focal", "iou_centerness"])
def test_focal_only_options_rejected_elsewhere(opt):
    from harmonic.errors import HarmonicError

    with pytest.raises(HarmonicError, match=opt):
        build_detector("ssdlite320_mobilenet_v3_large", 3, loss="harmonic", img_size=320, loss_options={opt: True})
    if opt == "iou_centerness":
        with pytest.raises(HarmonicError, match=opt):
            build_detector("retinanet_resnet18_fpn", 3, loss="harmonic", img_size=SIZE, loss_options={opt: True})
