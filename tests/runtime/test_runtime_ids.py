from pathlib import Path
from types import SimpleNamespace

from harmonic.runtime.cli import default_batch
from harmonic.runtime.reports import match_image_ids
from harmonic.runtime.sources import ImageList


def test_image_ids_match_relative_path_then_suffix_then_unique_basename():
    root = Path("/data/images")
    images = ImageList(paths=[root / "val/a.jpg", root / "b.jpg", root / "x/c.jpg", root / "d.jpg"],
                       roots=[root] * 4)
    records = [SimpleNamespace(image_id=10, file_name="val/a.jpg"),   # relative path
               SimpleNamespace(image_id=11, file_name="b.jpg"),
               SimpleNamespace(image_id=12, file_name="train/c.jpg"),  # unique basename
               SimpleNamespace(image_id=13, file_name="p/d.jpg"),     # ambiguous basename: no match
               SimpleNamespace(image_id=14, file_name="q/d.jpg")]
    ids, unmatched = match_image_ids(images, records)
    assert ids == [10, 11, 12, None] and unmatched == 1
    # images given as the parent folder: "images/val/a.jpg" ends with the GT's "val/a.jpg"
    images2 = ImageList(paths=[Path("/data/images/val/a.jpg")], roots=[Path("/data")])
    assert match_image_ids(images2, records)[0] == [10]


def test_default_batch():
    spec = SimpleNamespace
    assert default_batch(spec(fixed_batch=2, max_batch=2)) == 2
    assert default_batch(spec(fixed_batch=None, max_batch=4)) == 4
    assert default_batch(spec(fixed_batch=None, max_batch=None)) == 8
