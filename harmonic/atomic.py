"""Atomic file writes (torch-free): write a temporary file beside the target, then rename it over.

A crash, a full disk or Ctrl-C at any point leaves either the previous complete
file or the new complete one, never a truncated file. Every output file goes through here:
:func:`atomic_path` / :func:`atomic_open` / :func:`write_text` / :func:`write_json` for one
file, :func:`atomic_output_path` for an output that must not replace a file unasked,
:func:`write_staged` for several files renamed together, :class:`JsonListWriter` for a
JSON list streamed entry by entry. Each final file gets the usual mode (0666 minus the
umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from harmonic.errors import HarmonicError


def chmod_default(path: str | Path) -> None:
    """Give a ``mkstemp`` file (mode 0600) the mode a plain ``open`` would: 0666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that want a file name (``np.savez``, ``savefig``).

    The temporary name keeps ``path``'s suffix so such writers pick the right format. The file
    gets the usual mode (0666 minus the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_output_path(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """:func:`atomic_path` for an output the user named: a :class:`HarmonicError` when ``out`` exists and
    ``overwrite`` is false, or when its folder does not exist (it is not created)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise HarmonicError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise HarmonicError(f"{out}: folder {out.parent} does not exist")
    with atomic_path(out) as tmp:
        yield tmp


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``, on error it is removed."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """Atomically write ``json.dumps(obj, **dumps_kwargs)`` plus a newline to ``path``."""
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def write_staged(path: Path, data: bytes) -> Path:
    r"""Write ``data`` to a temporary file beside ``path`` (the usual mode) and return the temporary path.

    For files that must appear together (an engine and its sidecar): the caller ``os.replace``\ s each
    temporary onto its target once all are written, and unlinks the ones left when something fails.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    chmod_default(tmp)  # mkstemp makes it 0600: give the final file the usual mode
    return Path(tmp)


class JsonListWriter:
    """Streams a JSON list to a temporary file beside ``path`` so 100k images don't keep their
    detections in memory; :meth:`commit` renames it onto ``path``, :meth:`discard` removes it, so
    ``path`` always holds the last complete list."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        self.f = os.fdopen(fd, "w", encoding="utf-8")
        self.f.write("[")
        self.first = True

    def extend(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            self.f.write(("\n" if self.first else ",\n") + json.dumps(e))
            self.first = False

    def close(self) -> None:
        """Finish the list in the temporary file (``path`` is unchanged until :meth:`commit`)."""
        if not self.f.closed:
            self.f.write("\n]\n")
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()

    def commit(self) -> None:
        self.close()
        chmod_default(self.tmp)  # mkstemp's 0600 -> the usual mode, as for every atomic output
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)
