"""Contract-conforming ONNX graphs built with onnx.helper (tests may import onnx; the runtime may not).

The "nms" graph: fixed candidate boxes (letterboxed px), scores from the image's
channel means, the ONNX NonMaxSuppression op, then gather + pad to K, so the
outputs are exactly the exported graph's ``num_dets/det_boxes/det_scores/det_classes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

S = 64
NAMES = ["red", "green", "blue"]
# candidate boxes in letterboxed pixels; 0 and 1 overlap (IoU 0.68) so NMS has work to do
BOXES = np.array([[4, 4, 30, 30], [6, 6, 32, 32], [34, 8, 60, 40], [10, 36, 40, 60]], np.float32)
# per-channel weight of each candidate: score[b, c, a] = mean_c(image b) * W[c, a]
W = np.array([[1.0, 0.9, 0.3, 0.6],
              [0.2, 0.8, 1.0, 0.5],
              [0.7, 0.1, 0.4, 1.0]], np.float32)


def make_graph(path: Path, batch: int | str = "B", metadata: dict | None = None, raw: bool = False,
               score_threshold: float = 0.05, iou_threshold: float = 0.5, max_det: int = 6,
               size: int = S, opset: int = 17) -> Path:
    """Write a contract graph to ``path``; ``metadata=None`` writes ours, ``{}`` writes none."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    A, C, K = BOXES.shape[0], W.shape[0], max_det
    init = [
        numpy_helper.from_array(BOXES[None], "cand_boxes"),
        numpy_helper.from_array(W[None], "w"),  # [1, C, A]
        numpy_helper.from_array(np.array([K], np.int64), "max_per_class"),
        numpy_helper.from_array(np.array([iou_threshold], np.float32), "iou_thr"),
        numpy_helper.from_array(np.array([score_threshold], np.float32), "score_thr"),
        numpy_helper.from_array(np.array([A, 4], np.int64), "a4"),
        numpy_helper.from_array(np.array([0], np.int64), "i0"),
        numpy_helper.from_array(np.array([1], np.int64), "i1"),
        numpy_helper.from_array(np.array([2], np.int64), "i2"),
        numpy_helper.from_array(np.array([K], np.int64), "kk"),
        numpy_helper.from_array(np.array([0, 2], np.int64), "idx02"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "neg1"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array([0, 0, 0], np.int64), "pad_lo3"),
        numpy_helper.from_array(np.array([0, 0], np.int64), "zeros2"),
    ]
    n = helper.make_node
    nodes = [
        n("Shape", ["images"], ["img_shape"]),
        n("Slice", ["img_shape", "i0", "i1"], ["b1"]),  # [B]
        n("Concat", ["b1", "a4"], ["b_a_4"], axis=0),
        n("Expand", ["cand_boxes", "b_a_4"], ["boxes"]),  # [B, A, 4]
        n("ReduceMean", ["images"], ["means4"], axes=[2, 3], keepdims=0),  # [B, C]
        n("Unsqueeze", ["means4", "i2"], ["means"]),  # [B, C, 1]
        n("Mul", ["means", "w"], ["scores_bca"]),  # [B, C, A]
    ]
    outputs = []
    if raw:
        nodes.append(n("Transpose", ["scores_bca"], ["scores"], perm=[0, 2, 1]))
        outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, A, 4]),
                   helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, A, C])]
    else:
        nodes += [
            n("NonMaxSuppression", ["boxes", "scores_bca", "max_per_class", "iou_thr", "score_thr"], ["sel"]),
            n("GatherND", ["scores_bca", "sel"], ["sel_scores"]),  # [N]
            n("Gather", ["sel", "idx02"], ["sel_bi"], axis=1),  # [N, 2] (batch, box)
            n("GatherND", ["boxes", "sel_bi"], ["sel_boxes"]),  # [N, 4]
            n("Gather", ["sel", "i1"], ["sel_c2"], axis=1),  # [N, 1]
            n("Squeeze", ["sel_c2", "i1"], ["sel_c"]),  # [N]
            n("Gather", ["sel", "i0"], ["sel_b2"], axis=1),
            n("Squeeze", ["sel_b2", "i1"], ["sel_b"]),  # [N]
            # mask[b, n] = selection n belongs to image b
            n("Squeeze", ["b1", "i0"], ["b_scalar"]),
            n("Range", ["zero_i", "b_scalar", "one_i"], ["b_range"]),
            n("Unsqueeze", ["b_range", "i1"], ["b_col"]),  # [B, 1]
            n("Unsqueeze", ["sel_b", "i0"], ["sel_b_row"]),  # [1, N]
            n("Equal", ["b_col", "sel_b_row"], ["mask"]),  # [B, N]
            n("Unsqueeze", ["sel_scores", "i0"], ["sel_scores_row"]),
            n("Where", ["mask", "sel_scores_row", "neg1"], ["masked"]),  # [B, N]
            n("Shape", ["sel_scores"], ["n1"]),
            n("Min", ["n1", "kk"], ["k_eff"]),
            n("TopK", ["masked", "k_eff"], ["top_s", "top_i"], axis=1),  # [B, k]
            n("Greater", ["top_s", "zero_f"], ["valid"]),
            n("Cast", ["valid"], ["valid_i"], to=TensorProto.INT32),
            n("ReduceSum", ["valid_i", "i1"], ["num_dets"], keepdims=1),  # [B, 1]
            n("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
            n("Mul", ["top_s", "valid_f"], ["s_k"]),
            n("Gather", ["sel_boxes", "top_i"], ["bx_k"], axis=0),  # [B, k, 4]
            n("Unsqueeze", ["valid_f", "i2"], ["valid_f3"]),
            n("Mul", ["bx_k", "valid_f3"], ["bx_k0"]),
            n("Gather", ["sel_c", "top_i"], ["c_k64"], axis=0),
            n("Cast", ["c_k64"], ["c_k"], to=TensorProto.INT32),
            n("Mul", ["c_k", "valid_i"], ["c_k0"]),
            n("Sub", ["kk", "k_eff"], ["pad_n"]),
            n("Concat", ["zeros2", "i0", "pad_n"], ["pads2"], axis=0),  # [0, 0, 0, pad]
            n("Pad", ["s_k", "pads2"], ["det_scores"]),
            n("Pad", ["c_k0", "pads2"], ["det_classes"]),
            n("Concat", ["pad_lo3", "i0", "pad_n", "i0"], ["pads3"], axis=0),
            n("Pad", ["bx_k0", "pads3"], ["det_boxes"]),
        ]
        init += [numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
                 numpy_helper.from_array(np.array(1, np.int64), "one_i")]
        outputs = [helper.make_tensor_value_info("num_dets", TensorProto.INT32, [batch, 1]),
                   helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [batch, K, 4]),
                   helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [batch, K]),
                   helper.make_tensor_value_info("det_classes", TensorProto.INT32, [batch, K])]
    graph = helper.make_graph(nodes, "harmonic_test", [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])], outputs, init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if metadata is None:
        metadata = default_metadata(raw, score_threshold, iou_threshold, max_det, size)
    for k, v in metadata.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def default_metadata(raw: bool = False, score_threshold: float = 0.05, iou_threshold: float = 0.5,
                     max_det: int = 6, size: int = S) -> dict[str, str]:
    return {"harmonic.format": "harmonicdet-onnx", "names": json.dumps(NAMES), "img_size": str(size),
            "input_range": "0-1", "mean": "[0.485, 0.456, 0.406]", "std": "[0.229, 0.224, 0.225]",
            "score_threshold": str(score_threshold), "iou_threshold": str(iou_threshold),
            "max_det": str(max_det), "model": "test", "loss": "harmonic", "checkpoint_sha256": "0" * 64,
            "versions": json.dumps({"onnx": "test"}), "graph": "raw" if raw else "nms"}


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs of varied odd sizes and colours (so scores differ per image)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(31, 97)), int(rng.integers(31, 97))
        img = np.empty((h, w, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        p = folder / f"img_{i:03d}.jpg"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths
