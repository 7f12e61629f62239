"""User-facing errors: one line naming the file and the problem.

Exit codes of every command: 2 when the user's input is wrong (a flag, or a file
named on the command line and what it holds: :class:`HarmonicError`), 1 when the
run itself failed (:class:`RunFailure`: a full disk, a failed verification, an
internal error), 130 after Ctrl-C.

A failed write (full disk, quota, read-only filesystem, permission changed mid-run)
is a :class:`WriteFailure`: one line naming the output being written, not the file a
library happened to read, and for a full disk the filesystem and its free space::

    out/repo/harmonicdet/1/model.onnx: no space left on device (filesystem of out: 0 bytes free)

:func:`write_failure` turns an exception raised while writing into that line;
:func:`describe_os_error` words any other ``OSError`` for the CLI's last resort.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: the place being written has no room: the message adds the filesystem and its free space
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errors only a write raises: they are about the output whatever file a library names (a copy's source)
WRITE_ERRNOS = SPACE_ERRNOS | {errno.EFBIG, errno.EROFS}


class HarmonicError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint). CLIs print it on one line and exit 2."""

    exit_code = 2


class RunFailure(HarmonicError):
    """The run failed for a reason other than bad input (disk full, nothing could be processed): exit 1."""

    exit_code = 1


class WriteFailure(RunFailure):
    """An output could not be written: ``place`` (the output file or folder) and ``problem`` (one line).

    Raised by the writers of :mod:`harmonic.atomic` after they removed their temporary files; the
    earlier complete output, if any, is unchanged. Exit code 1.
    """

    def __init__(self, place: str | Path, problem: str) -> None:
        self.place, self.problem = str(place), problem
        super().__init__(f"{place}: {problem}")

    def __reduce__(self):  # noqa: ANN204 - crosses process pools intact
        return type(self), (self.place, self.problem)


def one_line(text: str) -> str:
    """The one informative line of an error message.

    ANSI colour codes are removed. An exception re-raised by a torch ``DataLoader``
    worker carries the worker's traceback in its message; the last line of that
    traceback (``module.Error: message``) is the message that counts.
    """
    text = _ANSI.sub("", str(text)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    if len(lines) > 1 and any(ln.startswith("Traceback (most recent call last)") or "Original Traceback" in ln
                              for ln in lines):
        last = lines[-1]
        head, sep, tail = last.partition(": ")
        if sep and re.fullmatch(r"[\w.]+", head):
            return tail
        return last
    return lines[0] if len(lines) == 1 else " ".join(lines)[:500]


def format_bytes(n: float) -> str:
    """``0 bytes``, ``512 bytes``, ``1.5 KiB``, ``20.1 MiB``, ``3.0 GiB``."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path.cwd()


def filesystem_of(path: str | Path) -> tuple[str, int | None]:
    """``(mount point, free bytes)`` of the filesystem that holds ``path`` (or would: its nearest existing folder).

    The mount point is written the way ``path`` is (relative stays relative while the mount point
    lies inside it); free bytes are those an unprivileged user may take, ``None`` when unknown.
    """
    start = _nearest_existing(Path(path))
    try:
        free: int | None = shutil.disk_usage(start).free
    except OSError:
        free = None
    folder = start if start.is_dir() else start.parent
    for candidates in ((folder, *folder.parents), (folder.resolve(), *folder.resolve().parents)):
        for p in candidates:
            if os.path.ismount(p):
                return str(p.resolve() if str(p) == "." else p), free
    return "/", free


def _space_note(place: str | Path) -> str:
    mount, free = filesystem_of(place)
    return f" (filesystem of {mount}: {format_bytes(free)} free)" if free is not None else f" (filesystem of {mount})"


def _problem(exc: OSError) -> str:
    text = exc.strerror or one_line(str(exc)) or type(exc).__name__
    return text[:1].lower() + text[1:] if text[1:2].islower() else text  # "No space" -> "no space"; "EOF" stays


def is_write_failure(exc: BaseException) -> bool:
    """An error from writing a file (full disk, quota, I/O), not from what was being written.

    ``torch.save`` reports a short write by its zip writer as a ``RuntimeError`` such as
    "[enforce fail at inline_container.cc:672] . unexpected pos 71951872 vs 71951760".
    """
    if isinstance(exc, OSError):
        return True
    msg = str(exc)
    return "inline_container" in msg or "PytorchStreamWriter" in msg or "unexpected pos" in msg


def _os_error_behind(exc: BaseException) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _inside(name: str | Path, temp: Path) -> Path | None:
    """``name`` relative to ``temp`` (``Path('.')`` for ``temp`` itself), or None when outside it."""
    try:
        return Path(os.path.abspath(name)).relative_to(os.path.abspath(temp))
    except ValueError:
        return None


def _our_temporary(name: str | Path, target: Path) -> bool:
    """``name`` is one of the hidden temporaries :mod:`harmonic.atomic` makes beside ``target``
    (``.model.x1y2.tmp.onnx``, ``.repo.x1y2.tmp``, ``.model.onnx.x1y2.work``, ``....old``)."""
    p, t = Path(os.path.abspath(name)), Path(os.path.abspath(target))
    return (p.parent == t.parent and p.name.startswith((f".{t.name}.", f".{t.stem}."))
            and (p.name.endswith((".tmp", ".work", ".old")) or ".tmp." in p.name))


def _named(exc: OSError) -> list[str]:
    return [n for n in (exc.filename2, exc.filename) if isinstance(n, (str, os.PathLike))]


def write_failure(exc: BaseException, target: str | Path, temp: str | Path | None = None) -> WriteFailure | None:
    """The one-line :class:`WriteFailure` for ``exc``, raised while writing ``target`` through ``temp``
    (a temporary file, or folder, beside it); ``None`` when ``exc`` is not a failed write there (an
    error reading an input, a bug, Ctrl-C, an error already worded): re-raise it as it is.

    The place named is the output: a file inside ``temp`` is named by its final path under ``target``;
    a full disk names ``target`` even when the library put a copy's source in the exception.
    Call it before removing the temporary files, so the free space is the one the write met.
    """
    if isinstance(exc, HarmonicError) or not isinstance(exc, Exception):
        return None
    target = Path(target)
    if not isinstance(exc, OSError):
        if not is_write_failure(exc):
            return None
        cause = _os_error_behind(exc)  # torch's zip writer wraps the OSError of the file's write
        if cause is None:
            return WriteFailure(target, "the write stopped short" + _space_note(target))
        exc = cause
    place: Path | None = None
    names = _named(exc)
    for n in names:
        rel = _inside(n, Path(temp)) if temp is not None else None
        if rel is not None:
            place = target if rel == Path(".") else target / rel
            break
        if _our_temporary(n, target):  # one that could not even be made (a read-only folder)
            place = target
            break
    if place is None:
        if exc.errno in WRITE_ERRNOS:  # only a write fails so: the file opened for writing, a copy's destination
            place = Path(names[0]) if names else target
        elif names:
            return None  # about another file (an input that cannot be read): its own message says so
        else:
            place = target
    note = _space_note(place) if exc.errno in SPACE_ERRNOS or exc.errno is None else ""
    return WriteFailure(place, _problem(exc) + note)


def describe_os_error(exc: OSError) -> str:
    """One line for an ``OSError`` no writer worded: ``<file>: <problem>``; for a full disk the
    destination (a copy's ``filename2``) and its filesystem's free space."""
    names = _named(exc)
    problem = _problem(exc)
    if exc.errno in WRITE_ERRNOS and names:
        return f"{names[0]}: {problem}" + (_space_note(names[0]) if exc.errno in SPACE_ERRNOS else "")
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{problem}"
