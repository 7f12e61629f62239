import json
import logging

import cv2
import numpy as np
import pytest

from harmonic.data.readers import (
    ImageRecord,
    image_size,
    read_coco,
    read_voc,
    read_yolo,
    records_to_coco,
    write_coco,
    write_voc,
    write_yolo,
)
from harmonic.errors import HarmonicError

NAMES = ["circle", "triangle", "star"]


def _records() -> list[ImageRecord]:
    return [
        ImageRecord(1, "a.jpg", 64, 48, [[1.5, 2.0, 30.25, 40.0], [10, 10, 20, 20]], [0, 2], [False, True]),
        ImageRecord(2, "b.png", 40, 80, [[0, 0, 40, 80]], [1], [False]),
        ImageRecord(3, "c.jpg", 32, 32),  # no objects
    ]


def _assert_same(a: list[ImageRecord], b: list[ImageRecord], atol: float = 0.0, ignore: bool = True) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert (ra.image_id, ra.file_name, ra.width, ra.height) == (rb.image_id, rb.file_name, rb.width, rb.height)
        assert rb.boxes.dtype == np.float32 and rb.labels.dtype == np.int64 and rb.ignore.dtype == bool
        np.testing.assert_allclose(rb.boxes, ra.boxes, atol=atol, rtol=0)
        np.testing.assert_array_equal(rb.labels, ra.labels)
        if ignore:
            np.testing.assert_array_equal(rb.ignore, ra.ignore)


def _write_images(d, records):
    d.mkdir(parents=True, exist_ok=True)
    for r in records:
        cv2.imwrite(str(d / r.file_name), np.zeros((r.height, r.width, 3), np.uint8))


def test_coco_round_trip(tmp_path):
    recs = _records()
    path = write_coco(recs, NAMES, tmp_path / "ann" / "x.json")
    _assert_same(recs, read_coco(path, NAMES))
    d = records_to_coco(recs, NAMES)
    assert [c["id"] for c in d["categories"]] == [1, 2, 3]
    assert d["annotations"][0]["category_id"] == 1 and d["annotations"][1]["category_id"] == 3
    assert d["annotations"][0]["bbox"] == pytest.approx([1.5, 2.0, 28.75, 38.0])
    assert d["annotations"][0]["area"] == pytest.approx(28.75 * 38.0)
    assert [a["iscrowd"] for a in d["annotations"]] == [0, 1, 0]


def test_coco_maps_categories_by_name(tmp_path):
    data = {"images": [{"id": 7, "file_name": "x.jpg", "width": 100, "height": 50}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [5, 5, 10, 10], "iscrowd": 1}],
            "categories": [{"id": 90, "name": "star"}, {"id": 5, "name": "circle"}]}
    p = tmp_path / "ext.json"
    p.write_text(json.dumps(data))
    (r,) = read_coco(p, NAMES)
    np.testing.assert_array_equal(r.labels, [2, 0])
    np.testing.assert_array_equal(r.ignore, [False, True])
    np.testing.assert_allclose(r.boxes, [[1, 2, 4, 6], [5, 5, 15, 15]])
    # names=None: the file's categories sorted by id -> circle (5) = 0, star (90) = 1
    (r,) = read_coco(p)
    np.testing.assert_array_equal(r.labels, [1, 0])


def test_coco_unknown_class_and_malformed(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 10, "height": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
            "categories": [{"id": 1, "name": "hexagon"}]}
    p = tmp_path / "u.json"
    p.write_text(json.dumps(data))
    with pytest.raises(HarmonicError, match=r"u\.json.*unknown class 'hexagon'"):
        read_coco(p, NAMES)
    data["categories"] = [{"id": 2, "name": "circle"}]
    p.write_text(json.dumps(data))
    with pytest.raises(HarmonicError, match=r"u\.json.*unknown category id 1"):
        read_coco(p, NAMES)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(HarmonicError, match=r"bad\.json: malformed json"):
        read_coco(bad, NAMES)
    with pytest.raises(HarmonicError, match=r"missing\.json: annotation file not found"):
        read_coco(tmp_path / "missing.json", NAMES)


def test_clipping_and_dropping_warn_once_with_counts(tmp_path, caplog):
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 50},
                       {"id": 2, "file_name": "y.jpg", "width": 100, "height": 50}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-10, 10, 30, 20]},   # clipped
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 40, 30, 30]},    # clipped
                {"id": 3, "image_id": 2, "category_id": 1, "bbox": [120, 10, 10, 10]},   # outside: dropped
                {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 10]},       # zero area: dropped
                {"id": 5, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10]}],     # fine
            "categories": [{"id": 1, "name": "circle"}]}
    p = tmp_path / "clip.json"
    p.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="harmonic.data.readers"):
        a, b = read_coco(p, NAMES)
    np.testing.assert_allclose(a.boxes, [[0, 10, 20, 30], [90, 40, 100, 50]])
    np.testing.assert_allclose(b.boxes, [[5, 5, 15, 15]])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "clip.json" in warnings[0] and "2 box(es) partly outside" in warnings[0] and "2 box(es) with zero" in warnings[0]


def test_voc_round_trip_and_difficult(tmp_path):
    recs = _records()
    _write_images(tmp_path / "img", recs)
    write_voc(recs, NAMES, tmp_path / "xml")
    text = (tmp_path / "xml" / "a.xml").read_text()
    assert "<xmin>2.5</xmin>" in text and "<difficult>1</difficult>" in text  # 1-based corners
    _assert_same(recs, read_voc(tmp_path / "xml", tmp_path / "img", NAMES))


def test_voc_files_are_one_group_on_a_full_disk(tmp_path, monkeypatch):
    """The disk fills at the second file: the earlier files stay as they were, nothing is left behind."""
    from harmonic.errors import WriteFailure
    from tests.faults import full_disk, snapshot

    recs = _records()
    xml = tmp_path / "xml"
    write_voc(recs, NAMES, xml)
    first = (xml / "a.xml").stat().st_size
    moved = [ImageRecord(r.image_id, r.file_name, r.width, r.height, r.boxes + 1, r.labels, r.ignore) for r in recs]
    before = snapshot(xml)
    full_disk(monkeypatch, xml, free=first + 10)
    with pytest.raises(WriteFailure, match=r"b\.xml: no space left on device"):
        write_voc(moved, NAMES, xml)
    assert snapshot(xml) == before


def test_voc_errors_and_size_from_image(tmp_path):
    (tmp_path / "xml").mkdir()
    _write_images(tmp_path / "img", [ImageRecord(1, "q.jpg", 33, 21)])
    (tmp_path / "xml" / "q.xml").write_text(
        "<annotation><filename>q.jpg</filename><object><name>circle</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>5</ymax></bndbox></object></annotation>")
    (r,) = read_voc(tmp_path / "xml", tmp_path / "img", NAMES)
    assert (r.width, r.height) == (33, 21)
    np.testing.assert_allclose(r.boxes, [[0, 0, 10, 5]])
    (tmp_path / "xml" / "q.xml").write_text(
        "<annotation><filename>q.jpg</filename><object><name>pentagon</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>5</ymax></bndbox></object></annotation>")
    with pytest.raises(HarmonicError, match=r"q\.xml: unknown class 'pentagon'"):
        read_voc(tmp_path / "xml", tmp_path / "img", NAMES)
    (tmp_path / "xml" / "q.xml").write_text("<annotation><filename>q.jpg</filename>")
    with pytest.raises(HarmonicError, match=r"q\.xml: malformed xml"):
        read_voc(tmp_path / "xml", tmp_path / "img", NAMES)


def test_yolo_round_trip(tmp_path):
    recs = [ImageRecord(i + 1, r.file_name, r.width, r.height, r.boxes[~r.ignore], r.labels[~r.ignore],
                        r.ignore[~r.ignore]) for i, r in enumerate(_records())]
    _write_images(tmp_path / "img", recs)
    write_yolo(recs, tmp_path / "labels")
    (tmp_path / "labels" / "c.txt").unlink()  # an image without a label file has no objects
    _assert_same(recs, read_yolo(tmp_path / "labels", tmp_path / "img", NAMES), atol=1e-4)


def test_yolo_errors(tmp_path, caplog):
    _write_images(tmp_path / "img", [ImageRecord(1, "a.png", 20, 10)])
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(HarmonicError, match=r"a\.txt:1: unknown class id 3"):
        read_yolo(tmp_path / "labels", tmp_path / "img", NAMES)
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 zz 0.1 0.1\n")
    with pytest.raises(HarmonicError, match=r"a\.txt:1: malformed"):
        read_yolo(tmp_path / "labels", tmp_path / "img", NAMES)
    # polygon row -> its bounding box; a label file without image is reported
    (tmp_path / "labels" / "a.txt").write_text("2 0.1 0.2 0.5 0.2 0.3 0.9\n")
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with caplog.at_level(logging.WARNING, logger="harmonic.data.readers"):
        (r,) = read_yolo(tmp_path / "labels", tmp_path / "img", NAMES)
    np.testing.assert_allclose(r.boxes, [[2, 2, 10, 9]], atol=1e-5)
    assert any("1 label file(s) have no matching image" in m.getMessage() for m in caplog.records)


def test_image_size_from_headers(tmp_path):
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp"):
        cv2.imwrite(str(tmp_path / f"x{ext}"), img)
        assert image_size(tmp_path / f"x{ext}") == (53, 37)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(HarmonicError, match=r"bad\.jpg: not an image"):
        image_size(tmp_path / "bad.jpg")
