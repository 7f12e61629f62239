import numpy as np
import pytest

from harmonic.boxes import (
    batched_nms,
    box_area,
    box_iou,
    elementwise_box_iou,
    nms,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


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


def _awkward_boxes(rng: np.random.Generator, n: int, dtype) -> np.ndarray:
    """``[n, 4]`` boxes with every awkward case: ordinary, zero width/height, points, inverted,
    identical, touching edges, integer corners (exact ties), huge and tiny coordinates."""
    xy = rng.uniform(0, 60, (n, 2))
    wh = rng.uniform(0, 30, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    k = n // 8
    boxes[:k, 2] = boxes[:k, 0]  # zero width
    boxes[k:2 * k, 3] = boxes[k:2 * k, 1]  # zero height
    boxes[2 * k:3 * k, 2:] = boxes[2 * k:3 * k, :2]  # points
    boxes[3 * k:4 * k, [0, 2]] = boxes[3 * k:4 * k, [2, 0]]  # inverted
    boxes[4 * k:5 * k] = boxes[5 * k:6 * k]  # identical pairs
    boxes[6 * k:7 * k:2, 0] = boxes[6 * k + 1:7 * k:2, 2]  # touching: one box starts where the next one ends
    boxes[7 * k:] = np.round(boxes[7 * k:])  # integer corners: many exactly equal IoUs
    boxes[:4] *= 1e6
    boxes[4:8] *= 1e-3
    return boxes.astype(dtype)


def _matrix_formula(a, b):
    """Every-pair IoU written out: max/min corners, clipped extents, areas, union, division where it is > 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _pair_formula(a, b):
    """The same IoU of ``a[i]`` with ``b[i]``, written per coordinate."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _where_formula(a, b):
    """The every-pair IoU with the areas from ``box_area`` and ``np.where`` for the empty unions."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_iou_is_bit_identical_to_the_written_out_formulas(dtype):
    """One IoU for the evaluation: ``box_iou`` (COCO matching, NMS ranking) and ``elementwise_box_iou``
    (best-IoU matching) equal the written-out formulas to the last bit, on boxes with every awkward
    case, so matching decisions that compare IoUs for equality cannot move. Both compute in float64
    (float32 boxes are widened first, as the evaluation's own boxes are float64)."""
    rng = np.random.default_rng(7)
    a, b = _awkward_boxes(rng, 240, dtype), _awkward_boxes(rng, 160, dtype)
    b[:24] = a[150:174]  # the same boxes on both sides
    b[24:48] = a[120:144] + np.array([1, 0, 1, 0], dtype) * (a[120:144, 2:3] - a[120:144, 0:1])  # touching a's edge
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    m = box_iou(a, b)
    assert m.dtype == np.float64 and m.shape == (240, 160)
    for ref in (_matrix_formula(a64, b64), _where_formula(a, b)):
        assert np.array_equal(m, ref) and m.tobytes() == ref.tobytes()
    assert (m == 1).sum() >= 24 and (m > 0).sum() > 1000 and (m == 0).sum() > 1000  # the awkward cases are there
    assert np.all(m[np.arange(120, 144), np.arange(24, 48)] == 0)  # touching boxes: no overlap
    e = elementwise_box_iou(a[:160], b)
    ref = _pair_formula(a64[:160], b64)
    assert e.dtype == np.float64 and np.array_equal(e, ref) and e.tobytes() == ref.tobytes()
    assert np.array_equal(e, np.diagonal(m[:160]))  # one formula: the pairs are the matrix's diagonal
    same = elementwise_box_iou(a, a)
    assert np.array_equal(same, (box_area(a) > 0).astype(np.float64))  # a box with itself: 1, or 0 when empty
    assert box_iou(a[:0], b).shape == (0, 160) and elementwise_box_iou(a[:0], b[:0]).shape == (0,)
