"""harmonic.contract: the exported model's contract (names, metadata schema and version, sidecar)."""

import json

import pytest

from harmonic.contract import (
    FORMAT_KEY,
    FORMAT_VERSION_KEY,
    METADATA_FORMAT,
    METADATA_VERSION,
    OUTPUT_DTYPES,
    OUTPUT_NAMES,
    build_metadata,
    check_format_version,
    decode_metadata,
    is_ours,
    output_shapes,
    read_sidecar,
    sidecar_bytes,
    sidecar_path,
)
from harmonic.errors import HarmonicError


def _meta(**over):
    kw = dict(names=["a", "b"], img_size=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), score_threshold=0.05,
              iou_threshold=0.6, max_det=100, model="m", loss="harmonic", checkpoint_sha256="ab" * 32, graph="nms",
              versions={"harmonic": "x"})
    kw.update(over)
    return build_metadata(**kw)


def test_outputs_have_dtypes_and_shapes():
    assert OUTPUT_NAMES == ("num_dets", "det_boxes", "det_scores", "det_classes")
    assert set(OUTPUT_DTYPES) == set(OUTPUT_NAMES)
    assert output_shapes(7) == {"num_dets": [1], "det_boxes": [7, 4], "det_scores": [7], "det_classes": [7]}


def test_metadata_round_trip_carries_the_schema_and_its_version():
    raw = _meta(max_batch=1, category_ids=[3, 9])
    assert all(isinstance(v, str) for v in raw.values())
    assert raw[FORMAT_KEY] == METADATA_FORMAT and raw[FORMAT_VERSION_KEY] == str(METADATA_VERSION)
    meta = decode_metadata(raw)
    assert is_ours(meta) and meta[FORMAT_VERSION_KEY] == METADATA_VERSION == 1
    assert meta["names"] == ["a", "b"] and meta["img_size"] == 128 and meta["max_batch"] == 1
    assert meta["score_threshold"] == 0.05 and meta["iou_threshold"] == 0.6 and meta["category_ids"] == [3, 9]
    check_format_version(raw, "m.onnx")  # its own version passes


def test_older_metadata_without_a_version_is_version_1():
    raw = _meta()
    del raw[FORMAT_VERSION_KEY]
    check_format_version(raw, "old.onnx")


@pytest.mark.parametrize("value, message", [("2", "metadata version 2 is newer"), ("x", "is not a version number")])
def test_newer_or_garbled_version_is_one_line_naming_the_file(value, message):
    with pytest.raises(HarmonicError, match=message) as err:
        check_format_version({FORMAT_VERSION_KEY: value}, "model.onnx")
    assert str(err.value).startswith("model.onnx: ") and "\n" not in str(err.value)


def test_sidecar_path_and_read(tmp_path):
    engine = tmp_path / "model.engine"
    assert sidecar_path(engine) == tmp_path / "model.engine.json"
    assert read_sidecar(engine) is None  # none: a warning, not an error
    side = {**_meta(), "tensorrt": "10.8.0", "profile": {"min": 1, "opt": 4, "max": 8}}
    sidecar_path(engine).write_bytes(sidecar_bytes(side))
    got = read_sidecar(engine)
    assert got["img_size"] == 128 and got["profile"] == {"min": 1, "opt": 4, "max": 8} and got["tensorrt"] == "10.8.0"
    sidecar_path(engine).write_text(json.dumps({**side, FORMAT_VERSION_KEY: 5}))
    with pytest.raises(HarmonicError, match="model.engine.json: metadata version 5 is newer"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("[1, 2]")
    with pytest.raises(HarmonicError, match="not a JSON object"):
        read_sidecar(engine)
