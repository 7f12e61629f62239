"""User-facing errors: one line naming the file and the problem.

Exit codes of every command: 2 when the user's input is wrong (a flag, or a file
named on the command line and what it holds: :class:`HarmonicError`), 1 when the
run itself failed (:class:`RunFailure`: a full disk, a failed verification, an
internal error), 130 after Ctrl-C.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class HarmonicError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint). CLIs print it on one line and exit 2."""

    exit_code = 2


class RunFailure(HarmonicError):
    """The run failed for a reason other than bad input (disk full, nothing could be processed): exit 1."""

    exit_code = 1


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
