import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from harmonic.errors import HarmonicError
from harmonic.models import MODELS, ModelInfo, ModelSpec, build_detector, build_from_spec, model_spec

REQUIRED = [
    "fcos_resnet10s_fpn", "retinanet_resnet10s_fpn", "retinanet_resnet18_fpn", "retinanet_resnet50_fpn", "fcos_resnet18_fpn", "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "ssd_resnet10s_fpn", "fasterrcnn_resnet18_fpn",
    "fasterrcnn_resnet50_fpn",
]


def test_models_dict_has_the_required_names():
    assert list(MODELS) == REQUIRED
    for info in MODELS.values():
        assert isinstance(info, ModelInfo)
        assert info.default_img_size % info.stride == 0 and info.description


def _num_outputs(model: nn.Module) -> int:
    """Number of class columns of a built detector (C + 1)."""
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "classification_head"):
        cls_head = head.classification_head
        # RetinaNet/FCOS heads store num_classes; SSD's scoring head stores num_columns
        return getattr(cls_head, "num_classes", None) or cls_head.num_columns
    return model.roi_heads.box_predictor.cls_score.out_features


@pytest.mark.parametrize("name", REQUIRED)
def test_build_every_name(name):
    family = MODELS[name].family
    if family in ("ssd", "faster_rcnn"):
        pytest.importorskip(f"harmonic.models.{family}")
    size = 320 if name.startswith("ssd") else 128
    model = build_detector(name, 3, loss="harmonic", img_size=size)
    assert isinstance(model, nn.Module)
    assert _num_outputs(model) == 4
    # random init by default: trainable BatchNorm, never FrozenBatchNorm2d
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert model.transform.image_mean == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize("name", ["retinanet_resnet18_fpn", "fcos_resnet18_fpn"])
def test_scratch_backbone_is_trainable_and_transform_is_identity_resize(name):
    model = build_detector(name, 2, img_size=96)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert model.transform.min_size == (96,) and model.transform.max_size == 96
    images, _ = model.transform([torch.rand(3, 96, 96)])
    assert images.tensors.shape[-2:] == (96, 96) and images.image_sizes == [(96, 96)]


def test_errors():
    with pytest.raises(HarmonicError, match="retinanet_resnet18_fpn"):
        build_detector("yolo", 3)
    with pytest.raises(HarmonicError, match="loss"):
        build_detector("retinanet_resnet18_fpn", 3, loss="focal")
    with pytest.raises(HarmonicError, match="multiple of 32"):
        build_detector("retinanet_resnet18_fpn", 3, img_size=100)
    with pytest.raises(HarmonicError, match="num_classes"):
        build_detector("fcos_resnet18_fpn", 0)
    with pytest.raises(HarmonicError, match="gamma"):
        build_detector("retinanet_resnet18_fpn", 3, loss_options={"gamma": 2.0})
    with pytest.raises(HarmonicError, match="unknown option"):
        build_detector("retinanet_resnet18_fpn", 3, img_size=64, fpn_chanels=64)
    with pytest.raises(HarmonicError, match="not found"):
        build_detector("retinanet_resnet18_fpn", 3, img_size=64, backbone_weights="/nonexistent/r18.pth")


def test_local_backbone_weights(tmp_path):
    torch.manual_seed(0)
    reference = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_detector("retinanet_resnet18_fpn", 2, img_size=64, backbone_weights=str(path), fpn_channels=32)
    body = model.backbone.body
    assert torch.equal(body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    # torchvision's pretrained layout: 3 trainable stages
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(HarmonicError, match="bad.pth"):
        build_detector("retinanet_resnet18_fpn", 2, img_size=64, backbone_weights=str(bad))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HarmonicError, match="garbage.pth"):
        build_detector("retinanet_resnet18_fpn", 2, img_size=64, backbone_weights=str(garbage))


def test_model_spec_and_build_from_spec_round_trip():
    spec = model_spec("fcos_resnet18_fpn", 2, ["a", "b"], loss="baseline", img_size=64,
                      loss_options={}, options={"fpn_channels": 32})
    assert spec.stride == 32 and spec.img_size == 64 and spec.class_names == ["a", "b"]
    spec = ModelSpec.from_dict(spec.to_dict())
    torch.manual_seed(0)
    model = build_detector("fcos_resnet18_fpn", 2, loss="baseline", img_size=64, fpn_channels=32)
    rebuilt = build_from_spec(spec)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    rebuilt.eval()
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = model.backbone(model.transform(x)[0].tensors), rebuilt.backbone(rebuilt.transform(x)[0].tensors)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert model_spec("retinanet_resnet18_fpn", 1).img_size == MODELS["retinanet_resnet18_fpn"].default_img_size
    with pytest.raises(HarmonicError, match="class names"):
        model_spec("retinanet_resnet18_fpn", 3, ["a"])


def test_harmonic_and_baseline_share_the_state_dict_layout():
    a = build_detector("retinanet_resnet18_fpn", 2, loss="harmonic", img_size=64, fpn_channels=32)
    b = build_detector("retinanet_resnet18_fpn", 2, loss="baseline", img_size=64, fpn_channels=32)
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict(), strict=True)


def test_operating_point_error_names_the_field_and_value():
    """The spec's check words its error after the spec's fields; a command line rewords it from ``field``/``value``."""
    from harmonic.models.spec import OperatingPointError, check_operating_point

    assert check_operating_point(0.25, 1.0, 7.0) == (0.25, 1.0, 7)
    for args, field, value, message in (((1.0, 0.5, 1), "score_threshold", 1.0, "score threshold 1.0: must be in [0, 1)"),
                                        ((0.1, 0.0, 1), "iou_threshold", 0.0, "NMS IoU threshold 0.0: must be in (0, 1]"),
                                        ((0.1, 0.5, 2.5), "max_det", 2.5,
                                         "max detections 2.5: must be a positive integer")):
        with pytest.raises(OperatingPointError) as info:
            check_operating_point(*args)
        assert (info.value.field, info.value.value, str(info.value)) == (field, value, message)
        assert isinstance(info.value, HarmonicError)
