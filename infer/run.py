"""Thin entry point: `python infer/run.py ...` is `harmonic infer ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonic.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
