"""harmonic.errors: the one line of a failed write names the output and, for a full disk, its filesystem;
the CLI maps it (and any other OSError) to exit 1."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest

from harmonic.cli import run_guarded
from harmonic.errors import (
    HarmonicError,
    RunFailure,
    WriteFailure,
    describe_os_error,
    filesystem_of,
    format_bytes,
    one_line,
    write_failure,
)

ENOSPC = os.strerror(errno.ENOSPC)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """``tmp_path / "small"`` is a mount point with 0 bytes free; everything else has 5 GiB."""
    small = tmp_path / "small"
    small.mkdir()
    real_ismount, real_usage = os.path.ismount, shutil.disk_usage

    def ismount(p):
        return os.path.abspath(p) == str(small) or real_ismount(p)

    def usage(p):
        inside = os.path.abspath(p).startswith(str(small))
        return shutil._ntuple_diskusage(1 << 20, 1 << 20, 0) if inside else real_usage(p)._replace(free=5 << 30)

    monkeypatch.setattr(os.path, "ismount", ismount)
    monkeypatch.setattr(shutil, "disk_usage", usage)
    return small


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1, 1023, 1024, 1536, 20 << 20, 3 << 30)] == [
        "0 bytes", "1 bytes", "1023 bytes", "1.0 KiB", "1.5 KiB", "20.0 MiB", "3.0 GiB"]


def test_filesystem_of_is_written_like_the_path(small_disk, monkeypatch):
    monkeypatch.chdir(small_disk.parent)
    assert filesystem_of("small/repo/harmonicdet/1/model.onnx") == ("small", 0)  # not created yet
    assert filesystem_of(small_disk / "x") == (str(small_disk), 0)
    mount, free = filesystem_of("elsewhere.json")
    assert os.path.ismount(mount) and free == 5 << 30
    monkeypatch.chdir(small_disk)
    assert filesystem_of("out/detections.json") == (str(small_disk), 0)  # the mount point, not "."


def test_the_issues_example_line(small_disk, monkeypatch):
    """A Triton repository copied onto a full disk: Python's copy names the source (the input, on a
    healthy disk) and the destination in the temporary folder; the line names the final destination."""
    monkeypatch.chdir(small_disk.parent)
    tmp = Path("small/.repo.x1.tmp")
    exc = OSError(errno.ENOSPC, ENOSPC, "model.onnx", None, str(tmp / "harmonicdet/1/model.onnx"))
    failure = write_failure(exc, Path("small/repo"), tmp)
    assert isinstance(failure, WriteFailure) and failure.exit_code == 1
    assert str(failure) == "small/repo/harmonicdet/1/model.onnx: no space left on device (filesystem of small: 0 bytes free)"
    assert failure.place == "small/repo/harmonicdet/1/model.onnx"
    assert pickle.loads(pickle.dumps(failure)).problem == failure.problem  # crosses process pools


def test_which_place_a_failure_names(small_disk):
    out, tmp = small_disk / "out.json", small_disk / ".out.x.tmp.json"
    # a plain write of the temporary file (Python gives no file name): the output
    assert write_failure(OSError(errno.ENOSPC, ENOSPC), out, tmp).place == str(out)
    # the temporary file named (a rename, an open): the output, never the temporary name
    assert write_failure(OSError(errno.EACCES, "Permission denied", str(tmp), None, str(out)), out, tmp).place == str(out)
    # a copy to another destination on a full disk: that destination
    other = small_disk / "scratch" / "copy.onnx"
    assert write_failure(OSError(errno.ENOSPC, ENOSPC, "in.onnx", None, str(other)), out, tmp).place == str(other)
    # an input that cannot be read: not a write failure, its own error stands
    assert write_failure(FileNotFoundError(errno.ENOENT, "No such file", "in.onnx"), out, tmp) is None
    assert write_failure(PermissionError(errno.EACCES, "Permission denied", "in.onnx"), out, tmp) is None
    # torch's zip writer reports a short write as RuntimeError
    short = write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 5"), out)
    assert str(short) == f"{out}: the write stopped short (filesystem of {small_disk}: 0 bytes free)"
    # ... and keeps the file's OSError as its context: that errno is the problem named
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.ENOSPC, ENOSPC)
    assert str(write_failure(wrapped, out)) == f"{out}: no space left on device (filesystem of {small_disk}: 0 bytes free)"
    for other_error in (RuntimeError("a bug"), KeyboardInterrupt(), HarmonicError("worded already")):
        assert write_failure(other_error, out, tmp) is None


@pytest.mark.parametrize("code,text,expected", [
    (errno.EROFS, "Read-only file system", "read-only file system"),
    (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded (filesystem of {small}: 0 bytes free)"),
    (errno.EFBIG, "File too large", "file too large"),
    (errno.EIO, "Input/output error", "input/output error"),
])
def test_other_write_errors(small_disk, code, text, expected):
    out = small_disk / "last.pt"
    assert str(write_failure(OSError(code, text), out)) == f"{out}: " + expected.format(small=small_disk)


def test_describe_os_error_names_a_copys_destination(small_disk):
    exc = OSError(errno.ENOSPC, ENOSPC, "model.onnx", None, str(small_disk / "m.onnx"))
    assert describe_os_error(exc) == f"{small_disk / 'm.onnx'}: no space left on device (filesystem of {small_disk}: 0 bytes free)"
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied", "in.txt")) == "in.txt: permission denied"
    assert describe_os_error(OSError(errno.ENOSPC, ENOSPC)) == "no space left on device"


def test_cli_exit_codes_and_one_line(small_disk, capsys):
    def copy_to_full_disk(argv):
        raise OSError(errno.ENOSPC, ENOSPC, "model.onnx", None, str(small_disk / "m.onnx"))

    def write_failed(argv):
        raise WriteFailure(small_disk / "bench.json", "no space left on device")

    def run_failed(argv):
        raise RunFailure("--images: none of the 3 image(s) could be read")

    assert run_guarded(copy_to_full_disk, []) == 1
    assert capsys.readouterr().err == (f"error: {small_disk / 'm.onnx'}: no space left on device "
                                       f"(filesystem of {small_disk}: 0 bytes free)\n")
    assert run_guarded(write_failed, []) == 1
    assert capsys.readouterr().err == f"error: {small_disk / 'bench.json'}: no space left on device\n"
    assert run_guarded(run_failed, []) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_one_line_keeps_the_last_line_of_a_worker_traceback():
    text = "Caught OSError in DataLoader worker.\nOriginal Traceback (most recent call last):\n  File x\nOSError: boom"
    assert one_line(text) == "boom"
    assert one_line("\x1b[31mred\x1b[0m") == "red"
