"""Atomic file writes (torch-free): write a temporary file beside the target, then rename it over.

A crash, a full disk or Ctrl-C at any point leaves either the previous complete
file or the new complete one, never a truncated file. Every output file goes through here:
:func:`atomic_path` / :func:`atomic_open` / :func:`write_text` / :func:`write_json` for one
file, :func:`atomic_output_path` for an output that must not replace a file unasked,
:func:`atomic_dir` for a folder, :func:`write_staged` for a temporary file the caller renames,
:class:`JsonListWriter` for a JSON list streamed entry by entry. Each final file gets the
usual mode (0666 minus the umask), not ``mkstemp``'s 0600.

Failures. Any error removes the temporary file or folder (its removal never waits on a
flush that can fail again), and a failed write (full disk, quota, read-only filesystem,
permission changed mid-run) is raised as one :class:`~harmonic.errors.WriteFailure` line
naming the output and, for a full disk, its filesystem's free space
(:func:`harmonic.errors.write_failure`). :func:`require_space` refuses early when the
outputs clearly cannot fit.

Groups. Inside ``with output_group():`` the writers stage their temporary files instead of
renaming them; when the block ends without error every staged file replaces its target
(the old files stay until all new ones are written; a rename failing half way puts the old
ones back), and when it fails they are all removed, so the earlier outputs stay as they
were. A later step that reads an output of the group asks :func:`resolve` for its staged file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any, NoReturn

from harmonic.errors import HarmonicError, RunFailure, filesystem_of, format_bytes, write_failure


def chmod_default(path: str | Path) -> None:
    """Give a ``mkstemp`` file (mode 0600) the mode a plain ``open`` would: 0666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def remove_quietly(path: str | Path | None) -> None:
    """Remove a temporary file or folder; never raises (the error being reported matters more)."""
    if path is None:
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _fail(exc: BaseException, target: Path, temp: Path | None) -> BaseException:
    """Remove ``temp`` and return what to raise: the :class:`WriteFailure` for a failed write, else ``exc``.
    The failure is worded first, so its free space is the one the write met."""
    failure = write_failure(exc, target, temp)
    remove_quietly(temp)
    return failure or exc


def _raise_failed(exc: BaseException, target: Path, temp: Path | None, made: Iterable[Path] = ()) -> NoReturn:
    """In an ``except`` block: remove ``temp`` and the empty folders in ``made``, then raise the
    :class:`WriteFailure` naming ``target`` for a failed write, else ``exc`` itself."""
    err = _fail(exc, target, temp)
    remove_empty(made)
    if err is exc:
        raise exc
    raise err from exc


def make_folders(folder: str | Path) -> list[Path]:
    """``folder.mkdir(parents=True, exist_ok=True)``; returns the folders it created, outermost first, so a
    failed run can take them away again (:func:`remove_empty`). Inside an :func:`output_group` the group
    remembers them and removes them (when empty) if the group fails."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    group = _GROUP.get()
    if group is not None:
        group.folders.extend(missing)
    return missing


def remove_empty(folders: Iterable[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, where they are still empty."""
    for p in reversed(list(folders)):
        try:
            p.rmdir()
        except OSError:
            pass


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ------------------------------------------------------------------------- groups of outputs


class _Group:
    """Temporary files (or folders) staged for their targets, renamed together by :meth:`commit`."""

    def __init__(self) -> None:
        self.staged: dict[str, tuple[Path, Path]] = {}  # abspath(target) -> (temp, target)
        self.folders: list[Path] = []  # made for the outputs, outermost first: removed if the group fails

    def stage(self, temp: Path, target: Path) -> None:
        key = os.path.abspath(target)
        old = self.staged.get(key)
        if old is not None and old[0] != temp:
            remove_quietly(old[0])  # written twice in one group: the newer one counts
        self.staged[key] = (temp, target)

    def discard(self, keys: Iterable[str] | None = None) -> None:
        for key in list(self.staged if keys is None else keys):
            remove_quietly(self.staged.pop(key)[0])

    def commit(self) -> None:
        pairs = list(self.staged.values())
        self.staged.clear()
        swap_in(pairs)


_GROUP: ContextVar[_Group | None] = ContextVar("harmonic_output_group", default=None)


@contextmanager
def output_group(*folders: str | Path) -> Iterator[None]:
    """Outputs written inside the block appear together when it ends, or not at all (see the module doc).

    ``folders`` (the run's output folders) are made first; those made by the group, for them or for its
    outputs, are removed again when it fails and they are empty. Nested blocks join the outermost one;
    a nested block that fails removes what it staged.
    """
    outer = _GROUP.get()
    if outer is not None:
        before = set(outer.staged)
        try:
            for f in folders:
                make_folders(f)
            yield
        except BaseException:
            outer.discard(k for k in list(outer.staged) if k not in before)
            raise
        return
    group = _Group()
    token = _GROUP.set(group)
    try:
        for f in folders:
            make_folders(f)
        yield
    except BaseException:
        group.discard()
        remove_empty(group.folders)
        raise
    finally:
        _GROUP.reset(token)
    try:
        group.commit()
    except BaseException:
        remove_empty(group.folders)
        raise


def resolve(path: str | Path) -> Path:
    """The file to read for output ``path``: its staged temporary file inside an :func:`output_group`, else ``path``."""
    group = _GROUP.get()
    if group is not None:
        hit = group.staged.get(os.path.abspath(path))
        if hit is not None:
            return hit[0]
    return Path(path)


def place(temp: str | Path, target: str | Path) -> None:
    """Put a finished temporary file or folder (on ``target``'s filesystem, e.g. from :func:`write_staged`
    or :func:`scratch_dir`) in place of ``target``: now, or when the current :func:`output_group` ends.
    For writers that make several files from one name (an IR's ``.xml`` and ``.bin``): write them into a
    :func:`scratch_dir` and :func:`place` each inside an :func:`output_group` (a file in another folder
    is first moved beside ``target``, so it outlives that folder until the group ends)."""
    temp, target = Path(temp), Path(target)
    try:
        if os.path.abspath(temp.parent) != os.path.abspath(target.parent):
            beside = (tempfile.mkdtemp if temp.is_dir() else _mkstemp_closed)(
                prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.replace(temp, beside)
            temp = Path(beside)
        _finish(temp, target)
    except BaseException as exc:
        _raise_failed(exc, target, temp)


def _mkstemp_closed(prefix: str, suffix: str, dir: Path) -> str:  # noqa: A002 - tempfile's name
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
    os.close(fd)
    return name


def _finish(temp: Path, target: Path) -> None:
    """Put ``temp`` in place: now, or when the current :func:`output_group` ends."""
    group = _GROUP.get()
    if group is not None:
        group.stage(temp, target)
    elif temp.is_dir():
        swap_in([(temp, target)])
    else:
        os.replace(temp, target)


def _aside(target: Path) -> tuple[Path, bool]:
    """Keep the old ``target`` under a hidden name: a hard link for a file (``target`` stays in place), a
    rename for a folder or where links are not supported. ``(backup, moved)``."""
    while True:
        backup = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
        if not os.path.lexists(backup):
            break
    if not target.is_dir() or target.is_symlink():
        try:
            os.link(target, backup, follow_symlinks=False)
            return backup, False
        except OSError:
            pass
    os.replace(target, backup)
    return backup, True


def swap_in(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each ``(temp, target)`` onto its target; all or none: when one fails the targets already
    replaced get their old files back, the temporaries are removed and the failure names that target."""
    done: list[tuple[Path, Path, Path | None, bool]] = []  # (temp, target, backup, moved)
    current = pairs[0] if pairs else None
    try:
        for temp, target in pairs:
            current = (temp, target)
            backup, moved = _aside(target) if os.path.lexists(target) else (None, False)
            done.append((temp, target, backup, moved))
            os.replace(temp, target)
    except BaseException as exc:
        failure = write_failure(exc, current[1], current[0]) if current else None
        for temp, target, backup, moved in reversed(done):
            _undo(temp, target, backup, moved)
        for temp, _ in pairs:
            remove_quietly(temp)
        if failure is None:
            raise
        raise failure from exc
    for _, _, backup, _ in done:
        remove_quietly(backup)


def _undo(temp: Path, target: Path, backup: Path | None, moved: bool) -> None:
    """Put the old ``target`` back; where that fails the old file stays under its hidden backup name
    rather than being lost (best effort: the failure being reported matters more)."""
    try:
        if not os.path.lexists(temp):  # the new one went in: take it out again (removed with the temporaries)
            os.replace(target, temp)
            if backup is not None:
                os.replace(backup, target)
        elif backup is not None:
            if moved:  # set aside, the new one never went in
                os.replace(backup, target)
            else:  # a second link to the old file, which is still in place
                os.unlink(backup)
    except OSError:
        pass


# ------------------------------------------------------------------------- single files


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for writers that want a file name (``np.savez``, ``savefig``).

    The temporary name keeps ``path``'s suffix so such writers pick the right format. The file
    gets the usual mode (0666 minus the umask), not ``mkstemp``'s 0600. On any error it is
    removed; a failed write is raised as a :class:`~harmonic.errors.WriteFailure` naming ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    made: list[Path] = []
    try:
        made = make_folders(path.parent)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        chmod_default(tmp)
        _finish(tmp, path)
    except BaseException as exc:
        _raise_failed(exc, path, tmp, made)


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
    with atomic_path(path) as tmp:
        f = open(tmp, mode, encoding=None if "b" in mode else encoding)  # noqa: SIM115 - closed below
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            try:  # the flush of a failed write fails again; the file is closed all the same
                f.close()
            except OSError:
                pass
            raise
        f.close()


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """Atomically write ``json.dumps(obj, **dumps_kwargs)`` plus a newline to ``path``."""
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def write_staged(path: Path, data: bytes) -> Path:
    r"""Write ``data`` to a temporary file beside ``path`` (the usual mode) and return the temporary path.

    For files that must appear together (an engine and its sidecar): the caller hands each temporary
    to :func:`place` inside an :func:`output_group` (or to :func:`swap_in`) once all are written, and
    unlinks the ones left when something fails. A failed write removes its own temporary file and raises a
    :class:`~harmonic.errors.WriteFailure` naming ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        chmod_default(tmp)  # mkstemp makes it 0600: give the final file the usual mode
    except BaseException as exc:
        _raise_failed(exc, path, tmp)
    return tmp


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path`` (an old folder there is
    kept aside until the new one is in place, then removed), on any error it is removed.

    A failed write names the file under ``path`` it was writing (``path/a/b.onnx``, not the temporary folder).
    """
    path = Path(path)
    tmp: Path | None = None
    made: list[Path] = []
    try:
        made = make_folders(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700
        _finish(tmp, path)
    except BaseException as exc:
        _raise_failed(exc, path, tmp, made)


@contextmanager
def scratch_dir(target: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside output ``target`` for a library's intermediate files, also made
    :mod:`tempfile`'s default folder for the block (so a library's own ``TemporaryDirectory`` lands there:
    one filesystem to check and to name). Always removed; a failed write names ``target``."""
    target = Path(target)
    work: Path | None = None
    old = tempfile.tempdir
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".work", dir=target.parent))
        tempfile.tempdir = str(work)
        yield work
    except BaseException as exc:
        tempfile.tempdir = old
        _raise_failed(exc, target, work)
    finally:
        tempfile.tempdir = old
    remove_quietly(work)


class JsonListWriter:
    """Streams a JSON list to a temporary file beside ``path`` so 100k images don't keep their
    detections in memory; :meth:`commit` renames it onto ``path`` (or stages it in the current
    :func:`output_group`), :meth:`discard` removes it, so ``path`` always holds the last complete list.

    Bytes are buffered here and written with ``os.write``: a failed write removes the temporary file
    at once and raises a :class:`~harmonic.errors.WriteFailure`; :meth:`discard` never flushes.
    """

    BUFFER = 1 << 16

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None
        self.fd: int | None = None
        self.first = True
        self._buf: list[bytes] = []
        self._size = 0
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except BaseException as exc:
            _raise_failed(exc, self.path, None)
        self.fd, self.tmp = fd, Path(tmp)
        self._put("[")

    def _put(self, text: str) -> None:
        data = text.encode("utf-8")
        self._buf.append(data)
        self._size += len(data)
        if self._size >= self.BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self.fd is None:
            raise RunFailure(f"{self.path}: the list was already closed or discarded")
        data = b"".join(self._buf)
        self._buf, self._size = [], 0
        try:
            _write_all(self.fd, data)
        except BaseException as exc:
            self._raise(exc)

    def _raise(self, exc: BaseException) -> None:
        failure = write_failure(exc, self.path, self.tmp)
        self.discard()
        if failure is None:
            raise exc
        raise failure from exc

    def extend(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            self._put(("\n" if self.first else ",\n") + json.dumps(e))
            self.first = False

    def close(self) -> None:
        """Finish the list in the temporary file (``path`` is unchanged until :meth:`commit`)."""
        if self.fd is None:
            return
        self._put("\n]\n")
        self._flush()
        try:
            os.fsync(self.fd)
            os.close(self.fd)
        except BaseException as exc:
            self._raise(exc)
        self.fd = None

    def commit(self) -> None:
        self.close()
        if self.tmp is None:
            raise RunFailure(f"{self.path}: the list was discarded")
        try:
            chmod_default(self.tmp)  # mkstemp's 0600 -> the usual mode, as for every atomic output
            _finish(self.tmp, self.path)
        except BaseException as exc:
            self._raise(exc)
        self.tmp = None  # in place, or owned by the output group

    def discard(self) -> None:
        """Remove the temporary file; never flushes, never raises."""
        fd, self.fd = self.fd, None
        self._buf, self._size = [], 0
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        tmp, self.tmp = self.tmp, None
        remove_quietly(tmp)


# ------------------------------------------------------------------------- room for the outputs


def require_space(needs: Iterable[tuple[str | Path | None, int]]) -> None:
    """Refuse (a one-line :class:`RunFailure`) when outputs clearly cannot fit: ``needs`` holds
    ``(output path, at least this many bytes)``; outputs on one filesystem add up (old files they
    replace stay until the new ones are complete, so they free nothing). ``None`` paths are skipped."""
    by_fs: dict[int, tuple[Path, list[str], int]] = {}
    for path, size in needs:
        if path is None or size <= 0:
            continue
        p = Path(path)
        probe = next((q for q in (p, *p.parents) if q.exists()), Path.cwd())
        try:
            dev = os.stat(probe).st_dev
        except OSError:
            continue
        base, names, total = by_fs.get(dev, (probe, [], 0))
        by_fs[dev] = (base, [*names, str(p)], total + int(size))
    for base, names, total in by_fs.values():
        mount, free = filesystem_of(base)
        if free is not None and total > free:
            raise RunFailure(f"{', '.join(names)}: need{'s' if len(names) == 1 else ''} at least {format_bytes(total)}, "
                             f"the filesystem of {mount} has {format_bytes(free)} free")
