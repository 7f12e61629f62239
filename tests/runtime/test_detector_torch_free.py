"""``from harmonic import Detector`` where torch, torchvision and onnx cannot be imported (a deploy box)."""

from __future__ import annotations

import subprocess
import sys

from .runtime_graphs import make_graph
from .test_runtime_cli import BLOCK_IMPORTS, ROOT
from .videos import write_video

CODE = BLOCK_IMPORTS + """
import numpy as np
from harmonic import Detector
det = Detector(sys.argv[1], conf=0.01)
one = det(np.full((48, 80, 3), (30, 120, 200), np.uint8))
frames = [(i, len(d)) for i, frame, d in det.stream(sys.argv[2])]
assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)
print(len(one), len(frames), sum(n for _, n in frames))
"""


def test_detector_imports_and_runs_without_torch(tmp_path):
    model = make_graph(tmp_path / "model.onnx")
    video = write_video(tmp_path / "clip.mp4", 6)
    proc = subprocess.run([sys.executable, "-c", CODE, str(model), str(video)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    n_one, n_frames, n_dets = map(int, proc.stdout.split())
    assert n_one > 0 and n_frames == 6 and n_dets >= 6
