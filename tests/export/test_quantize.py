"""Q/DQ placement of :func:`harmonic.export.quantize.quantize_int8` on a small hand-built graph.

TensorRT's placement guidance for explicit quantisation: Q/DQ on the *inputs* of convolutions and
GEMMs (and of residual adds), never on their outputs, so a Conv feeds its activation in float and
TensorRT fuses Conv+bias+ReLU without a requantisation in between.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harmonic.contract import build_metadata
from harmonic.export.metadata import read_metadata, set_metadata
from harmonic.export.quantize import quantize_int8

S = 16


def _graph(path):
    """images -> /backbone/conv1 -> Relu -> /backbone/conv2 -> Relu -> Flatten -> /head/Gemm -> /decode/Mul."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.normal(0, 0.05, (4 * S * S, 5)).astype(np.float32), "wg"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "bg"),
             numpy_helper.from_array(np.array([2.0], np.float32), "two")]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="/backbone/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/backbone/relu1/Relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/backbone/conv2/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/backbone/relu2/Relu"),
        helper.make_node("Flatten", ["r2"], ["f"], name="/head/Flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], name="/head/fc/Gemm"),
        helper.make_node("Mul", ["g", "two"], ["scores"], name="/decode/Mul"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, S, S])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, build_metadata(names=["a"], img_size=S, mean=(0, 0, 0), std=(1, 1, 1), score_threshold=0.01,
                                       iou_threshold=0.6, max_det=5, model="tiny", loss="harmonic",
                                       checkpoint_sha256="ab" * 32, graph="nms"))
    onnx.save(model, str(path))


def test_qdq_on_conv_and_gemm_inputs_only(tmp_path):
    src, out, calib = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "calib"
    _graph(src)
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        cv2.imwrite(str(calib / f"{i}.png"), rng.integers(0, 255, (S, S + 4 * i, 3), dtype=np.uint8))
    quantize_int8(src, out, calib, count=3)
    q = onnx.load(str(out))
    producers = {o: n for n in q.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    weighted = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 3
    for n in weighted:
        # activation and weight both arrive through a DequantizeLinear ...
        for k in (0, 1):
            assert producers[n.input[k]].op_type == "DequantizeLinear", (n.name, k)
        # ... and the output is not quantised: it goes on in float (to the ReLU, Flatten or the float tail)
        assert all(r.op_type != "QuantizeLinear" for r in readers[n.output[0]]), n.name
    # activation QuantizeLinear nodes: exactly one per weighted op input (images, relu1, flatten output)
    act_q = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in
             {t.name for t in q.graph.initializer}]
    assert sorted(n.input[0] for n in act_q) == ["f", "images", "r1"]
    # the float tail is untouched and the graph still runs
    assert producers["scores"].op_type == "Mul" and producers[producers["scores"].input[0]].op_type == "Gemm"
    assert read_metadata(q)["quantization"] == "int8-qdq"
    import onnxruntime as ort

    x = rng.random((1, 3, S, S), dtype=np.float32)
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert b.shape == a.shape == (1, 5) and np.abs(a - b).max() < 0.1 * (np.abs(a).max() + 1e-6)
