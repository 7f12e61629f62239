"""User-facing errors: one line naming the file and the problem."""

from __future__ import annotations


class HarmonicError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint). CLIs print it on one line and exit 2."""
