"""TensorRT engine build up to the library boundary, with a fake ``tensorrt`` module.

What this cannot check (no TensorRT/GPU here): that real TensorRT parses the graph
(NonMaxSuppression -> INMSLayer), the engine's numbers, and FP16 accuracy.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from harmonic.contract import build_metadata
from harmonic.errors import HarmonicError
from harmonic.export import tensorrt as trtmod
from harmonic.export.metadata import set_metadata

META = build_metadata(names=["a", "b"], img_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                      score_threshold=0.01, iou_threshold=0.6, max_det=10, model="tiny", loss="harmonic",
                      checkpoint_sha256="ab" * 32, graph="nms", versions={"torch": "x"})


# (name, layer type, input dtypes, output dtypes) as real TensorRT 10.x parses them: ITopKLayer returns
# float values and int32 indices, INMSLayer reads float boxes/scores and returns int32 tensors only.
DEFAULT_LAYERS = (
    ("/backbone/body/conv1/Conv", "CONVOLUTION", ("float32",), ("float32",)),
    ("/decode/Exp", "UNARY", ("float32",), ("float32",)),
    ("/level_mapper/Sqrt", "UNARY", ("float32",), ("float32",)),
    ("/level_mapper/Floor_to_int", "CAST", ("float32",), ("int32",)),
    ("/select/TopK", "TOPK", ("float32",), ("float32", "int32")),
    ("/select/Gather", "GATHER", ("float32", "int32"), ("float32",)),
    ("/select/Shape", "SHAPE", ("float32",), ("int64",)),
    ("/select/Add_int", "ELEMENTWISE", ("int64", "int64"), ("int64",)),
    ("/nms_tail/NonMaxSuppression", "NMS", ("float32", "float32", "int32"), ("int32", "int32")),
    ("/nms_tail/TopK", "TOPK", ("float32",), ("float32", "int32")),
    ("/head/cls_logits/Conv", "CONVOLUTION", ("float32",), ("float32",)),
)


def fake_tensorrt(version: str = "10.13.0.35", plan: bytes | None = b"PLAN-BYTES", parse_ok: bool = True,
                  layers=DEFAULT_LAYERS):
    """A stand-in ``tensorrt`` module that records every call in ``mod.calls``."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    calls: list[tuple] = []
    mod.calls = calls
    major = int(version.split(".")[0])

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            calls.append(("Logger", severity))

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, prof):
            calls.append(("add_optimization_profile", prof.shapes))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self.cache

    class Profile:
        shapes = None

        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, tuple(mn), tuple(opt), tuple(mx))

    class Tensor:
        def __init__(self, dtype):
            self.dtype = dtype

    class Layer:
        def __init__(self, name, kind, ins, outs):
            self.name, self.type = name, kind
            self.inputs, self.outputs = [Tensor(d) for d in ins], [Tensor(d) for d in outs]
            self.num_inputs, self.num_outputs = len(ins), len(outs)
            self.precision = None
            self.out_types = {}

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        def set_output_type(self, i, dtype):
            self.out_types[i] = dtype

    class Network:
        def __init__(self):
            self.layers = [Layer(*spec) for spec in layers]
            mod.network = self

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", getattr(config, "profiling_verbosity", None)))
            return plan

    class OnnxParser:
        num_errors = 0 if parse_ok else 2

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            model = onnx.load(path)
            calls.append(("parse_from_file", path, model.graph.initializer[0].data_type))
            return parse_ok

        def get_error(self, i):
            return f"node {i}: unsupported op"

    def init_libnvinfer_plugins(logger, namespace):
        calls.append(("init_libnvinfer_plugins", namespace))
        return True

    mod.Logger, mod.Builder, mod.OnnxParser = Logger, Builder, OnnxParser
    mod.init_libnvinfer_plugins = init_libnvinfer_plugins
    mod.float32, mod.float16, mod.bfloat16, mod.int32, mod.int64 = "float32", "float16", "bfloat16", "int32", "int64"
    mod.LayerType = types.SimpleNamespace(**{k: k for k in ("CONVOLUTION", "UNARY", "CAST", "TOPK", "GATHER", "SHAPE",
                                                            "ELEMENTWISE", "NMS")})
    mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    mod.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
    mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
    if major == 10:
        mod.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY")
    else:
        mod.BuilderFlag = types.SimpleNamespace()  # 11.x: precision flags removed
    return mod


@pytest.fixture
def tiny_onnx(tmp_path):
    """A 1-conv graph with the export metadata (the fake parser only reads it)."""
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float32), "w")
    node = helper.make_node("Conv", ["images", "w"], ["det_boxes"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["batch", 3, 64, 64])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, META)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_fp16_mode_per_version():
    assert trtmod.fp16_mode("10.13.0.35", True) == "builder_flag"
    assert trtmod.fp16_mode("10.0.1", False) == "fp32"
    assert trtmod.fp16_mode("11.4.1", True) == "strongly_typed"
    assert trtmod.fp16_mode("11.0.0", False) == "fp32"
    with pytest.raises(HarmonicError, match="too old"):
        trtmod.fp16_mode("8.6.1", True)
    with pytest.raises(HarmonicError, match="cannot parse"):
        trtmod.fp16_mode("dev", True)


@pytest.mark.parametrize("version,ops,fp16,int8,want", [
    ("10.13.0.35", {"Conv"}, False, False, ("fp32", "fp32", False, False, False)),
    ("10.13.0.35", {"Conv"}, True, False, ("builder_flag", "fp16", False, False, True)),
    ("11.4.1", {"Conv"}, True, False, ("strongly_typed", "fp16", True, True, False)),
    ("11.4.1", {"Conv"}, False, False, ("fp32", "fp32", False, False, False)),
    ("10.13.0.35", {"QuantizeLinear", "Conv"}, False, True, ("int8", "int8", True, False, False)),
    ("11.4.1", {"QuantizeLinear", "Conv"}, False, False, ("int8", "int8", True, False, False)),
])
def test_precision_plan(version, ops, fp16, int8, want):
    """Version x graph x request -> build mode, precision, strongly typed network, FP16 copy, FP16 flag + pinning."""
    plan = trtmod.precision_plan(version, ops, fp16=fp16, int8=int8, source="m.onnx")
    assert (plan.mode, plan.precision, plan.strongly_typed, plan.fp16_graph, plan.fp16_flag) == want
    assert plan.warnings == ()


def test_precision_plan_warnings_and_refusals():
    qdq = {"QuantizeLinear", "DequantizeLinear", "Conv"}
    plan = trtmod.precision_plan("10.13.0.35", qdq, fp16=True, int8=False, source="m.onnx")
    assert plan.mode == "int8" and plan.warnings == (
        "m.onnx is a Q/DQ graph: built as INT8 (strongly typed, its float layers in FP32), not FP16",)
    slow = trtmod.precision_plan("10.4.0", {"NonMaxSuppression"}, fp16=False, int8=False, source="m.onnx")
    assert slow.mode == "fp32" and len(slow.warnings) == 1 and "TensorRT#4248" in slow.warnings[0]
    assert trtmod.precision_plan("10.4.0", {"Conv"}, fp16=False, int8=False, source="m.onnx").warnings == ()
    both = trtmod.precision_plan("10.4.0", qdq | {"NonMaxSuppression"}, fp16=True, int8=False, source="m.onnx")
    assert [w[:20] for w in both.warnings] == ["m.onnx is a Q/DQ gra", slow.warnings[0][:20]]
    with pytest.raises(HarmonicError, match="m.onnx: --int8 needs a Q/DQ graph"):
        trtmod.precision_plan("10.13.0.35", {"Conv"}, fp16=False, int8=True, source="m.onnx")
    with pytest.raises(HarmonicError, match="--int8 and --fp16"):
        trtmod.precision_plan("11.4.1", qdq, fp16=True, int8=True, source="m.onnx")
    with pytest.raises(HarmonicError, match="too old"):
        trtmod.precision_plan("8.6.1", qdq, fp16=False, int8=True, source="m.onnx")

def test_profile_shapes():
    assert trtmod.profile_shapes(320, 1, 4, 8) == {"min": (1, 3, 320, 320), "opt": (4, 3, 320, 320),
                                                   "max": (8, 3, 320, 320)}
    assert trtmod.profile_shapes(64, fixed_batch=2)["max"] == (2, 3, 64, 64)
    for bad in ((0, 1, 8), (4, 2, 8), (1, 9, 8)):
        with pytest.raises(HarmonicError, match="min-batch"):
            trtmod.profile_shapes(64, *bad)
    with pytest.raises(HarmonicError, match="fixed batch 1"):
        trtmod.profile_shapes(64, 1, 2, 4, fixed_batch=1)


def test_trtexec_command():
    shapes = trtmod.profile_shapes(320, 1, 2, 8)
    cmd = trtmod.trtexec_command("m.onnx", "m.engine", shapes, "builder_flag", 2.0, "cache.bin")
    assert cmd == ("trtexec --onnx=m.onnx --saveEngine=m.engine --minShapes=images:1x3x320x320 "
                   "--optShapes=images:2x3x320x320 --maxShapes=images:8x3x320x320 "
                   "--memPoolSize=workspace:2048M --fp16 --timingCacheFile=cache.bin")
    assert trtmod.trtexec_command("m.onnx", "e", shapes, "strongly_typed").endswith("--stronglyTyped")
    assert "--fp16" not in trtmod.trtexec_command("m.onnx", "e", shapes, "fp32")


def test_sidecar_dict():
    side = trtmod.sidecar_dict(META, tensorrt_version="10.13.0", gpu="Orin", compute_capability="8.7",
                               precision="fp16", shapes=trtmod.profile_shapes(64, 1, 2, 4))
    assert side["names"] == ["a", "b"] and side["img_size"] == 64 and side["max_det"] == 10
    assert side["score_threshold"] == 0.01 and side["mean"] == [0.5, 0.5, 0.5]
    assert side["tensorrt"] == "10.13.0" and side["versions"] == {"torch": "x", "tensorrt": "10.13.0"}
    assert side["gpu"] == "Orin" and side["compute_capability"] == "8.7" and side["fp16"] is True
    assert side["precision"] == "fp16" and side["int8"] is False
    with pytest.raises(ValueError, match="precision"):
        trtmod.sidecar_dict(META, tensorrt_version="10", gpu="g", compute_capability="1", precision="int4",
                            shapes=trtmod.profile_shapes(64, 1, 2, 4))
    assert side["profile"] == {"min": 1, "opt": 2, "max": 4}
    assert side["checkpoint_sha256"] == "ab" * 32 and side["harmonic.format"] == "harmonicdet-onnx"


def test_sidecar_carries_category_ids_to_the_runtime(tmp_path, monkeypatch):
    """A dataset with its own category ids (COCO {7: a, 3: b}): build -> sidecar -> TensorRTBackend's metadata."""
    from onnx import helper, numpy_helper

    from harmonic.contract import read_sidecar
    from harmonic.runtime.backends.base import Backend

    meta = build_metadata(names=["a", "b"], img_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                          score_threshold=0.01, iou_threshold=0.6, max_det=10, model="tiny", loss="harmonic",
                          checkpoint_sha256="ab" * 32, graph="nms", category_ids=[7, 3])
    w = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["det_boxes"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["batch", 3, 64, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, meta)
    onnx.save(model, str(tmp_path / "m.onnx"))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.13.0.35"))
    engine = trtmod.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", profile=(1, 1, 2))
    side = read_sidecar(engine)  # what TensorRTBackend takes as its metadata
    assert side["category_ids"] == [7, 3] and side["names"] == ["a", "b"]
    holder = types.SimpleNamespace(metadata=side, names=side["names"])
    assert Backend.category_ids.fget(holder) == [7, 3]  # detections.json gets the dataset's own ids


def test_import_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(HarmonicError, match=r'pip install "harmonicdet\[trt\]"'):
        trtmod.import_tensorrt()


def test_build_engine_trt10_fp16(tiny_onnx, tmp_path, monkeypatch):
    fake = fake_tensorrt("10.13.0.35")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    engine = trtmod.build_engine(tiny_onnx, tmp_path / "m.engine", fp16=True, profile=(1, 2, 8), workspace_gb=2,
                                 timing_cache=cache)
    assert engine.read_bytes() == b"PLAN-BYTES"  # the plain plan, no header
    assert cache.read_bytes() == b"old+timed"
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["fp16"] is True and side["profile"] == {"min": 1, "opt": 2, "max": 8} and side["tensorrt"] == "10.13.0.35"
    assert side["img_size"] == 64 and side["names"] == ["a", "b"]
    c = fake.calls
    assert ("create_network", 0) in c and ("set_flag", "FP16") in c
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in c
    assert ("add_optimization_profile", ("images", (1, 3, 64, 64), (2, 3, 64, 64), (8, 3, 64, 64))) in c
    assert ("create_timing_cache", b"old") in c and ("set_timing_cache", False) in c
    assert ("build_serialized_network", "DETAILED") in c  # per-layer detail for the engine inspector
    parse = [x for x in c if x[0] == "parse_from_file"][0]
    assert parse[1] == str(tiny_onnx) and parse[2] == TensorProto.FLOAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.onnx", "timing.cache"]
    # the plugin registry is initialised before the parser runs (RoiAlign may map to a plugin)
    assert c.index(("init_libnvinfer_plugins", "")) < c.index(parse)
    # FP16 on 10.x: every layer of the FP32 scopes that computes on floats is pinned to FP32, and obeyed;
    # the output type is set only on float outputs (TopK's int32 indices and the NMS outputs keep theirs)
    pinned = {layer.name: (layer.precision, layer.out_types) for layer in fake.network.layers if layer.precision}
    assert pinned == {
        "/decode/Exp": ("float32", {0: "float32"}),
        "/level_mapper/Sqrt": ("float32", {0: "float32"}),
        "/level_mapper/Floor_to_int": ("float32", {}),
        "/select/TopK": ("float32", {0: "float32"}),
        "/select/Gather": ("float32", {0: "float32"}),
        "/nms_tail/NonMaxSuppression": ("float32", {}),
        "/nms_tail/TopK": ("float32", {0: "float32"}),
    }
    # integer-only layers (shape arithmetic) and the Shape layer have no float computation to pin: TensorRT
    # rejects an FP32 precision on them ("A shape layer can only run in INT32 precision")
    assert fake.network.layers[6].name == "/select/Shape" and fake.network.layers[6].precision is None
    assert ("set_flag", "OBEY") in c


def test_outputs_get_the_usual_file_mode(tiny_onnx, tmp_path, monkeypatch):
    """mkstemp's 0600 is not kept: engine and sidecar get 0666 minus the umask, like any written file."""
    import os
    import stat

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    old = os.umask(0o022)
    try:
        trtmod.build_engine(tiny_onnx, tmp_path / "m.engine")
    finally:
        os.umask(old)
    for name in ("m.engine", "m.engine.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_nms_slowdown_warning_on_trt_10_0_to_10_6(tmp_path, monkeypatch, caplog):
    for v in ("10.0.1.6", "10.3.0", "10.6.0.26"):
        text = trtmod.nms_slowdown_warning(v)
        assert "TensorRT#4248" in text and "--raw" in text and "still open" in text
        # only what is known: no claim that a later release fixed it, no advice to upgrade
        assert "fixed" not in text and "10.7" not in text and "upgrade" not in text.lower()
    for v in ("10.7.0.23", "10.13.0.35", "11.4.1", "9.3.0", "dev"):
        assert trtmod.nms_slowdown_warning(v) is None
    path = tmp_path / "nms.onnx"
    onnx.save(_nms_graph(), str(path))
    for version, warned in (("10.4.0", True), ("10.13.0.35", False)):
        caplog.clear()
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version))
        trtmod.build_engine(path, tmp_path / "m.engine", overwrite=True)
        assert any("TensorRT#4248" in r.getMessage() for r in caplog.records) is warned


def _nms_graph(qdq: bool = False):
    """A tiny graph with an NMS (and optionally a Q/DQ pair before it)."""
    from onnx import helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.array([10], np.int64), "k"),
                        numpy_helper.from_array(np.array([0.5], np.float32), "iou")]
    boxes = "boxes"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["boxes", "s", "z"], ["bq"]),
                  helper.make_node("DequantizeLinear", ["bq", "s", "z"], ["bdq"])]
        boxes = "bdq"
    nodes.append(helper.make_node("NonMaxSuppression", [boxes, "scores", "k", "iou"], ["sel"], name="/nms_tail/NMS"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5, 4]),
                     helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 5])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, META)
    return model


@pytest.mark.parametrize("version", ["10.13.0.35", "11.4.1"])
def test_int8_qdq_graph_builds_strongly_typed_without_precision_flags(tmp_path, monkeypatch, version):
    fake = fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    path = tmp_path / "m.int8.onnx"
    onnx.save(_nms_graph(qdq=True), str(path))
    trtmod.build_engine(path, tmp_path / "m.engine", int8=True)
    assert ("create_network", 1 << 3) in fake.calls  # STRONGLY_TYPED
    assert not [x for x in fake.calls if x[0] == "set_flag"]  # no INT8/FP16 flags: the Q/DQ pairs decide
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["int8"] is True and side["precision"] == "int8" and side["fp16"] is False
    plain = tmp_path / "plain.onnx"
    onnx.save(_nms_graph(qdq=False), str(plain))
    with pytest.raises(HarmonicError, match="needs a Q/DQ graph"):
        trtmod.build_engine(plain, tmp_path / "p.engine", int8=True)
    with pytest.raises(HarmonicError, match="--int8 and --fp16"):
        trtmod.build_engine(path, tmp_path / "q.engine", int8=True, fp16=True)
    assert not (tmp_path / "p.engine").exists() and not (tmp_path / "q.engine").exists()


@pytest.mark.parametrize("version", ["10.13.0.35", "11.4.1"])
def test_sidecar_records_the_precision_built_not_the_one_asked(tmp_path, monkeypatch, caplog, version):
    """A Q/DQ graph built with --fp16 is built as INT8 (strongly typed, no FP16 flag): the sidecar says so."""
    fake = fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    path = tmp_path / "m.int8.onnx"
    onnx.save(_nms_graph(qdq=True), str(path))
    trtmod.build_engine(path, tmp_path / "m.engine", fp16=True)
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert (side["precision"], side["fp16"], side["int8"]) == ("int8", False, True)
    assert ("create_network", 1 << 3) in fake.calls and not [x for x in fake.calls if x[0] == "set_flag"]
    assert any("built as INT8" in r.getMessage() for r in caplog.records)
    # a plain graph: what was asked is what was built
    plain = tmp_path / "plain.onnx"
    onnx.save(_nms_graph(qdq=False), str(plain))
    for fp16, want in ((True, "fp16"), (False, "fp32")):
        trtmod.build_engine(plain, tmp_path / "p.engine", fp16=fp16, overwrite=True)
        side = json.loads((tmp_path / "p.engine.json").read_text())
        assert (side["precision"], side["fp16"], side["int8"]) == (want, fp16, False)


def test_fp16_copy_keeps_fp32_scopes_with_casts_at_the_edges():
    """11.x FP16 copy: body nodes FP16, /decode/ nodes and their constants FP32, IO FP32; ORT runs it."""
    from onnx import helper, numpy_helper

    from harmonic.export.verify import run_onnx

    inits = [numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "w"),
             numpy_helper.from_array(np.array([300.0], np.float32), "big")]
    nodes = [helper.make_node("Mul", ["images", "w"], ["feat"], name="/backbone/Mul"),
             helper.make_node("Mul", ["feat", "big"], ["area"], name="/decode/Mul"),
             helper.make_node("Mul", ["area", "area"], ["det_boxes"], name="/decode/Mul_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [1, 3, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = trtmod.convert_onnx_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    types_ = {t.name: t.data_type for t in half.graph.initializer}
    assert types_ == {"w_as_fp16": TensorProto.FLOAT16, "big": TensorProto.FLOAT}
    producers = {o: n for n in half.graph.node for o in n.output}
    dec = [n for n in half.graph.node if n.name == "/decode/Mul"][0]
    assert producers[dec.input[0]].op_type == "Cast" and producers[dec.input[0]].attribute[0].i == TensorProto.FLOAT
    path = Path(tempfile.mkdtemp()) / "h.onnx"
    onnx.save(half, str(path))
    x = np.full((1, 3, 2, 2), 1.0, np.float32)
    out = run_onnx(path, x)["det_boxes"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 150.0**2)  # 22500 (> FP16 max 65504 would overflow on the next step)


def test_build_engine_trt11_fp16_is_strongly_typed_from_fp16_onnx(tiny_onnx, tmp_path, monkeypatch):
    fake = fake_tensorrt("11.4.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    trtmod.build_engine(tiny_onnx, tmp_path / "m.engine", fp16=True)
    c = fake.calls
    assert ("create_network", 1 << 3) in c
    assert not [x for x in c if x[0] == "set_flag"]
    parse = [x for x in c if x[0] == "parse_from_file"][0]
    assert parse[1] != str(tiny_onnx) and parse[2] == TensorProto.FLOAT16  # a temporary FP16 copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.onnx"]  # temp removed


@pytest.mark.parametrize("failure", ["parse", "build"])
def test_failed_build_leaves_nothing(tiny_onnx, tmp_path, monkeypatch, failure):
    fake = fake_tensorrt(plan=None) if failure == "build" else fake_tensorrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    match = "build failed" if failure == "build" else r"cannot parse the ONNX graph \(2 errors\): node 0: unsupported op"
    with pytest.raises(HarmonicError, match=match):
        trtmod.build_engine(tiny_onnx, tmp_path / "m.engine", timing_cache=tmp_path / "t.cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_existing_engine_refused_without_overwrite(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    (tmp_path / "m.engine").write_bytes(b"keep")
    with pytest.raises(HarmonicError, match="already exists"):
        trtmod.build_engine(tiny_onnx, tmp_path / "m.engine")
    assert (tmp_path / "m.engine").read_bytes() == b"keep"
    trtmod.build_engine(tiny_onnx, tmp_path / "m.engine", overwrite=True)
    assert (tmp_path / "m.engine").read_bytes() == b"PLAN-BYTES"


@pytest.mark.slow
def test_fp16_conversion_of_a_real_graph(tmp_path, make_detector):
    """The FP16 copy (TensorRT 11 path) is valid ONNX: float32 IO, FP16 weights, FP32 NMS inputs."""
    from harmonic.export.onnx_export import export_model

    model = make_detector("fcos", 64)
    out = export_model(model, tmp_path / "m.onnx", img_size=64, conf=0.005, iou=0.6, max_det=20)
    proto = trtmod.convert_onnx_fp16(onnx.load(str(out)))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    types_ = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert types_ == {"num_dets": TensorProto.INT32, "det_boxes": TensorProto.FLOAT,
                      "det_scores": TensorProto.FLOAT, "det_classes": TensorProto.INT32}
    producers = {o: n for n in proto.graph.node for o in n.output}
    readers = {}
    for n in proto.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for init in proto.graph.initializer:  # FP32 constants only where an FP32-scope node reads them
        if init.data_type == TensorProto.FLOAT:
            assert all(r.name.startswith(("/decode/", "/select/", "/nms_tail/")) or r.op_type in ("Resize", "NonMaxSuppression")
                       for r in readers[init.name]), init.name
    for n in proto.graph.node:  # decoding and the NMS tail compute in FP32
        if n.name.startswith(("/decode/", "/nms_tail/")) and n.op_type in ("Mul", "Add", "Exp", "Sub"):
            for i in n.input:
                src = producers.get(i)
                if src is not None and src.op_type == "Cast":
                    assert src.attribute[0].i == TensorProto.FLOAT, n.name
    nms = [n for n in proto.graph.node if n.op_type == "NonMaxSuppression"][0]
    inferred = onnx.shape_inference.infer_shapes(proto)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    for k in (0, 1):  # boxes and scores reach the NMS in FP32 (a Cast, or an FP32-scope op such as Concat)
        assert elem[nms.input[k]] == TensorProto.FLOAT, (nms.input[k], producers[nms.input[k]].op_type)
    # ONNX Runtime runs the FP16 copy too; detections stay close to FP32
    from harmonic.export.verify import run_onnx, synthetic_images

    fp16_path = tmp_path / "m16.onnx"
    onnx.save(proto, str(fp16_path))
    x = synthetic_images(2, 64)
    a, b = run_onnx(out, x), run_onnx(fp16_path, x)
    assert a["num_dets"][0, 0] > 0 and b["num_dets"][0, 0] > 0
    np.testing.assert_allclose(b["det_scores"][:, 0], a["det_scores"][:, 0], rtol=2e-2)
    np.testing.assert_allclose(b["det_boxes"][:, 0], a["det_boxes"][:, 0], atol=0.5)


def test_summarize_engine_layers():
    """The engine inspector's JSON (DETAILED) -> INT8 convolutions counted, NMS input types read."""
    def t(fmt):
        return {"Name": "x", "Format/Datatype": fmt}

    info = {"Layers": [
        {"Name": "/backbone/conv1/Conv + Relu", "LayerType": "CaskConvolution",
         "Inputs": [t("Thirty-two wide channel vectorized row major Int8 format")], "Outputs": [t("Int8")]},
        {"Name": "/head/cls/Conv", "LayerType": "CaskConvolution",
         "Inputs": [t("Channel major FP16 format where channel % 8 == 0")], "Outputs": [t("FP16")]},
        {"Name": "/decode/Exp", "LayerType": "PointWiseV2", "Inputs": [t("Row major linear FP32")]},
        {"Name": "/nms_tail/NonMaxSuppression", "LayerType": "NMS",
         "Inputs": [t("Row major linear FP32"), t("Row major linear FP32"), t("Row major linear Int32")]},
    ], "Bindings": ["images"]}
    s = trtmod.summarize_engine_layers(json.dumps(info))
    assert (s["layers"], s["convolutions"], s["int8_convolutions"]) == (4, 2, 1)
    assert s["nms"] == [{"name": "/nms_tail/NonMaxSuppression", "inputs": ["fp32", "fp32"]}] and s["nms_fp32"] is True
    info["Layers"][3]["Inputs"][0] = t("Row major linear FP16 format")
    assert trtmod.summarize_engine_layers(info)["nms_fp32"] is False
    with pytest.raises(HarmonicError, match="ProfilingVerbosity.DETAILED"):
        trtmod.summarize_engine_layers({"Layers": ["conv1", "nms"]})  # LAYER_NAMES_ONLY
