import json

import cv2
import numpy as np
import pytest

from harmonic.data import synth
from harmonic.data.dataset_file import load_dataset_config
from harmonic.data.readers import read_split
from harmonic.errors import HarmonicError


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_valid(tmp_path):
    a = synth.generate(tmp_path / "a", 12, 4, seed=3, img_size=96, num_classes=6, workers=1)
    synth.generate(tmp_path / "b", 12, 4, seed=3, img_size=96, num_classes=6, workers=1)
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert ta == tb and len(ta) == 12 + 4 + 2 + 1
    synth.generate(tmp_path / "c", 12, 4, seed=4, img_size=96, num_classes=6, workers=1)
    assert _tree(tmp_path / "c")["images/train/000001.jpg"] != ta["images/train/000001.jpg"]

    cfg = load_dataset_config(a)
    assert cfg.names == ["circle", "triangle", "star", "blob", "bar", "crescent"]
    assert {s.format for s in cfg.splits.values()} == {"coco"}
    n_obj = 0
    for split, n in (("train", 12), ("val", 4)):
        recs = read_split(cfg.splits[split], cfg.names)
        assert len(recs) == n
        for r in recs:
            img = cv2.imread(str(cfg.splits[split].images / r.file_name))
            assert img.shape[:2] == (r.height, r.width) and max(r.width, r.height) == 96
            assert len(r.labels) >= 1
            assert (r.boxes[:, :2] >= 0).all() and (r.boxes[:, 2] <= r.width).all()
            assert (r.boxes[:, 3] <= r.height).all()
            assert ((r.boxes[:, 2:] - r.boxes[:, :2]) >= 1).all()
            assert ((r.labels >= 0) & (r.labels < 6)).all() and not r.ignore.any()
            n_obj += len(r.labels)
    assert n_obj >= 16
    coco = json.loads((tmp_path / "a/annotations/train.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5, 6]
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2, 3, 4, 5, 6}


def test_boxes_are_full_object_extents_and_occlusion_is_bounded():
    overlaps = 0
    for i in range(30):
        img, boxes, labels, masks = synth.render_scene(1, 0, i, 128, 3)
        assert len(masks) == len(boxes) == len(labels) and img.dtype == np.uint8
        on_top = np.zeros(img.shape[:2], bool)
        for k in range(len(masks) - 1, -1, -1):  # topmost first
            m = masks[k] > 0
            x, y, w, h = cv2.boundingRect(masks[k])
            # the box is the full object's extent, hidden parts included
            np.testing.assert_array_equal(boxes[k], [x, y, x + w, y + h])
            visible = (m & ~on_top).sum() / m.sum()
            assert visible >= synth.MIN_VISIBLE
            overlaps += visible < 0.999
            on_top |= m
    assert overlaps >= 5  # occlusion does happen


def test_object_pixels_stand_out():
    # a single-object scene: the object's pixels differ from the ring of background around its box
    img, boxes, labels, masks = synth.render_scene(0, 0, 5, 128, 1)
    m = masks[-1] > 0
    inside = img[m].astype(float).mean(0)
    x1, y1, x2, y2 = boxes[-1].astype(int)
    ring = np.zeros_like(m)
    ring[max(0, y1 - 3):y2 + 3, max(0, x1 - 3):x2 + 3] = True
    ring &= ~np.any([mk > 0 for mk in masks], axis=0)
    outside = img[ring].astype(float).mean(0)
    assert np.abs(inside - outside).sum() > 30


def test_cli(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path / "d"), "--num-train", "2", "--num-val", "1", "--num-test", "1",
                       "--img-size", "64", "--classes", "2", "--workers", "1"]) == 0
    assert "2 train + 1 val + 1 test images" in capsys.readouterr().out
    cfg = load_dataset_config(tmp_path / "d/dataset.yaml")
    assert cfg.names == ["circle", "triangle"] and sorted(cfg.splits) == ["test", "train", "val"]
    with pytest.raises(HarmonicError, match="--classes must be 1..8"):
        synth.main(["--out", str(tmp_path / "e"), "--classes", "9"])


def test_output_does_not_depend_on_worker_processes(tmp_path):
    synth.generate(tmp_path / "one", 64, 0, seed=2, img_size=48, workers=1)
    synth.generate(tmp_path / "two", 64, 0, seed=2, img_size=48, workers=2)  # process pool path
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")


def test_interrupted_regeneration_leaves_no_dataset_yaml(tmp_path, monkeypatch):
    """dataset.yaml marks a complete dataset: a regeneration stopped half-way must not leave the old one."""
    out = tmp_path / "d"
    yaml_path = synth.generate(out, 3, 2, seed=0, img_size=48, workers=1)
    assert yaml_path.is_file()
    real = synth._run_jobs
    calls = []

    def stop_on_val(jobs, workers):
        calls.append(len(jobs))
        if len(calls) == 2:  # train re-rendered, Ctrl-C during val
            raise KeyboardInterrupt
        return real(jobs, workers)

    monkeypatch.setattr(synth, "_run_jobs", stop_on_val)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(out, 4, 2, seed=1, img_size=48, workers=1)
    assert calls == [4, 2] and not yaml_path.exists()
    assert not list(out.rglob("*.tmp*"))
    monkeypatch.setattr(synth, "_run_jobs", real)
    assert synth.generate(out, 4, 2, seed=1, img_size=48, workers=1) == yaml_path
    assert len(read_split(load_dataset_config(yaml_path).splits["train"], synth.class_names(3))) == 4


def test_test_split_is_held_out_and_leaves_train_and_val_unchanged(tmp_path):
    """Three splits, train / val / test; the test images come from their own stream, after train and val."""
    plain = synth.generate(tmp_path / "plain", 5, 3, seed=1, img_size=64, workers=1)
    full = synth.generate(tmp_path / "full", 5, 3, seed=1, img_size=64, workers=1, num_test=4)
    cfg = load_dataset_config(full)
    assert sorted(cfg.splits) == ["test", "train", "val"] and "test" not in load_dataset_config(plain).splits
    for split in ("train", "val"):
        assert ((tmp_path / "plain" / "annotations" / f"{split}.json").read_bytes()
                == (tmp_path / "full" / "annotations" / f"{split}.json").read_bytes())
        for f in (tmp_path / "plain" / "images" / split).iterdir():
            assert f.read_bytes() == (tmp_path / "full" / "images" / split / f.name).read_bytes()
    test = json.loads((tmp_path / "full" / "annotations" / "test.json").read_text())
    assert len(test["images"]) == 4 and test["annotations"]
    test_bytes = {f.read_bytes() for f in (tmp_path / "full" / "images" / "test").iterdir()}
    other = {f.read_bytes() for s in ("train", "val") for f in (tmp_path / "full" / "images" / s).iterdir()}
    assert len(test_bytes) == 4 and not test_bytes & other
