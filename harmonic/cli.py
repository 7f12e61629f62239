"""The ``harmonic`` command: one sub-command per stage, each imported lazily.

``harmonic infer`` and ``harmonic eval`` must run on a box without torch, so the
dispatcher imports a stage's module only when that stage is asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from harmonic.errors import HarmonicError, describe_os_error, one_line

# sub-command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("harmonic.training.cli", "main", "train a detector (same as python train/run.py)"),
    "export": ("harmonic.export.cli", "main", "checkpoint -> ONNX with NMS -> TensorRT engine"),
    "infer": ("harmonic.runtime.cli", "main", "torch-free inference, benchmark and reports"),
    "synth": ("harmonic.data.synth", "main", "write the synthetic dataset"),
    "eval": ("harmonic.evaluation.cli", "main_eval", "COCO AP, AP50..AP90 and score-IoU consistency"),
    "compare": ("harmonic.evaluation.cli", "main_compare", "paper-style table of several reports"),
    "demo": ("harmonic.experiments.demo", "main", "baseline vs HarmonicDet, end to end, on synthetic data"),
    "ablate": ("harmonic.experiments.ablate", "main", "the paper's ablation: which loss term buys what"),
}


def _usage() -> str:
    lines = ["usage: harmonic <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def run_guarded(fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run a stage's ``main``; every failure becomes one ``error:`` line on stderr, never a traceback.

    Exit codes: 2 for bad input (:class:`HarmonicError`; argparse exits 2 itself), 1 for a
    failed run (:class:`harmonic.errors.RunFailure`; :class:`~harmonic.errors.WriteFailure` for a
    full disk or another failed write, naming the output and its filesystem; any other ``OSError``;
    an unexpected error: ``HARMONIC_TRACEBACK=1`` shows its traceback), 130 after Ctrl-C.
    Outputs are written atomically, so the last complete files survive any of these.
    """
    try:
        rc = fn(argv)
    except HarmonicError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); the last complete outputs are kept", file=sys.stderr)
        return 130
    except OSError as exc:  # one no writer of harmonic.atomic worded (those raise WriteFailure)
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug or a library failure: still one line unless asked for the traceback
        if os.environ.get("HARMONIC_TRACEBACK"):
            raise
        msg = one_line(str(exc)) or type(exc).__name__
        print(f"error: {msg} ({type(exc).__name__}; set HARMONIC_TRACEBACK=1 for the traceback)",
              file=sys.stderr)
        return 1
    return int(rc or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    return run_guarded(fn, rest)


if __name__ == "__main__":
    sys.exit(main())
