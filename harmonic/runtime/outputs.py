"""Per-frame detections of a video or stream: ``detections.jsonl``, one JSON object per frame.

Each line is ``{"frame": index, "time": seconds, "detections": [{"category_id", "label", "bbox",
"score"}, ...]}`` with ``bbox`` COCO ``[x, y, w, h]`` in the frame's pixels (rounded as in
``detections.json``). Lines are flushed as they are written, to a temporary file beside the target;
:meth:`JsonLinesWriter.close` renames it onto the target when the run ends, whether it finished, failed
(a full disk included: the file is cut back to its last complete line) or was interrupted, so every
finished frame is kept (a killed process leaves them in the temporary file).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harmonic.atomic import chmod_default
from harmonic.errors import write_failure
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
    once a line was written (kept after a failure too) and removes it when none was.

    A write that fails (a full disk, a quota, a read-only remount) keeps the lines finished before it: the
    temporary file is cut back to its last complete line and renamed onto ``path``, and the error is one
    line naming ``path`` (:func:`harmonic.errors.write_failure`).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        self.f = os.fdopen(fd, "w", encoding="utf-8")
        self.lines = 0
        self.good = 0  # bytes of complete, flushed lines

    def write(self, obj: dict[str, Any]) -> None:
        text = json.dumps(obj) + "\n"
        try:
            self.f.write(text)
            self.f.flush()
        except OSError as exc:
            raise self._failed(exc) from None
        self.lines += 1
        self.good += len(text.encode("utf-8"))

    def close(self) -> bool:
        """Finish: ``True`` when ``path`` now holds the lines written, ``False`` when there were none."""
        if self.f.closed:
            return self.lines > 0
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
        except OSError as exc:
            raise self._failed(exc) from None
        return self._publish()

    def _publish(self) -> bool:
        if not self.lines:
            self.tmp.unlink(missing_ok=True)
            return False
        chmod_default(self.tmp)
        os.replace(self.tmp, self.path)
        return True

    def _failed(self, exc: OSError) -> BaseException:
        """Keep the complete lines written so far (or nothing), then the one-line error naming ``path``."""
        failure = write_failure(exc, self.path, self.tmp) or exc
        with contextlib.suppress(OSError):
            self.f.close()  # may fail again flushing the partial line: the cut below removes it
        try:
            os.truncate(self.tmp, self.good)
            self._publish()
        except OSError:
            self.tmp.unlink(missing_ok=True)
        return failure

    def discard(self) -> None:
        """Remove the temporary file (``path`` keeps what it held)."""
        if not self.f.closed:
            with contextlib.suppress(OSError):
                self.f.close()
        self.tmp.unlink(missing_ok=True)
