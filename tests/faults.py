"""Write faults for tests, without root: a folder whose disk fills after N bytes, and (where
permitted) a real small tmpfs.

:class:`FullDisk` patches the ways this code base writes files (``open``/``io.open`` file
objects, ``os.write``, ``os.sendfile`` as ``shutil.copyfile`` uses it) so that every write
under ``root`` takes from one budget of ``free`` bytes; the write that goes past it writes
what fits and raises ``OSError(ENOSPC)``, as a full disk does.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class FullDisk:
    """Writes under ``root`` fail with ``ENOSPC`` once ``free`` bytes have been written (all files together)."""

    def __init__(self, root: str | Path, free: int, error: int = errno.ENOSPC) -> None:
        self.root = os.path.abspath(root)
        self.free = int(free)
        self.errno = error
        self.failures = 0

    def covers(self, target: Any) -> bool:
        if isinstance(target, int):
            target = _fd_path(target)
        if target is None:
            return False
        try:
            p = os.path.abspath(os.fspath(target))
        except TypeError:
            return False
        return p == self.root or p.startswith(self.root + os.sep)

    def take(self, n: int) -> int:
        """How many of ``n`` bytes fit; raises the disk's error when none do."""
        if n == 0:
            return 0
        if self.free <= 0:
            self.failures += 1
            raise OSError(self.errno, os.strerror(self.errno))
        k = min(n, self.free)
        self.free -= k
        return k

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FullDisk:
        real_open, real_write, real_sendfile = io.open, os.write, os.sendfile
        disk = self

        class File:
            """A file object whose ``write`` takes from the disk's budget."""

            def __init__(self, f: Any) -> None:
                self._f = f

            def write(self, data: Any) -> int:
                k = disk.take(len(data))
                if k < len(data):
                    self._f.write(data[:k])
                    self._f.flush()
                    disk.take(len(data) - k)  # raises
                return self._f.write(data)

            def writelines(self, lines: Any) -> None:
                for line in lines:
                    self.write(line)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._f, name)

            def __enter__(self) -> File:
                return self

            def __exit__(self, *exc: Any) -> None:
                self._f.close()

            def __iter__(self) -> Iterator[Any]:
                return iter(self._f)

        def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and disk.covers(file):
                return File(f)
            return f

        def fake_write(fd: int, data: Any) -> int:
            if disk.covers(fd):
                k = disk.take(len(data))
                return real_write(fd, bytes(memoryview(data)[:k]))
            return real_write(fd, data)

        def fake_sendfile(out_fd: int, in_fd: int, offset: Any, count: int) -> int:
            if disk.covers(out_fd):
                k = disk.take(count)
                sent = real_sendfile(out_fd, in_fd, offset, k)
                disk.free += k - sent
                return sent
            return real_sendfile(out_fd, in_fd, offset, count)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "sendfile", fake_sendfile)
        return self


def full_disk(monkeypatch: pytest.MonkeyPatch, root: str | Path, free: int, error: int = errno.ENOSPC) -> FullDisk:
    """Make ``root`` (a folder, made if missing) a disk with ``free`` bytes left."""
    Path(root).mkdir(parents=True, exist_ok=True)
    return FullDisk(root, free, error).install(monkeypatch)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` for the block (always unmounted); skips the test when this
    process may not mount one (not root, no ``mount``, a container without the capability)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the fault-injection tests cover this without it")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command here")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(res.stderr or res.stdout).strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
