"""Duplicate image ids are errors; every ground-truth form keeps its own ids."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from harmonic.errors import HarmonicError
from harmonic.evaluation import evaluate

NAMES = ["b", "a"]
IDS = {"b": 1, "a": 7}  # non-contiguous, and not index + 1 for "a"


def _write(tmp_path):
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), np.zeros((40, 50, 3), np.uint8))
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 50, "height": 40})
        for k, name in enumerate(NAMES):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": IDS[name],
                         "bbox": [2 + 20 * k, 3, 15, 12], "area": 180, "iscrowd": 0})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 7, "name": "a"}, {"id": 1, "name": "b"}]}
    (tmp_path / "val.json").write_text(json.dumps(gt))
    (tmp_path / "data.yaml").write_text("names: [b, a]\nval: {images: images, annotations: val.json}\n")
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in anns]
    return gt, dets


def test_every_ground_truth_form_reads_the_files_own_ids(tmp_path):
    gt, dets = _write(tmp_path)
    for source, names in ((str(tmp_path / "val.json"), None), (str(tmp_path / "val.json"), NAMES),
                          (f"{tmp_path / 'data.yaml'}:val", None), (f"{tmp_path / 'data.yaml'}:val", NAMES)):
        r = evaluate(source, dets, names=names)
        assert r["coco"]["AP"] == pytest.approx(1.0), (source, names)
        assert set(r["per_class"]) == {"a", "b"}


def test_dataset_yaml_no_longer_expects_index_plus_one(tmp_path):
    _, dets = _write(tmp_path)
    shifted = [{**d, "category_id": NAMES.index("a" if d["category_id"] == 7 else "b") + 1} for d in dets]
    # index + 1 ids: "a" becomes 2, which is not a category of the file
    with pytest.raises(HarmonicError, match="category_id not in the ground truth"):
        evaluate(f"{tmp_path / 'data.yaml'}:val", shifted)


def test_duplicate_image_ids_are_errors(tmp_path):
    from harmonic.data.readers import read_coco

    gt, dets = _write(tmp_path)
    gt["images"][1]["id"] = gt["images"][0]["id"]
    (tmp_path / "dup.json").write_text(json.dumps(gt))
    with pytest.raises(HarmonicError, match=r"dup\.json: duplicate image id 10 \('0\.png' and '1\.png'\)"):
        read_coco(tmp_path / "dup.json", NAMES)
    with pytest.raises(HarmonicError, match=r"dup\.json: duplicate image id 10"):
        evaluate(str(tmp_path / "dup.json"), dets)
