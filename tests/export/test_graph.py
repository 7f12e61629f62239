"""Export -> ONNX Runtime vs PyTorch for each one-stage family; graph contents; dynamic batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from harmonic.contract import build_metadata
from harmonic.export.metadata import read_metadata
from harmonic.export.onnx_export import DEFAULT_OPSET, export_model
from harmonic.export.verify import run_onnx, synthetic_images, verify_onnx

CONF, IOU, K = 0.005, 0.6, 50


def _meta(size: int) -> dict[str, str]:
    return build_metadata(names=["a", "b", "c"], img_size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                          score_threshold=CONF, iou_threshold=IOU, max_det=K, model="tiny", loss="harmonic",
                          checkpoint_sha256="0" * 64, graph="nms")


def assert_tensorrt_graph_facts(path, max_det: int, nms_topk: int, batch: int | None = None) -> None:
    """What TensorRT needs, read back with ``onnx.shape_inference``: every TopK's K a constant
    initializer <= 3840, the final NMS fed a constant number of candidates <= ``nms_topk``, and
    integer K in every output shape."""
    from onnx import numpy_helper

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    topks = [n for n in proto.graph.node if n.op_type == "TopK"]
    assert topks and all(n.input[1] in inits and 1 <= int(inits[n.input[1]].reshape(-1)[0]) <= 3840 for n in topks)
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
              for vi in [*proto.graph.value_info, *proto.graph.output]}
    nms = [n for n in proto.graph.node if n.op_type == "NonMaxSuppression" and n.name.startswith("/nms_tail/")]
    assert len(nms) == 1
    count = shapes[nms[0].input[0]][1]
    assert isinstance(count, int) and 0 < count <= nms_topk
    assert int(read_metadata(path)["nms_topk"]) == nms_topk
    b = batch or "batch"
    assert shapes["num_dets"] == [b, 1] and shapes["det_boxes"] == [b, max_det, 4]
    assert shapes["det_scores"] == [b, max_det] and shapes["det_classes"] == [b, max_det]


@pytest.mark.slow
@pytest.mark.parametrize(  # opset 11, the documented lower bound, on one size of each family
    "family,size,opset", [("retinanet", 128, DEFAULT_OPSET), ("retinanet", 96, 11), ("fcos", 128, DEFAULT_OPSET),
                          ("fcos", 64, 11), ("ssd", 128, DEFAULT_OPSET), ("ssd", 96, 11)]
)
def test_onnx_matches_pytorch(tmp_path, family, size, opset, make_detector):
    model = make_detector(family, size)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=CONF, iou=IOU, max_det=K, metadata=_meta(size),
                       opset=opset)
    assert onnx.load(str(out)).opset_import[0].version == opset
    images = synthetic_images(3, size, seed=1)
    res = verify_onnx(out, model, size, CONF, IOU, K, images=images)
    assert res.ok, res.message
    assert res.num_images == 3
    assert res.num_detections > 0  # the comparison saw detections, not just empty lists
    # the default cap is the family's own budget: torchvision's per-level / per-class top-k, <= 5000
    from harmonic.export.wrapper import build_wrapper

    wrapper = build_wrapper(model, size, CONF, IOU, K)
    assert not wrapper.cap_binds and wrapper.nms_topk == min(sum(wrapper.ks), 5000)
    assert_tensorrt_graph_facts(out, K, wrapper.nms_topk)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["retinanet", "ssd"])
def test_dynamic_batch_each_image_equals_its_batch1_result(tmp_path, family, make_detector):
    size = 96 if family == "retinanet" else 128
    model = make_detector(family, size)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=CONF, iou=IOU, max_det=K)
    images = synthetic_images(5, size, seed=2)
    single = [run_onnx(out, images[i : i + 1]) for i in range(5)]
    assert sum(int(s["num_dets"][0, 0]) for s in single) > 0
    for b in (1, 2, 5):
        got = run_onnx(out, images[:b])
        assert got["det_boxes"].shape == (b, K, 4) and got["num_dets"].shape == (b, 1)
        assert got["num_dets"].dtype == np.int32 and got["det_classes"].dtype == np.int32
        for i in range(b):
            for name in ("num_dets", "det_classes"):
                np.testing.assert_array_equal(got[name][i], single[i][name][0])
            for name in ("det_boxes", "det_scores"):
                np.testing.assert_allclose(got[name][i], single[i][name][0], rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_graph_contents_metadata_and_raw(tmp_path, make_detector):
    size = 96
    model = make_detector("retinanet", size)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=CONF, iou=IOU, max_det=K, metadata=_meta(size))
    raw = export_model(model, tmp_path / "m.raw.onnx", img_size=size, conf=CONF, iou=IOU, max_det=K,
                       raw=True, metadata=_meta(size))
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("NonMaxSuppression") == 1
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert not any("TRT" in op or "NMS" in op and op != "NonMaxSuppression" for op in ops)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch
    meta = read_metadata(out)
    assert meta["harmonic.format"] == "harmonicdet-onnx" and meta["graph"] == "nms"
    assert meta["harmonic.format_version"] == "1"
    assert meta["img_size"] == "96" and meta["input_range"] == "0-1" and meta["max_det"] == str(K)
    assert read_metadata(raw)["graph"] == "raw"
    assert "NonMaxSuppression" not in [n.op_type for n in onnx.load(str(raw)).graph.node]

    # raw graph: every anchor, sigmoid scores without background; NMS on it (numpy) gives the graph's top box
    from harmonic.boxes import batched_nms

    images = synthetic_images(2, size, seed=3)
    r = run_onnx(raw, images)
    sides = [size // 8]
    for _ in range(4):  # P4..P7: stride-2 convs, ceil
        sides.append((sides[-1] + 1) // 2)
    n_anchors = sum(n * n for n in sides) * 9  # 9 anchors per location
    assert r["boxes"].shape == (2, n_anchors, 4) and r["scores"].shape == (2, n_anchors, 3)
    assert r["scores"].min() >= 0 and r["scores"].max() <= 1
    g = run_onnx(out, images)
    for i in range(2):
        a, c = np.nonzero(r["scores"][i] > CONF)
        keep = batched_nms(r["boxes"][i][a], r["scores"][i][a, c], c, IOU)
        assert r["scores"][i][a, c][keep[0]] == pytest.approx(g["det_scores"][i, 0], abs=1e-5)
        np.testing.assert_allclose(r["boxes"][i][a][keep[0]], g["det_boxes"][i, 0], atol=1e-3)


@pytest.mark.slow
def test_fixed_batch_export(tmp_path, make_detector):
    size = 64
    model = make_detector("fcos", size)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=CONF, iou=IOU, max_det=K, batch=2)
    dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2
    res = verify_onnx(out, model, size, CONF, IOU, K, images=synthetic_images(4, size), batch=2)
    assert res.ok, res.message


def test_wrapper_eager_matches_torchvision_postprocess(make_detector):
    """The wrapper run eagerly (python NMS) gives the same detections as torchvision's forward."""
    from harmonic.export.verify import compare_detections, reference_detector, run_reference
    from harmonic.export.wrapper import build_wrapper

    size = 64
    model = make_detector("fcos", size)
    images = synthetic_images(2, size, seed=4)
    with torch.no_grad():
        outs = build_wrapper(model, size, CONF, IOU, K)(torch.from_numpy(images))
    got = dict(zip(["num_dets", "det_boxes", "det_scores", "det_classes"], [o.numpy() for o in outs]))
    ref = run_reference(reference_detector(model, size, CONF, IOU, K), images)
    res = compare_detections(got, ref)
    assert res.ok, res.message
    assert res.num_detections == int(got["num_dets"].sum()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("opset", [DEFAULT_OPSET, 11])
def test_faster_rcnn_batch1_matches_pytorch_and_refuses_batch2(tmp_path, make_detector, opset):
    import onnxruntime as ort

    size = 96
    model = make_detector("fasterrcnn", size)
    with pytest.raises(Exception, match="batch 1 only"):
        export_model(model, tmp_path / "b2.onnx", img_size=size, conf=0.05, iou=IOU, max_det=K, batch=2)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=0.05, iou=IOU, max_det=K,
                       metadata={**_meta(size), "max_batch": "1"}, opset=opset)
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == opset
    ops = {n.op_type for n in proto.graph.node}
    assert {"NonMaxSuppression", "RoiAlign"} <= ops and all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert read_metadata(out)["max_batch"] == "1"
    res = verify_onnx(out, model, size, 0.05, IOU, K, images=synthetic_images(2, size, seed=6), batch=1)
    assert res.ok, res.message
    assert res.num_detections > 0
    assert_tensorrt_graph_facts(out, K, 3000, batch=1)  # 1000 proposals x 3 classes
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="images"):
        run_onnx(out, synthetic_images(2, size))  # B=2 into the batch-1 graph: refused by the runtime


@pytest.mark.slow
@pytest.mark.parametrize("family,size,classes,cap", [("retinanet", 192, 10, 4000), ("ssd", 128, 3, 500),
                                                      ("fasterrcnn", 96, 3, 1000)])
def test_binding_nms_topk_shrinks_the_nms_input_and_verify_applies_it(tmp_path, family, size, classes, cap):
    """A cap below the family's budget: the NMS gets <= cap candidates (a global TopK, or above 3840 a
    lower per-group k) and the PyTorch reference applies the same cap, so the detections still match."""
    from harmonic.export.wrapper import build_wrapper
    from tests.export.conftest import tiny_detector

    model = tiny_detector(family, size, num_classes=classes)
    batch = 1 if family == "fasterrcnn" else None
    conf = 0.05 if family == "fasterrcnn" else CONF
    wrapper = build_wrapper(model, size, conf, IOU, K, nms_topk=cap)
    assert wrapper.cap_binds and (wrapper.global_k is None) == (cap > 3840)
    out = export_model(model, tmp_path / "m.onnx", img_size=size, conf=conf, iou=IOU, max_det=K, batch=batch,
                       nms_topk=cap, metadata=_meta(size))
    assert_tensorrt_graph_facts(out, K, cap, batch=batch)
    res = verify_onnx(out, model, size, conf, IOU, K, images=synthetic_images(2, size, seed=1), batch=batch,
                      nms_topk=cap)
    assert res.ok, res.message
    assert res.num_detections > 0


def test_group_budget():
    from harmonic.export.wrapper import group_budget

    assert group_budget([9000, 2000, 500], 1000, 5000) == ([1000, 1000, 500], False)  # fits: torchvision's budget
    assert group_budget([9000, 2000, 500], 1000, 1200) == ([1000, 1000, 500], True)  # global TopK(1200) follows
    ks, glob = group_budget([9000, 9000, 9000, 9000, 900], 1000, 4000)  # 4900 > 4000 > 3840: lower per-group k
    assert not glob and ks == [800] * 5  # the largest common k with 5 * k <= 4000


def test_data_dependent_or_large_topk_is_refused_naming_the_op():
    from onnx import TensorProto, helper, numpy_helper

    from harmonic.errors import HarmonicError
    from harmonic.export.onnx_export import check_tensorrt_limits

    def graph(k_from_data: bool, k: int = 10):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5000])
        nodes, inits = [], []
        if k_from_data:
            nodes.append(helper.make_node("Shape", ["x"], ["kk"], start=1, end=2, name="/Shape"))
        else:
            inits.append(numpy_helper.from_array(np.array([k], np.int64), "kk"))
        nodes.append(helper.make_node("TopK", ["x", "kk"], ["v", "i"], name="/select/TopK_7"))
        outs = [helper.make_tensor_value_info(n, t, None) for n, t in (("v", TensorProto.FLOAT), ("i", TensorProto.INT64))]
        m = helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)])
        return onnx.shape_inference.infer_shapes(m)

    check_tensorrt_limits(graph(False, 3840))
    with pytest.raises(HarmonicError, match=r"TopK node '/select/TopK_7': K .* computed from the data"):
        check_tensorrt_limits(graph(True))
    with pytest.raises(HarmonicError, match=r"TopK node '/select/TopK_7': K = 4000 exceeds TensorRT's limit 3840"):
        check_tensorrt_limits(graph(False, 4000))
