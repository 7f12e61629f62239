import numpy as np
import pytest

from harmonic.data.letterbox import PAD_VALUE, letterbox, letterbox_boxes, unletterbox_boxes


@pytest.mark.parametrize("h,w", [(100, 200), (333, 127), (64, 64), (1, 500)])
def test_letterbox_geometry_and_round_trip(h, w):
    img = np.full((h, w, 3), 7, dtype=np.uint8)
    out, info = letterbox(img, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert info.scale == pytest.approx(128 / max(h, w))
    # content is centred: padding only on the short side, split evenly (within 1 px)
    content = np.argwhere(out[..., 0] == 7)
    (y0, x0), (y1, x1) = content.min(0), content.max(0)
    assert abs(y0 - (127 - y1)) <= 1 and abs(x0 - (127 - x1)) <= 1
    assert (out[..., 0] == PAD_VALUE).sum() + (out[..., 0] == 7).sum() == 128 * 128
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.5, w * 0.5, h * 0.75]], dtype=np.float32)
    back = unletterbox_boxes(letterbox_boxes(boxes, info), info)
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)
    # the full-image box maps onto the content area
    lb = letterbox_boxes(boxes[:1], info)[0]
    assert lb[0] == pytest.approx(x0, abs=1) and lb[2] == pytest.approx(x1 + 1, abs=1)


def test_unletterbox_clips_to_image():
    _, info = letterbox(np.zeros((50, 100, 3), np.uint8), 64)
    out = unletterbox_boxes(np.array([[-10, -10, 200, 200]], np.float32), info)
    np.testing.assert_allclose(out, [[0, 0, 100, 50]])
