"""harmonic.evaluation runs where torch, torchvision and onnx cannot be imported."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
for name in ("torch", "torchvision", "onnx"):
    sys.modules[name] = None
import harmonic.evaluation as ev
from harmonic.evaluation import api, cli, coco, consistency, inputs, matching, plots, regret, tables
gt = {"images": [{"id": 1, "width": 64, "height": 64}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0}],
      "categories": [{"id": 1, "name": "a"}]}
r = ev.evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.8}], return_pairs=True)
plots.scatter_score_iou(r, sys.argv[1])
assert "matplotlib.pyplot" not in sys.modules
print(r["coco"]["AP"])
"""


def test_evaluation_imports_and_runs_without_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", CODE, str(tmp_path / "s.png")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.strip()) - 1.0) < 1e-9
