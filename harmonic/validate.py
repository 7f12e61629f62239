"""Checks of command-line values, run right after parsing and before any work (torch-free).

Each raises :class:`harmonic.errors.HarmonicError` (exit 2) with the message
``<option>: <problem>``, so every command reports a bad flag the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

from harmonic.errors import HarmonicError


def check_int(value: int | None, flag: str, lo: int | None = None, hi: int | None = None) -> None:
    """``value`` (``None`` = unset, accepted) must lie in ``[lo, hi]``."""
    if value is None:
        return
    if lo is not None and value < lo:
        raise HarmonicError(f"{flag}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise HarmonicError(f"{flag}: must be <= {hi}, got {value}")


def check_float(value: float | None, flag: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """``value`` (``None`` = unset, accepted) must be finite and inside the interval (open ends as asked)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise HarmonicError(f"{flag}: must be a finite number, got {value}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise HarmonicError(f"{flag}: must be in {left}{lo_s}, {hi_s}{right}, got {value:g}")


def check_out_dir(path: str | Path | None, flag: str = "--out") -> None:
    """An output folder: it may exist as a folder or not yet; a regular file there is an error."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise HarmonicError(f"{flag} {p}: exists and is not a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise HarmonicError(f"{flag} {p}: {parent} is a file, not a folder")
            break


def check_out_file(path: str | Path | None, flag: str = "--out") -> None:
    """An output file: a folder at that path, or a parent that is a file, is an error."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise HarmonicError(f"{flag} {p}: is a folder; expected a file name")
    if str(p.parent) not in ("", "."):
        check_out_dir(p.parent, flag)


def check_in_file(path: str | Path | None, flag: str) -> None:
    """An input file that must exist and be a regular file."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise HarmonicError(f"{flag} {p}: not found")
    if p.is_dir():
        raise HarmonicError(f"{flag} {p}: is a folder; expected a file")
