"""Per-frame detections of a video or stream: ``detections.jsonl``, one JSON object per frame.

Each line is ``{"frame": index, "time": seconds, "detections": [{"category_id", "label", "bbox",
"score"}, ...]}`` with ``bbox`` COCO ``[x, y, w, h]`` in the frame's pixels (rounded as in
``detections.json``). Lines are flushed as they are written, to a temporary file beside the target;
:meth:`JsonLinesWriter.close` renames it onto the target when the run ends, whether it finished, failed
or was interrupted, so every finished frame is kept (a killed process leaves them in the temporary file).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harmonic.atomic import chmod_default
from harmonic.runtime.postprocess import Detections, coco_results


def frame_record(index: int, timestamp: float | None, det: Detections,
                 category_ids: list[int] | None = None) -> dict[str, Any]:
    """One ``detections.jsonl`` line for frame ``index`` (``category_ids``: the ids to write, default the
    model's own)."""
    ids = category_ids if category_ids is not None else det.model_category_ids
    entries = []
    for entry, name in zip(coco_results(det, index, None, ids), det.names):
        entries.append({"category_id": entry["category_id"], "label": name, "bbox": entry["bbox"],
                        "score": entry["score"]})
    return {"frame": int(index), "time": None if timestamp is None else round(float(timestamp), 3),
            "detections": entries}


class JsonLinesWriter:
    """JSON lines to a temporary file beside ``path``, each flushed; :meth:`close` renames it onto ``path``
    once a line was written (kept after a failure too) and removes it when none was."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        self.f = os.fdopen(fd, "w", encoding="utf-8")
        self.lines = 0

    def write(self, obj: dict[str, Any]) -> None:
        self.f.write(json.dumps(obj) + "\n")
        self.f.flush()
        self.lines += 1

    def close(self) -> bool:
        """Finish: ``True`` when ``path`` now holds the lines written, ``False`` when there were none."""
        if self.f.closed:
            return self.lines > 0
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError:  # a full disk: the file may end mid-line; remove it, keep the previous one
            self.discard()
            raise
        self.f.close()
        if not self.lines:
            self.tmp.unlink(missing_ok=True)
            return False
        chmod_default(self.tmp)
        os.replace(self.tmp, self.path)
        return True

    def discard(self) -> None:
        """Remove the temporary file (``path`` keeps what it held)."""
        if not self.f.closed:
            with contextlib.suppress(OSError):
                self.f.close()
        self.tmp.unlink(missing_ok=True)
