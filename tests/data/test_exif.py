"""One EXIF policy for every decode path, and the odd images users have."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from harmonic.data.exif import apply_orientation, jpeg_orientation
from harmonic.data.readers import image_size, read_yolo
from harmonic.data.images import ImageDecodeError, decode_image, decode_image_for

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")


def _phone_photo(path, orientation: int = 6, size=(80, 40)):
    """A JPEG stored ``size`` (w, h) with an EXIF orientation tag: a left half red, right half blue."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    arr[: h // 4, :] = (0, 255, 0)  # a green top band, to tell flips from rotations
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, "JPEG", quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pil_exif_transpose(orientation):
    arr = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    np.testing.assert_array_equal(apply_orientation(arr, orientation), expected)


def test_every_decode_path_applies_orientation_6(tmp_path):
    p = _phone_photo(tmp_path / "phone.jpg", 6, (80, 40))
    assert jpeg_orientation(np.fromfile(str(p), np.uint8)) == 6
    expected = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")).astype(int)
    assert expected.shape == (80, 40, 3)
    # readers: the size as displayed (stored 80x40)
    assert image_size(p) == (40, 80)
    # runtime (and training, which uses the same decode)
    img = decode_image(p)
    assert img.shape == (80, 40, 3)
    assert np.abs(img.astype(int) - expected).mean() < 3
    from harmonic.data.dataset import load_image

    np.testing.assert_array_equal(load_image(p), img)
    # --fast-decode: a reduced decode of a large photo, same orientation and original size
    big = _phone_photo(tmp_path / "big.jpg", 6, (800, 400))
    small, orig = decode_image_for(big, 100)
    assert orig == (400, 800) and small.shape[0] > small.shape[1]
    ref = cv2.resize(decode_image(big), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - ref.astype(int)).mean() < 6


def test_yolo_boxes_on_a_rotated_photo_use_the_displayed_size(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _phone_photo(tmp_path / "images" / "a.jpg", 6, (80, 40))
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.25\n")  # normalised to the displayed 40x80
    rec = read_yolo(tmp_path / "labels", tmp_path / "images", ["x"])[0]
    assert (rec.width, rec.height) == (40, 80)
    np.testing.assert_allclose(rec.boxes[0], [10, 30, 30, 50])


def test_gray_16bit_cmyk_and_empty_images(tmp_path):
    gray = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    deep = (np.arange(48 * 64 * 3, dtype=np.uint16).reshape(48, 64, 3) * 17)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).convert("CMYK").save(tmp_path / "c.jpg", "JPEG")
    (tmp_path / "z.jpg").write_bytes(b"")
    for name in ("g.png", "d.png", "c.jpg"):
        img = decode_image(tmp_path / name)
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8, name
        assert image_size(tmp_path / name) == (64, 48)
    np.testing.assert_array_equal(decode_image(tmp_path / "g.png")[..., 0], gray)
    assert abs(int(decode_image(tmp_path / "c.jpg").mean()) - 200) <= 3  # CMYK -> RGB, not inverted
    with pytest.raises(ImageDecodeError, match=r"z\.jpg: empty file"):
        decode_image(tmp_path / "z.jpg")


def test_voc_without_size_reads_the_displayed_size_and_keeps_difficult_as_ignored(tmp_path):
    from harmonic.data.readers import read_voc

    (tmp_path / "images").mkdir()
    (tmp_path / "xml").mkdir()
    _phone_photo(tmp_path / "images" / "a.jpg", 6, (80, 40))
    (tmp_path / "xml" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>x</name><difficult>1</difficult><bndbox><xmin>2</xmin><ymin>61</ymin>"
        "<xmax>30</xmax><ymax>80</ymax></bndbox></object>"
        "<object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>"
        "</annotation>")
    rec = read_voc(tmp_path / "xml", tmp_path / "images", ["x"])[0]
    assert (rec.width, rec.height) == (40, 80)  # a box at y 60..80 fits only the displayed image
    np.testing.assert_allclose(rec.boxes, [[1, 60, 30, 80], [0, 0, 10, 10]])
    assert rec.ignore.tolist() == [True, False]
