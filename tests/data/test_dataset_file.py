import json

import pytest

from harmonic.data.dataset_file import load_dataset_config
from harmonic.errors import HarmonicError


def _layout(tmp_path):
    for d in ("images/train", "images/val", "labels/val", "voc/xml"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (tmp_path / "labels/val/a.txt").write_text("")
    (tmp_path / "voc/xml/a.xml").write_text("<annotation/>")


def test_load_and_detect_formats(tmp_path):
    _layout(tmp_path)
    y = tmp_path / "data.yaml"
    y.write_text("names: [circle, triangle]\n"
                 "train: {images: images/train, annotations: ann.json}\n"
                 "val: {images: images/val, annotations: labels/val}\n"
                 "test: {images: images/val, annotations: voc/xml}\n")
    cfg = load_dataset_config(y)
    assert cfg.names == ["circle", "triangle"]
    assert cfg.root == tmp_path.resolve() and cfg.path == y.resolve()
    assert {k: s.format for k, s in cfg.splits.items()} == {"train": "coco", "val": "yolo", "test": "voc"}
    assert cfg.splits["train"].images == (tmp_path / "images/train").resolve()
    assert cfg.splits["train"].annotations.is_absolute()


def test_names_mapping_yolo_style(tmp_path):
    _layout(tmp_path)
    y = tmp_path / "d.yaml"
    y.write_text("names: {0: a, 1: b}\ntrain: {images: images/train, annotations: ann.json}\n")
    assert load_dataset_config(y).names == ["a", "b"]


@pytest.mark.parametrize("body,msg", [
    ("train: {images: images/train, annotations: ann.json}\n", "missing key 'names'"),
    ("names: []\ntrain: {images: images/train, annotations: ann.json}\n", "'names' is empty"),
    ("names: [a]\ntrain: {images: images/train}\n", "needs 'images' and 'annotations'"),
    ("names: [a]\ntrain: {images: images/train, annotations: nope.json}\n", "not found"),
    ("names: [a]\ntrain: {images: images/train, annotations: images/val}\n", "no .xml"),
    ("names: [a]\ntrain: {images: images/train, annotations: ann.json, format: kitti}\n", "unknown format"),
    ("names: [a]\ntrain: {images: missing, annotations: ann.json}\n", "images directory"),
    ("names: [a\n", "not valid YAML"),
])
def test_errors_name_the_yaml(tmp_path, body, msg):
    _layout(tmp_path)
    y = tmp_path / "bad.yaml"
    y.write_text(body)
    with pytest.raises(HarmonicError, match=msg) as exc:
        load_dataset_config(y)
    assert str(exc.value).startswith(str(y.resolve()))
    assert "\n" not in str(exc.value)


def test_missing_yaml(tmp_path):
    with pytest.raises(HarmonicError, match="dataset file not found"):
        load_dataset_config(tmp_path / "none.yaml")
