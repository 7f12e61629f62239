"""compare_detections: the verdict and the first difference it names."""

from __future__ import annotations

import numpy as np

from harmonic.export.verify import compare_detections, synthetic_images


def _graph_out(boxes, scores, classes, k=4):
    b = np.zeros((1, k, 4), np.float32)
    s = np.zeros((1, k), np.float32)
    c = np.zeros((1, k), np.int32)
    n = len(scores)
    b[0, :n], s[0, :n], c[0, :n] = boxes, scores, classes
    return {"num_dets": np.array([[n]], np.int32), "det_boxes": b, "det_scores": s, "det_classes": c}


BOXES = np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32)
REF = [{"boxes": BOXES, "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([1, 0])}]


def test_identical_detections_match():
    res = compare_detections(_graph_out(BOXES, [0.9, 0.4], [1, 0]), REF)
    assert res.ok and res.num_detections == 2 and res.message == "1 images, 2 detections match"


def test_box_within_relative_tolerance_matches_and_beyond_fails():
    ok = compare_detections(_graph_out(BOXES * (1 + 5e-4), [0.9, 0.4], [1, 0]), REF)
    assert ok.ok
    shifted = BOXES.copy()
    shifted[1, 2] += 0.5
    bad = compare_detections(_graph_out(shifted, [0.9, 0.4], [1, 0]), REF)
    assert not bad.ok and bad.message.startswith("image 0 detection 1:")


def test_count_score_and_class_mismatch_named():
    res = compare_detections(_graph_out(BOXES[:1], [0.9], [1]), REF)
    assert not res.ok and res.message == "image 0: 1 detections in ONNX, 2 in PyTorch"
    res = compare_detections(_graph_out(BOXES, [0.9, 0.4003], [1, 0]), REF)
    assert not res.ok and "detection 1" in res.message
    res = compare_detections(_graph_out(BOXES, [0.9, 0.4], [2, 0]), REF)
    assert not res.ok and "detection 0" in res.message and "class 1" in res.message


def test_swapped_order_of_near_equal_scores_still_matches():
    ref = [{"boxes": BOXES, "scores": np.array([0.5, 0.49999], np.float32), "labels": np.array([0, 1])}]
    res = compare_detections(_graph_out(BOXES[::-1], [0.49999, 0.5], [1, 0]), ref)
    assert res.ok and res.num_detections == 2


def test_nonzero_padding_is_an_error():
    out = _graph_out(BOXES, [0.9, 0.4], [1, 0])
    out["det_scores"][0, 3] = 0.1
    res = compare_detections(out, REF)
    assert not res.ok and "rows past num_dets=2" in res.message


def test_synthetic_images_shape_range_and_determinism():
    a, b = synthetic_images(3, 64, seed=5), synthetic_images(3, 64, seed=5)
    assert a.shape == (3, 3, 64, 64) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0.05  # not a flat image


def test_exact_score_ties_pair_with_another_box_but_not_too_many():
    ref = [{"boxes": BOXES, "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([1, 0])}]
    other = BOXES.copy()
    other[1] += 8.0  # the tied twin one stride away
    res = compare_detections(_graph_out(other, [0.9, 0.4], [1, 0]), ref)
    assert res.ok and res.message == "1 images, 2 detections match (1 matched within exact score ties)"
    all_moved = compare_detections(_graph_out(BOXES + 8.0, [0.9, 0.4], [1, 0]), ref)
    assert not all_moved.ok and "2 of 2 detections only match as score ties" in all_moved.message
