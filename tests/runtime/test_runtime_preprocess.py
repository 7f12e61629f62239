import cv2
import numpy as np
import pytest

from harmonic.data.images import ImageDecodeError, decode_image
from harmonic.data.letterbox import letterbox_boxes
from harmonic.runtime.postprocess import Detections, coco_results, unletterbox
from harmonic.runtime.preprocess import pad_batch, preprocess, to_batch


def _write(path, img):
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    buf.tofile(str(path))
    return path


def test_grayscale_rgba_16bit_are_converted_to_rgb8(tmp_path):
    gray = np.full((5, 7), 200, np.uint8)
    out = decode_image(_write(tmp_path / "g.png", gray))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8 and (out == 200).all()

    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 250, 128  # B=10, R=250
    out = decode_image(_write(tmp_path / "a.png", bgra))
    assert out.shape == (4, 6, 3) and tuple(out[0, 0]) == (250, 0, 10)

    deep = np.full((3, 3, 3), 0, np.uint16)
    deep[..., 2] = 65535  # red in BGR order
    deep[..., 1] = 256 * 100
    out = decode_image(_write(tmp_path / "d.png", deep))
    assert out.dtype == np.uint8 and tuple(out[1, 1]) == (255, 100, 0)


def test_unicode_path(tmp_path):
    p = _write(tmp_path / "ünïcødé 图.jpg", np.zeros((8, 9, 3), np.uint8))
    assert decode_image(p).shape == (8, 9, 3)


@pytest.mark.parametrize("kind", ["text", "empty", "truncated_jpeg", "truncated_png", "missing"])
def test_bad_files_raise_decode_error_naming_the_file(tmp_path, kind):
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / f"bad_{kind}.jpg"
    if kind == "text":
        p.write_text("this is not an image")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated_jpeg":
        data = cv2.imencode(".jpg", img)[1].tobytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_png":
        p = tmp_path / "bad.png"
        data = cv2.imencode(".png", img)[1].tobytes()
        p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=p.name):
        decode_image(p)


@pytest.mark.parametrize("h,w", [(37, 91), (91, 37), (1, 63), (63, 63), (101, 7)])
def test_letterbox_unletterbox_round_trip_odd_sizes(h, w):
    img = np.full((h, w, 3), 50, np.uint8)
    x, info = preprocess(img, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert x.max() <= 1.0 and x[0].min() == pytest.approx(50 / 255)  # content present
    boxes = np.array([[0, 0, w, h], [w / 3, h / 5, w / 2, h / 2]], np.float32)
    det = Detections(letterbox_boxes(boxes, info), np.array([0.9, 0.4], np.float32), np.array([0, 2]))
    back = unletterbox(det, info)
    np.testing.assert_allclose(back.boxes, boxes, rtol=1e-5, atol=1e-3)
    res = coco_results(back, image_id=7, file_name="a.jpg")
    assert res[1]["category_id"] == 3 and res[0]["image_id"] == 7
    assert res[0]["bbox"] == pytest.approx([0, 0, w, h], abs=0.01)


def test_to_batch_and_pad():
    chws = [np.full((3, 4, 4), v, np.uint8) for v in (0, 255)]
    b = to_batch(chws)
    assert b.shape == (2, 3, 4, 4) and b[1].min() == 1.0 and b[0].max() == 0.0
    padded = pad_batch(b, 5)
    assert padded.shape == (5, 3, 4, 4) and padded[2:].sum() == 0


def test_jpeg_size_and_reduce_factor(tmp_path):
    from harmonic.data.images import jpeg_size, reduce_factor

    p = _write(tmp_path / "x.jpg", np.zeros((123, 457, 3), np.uint8))
    assert jpeg_size(np.fromfile(str(p), np.uint8)) == (457, 123)
    assert jpeg_size(np.frombuffer(b"\x89PNG....", np.uint8)) is None
    assert reduce_factor(640, 480, 320) == 2 and reduce_factor(640, 480, 640) == 1
    assert reduce_factor(4000, 3000, 320) == 8 and reduce_factor(1280, 720, 320) == 4


def test_fast_decode_keeps_geometry_and_is_close(tmp_path):
    from harmonic.runtime.pipeline import load_one

    yy, xx = np.mgrid[0:480, 0:640]
    img = np.stack([(xx // 3) % 256, (yy // 2) % 256, ((xx + yy) // 5) % 256], -1).astype(np.uint8)
    p = _write(tmp_path / "big.jpg", img)
    full, info_full, *_ = load_one(p, 160)
    fast, info_fast, *_ = load_one(p, 160, True)
    assert info_full == info_fast and info_fast.orig_w == 640 and info_fast.orig_h == 480
    assert full.shape == fast.shape == (3, 160, 160)
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 3.0


def test_jpeg_with_trailing_bytes_is_not_truncated(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    p = tmp_path / "trailing.jpg"
    p.write_bytes(data + b"\x00" * 5000 + b"vendor trailer")
    assert decode_image(p).shape == (40, 50, 3)
