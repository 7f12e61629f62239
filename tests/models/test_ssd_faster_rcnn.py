"""SSD and Faster R-CNN adapters: build, train-mode losses, gradients, eval parity, option errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.ssd import SSD
from torchvision.ops import FrozenBatchNorm2d

from harmonic.errors import HarmonicError
from harmonic.models.faster_rcnn import build_faster_rcnn
from harmonic.models.spec import IMAGENET_MEAN, IMAGENET_STD
from harmonic.models.ssd import build_ssd

NUM_CLASSES = 3
# (name, builder, smallest test size); ssd300_vgg16's extra blocks need >= 268 px.
CASES = [
    ("ssdlite320_mobilenet_v3_large", build_ssd, 128),
    ("ssd_resnet10s_fpn", build_ssd, 128),
    pytest.param("ssd300_vgg16", build_ssd, 268, marks=pytest.mark.slow),
    ("fasterrcnn_resnet18_fpn", build_faster_rcnn, 128),
    pytest.param("fasterrcnn_resnet50_fpn", build_faster_rcnn, 128, marks=pytest.mark.slow),  # = resnet18's code
]
HARMONIC_KEYS = {"loss_classifier", "loss_box_reg", "loss_tc"}
# Both losses log the factors (the baseline the ones it would have had) for the paper's Fig. 4.
BASELINE_STATS = {"stat_aic", "stat_num_pos", "stat_factor_r", "stat_factor_c"} | {
    f"stat_{kind}_iou{b}" for kind in ("score_sum", "count") for b in (50, 60, 70, 80, 90)}
HARMONIC_STATS = BASELINE_STATS
RPN_KEYS = {"loss_objectness", "loss_rpn_box_reg"}
# Fewer proposals / sampled RoIs keep the 12544x1024 box-head FC cheap on CPU.
_FRCNN_FAST = dict(
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=150,
    rpn_pre_nms_top_n_test=150,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
)
FAST_OPTIONS = {
    "fasterrcnn_resnet18_fpn": _FRCNN_FAST,
    "fasterrcnn_resnet50_fpn": _FRCNN_FAST,
    "ssd300_vgg16": {"trainable_backbone_layers": 1},  # no backward through the 268 px VGG stages
}


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _build(builder, name, loss, size, seed=0, **options):
    torch.manual_seed(seed)
    return builder(name, NUM_CLASSES, loss=loss, img_size=size, backbone_weights=None, loss_options={}, **options)


def _targets(size: int, empty_second: bool = True) -> list[dict[str, torch.Tensor]]:
    s = size / 128
    first = {
        "boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 100.0]]) * s,
        "labels": torch.tensor([1, 3]),
    }
    second = (
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
        if empty_second
        else {"boxes": torch.tensor([[30.0, 30.0, 90.0, 110.0]]) * s, "labels": torch.tensor([2])}
    )
    return [first, second]


def _images(size: int, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return list(torch.rand(n, 3, size, size, generator=g))


def _f(value: torch.Tensor) -> float:
    return float(value.detach())


def _objective(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss_"))


def _capture_box_regression(model):
    """Retain the grad of the box-regression output and, for Faster R-CNN, the RoIs per image."""
    store: dict = {}
    if isinstance(model, SSD):

        def hook(_m, _inp, out):
            if out["bbox_regression"].requires_grad:
                out["bbox_regression"].retain_grad()
                store["box"] = out["bbox_regression"]  # [B, A, 4]

        model.head.register_forward_hook(hook)
    else:

        def hook(_m, _inp, out):
            if out[1].requires_grad:
                out[1].retain_grad()
                store["box"] = out[1]  # [R, (C+1)*4]

        model.roi_heads.box_predictor.register_forward_hook(hook)
        select = model.roi_heads.select_training_samples

        def recording_select(proposals, targets):
            out = select(proposals, targets)
            store["rois_per_image"] = [len(p) for p in out[0]]
            return out

        model.roi_heads.select_training_samples = recording_select
    return store


def _check_train_losses(losses, name, loss):
    if loss == "harmonic":
        expected = HARMONIC_KEYS | HARMONIC_STATS
    else:
        expected = {"loss_classifier", "loss_box_reg"} | BASELINE_STATS
    if "fasterrcnn" in name:
        expected |= RPN_KEYS
    assert set(losses) == expected
    for key, value in losses.items():
        assert value.dim() == 0 and math.isfinite(_f(value)), key
        assert value.requires_grad == key.startswith("loss_"), key
    assert _f(losses["stat_num_pos"]) >= 2  # each gt box has at least its best anchor / itself as RoI
    assert 1.0 < _f(losses["stat_factor_r"]) <= 2.0 and 1.0 < _f(losses["stat_factor_c"]) <= 2.0
    assert 0.0 <= _f(losses["stat_aic"]) <= 1.0


def _split_per_image(model, store):
    grad = store["box"].grad
    if isinstance(model, SSD):
        return grad[0], grad[1]
    n0 = store["rois_per_image"][0]
    return grad[:n0], grad[n0:]


def _box_head_grad(model) -> torch.Tensor:
    head = model.head.regression_head if isinstance(model, SSD) else model.roi_heads.box_predictor.bbox_pred
    return torch.cat([p.grad.flatten() for p in head.parameters()])


@pytest.mark.parametrize("name,builder,size", CASES)
def test_both_losses_train_eval_and_share_inference(name, builder, size):
    """Per detector: loss keys, finite values, zero box gradient for an image without objects,
    same stats and eval output for the same weights, and a harmonic gradient that really differs."""
    options = FAST_OPTIONS.get(name, {})
    baseline = _build(builder, name, "baseline", size, seed=0, **options)
    harmonic = _build(builder, name, "harmonic", size, seed=1, **options)
    for model in (baseline, harmonic):
        assert model.transform.image_mean == list(IMAGENET_MEAN)
        assert model.transform.image_std == list(IMAGENET_STD)
    state = baseline.state_dict()
    assert set(state) == set(harmonic.state_dict())
    harmonic.load_state_dict(state, strict=True)

    images = _images(size)
    results = {}
    for loss, model in (("baseline", baseline), ("harmonic", harmonic)):
        store = _capture_box_regression(model)
        model.train()
        torch.manual_seed(3)  # same RoI sampling in both models
        losses = model(images, _targets(size))
        _check_train_losses(losses, name, loss)
        _objective(losses).backward()
        first, second = _split_per_image(model, store)
        assert torch.count_nonzero(second) == 0  # the image without objects has no positives
        assert torch.count_nonzero(first) > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        results[loss] = (losses, _box_head_grad(model))

    (lb, gb), (lh, gh) = results["baseline"], results["harmonic"]
    for key in sorted(BASELINE_STATS):  # same matching / sampling -> same positives and stats
        assert _f(lb[key]) == pytest.approx(_f(lh[key]), rel=1e-5, abs=1e-6), key
    # The harmonic weights 1 + beta_r in (1, 2] only scale the positives' CE up.
    assert _f(lb["loss_classifier"]) <= _f(lh["loss_classifier"]) <= 2 * _f(lb["loss_classifier"])
    assert not torch.allclose(gb, gh)
    assert float(F.cosine_similarity(gb, gh, dim=0)) > 0.3  # re-weighted, not flipped

    baseline.eval()
    harmonic.eval()
    with torch.no_grad():
        out_b, out_h = baseline(images), harmonic(images)
    for db, dh in zip(out_b, out_h):
        assert set(db) == {"boxes", "scores", "labels"}
        assert len(db["boxes"]) == len(db["scores"]) > 0 and db["boxes"].shape[1] == 4
        assert int(db["labels"].min()) >= 1 and int(db["labels"].max()) <= NUM_CLASSES
        assert float(db["boxes"].min()) >= 0 and float(db["boxes"].max()) <= size
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(db[key], dh[key]), key

    # A batch without any object: finite, no box loss, no box gradient.
    store = _capture_box_regression(harmonic)
    harmonic.train()
    harmonic.zero_grad()
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    losses = harmonic(images, empty)
    assert all(math.isfinite(_f(v)) for v in losses.values())
    assert _f(losses["loss_box_reg"]) == 0.0 and _f(losses["loss_tc"]) == 0.0
    assert _f(losses["stat_num_pos"]) == 0.0
    _objective(losses).backward()
    assert torch.count_nonzero(store["box"].grad) == 0


class _StandardLoss(torch.nn.Module):
    """Eq. 1 from the adapter's ``PositiveTerms``; records what the adapter passes."""

    def __init__(self):
        super().__init__()
        self.seen: dict = {}

    def forward(self, terms):
        self.seen = dict(cls_pos=terms.cls_loss, reg_pos=terms.box_loss, iou=terms.iou, probs=terms.class_probs,
                         labels=terms.labels, p_true=terms.p_true, score=terms.score)
        return {"loss_classifier": (terms.weight * terms.cls_loss).sum() + terms.neg_cls_loss,
                "loss_box_reg": (terms.weight * terms.box_loss).sum()}


def test_ssd_adapter_inputs_reproduce_torchvision_loss():
    size = 128
    model = _build(build_ssd, "ssdlite320_mobilenet_v3_large", "harmonic", size)
    model.train()
    standard = _StandardLoss()
    model.harmonic_loss = standard
    captured = {}
    orig = model.compute_loss

    def compute_loss(targets, head_outputs, anchors, matched_idxs):
        captured["tv"] = SSD.compute_loss(model, targets, head_outputs, anchors, matched_idxs)
        captured["anchors"] = anchors
        return orig(targets, head_outputs, anchors, matched_idxs)

    model.compute_loss = compute_loss
    targets = _targets(size, empty_second=False)
    losses = model(_images(size), targets)
    tv = captured["tv"]
    assert _f(losses["loss_classifier"]) == pytest.approx(_f(tv["classification"]), rel=1e-5)
    assert _f(losses["loss_box_reg"]) == pytest.approx(_f(tv["bbox_regression"]), rel=1e-5)

    seen = standard.seen
    num_pos = seen["labels"].numel()
    assert num_pos >= 3 and seen["probs"].shape == (num_pos, NUM_CLASSES + 1)
    torch.testing.assert_close(seen["probs"].sum(1), torch.ones(num_pos))
    # CE is -log of the probability of the label column; beta_c = p_y is also the ranking score.
    p_y = seen["probs"].gather(1, seen["labels"][:, None]).squeeze(1)
    torch.testing.assert_close(seen["cls_pos"], -torch.log(p_y), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen["p_true"], p_y)
    torch.testing.assert_close(seen["score"], p_y)
    assert torch.all(seen["reg_pos"] >= 0) and torch.all((seen["iou"] >= 0) & (seen["iou"] <= 1))


def test_faster_rcnn_adapter_inputs_reproduce_torchvision_loss():
    size = 128
    model = _build(build_faster_rcnn, "fasterrcnn_resnet18_fpn", "harmonic", size, **_FRCNN_FAST)
    model.train()
    standard = _StandardLoss()
    heads = model.roi_heads
    heads.harmonic_loss = standard
    captured = {}
    orig = heads.box_loss

    def box_loss(class_logits, box_regression, proposals, matched_idxs, labels, regression_targets, targets):
        captured["tv"] = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        captured["num_rois"] = class_logits.shape[0]
        return orig(class_logits, box_regression, proposals, matched_idxs, labels, regression_targets, targets)

    heads.box_loss = box_loss
    targets = _targets(size, empty_second=False)
    losses = model(_images(size), targets)
    tv_cls, tv_box = captured["tv"]
    assert _f(losses["loss_classifier"]) == pytest.approx(_f(tv_cls), rel=1e-5)
    assert _f(losses["loss_box_reg"]) == pytest.approx(_f(tv_box), rel=1e-5)

    seen = standard.seen
    num_pos = seen["labels"].numel()
    assert 3 <= num_pos < captured["num_rois"]
    assert seen["probs"].shape == (num_pos, NUM_CLASSES + 1)
    p_y = seen["probs"].gather(1, seen["labels"][:, None]).squeeze(1)
    torch.testing.assert_close(seen["cls_pos"], -torch.log(p_y), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen["p_true"], p_y)


def test_faster_rcnn_backbone_variants(tmp_path):
    scratch = _build(build_faster_rcnn, "fasterrcnn_resnet18_fpn", "harmonic", 128, fpn_channels=64, **_FRCNN_FAST)
    scratch.train()
    losses = scratch(_images(128), _targets(128))
    assert math.isfinite(_f(_objective(losses)))
    assert scratch.backbone.out_channels == 64
    assert scratch.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in scratch.backbone.parameters())

    torch.manual_seed(5)
    reference = resnet18()
    path = tmp_path / "r18.pt"
    torch.save(reference.state_dict(), path)
    model = build_faster_rcnn(
        "fasterrcnn_resnet18_fpn", 2, loss="baseline", img_size=128, backbone_weights=str(path), loss_options={}
    )
    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.conv1.weight, reference.conv1.weight)
    assert torch.equal(body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad  # torchvision's default: 3 trainable stages


def test_ssdlite_local_backbone_weights(tmp_path):
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(2)
    reference = mobilenet_v3_large()
    path = tmp_path / "mnv3.pt"
    torch.save(reference.state_dict(), path)
    model = build_ssd(
        "ssdlite320_mobilenet_v3_large", 2, loss="harmonic", img_size=128, backbone_weights=str(path), loss_options={}
    )
    first_conv = model.backbone.features[0][0][0]
    assert torch.equal(first_conv.weight, reference.features[0][0].weight)
    # The default (full) tail does not depend on backbone_weights, so a spec rebuild loads the weights.
    rebuilt = build_ssd(
        "ssdlite320_mobilenet_v3_large", 2, loss="baseline", img_size=128, backbone_weights=None, loss_options={}
    )
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    reduced = build_ssd(
        "ssdlite320_mobilenet_v3_large", 2, loss="baseline", img_size=128, backbone_weights=None, loss_options={},
        reduced_tail=True,
    )
    n_full = sum(p.numel() for p in rebuilt.backbone.parameters())
    n_reduced = sum(p.numel() for p in reduced.backbone.parameters())
    assert n_reduced < 0.8 * n_full
    with pytest.raises(HarmonicError, match="reduced_tail"):
        build_ssd("ssdlite320_mobilenet_v3_large", 2, loss="baseline", img_size=128, backbone_weights=str(path),
                  loss_options={}, reduced_tail=True)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: build_ssd("ssd300_vgg16", 2, loss="harmonic", img_size=200, backbone_weights=None, loss_options={}),
         ">= 268"),
        (lambda: build_ssd("ssd512", 2, loss="harmonic", img_size=320, backbone_weights=None, loss_options={}),
         "unknown SSD model"),
        (lambda: build_ssd("ssdlite320_mobilenet_v3_large", 2, loss="focal", img_size=128, backbone_weights=None,
                           loss_options={}), "unknown loss"),
        (lambda: build_ssd("ssdlite320_mobilenet_v3_large", 2, loss="harmonic", img_size=128, backbone_weights=None,
                           loss_options={"gama": 0.5}), "gama"),
        (lambda: build_ssd("ssdlite320_mobilenet_v3_large", 2, loss="harmonic", img_size=128, backbone_weights=None,
                           loss_options={}, fpn_channels=64), "unknown option"),
        (lambda: build_faster_rcnn("fasterrcnn_resnet18_fpn", 2, loss="harmonic", img_size=128,
                                   backbone_weights="/nonexistent/r18.pt", loss_options={}), "r18.pt"),
        (lambda: build_faster_rcnn("fasterrcnn_resnet18_fpn", 2, loss="harmonic", img_size=128,
                                   backbone_weights=None, loss_options={}, anchor_sizes=3), "unknown option"),
    ],
)
def test_bad_arguments_raise_harmonic_error(call, match):
    with pytest.raises(HarmonicError, match=match):
        call()


def test_backbone_weights_that_do_not_fit_name_the_file(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(HarmonicError, match="wrong.pt"):
        build_faster_rcnn("fasterrcnn_resnet18_fpn", 2, loss="harmonic", img_size=128, backbone_weights=str(path),
                          loss_options={})
