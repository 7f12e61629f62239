"""``python3 scripts/gpu_check.py``: the GPU check on a bare GPU box, with nothing installed (the steps: ``scripts/gpucheck/``).

    PYTHONPATH=$PWD python3 scripts/gpu_check.py --bundle dist/gpu-bundle --out runs/gpu_check
    PYTHONPATH=$PWD python3 scripts/gpu_check.py --bundle dist/gpu-bundle --out /tmp/gc --device cpu --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project and the gpucheck package, importable without an install

from gpucheck.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
