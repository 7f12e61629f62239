"""Training logs: a JSONL file (one record per iteration window and per epoch) and window means."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def to_plain(obj: Any) -> Any:
    """Numpy/torch scalars and arrays -> plain Python (JSON- and ``weights_only``-safe)."""
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return to_plain(obj.item())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


class JsonlLogger:
    """Appends one JSON object per line to ``path``; a no-op when ``enabled`` is false (non-zero ranks)."""

    def __init__(self, path: str | Path | None, enabled: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.enabled = enabled and self.path is not None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record``; a failed write (full disk) cuts the log back to its last complete line and
        raises a one-line :class:`~harmonic.errors.WriteFailure` naming the log."""
        if not self.enabled:
            return
        line = json.dumps(to_plain(record)) + "\n"
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as exc:
            from harmonic.errors import write_failure

            failure = write_failure(exc, self.path)
            try:
                os.truncate(self.path, size)  # no torn line left behind
            except OSError:
                pass
            if failure is None:
                raise
            raise failure from exc


class MeanWindow:
    """Running means of scalar terms (``loss_*``, ``stat_*``) over a window of iterations."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if v is None or not math.isfinite(v):
                continue
            self.sums[k] += v
            self.counts[k] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}

    def __len__(self) -> int:
        return max(self.counts.values(), default=0)

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL log (a torn last line, e.g. after SIGKILL, is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_log(path: str | Path, start_epoch: int) -> int:
    """Remove the records of epochs ``>= start_epoch`` (and a torn last line) from a JSONL log, atomically.

    A resumed run redoes those epochs; without this the log would hold them twice.
    Returns the number of records removed.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = rec.get("epoch") if isinstance(rec, dict) else None
        if isinstance(epoch, int) and epoch >= start_epoch:
            continue
        kept.append(line)
    if len(kept) != len(lines):
        from harmonic.atomic import write_text

        write_text(path, "".join(ln + "\n" for ln in kept))
    return len(lines) - len(kept)
