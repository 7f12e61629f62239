"""Video files and streams through ``Detector.stream`` and ``infer --source``: the same detections as the frames
run as images, per-frame ``detections.jsonl``, ``--save-video``, ``--bench``, realtime drops, and bad input
(not a video, no camera, a URL that does not answer or stops, a damaged frame, a codec that can't be written)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from harmonic import Detector
from harmonic.cli import main
from harmonic.errors import HarmonicError

from .test_runtime_cli import run_infer
from .videos import decoded_frames, frames_as_pngs, jpeg_starts, write_video

N = 12


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.classes, b.classes)


def _lines(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "detections.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_stream_gives_every_frame_and_the_detections_of_the_frames_as_images(nms_graph, tmp_path, suffix):
    video = write_video(tmp_path / f"clip{suffix}", N)
    pngs = frames_as_pngs(video, tmp_path / "frames")
    assert len(pngs) == N
    with Detector(nms_graph) as det:
        as_images = det(pngs)
        stream = det.stream(video)
        got = list(stream)
        assert [i for i, _, _ in got] == list(range(N)) and stream.processed == N
        assert stream.dropped == 0 and stream.corrupt == 0 and stream.stopped is None and stream.fps == 25.0
        ref = decoded_frames(video)
        for (i, frame, d), png_det in zip(got, as_images):
            np.testing.assert_array_equal(frame, ref[i])  # BGR, as OpenCV decodes it
            _same(d, png_det)
        assert sum(len(d) for _, _, d in got) > N
        strided = list(det.stream(str(video), stride=5, batch=2))
        assert [i for i, _, _ in strided] == [0, 5, 10]
        for i, _, d in strided:
            _same(d, as_images[i])
        rgb = next(iter(det.stream(video, rgb=True)))[1]
        np.testing.assert_array_equal(rgb, ref[0][:, :, ::-1])
        folder = list(det.stream(tmp_path / "frames", batch=3))  # an image folder streams too
        assert [i for i, _, _ in folder] == list(range(N))
        np.testing.assert_array_equal(folder[4][1], ref[4])
        _same(folder[4][2], as_images[4])


def test_infer_source_video_jsonl_save_video_bench_equal_frames_as_images(nms_graph, tmp_path):
    video = write_video(tmp_path / "clip.mp4", N)
    frames_as_pngs(video, tmp_path / "frames")
    out, ref_out = tmp_path / "out", tmp_path / "ref"
    # torch, torchvision and onnx blocked, as on a deploy box
    proc = run_infer("--engine", nms_graph, "--source", video, "--out", out, "--save-video", tmp_path / "boxes.mp4",
                     "--bench", "--warmup", "1", "--iters", "3", check_rc=0)
    assert f"frames: {N} processed, 0 dropped, 0 corrupt" in proc.stdout
    assert "fps end-to-end" in proc.stdout and "fps engine-only" in proc.stdout
    assert main(["infer", "--engine", str(nms_graph), "--images", str(tmp_path / "frames"),
                 "--out", str(ref_out)]) == 0
    lines = _lines(out)
    assert [ln["frame"] for ln in lines] == list(range(N))
    assert [ln["time"] for ln in lines] == [round(i / 25, 3) for i in range(N)]
    images = json.loads((ref_out / "detections.json").read_text())
    for ln in lines:
        want = [{k: e[k] for k in ("category_id", "bbox", "score")} for e in images if e["image_id"] == ln["frame"] + 1]
        assert [{k: e[k] for k in ("category_id", "bbox", "score")} for e in ln["detections"]] == want
        assert all(e["label"] in ("red", "green", "blue") for e in ln["detections"])
    drawn = decoded_frames(tmp_path / "boxes.mp4")
    assert len(drawn) == N and drawn[0].shape == (64, 96, 3)
    bench = json.loads((out / "bench.json").read_text())
    assert bench["frames"]["processed"] == N and bench["frames"]["dropped"] == 0 and bench["batch"] == 1
    lat = bench["end_to_end"]["latency_ms_per_frame"]
    assert lat["n"] == N and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    eng = bench["engine_only"]["latency_ms_per_frame"]
    assert eng["n"] == 3 and 0 < eng["p50"] <= eng["p99"] and bench["engine_only"]["fps"] > 0
    assert bench["end_to_end"]["fps"] > 0 and bench["end_to_end_over_engine_only"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "detections.jsonl"]
    assert sorted(p.name for p in tmp_path.glob(".*")) == []  # no temporary file left


def _damaged_avi(tmp_path: Path, n: int = 30) -> tuple[Path, Path]:
    """An MJPG video with frame 7's JPEG header destroyed, and a copy cut in the middle."""
    video = write_video(tmp_path / "clip.avi", n)
    data = bytearray(video.read_bytes())
    starts = jpeg_starts(bytes(data))
    assert len(starts) == n
    bad = bytearray(data)
    end = starts[8] - 16  # frame 7's JPEG data, not the next chunk's header
    bad[starts[7]:end] = b"\x00" * (end - starts[7])
    (tmp_path / "damaged.avi").write_bytes(bytes(bad))
    (tmp_path / "cut.avi").write_bytes(bytes(data[:starts[18] + 100]))
    return tmp_path / "damaged.avi", tmp_path / "cut.avi"


def test_a_damaged_frame_is_skipped_and_counted_and_a_cut_file_keeps_its_frames(nms_graph, tmp_path, capsys):
    damaged, cut = _damaged_avi(tmp_path)
    with Detector(nms_graph) as det:
        stream = det.stream(damaged)
        idx = [i for i, _, _ in stream]
        assert idx == [i for i in range(30) if i != 7] and stream.corrupt == 1 and stream.stopped is None
        stream = det.stream(cut)
        assert [i for i, _, _ in stream] == list(range(18)) and "ends after 18 of the 30 frames" in stream.stopped
    out = tmp_path / "out"
    assert main(["infer", "--engine", str(nms_graph), "--source", str(damaged), "--out", str(out)]) == 0
    assert "29 processed, 0 dropped, 1 corrupt" in capsys.readouterr().out
    assert 7 not in [ln["frame"] for ln in _lines(out)] and len(_lines(out)) == 29
    assert main(["infer", "--engine", str(nms_graph), "--source", str(cut), "--out", str(out)]) == 0
    assert [ln["frame"] for ln in _lines(out)] == list(range(18))
    assert "18 processed" in capsys.readouterr().out


def test_an_interrupted_run_keeps_every_finished_frame(nms_graph, tmp_path, capsys, monkeypatch):
    import harmonic.runtime.run_video as rv

    video = write_video(tmp_path / "clip.mp4", N)
    real = rv.frame_record

    def interrupt_at_5(index, *a, **kw):
        if index == 5:
            raise KeyboardInterrupt
        return real(index, *a, **kw)

    monkeypatch.setattr(rv, "frame_record", interrupt_at_5)
    out = tmp_path / "out"
    assert main(["infer", "--engine", str(nms_graph), "--source", str(video), "--out", str(out),
                 "--save-video", str(tmp_path / "o.avi")]) == 130
    assert [ln["frame"] for ln in _lines(out)] == [0, 1, 2, 3, 4]
    assert len(decoded_frames(tmp_path / "o.avi")) == 5
    assert sorted(p.name for p in out.iterdir()) == ["detections.jsonl"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class _Slow:
    """Wraps a runner so the engine takes ``delay`` seconds a batch (a model slower than the source)."""

    def __init__(self, runner, delay: float) -> None:
        self.runner, self.delay = runner, delay

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def run(self, *a, **kw):
        import time

        time.sleep(self.delay)
        return self.runner.run(*a, **kw)


def test_realtime_drops_frames_rather_than_falling_behind(nms_graph, tmp_path):
    video = write_video(tmp_path / "fast.avi", 40, fps=200.0)  # 5 ms a frame, a 20 ms engine
    with Detector(nms_graph) as det:
        det.runner = _Slow(det.runner, 0.02)
        stream = det.stream(video, realtime=True)
        idx = [i for i, _, _ in stream]
        assert stream.dropped > 0 and stream.processed + stream.dropped == 40 and len(idx) == stream.processed
        assert idx == sorted(idx) and idx[-1] == 39  # the newest frame is never the one dropped
        stream = det.stream(video)
        assert len(list(stream)) == 40 and stream.dropped == 0


class _HalfVideo(BaseHTTPRequestHandler):
    """Serves a video but closes the connection half-way (a stream that stops)."""

    data = b""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data[: len(self.data) // 2])
        self.close_connection = True


def test_a_stream_that_stops_keeps_what_was_processed(nms_graph, tmp_path, capsys, caplog):
    video = write_video(tmp_path / "clip.avi", 30)
    _HalfVideo.data = video.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HalfVideo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
        out = tmp_path / "out"
        assert main(["infer", "--engine", str(nms_graph), "--source", url, "--out", str(out)]) == 0
    finally:
        server.shutdown()
    frames = [ln["frame"] for ln in _lines(out)]
    assert 0 < len(frames) < 30 and frames == list(range(len(frames)))
    assert f"{len(frames)} processed" in capsys.readouterr().out
    assert f"the stream stopped after {len(frames)} frame(s); the {len(frames)} frame(s) processed are kept" in caplog.text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case", ["not_a_video", "missing", "camera", "url", "codec", "suffix", "save_vis",
                                  "realtime_images", "mixed", "scheme"])
def test_bad_video_input_is_one_line_before_any_work(nms_graph, tmp_path, capsys, case):
    video = write_video(tmp_path / "clip.mp4", 3)
    (tmp_path / "notes.mp4").write_text("not a video at all " * 20)
    (tmp_path / "im").mkdir()
    cv2.imwrite(str(tmp_path / "im" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "out"
    src, extra, expect = {
        "not_a_video": (str(tmp_path / "notes.mp4"), [], "notes.mp4: not a video OpenCV's FFmpeg can read"),
        "missing": (str(tmp_path / "gone.mp4"), [], "gone.mp4: not found"),
        "camera": ("97", [], "--source 97: no camera with index 97"),
        "url": (f"rtsp://user:secret@127.0.0.1:{_free_port()}/live", [], "rtsp://user:***@127.0.0.1"),
        "codec": (str(video), ["--save-video", str(tmp_path / "o.mp4"), "--fourcc", "ZZZZ"],
                  "--save-video " + str(tmp_path / "o.mp4") + ": OpenCV's FFmpeg here cannot write codec 'ZZZZ'"),
        "suffix": (str(video), ["--save-video", str(tmp_path / "o.xyz")], "unknown video type '.xyz'"),
        "save_vis": (str(video), ["--save-vis"], "--save-vis: only for image sources"),
        "realtime_images": (str(tmp_path / "im"), ["--realtime"], "--realtime: only with a video file"),
        "mixed": (str(video), [str(tmp_path / "im")], "a video, camera or stream is the only source of a run"),
        "scheme": ("ftp://127.0.0.1/x.mp4", [], "unknown stream scheme 'ftp'"),
    }[case]
    rc = main(["infer", "--engine", str(nms_graph), "--source", src, *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    if case == "url":
        assert "no stream answers there" in err[0] and "secret" not in err[0]
    assert not out.exists() and not (tmp_path / "o.mp4").exists()


def test_stream_api_errors(nms_graph, tmp_path):
    with Detector(nms_graph) as det:
        with pytest.raises(HarmonicError, match="notes.mp4: not a video"):
            (tmp_path / "notes.mp4").write_text("x" * 100)
            det.stream(tmp_path / "notes.mp4")
        with pytest.raises(HarmonicError, match="only for a video, camera or stream source"):
            write_video(tmp_path / "c.mp4", 2)
            frames_as_pngs(tmp_path / "c.mp4", tmp_path / "f")
            det.stream(tmp_path / "f", realtime=True)
        stream = det.stream(tmp_path / "c.mp4")
        list(stream)
        with pytest.raises(HarmonicError, match="iterated once"):
            list(stream)


def _silent_server(send: bytes | None = None):
    """A TCP server that accepts and then says nothing (``send``: sends that much of a reply, then hangs)."""
    import socket
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    held = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)
            if send is not None:
                c.recv(65536)
                c.sendall(send)
            time.sleep(0.01)

    threading.Thread(target=serve, daemon=True).start()
    return srv, held


def test_a_url_that_does_not_answer_or_hangs_mid_stream(nms_graph, tmp_path):
    from harmonic.runtime.video import VideoReader, VideoSource

    srv, held = _silent_server()
    try:
        with pytest.raises(HarmonicError, match="no stream answers there within 1.5 s"):
            VideoReader(VideoSource("url", f"http://127.0.0.1:{srv.getsockname()[1]}/x.mp4"), open_timeout_s=1.5)
    finally:
        srv.close()
    data = write_video(tmp_path / "clip.avi", 30).read_bytes()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-msvideo\r\nContent-Length: %d\r\n\r\n" % len(data)
    srv, held = _silent_server(head + data[: len(data) // 2])  # half the video, then silence
    try:
        reader = VideoReader(VideoSource("url", f"http://127.0.0.1:{srv.getsockname()[1]}/clip.avi"),
                             open_timeout_s=5, read_timeout_s=1.5)
        with Detector(nms_graph) as det:
            got = [item.index for item, _ in det.run_frames(reader)]
    finally:
        srv.close()
        for c in held:
            c.close()
    assert 0 < len(got) < 30 and got == list(range(len(got)))
    assert reader.stats.stopped == f"the stream stopped after {len(got)} frame(s)"


def test_a_full_disk_keeps_every_complete_line_and_names_the_file(nms_graph, tmp_path, capsys, monkeypatch):
    """The disk fills in the middle of a line: the file is cut back to its complete lines and kept, no
    temporary file is left, and the one error line (exit 1) names detections.jsonl."""
    from tests.faults import full_disk

    video = write_video(tmp_path / "clip.mp4", N)
    roomy = tmp_path / "roomy"
    assert main(["infer", "--engine", str(nms_graph), "--source", str(video), "--out", str(roomy)]) == 0
    lines = (roomy / "detections.jsonl").read_text().splitlines(keepends=True)
    disk = tmp_path / "disk"
    out = disk / "out"
    out.mkdir(parents=True)
    capsys.readouterr()
    full_disk(monkeypatch, disk, free=len("".join(lines[:4]).encode()) + 10)  # room for 4 lines and a bit
    assert main(["infer", "--engine", str(nms_graph), "--source", str(video), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out / 'detections.jsonl'}: no space left on device")
    assert (out / "detections.jsonl").read_text() == "".join(lines[:4])
    assert sorted(p.name for p in out.iterdir()) == ["detections.jsonl"]
