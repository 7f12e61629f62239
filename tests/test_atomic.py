"""harmonic.atomic under write faults: every writer removes its temporary files, keeps the earlier
complete output byte for byte, and fails with one line naming the output (and, for a full disk, its
filesystem's free space). The disk is made full by :mod:`tests.faults` (no root needed); one test
also fills a real tmpfs where this process may mount one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harmonic import atomic
from harmonic.errors import RunFailure, WriteFailure
from tests.faults import full_disk, small_tmpfs, snapshot

EARLIER = b"the earlier complete output\n"
BIG = "x" * 5000


def _full_disk_line(msg: str, place: Path) -> bool:
    return msg.startswith(f"{place}: no space left on device (filesystem of ") and msg.endswith(" free)")


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over-earlier"])
@pytest.mark.parametrize("writer", ["write_text", "write_json", "write_bytes", "atomic_open", "atomic_path"])
def test_single_file_writers_on_a_full_disk(tmp_path, monkeypatch, writer, earlier):
    out = tmp_path / "disk" / "out.json"
    out.parent.mkdir()
    if earlier:
        out.write_bytes(EARLIER)
    before = snapshot(out.parent)
    full_disk(monkeypatch, out.parent, free=1000)
    with pytest.raises(WriteFailure) as info:
        if writer == "write_text":
            atomic.write_text(out, BIG)
        elif writer == "write_json":
            atomic.write_json(out, {"x": BIG})
        elif writer == "write_bytes":
            atomic.write_bytes(out, BIG.encode())
        elif writer == "atomic_open":
            with atomic.atomic_open(out, "wb") as f:
                for _ in range(10):
                    f.write(BIG.encode()[:500])
        else:
            with atomic.atomic_path(out) as tmp:
                np.save(open(tmp, "wb"), np.zeros(2000))  # noqa: SIM115 - a library writing to a name
    assert _full_disk_line(str(info.value), out), str(info.value)
    assert info.value.exit_code == 1 and "\n" not in str(info.value)
    assert snapshot(out.parent) == before  # no temporary file, the earlier file byte-identical


def test_folders_made_for_a_failed_output_go_with_it(tmp_path, monkeypatch):
    full_disk(monkeypatch, tmp_path, free=10)
    with pytest.raises(WriteFailure):
        atomic.write_text(tmp_path / "a" / "b" / "out.txt", BIG)
    with pytest.raises(WriteFailure), atomic.output_group(tmp_path / "run"):
        assert (tmp_path / "run").is_dir()
        atomic.write_text(tmp_path / "run" / "vis" / "1.jpg", "small")  # fits: staged
        atomic.write_text(tmp_path / "run" / "detections.json", BIG)
    assert list(tmp_path.iterdir()) == []


def test_write_staged_removes_its_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "m.engine"
    target.write_bytes(EARLIER)
    full_disk(monkeypatch, tmp_path, free=100)
    with pytest.raises(WriteFailure) as info:
        atomic.write_staged(target, b"p" * 10_000)
    assert _full_disk_line(str(info.value), target)
    assert snapshot(tmp_path) == {"m.engine": EARLIER}


def _list_on_disk(tmp_path, monkeypatch, free: int, earlier: bool = True):
    out = tmp_path / "detections.json"
    if earlier:
        out.write_bytes(EARLIER)
    full_disk(monkeypatch, tmp_path, free=free)
    return out, atomic.JsonListWriter(out)


def test_json_list_fails_while_streaming(tmp_path, monkeypatch):
    out, w = _list_on_disk(tmp_path, monkeypatch, free=70_000)
    with pytest.raises(WriteFailure) as info:
        for i in range(3000):
            w.extend([{"image_id": i, "bbox": [1.5, 2.5, 3.5, 4.5], "score": 0.5}])
    assert _full_disk_line(str(info.value), out)
    assert snapshot(tmp_path) == {"detections.json": EARLIER}  # the temporary file went at once
    w.discard()  # what a caller does next: a no-op, never a second flush
    assert snapshot(tmp_path) == {"detections.json": EARLIER}


def test_json_list_fails_on_its_last_flush_and_discard_still_removes_it(tmp_path, monkeypatch):
    """The disk fills exactly at the closing bracket: the final flush fails, and nothing is left."""
    entries = [{"image_id": i, "score": 0.25} for i in range(50)]
    size = len(("[" + "".join(("\n" if i == 0 else ",\n") + json.dumps(e) for i, e in enumerate(entries))).encode())
    out, w = _list_on_disk(tmp_path, monkeypatch, free=size + 1)  # all entries fit, "\n]\n" does not
    w.extend(entries)
    with pytest.raises(WriteFailure) as info:
        w.close()
    assert _full_disk_line(str(info.value), out)
    w.discard()
    assert snapshot(tmp_path) == {"detections.json": EARLIER}


def test_json_list_discard_never_flushes(tmp_path, monkeypatch):
    out, w = _list_on_disk(tmp_path, monkeypatch, free=0)
    w.extend([{"image_id": 1}])  # buffered: nothing written yet
    w.discard()  # a flush here would raise ENOSPC
    assert snapshot(tmp_path) == {"detections.json": EARLIER}


def test_json_list_commit_writes_a_complete_list(tmp_path):
    out = tmp_path / "d.json"
    w = atomic.JsonListWriter(out)
    w.extend([{"a": i} for i in range(20_000)])  # several buffer flushes
    w.commit()
    assert json.loads(out.read_text()) == [{"a": i} for i in range(20_000)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_group_keeps_every_earlier_output_until_all_are_written(tmp_path, monkeypatch):
    a, b = tmp_path / "a.onnx", tmp_path / "b.json"
    a.write_bytes(EARLIER)
    b.write_bytes(EARLIER)
    disk = full_disk(monkeypatch, tmp_path, free=3000)
    with pytest.raises(WriteFailure) as info, atomic.output_group():
        atomic.write_bytes(a, b"A" * 2000)  # fits: staged, a is still the earlier file
        assert a.read_bytes() == EARLIER and atomic.resolve(a).read_bytes() == b"A" * 2000
        atomic.write_bytes(b, b"B" * 2000)  # the disk fills
    assert _full_disk_line(str(info.value), b) and disk.failures == 1
    assert snapshot(tmp_path) == {"a.onnx": EARLIER, "b.json": EARLIER}


def test_group_swaps_all_at_the_end(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(EARLIER)
    with atomic.output_group():
        atomic.write_bytes(a, b"new a")
        atomic.write_text(b, "new b")
        with atomic.atomic_dir(tmp_path / "repo") as d:
            (d / "x").write_text("x")
        assert a.read_bytes() == EARLIER and not b.exists() and not (tmp_path / "repo").exists()
    assert snapshot(tmp_path) == {"a": b"new a", "b": b"new b", "repo/x": b"x"}
    assert atomic.resolve(a) == a  # outside a group: the path itself


def test_group_rename_failing_half_way_puts_the_old_files_back(tmp_path, monkeypatch):
    """A permission change between the writes and the renames: the first target already replaced gets its
    old bytes back, the second keeps its own, nothing hidden is left, the line names the second."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        return real(src, dst)

    with pytest.raises(WriteFailure) as info, atomic.output_group():
        atomic.write_bytes(a, b"new a")
        atomic.write_bytes(b, b"new b")
        monkeypatch.setattr(os, "replace", replace)
    assert str(info.value) == f"{b}: permission denied"
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(tmp_path) == {"a": b"old a", "b": b"old b"}


def test_files_a_library_makes_from_one_name_are_placed_together(tmp_path, monkeypatch):
    """An IR writer makes model.xml and model.bin from one name: both into a scratch folder, then placed
    in one group; a full disk on the second leaves the earlier pair as it was."""
    xml, binf = tmp_path / "model.xml", tmp_path / "model.bin"
    xml.write_bytes(b"old xml")
    binf.write_bytes(b"old bin")

    def save_model(path: Path, weights: int) -> None:
        path.write_bytes(b"<xml/>")
        path.with_suffix(".bin").write_bytes(b"w" * weights)

    with atomic.output_group(), atomic.scratch_dir(xml) as work:
        save_model(work / "model.xml", 100)
        atomic.place(work / "model.xml", xml)
        atomic.place(work / "model.bin", binf)
    assert snapshot(tmp_path) == {"model.bin": b"w" * 100, "model.xml": b"<xml/>"}
    full_disk(monkeypatch, tmp_path, free=50)
    with pytest.raises(WriteFailure) as info, atomic.output_group(), atomic.scratch_dir(xml) as work:
        save_model(work / "model.xml", 100)
    assert _full_disk_line(str(info.value), xml)
    assert snapshot(tmp_path) == {"model.bin": b"w" * 100, "model.xml": b"<xml/>"}


def test_nested_group_failure_removes_only_its_own_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with atomic.output_group():
        atomic.write_bytes(a, b"a")
        with pytest.raises(KeyboardInterrupt), atomic.output_group():
            atomic.write_bytes(b, b"b")
            raise KeyboardInterrupt
    assert snapshot(tmp_path) == {"a": b"a"}


def test_atomic_dir_names_the_file_inside_the_final_folder(tmp_path, monkeypatch):
    """A copy on a full disk: Python puts the copy's source in the exception; the line names the
    destination's final path, not the input and not the temporary folder."""
    src = tmp_path / "model.onnx"
    src.write_bytes(b"g" * 50_000)
    disk = tmp_path / "disk"
    repo = disk / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "model.onnx").write_bytes(EARLIER)
    before = snapshot(disk)
    full_disk(monkeypatch, disk, free=10_000)
    with pytest.raises(WriteFailure) as info, atomic.atomic_dir(repo) as tmp:
        (tmp / "m" / "1").mkdir(parents=True)
        shutil.copyfile(src, tmp / "m" / "1" / "model.onnx")
    assert _full_disk_line(str(info.value), repo / "m" / "1" / "model.onnx"), str(info.value)
    assert snapshot(disk) == before and sorted(p.name for p in disk.iterdir()) == ["repo"]


def test_atomic_dir_replaces_an_old_folder_whole(tmp_path):
    repo = tmp_path / "repo"
    (repo / "old").mkdir(parents=True)
    with atomic.atomic_dir(repo) as tmp:
        (tmp / "new").write_text("n")
    assert snapshot(tmp_path) == {"repo/new": b"n"}
    assert oct(repo.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only file system"), (errno.EDQUOT, "disk quota exceeded"),
                                        (errno.EACCES, "permission denied"), (errno.EIO, "input/output error")])
def test_other_write_errors_are_one_line_naming_the_output(tmp_path, monkeypatch, code, words):
    out = tmp_path / "report.json"
    out.write_bytes(EARLIER)
    full_disk(monkeypatch, tmp_path, free=10, error=code)
    with pytest.raises(WriteFailure) as info:
        atomic.write_text(out, BIG)
    msg = str(info.value)
    assert msg.startswith(f"{out}: {words}")
    assert ("(filesystem of " in msg) == (code == errno.EDQUOT)  # where space is the problem
    assert snapshot(tmp_path) == {"report.json": EARLIER}


def test_temporary_file_that_cannot_be_created_names_the_output(tmp_path, monkeypatch):
    """A folder remounted read-only: even the temporary file cannot be made."""
    def mkstemp(prefix="", suffix="", dir=None):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, f"{prefix}abc{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(WriteFailure) as info:
        atomic.write_text(tmp_path / "out.txt", "x")
    assert str(info.value) == f"{tmp_path / 'out.txt'}: read-only file system"  # not the temporary name
    with pytest.raises(WriteFailure) as info:
        atomic.JsonListWriter(tmp_path / "d.json")
    assert str(info.value) == f"{tmp_path / 'd.json'}: read-only file system"


def test_errors_that_are_not_write_failures_pass_through(tmp_path):
    out = tmp_path / "out.txt"
    out.write_bytes(EARLIER)
    with pytest.raises(ValueError, match="bug"), atomic.atomic_open(out) as f:
        f.write("partial")
        raise ValueError("bug")
    with pytest.raises(FileNotFoundError), atomic.atomic_path(out) as tmp:  # reading an input that is missing
        shutil.copyfile(tmp_path / "missing-input", tmp)
    assert snapshot(tmp_path) == {"out.txt": EARLIER}


def test_scratch_dir_holds_library_temporaries_and_goes(tmp_path):
    out = tmp_path / "m.int8.onnx"
    with atomic.scratch_dir(out) as work:
        assert tempfile.gettempdir() == str(work) and work.parent == tmp_path
        with tempfile.TemporaryDirectory() as inner:
            assert Path(inner).parent == work
    assert tempfile.gettempdir() != str(work) and list(tmp_path.iterdir()) == []


def test_scratch_dir_failure_names_the_output(tmp_path, monkeypatch):
    out = tmp_path / "m.int8.onnx"
    full_disk(monkeypatch, tmp_path, free=10)
    with pytest.raises(WriteFailure) as info, atomic.scratch_dir(out) as work:
        (work / "augmented.onnx").write_bytes(b"a" * 100)
    assert _full_disk_line(str(info.value), out) and list(tmp_path.iterdir()) == []


def test_require_space_refuses_what_clearly_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 9 << 20, 1 << 20))
    atomic.require_space([(tmp_path / "a", 600 << 10), (None, 10 << 30), (tmp_path / "b", 0)])  # 600 KiB fit
    with pytest.raises(RunFailure) as info:
        atomic.require_space([(tmp_path / "a", 600 << 10), (tmp_path / "sub" / "b", 600 << 10)])
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'a'}, {tmp_path / 'sub' / 'b'}: need at least 1.2 MiB, the filesystem of ")
    assert msg.endswith(" has 1.0 MiB free") and info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_tmpfs(tmp_path):
    """On a real 256 KiB filesystem: the write fails, the disk gets its free space back, the earlier
    file is intact and the line names the output and the mount point."""
    with small_tmpfs(tmp_path / "small", "256k") as small:
        out = small / "out" / "detections.json"
        out.parent.mkdir()
        out.write_bytes(EARLIER)
        free = shutil.disk_usage(small).free
        with pytest.raises(WriteFailure) as info:
            atomic.write_text(out, "y" * (1 << 20))
        assert str(info.value) == f"{out}: no space left on device (filesystem of {small}: 0 bytes free)"
        w = atomic.JsonListWriter(out)
        with pytest.raises(WriteFailure) as info:
            w.extend([{"image_id": i, "pad": "z" * 100} for i in range(5000)])
            w.close()
        w.discard()
        assert str(info.value) == f"{out}: no space left on device (filesystem of {small}: 0 bytes free)"
        assert shutil.disk_usage(small).free == free
        assert snapshot(small) == {"out/detections.json": EARLIER}
