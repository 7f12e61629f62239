import numpy as np
import pytest

from harmonic.boxes import batched_nms, box_iou, nms, xywh_to_xyxy, xyxy_to_xywh


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])  # empty box: no NaN


def test_nms_matches_greedy_rule():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10.5], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.95, 0.1])
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [2, 3]  # 2 suppresses 0 and 1; 3 is far away
    assert nms(boxes, scores, 1.0).tolist() == [2, 0, 1, 3]


def test_batched_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 1, 0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_nms_agrees_with_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.ops import batched_nms as tv_batched_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2))
    wh = rng.uniform(5, 40, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    classes = rng.integers(0, 3, 300)
    ours = batched_nms(boxes, scores, classes, 0.5)
    ref = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5).numpy()
    assert ours.tolist() == ref.tolist()


def test_xywh_round_trip():
    b = np.array([[1.5, 2.0, 11.5, 7.0]])
    np.testing.assert_allclose(xyxy_to_xywh(b), [[1.5, 2.0, 10.0, 5.0]])
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b)
