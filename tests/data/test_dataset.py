import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from harmonic.data import synth  # noqa: E402
from harmonic.data.dataset import DetectionDataset, collate  # noqa: E402
from harmonic.data.dataset_file import load_dataset_config  # noqa: E402
from harmonic.data.readers import ImageRecord, read_split  # noqa: E402
from harmonic.data.transforms import apply_transforms, build_train_transforms  # noqa: E402
from harmonic.errors import HarmonicError  # noqa: E402


def _one_object(tmp_path, w=120, h=80, star=True):
    """A non-square image with one white star (or ellipse) on dark grey; its record (plus one ignored box)."""
    img = np.full((h, w, 3), 30, np.uint8)
    if star:
        pts = synth._ring(10, np.where(np.arange(10) % 2 == 0, 1.0, 0.45)) * 25 + [70, 45]
    else:  # blunt: no thin tips that resampling could fade below the threshold
        pts = synth._ring(64) * [30, 18] + [70, 45]
    mask = synth._mask(([pts], []), h, w)
    img[mask > 0] = 255
    x, y, bw, bh = cv2.boundingRect(mask)
    cv2.imwrite(str(tmp_path / "one.png"), img)
    rec = ImageRecord(5, "one.png", w, h, [[x, y, x + bw, y + bh], [0, 0, 10, 10]], [2, 0], [False, True])
    return rec


def _white_extent(image):
    ys, xs = np.nonzero(image.amin(0).numpy() > 0.5)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_item_shapes_and_letterboxed_box_matches_object(tmp_path):
    rec = _one_object(tmp_path)
    ds = DetectionDataset([rec], tmp_path, 64, train=False)
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # letterbox: 120x80 -> 64x43, padded top/bottom with grey 114
    assert float(image[0, 0, 0]) == pytest.approx(114 / 255)
    assert set(target) == {"boxes", "labels", "image_id"}
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["image_id"].dtype == torch.int64 and int(target["image_id"]) == 5
    # the ignored (crowd/difficult) box is not a training target; labels are index + 1
    assert target["labels"].tolist() == [3]
    np.testing.assert_allclose(target["boxes"][0].numpy(), _white_extent(image), atol=1.5)

    images, targets = collate([ds[0], ds[0]])
    assert images.shape == (2, 3, 64, 64) and len(targets) == 2


def test_flip_keeps_boxes_consistent(tmp_path):
    rec = _one_object(tmp_path)
    ds = DetectionDataset([rec], tmp_path, 64, train=False)
    image, target = ds[0]
    flip = build_train_transforms(64, hflip=1.0, scale=(1.0, 1.0), translate=0.0, color=False)
    u8 = (image * 255).round().to(torch.uint8)
    img2, boxes2, labels2 = apply_transforms(flip, u8, target["boxes"], target["labels"])
    b = target["boxes"][0]
    np.testing.assert_allclose(boxes2[0].numpy(), [64 - b[2], b[1], 64 - b[0], b[3]], atol=1e-4)
    assert torch.equal(img2, u8.flip(-1)) and labels2.tolist() == [3]


def test_random_augmentation_keeps_boxes_on_the_object(tmp_path):
    rec = _one_object(tmp_path, star=False)
    geo = build_train_transforms(64, color=False)  # flip + scale/translate jitter, no colour change
    ds = DetectionDataset([rec], tmp_path, 64, train=True, transforms=geo)
    torch.manual_seed(0)
    checked = 0
    for _ in range(12):
        image, target = ds[0]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        if len(target["boxes"]) == 0:  # pushed out of the canvas and sanitised away
            assert len(target["labels"]) == 0
            continue
        box = target["boxes"][0].numpy()
        assert (box[2:] > box[:2]).all() and (box >= 0).all() and (box <= 64).all()
        np.testing.assert_allclose(box, _white_extent(image), atol=2.0)
        checked += 1
    assert checked >= 8
    # the default augmentation (with colour) also runs and keeps the format
    aug = DetectionDataset([rec], tmp_path, 64, train=True)
    image, target = aug[0]
    assert image.shape == (3, 64, 64) and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64


def test_missing_and_corrupt_images(tmp_path):
    rec = ImageRecord(1, "nope.jpg", 10, 10)
    with pytest.raises(HarmonicError, match=r"nope\.jpg: cannot read"):
        DetectionDataset([rec], tmp_path, 32, train=False)[0]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(HarmonicError, match=r"bad\.jpg: not an image"):
        DetectionDataset([ImageRecord(1, "bad.jpg", 10, 10)], tmp_path, 32, train=False)[0]
    cv2.imwrite(str(tmp_path / "size.png"), np.zeros((12, 10, 3), np.uint8))
    with pytest.raises(HarmonicError, match=r"size\.png: image is 10x12 but its annotations say 10x10"):
        DetectionDataset([ImageRecord(1, "size.png", 10, 10)], tmp_path, 32, train=False)[0]


def test_datasets_from_synth(tmp_path):
    torch.manual_seed(0)
    cfg = load_dataset_config(synth.generate(tmp_path, 3, 2, img_size=64, workers=1))
    tr, va = cfg.splits["train"], cfg.splits["val"]
    val_records = read_split(va, cfg.names)
    train_ds = DetectionDataset(read_split(tr, cfg.names), tr.images, 48, train=True, augment=True)
    val_ds = DetectionDataset(val_records, va.images, 48, train=False)
    assert len(train_ds) == 3 and len(val_ds) == 2 and len(val_records) == 2
    assert train_ds.augment and not val_ds.augment
    images, targets = collate([val_ds[0], val_ds[1]])
    assert images.shape == (2, 3, 48, 48)
    for t, r in zip(targets, val_records):
        assert len(t["boxes"]) == len(r.boxes)
        assert ((t["labels"] >= 1) & (t["labels"] <= 3)).all()
        np.testing.assert_allclose(t["boxes"].numpy(), r.boxes * 48 / max(r.width, r.height)
                                   + np.tile([(48 - round(r.width * 48 / max(r.width, r.height))) // 2,
                                              (48 - round(r.height * 48 / max(r.width, r.height))) // 2], 2),
                                   atol=1e-3)
    image, target = train_ds[0]
    assert image.shape == (3, 48, 48)
