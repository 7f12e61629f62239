"""The Python examples of docs/deploy.md run as written: in a folder holding a tiny exported model
(``model.onnx``), a generated video (``clip.mp4``) and an image (``image.jpg``); the camera loop gets the
video as its argument, the service handler is started and sent an image and a broken one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest

from tests.runtime.runtime_graphs import make_graph
from tests.runtime.videos import frame_image, write_video

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_graph(tmp_path / "model.onnx", score_threshold=0.01)
    write_video(tmp_path / "clip.mp4", 8, 160, 120)
    cv2.imwrite(str(tmp_path / "image.jpg"), frame_image(3, 160, 120))
    return tmp_path


def _run(code: str, folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=folder, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_doc_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) == 4
    assert any("det.stream(" in b for b in blocks) and any("serve_forever" in b for b in blocks)
    for b in blocks:  # "ten lines": the loop and the handler stay short
        if "det.stream(" in b or "serve_forever" in b:
            assert len([ln for ln in b.splitlines() if ln.strip()]) <= 26


def test_script_examples_run_as_written(folder):
    for code in python_blocks():
        if "serve_forever" in code:
            continue
        res = _run(code, folder, str(folder / "clip.mp4"))
        assert res.returncode == 0, code + res.stderr[-2000:]
        if "det.stream(" in code:
            last = re.fullmatch(r"(\d+) frames processed, (\d+) dropped, 0 damaged", res.stdout.strip().splitlines()[-1])
            assert last and int(last[1]) + int(last[2]) == 8 and int(last[1]) > 0, res.stdout  # realtime may drop
            assert "frame 0: " in res.stdout and cv2.imread(str(folder / "latest.jpg")).shape == (120, 160, 3)


def test_service_handler_runs_as_written(folder):
    import socket

    from harmonic import Detector

    code = next(b for b in python_blocks() if "serve_forever" in b)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=(folder / "image.jpg").read_bytes()),
                                            timeout=10) as r:
                    answer = json.loads(r.read())
                break
            except (ConnectionError, urllib.error.URLError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        with Detector(folder / "model.onnx") as det:
            assert answer == json.loads(json.dumps(det(folder / "image.jpg").to_coco(image_id=0))) and answer
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, data=b"not an image"), timeout=10)
        assert info.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)
