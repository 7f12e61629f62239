import subprocess
import sys
from pathlib import Path

import pytest

from harmonic.cli import COMMANDS, main, run_guarded
from harmonic.errors import HarmonicError

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exit_2(capsys):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


def test_harmonic_error_becomes_one_line_and_exit_2(capsys):
    def boom(argv):
        raise HarmonicError("data.yaml: missing key 'names'")

    assert run_guarded(boom, []) == 2
    err = capsys.readouterr().err
    assert err == "error: data.yaml: missing key 'names'\n"


@pytest.mark.parametrize("mod", ["harmonic", "harmonic.cli", "harmonic.boxes", "harmonic.data.letterbox"])
def test_deploy_side_modules_do_not_import_torch(mod):
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'onnx'): sys.modules[m] = None\n"
            f"import {mod}\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_python_dash_m_harmonic_runs():
    out = subprocess.run([sys.executable, "-m", "harmonic", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "infer" in out.stdout
