"""Start a real ``tritonserver`` (the ``nvidia-pytriton`` wheel's binary, Python backend only) on 127.0.0.1.

The server runs from the separate environment ``make triton-env`` builds (``.venv-triton``:
the wheel, numpy < 2, onnxruntime, OpenCV, tritonclient). What that needs, learnt here:

- the Python backend stub is per Python version (``python_backend_stubs/3.X``) and must be
  copied into the backend folder the server is given;
- the stub embeds the first ``python3`` on ``PATH`` (``PYTHONPATH`` is ignored): the env's
  ``bin`` goes first on ``PATH``;
- it needs the interpreter's own ``libpython`` folder on ``LD_LIBRARY_PATH``;
- with numpy >= 2 in that environment it returns empty outputs without an error.

:func:`start_server` is a context manager: the server (its whole process group) is killed on
exit, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.export.triton_helpers import triton_env

_PROBE = """
import json, sys, sysconfig, os
import numpy, onnxruntime, cv2, pytriton, tritonclient.http
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR"),
                  "numpy": numpy.__version__, "pytriton": os.path.dirname(pytriton.__file__)}))
"""


@dataclass
class ServerEnv:
    python: Path
    bin_dir: Path
    tritonserver: Path
    backend_src: Path
    stub: Path
    lib_path: str


@dataclass
class Server:
    http: str  # host:port
    grpc: str
    proc: subprocess.Popen
    log: Path

    def get(self, path: str) -> tuple[int, dict | None]:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def server_env() -> ServerEnv:
    """The server environment, or ``pytest.skip`` naming what is missing."""
    env = triton_env()
    if env is None:
        pytest.skip("no Triton server environment: `make triton-env` builds .venv-triton (or set HARMONIC_TRITON_ENV)")
    py = env / "bin" / "python"
    res = subprocess.run([str(py), "-c", _PROBE], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"{env}: incomplete Triton environment ({last}); rebuild it with `make triton-env`")
    info = json.loads(res.stdout)
    if int(info["numpy"].split(".")[0]) >= 2:
        pytest.skip(f"{env}: numpy {info['numpy']}; the Python backend stub needs numpy < 2 (make triton-env)")
    dist = Path(info["pytriton"]) / "tritonserver"
    stub = dist / "python_backend_stubs" / info["python"] / "triton_python_backend_stub"
    server = dist / "bin" / "tritonserver"
    if not server.is_file() or not stub.is_file():
        pytest.skip(f"{env}: the nvidia-pytriton wheel has no tritonserver / stub for Python {info['python']}")
    libs = [info["libdir"] or "", str(dist.parents[1] / "nvidia_pytriton.libs")]
    return ServerEnv(py, env / "bin", server, dist / "backends" / "python", stub,
                     ":".join(p for p in libs if p))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(proc: subprocess.Popen) -> None:
    """Stop the server's process group (the server and its Python-backend stubs): TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stubs left behind by a server that died first
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def start_server(env: ServerEnv, repo: Path, models: list[str], work: Path,
                 timeout_s: float = 300.0) -> Iterator[Server]:
    """``tritonserver --model-repository repo`` on 127.0.0.1 (free ports) with only ``models`` loaded."""
    backends = work / "backends"
    shutil.copytree(env.backend_src, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(env.stub, backends / "python" / "triton_python_backend_stub")
    http, grpc = free_port(), free_port()
    prefix = f"harmonic_test_{os.getpid()}_{http}_"
    cmd = [str(env.tritonserver), "--model-repository", str(repo), "--backend-directory", str(backends),
           "--http-address", "127.0.0.1", "--http-port", str(http),
           "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
           "--allow-metrics", "false", "--model-control-mode", "explicit", "--log-verbose", "0",
           # its own shared-memory names, so a killed server's leftovers in /dev/shm can be removed
           "--backend-config", f"python,shm-region-prefix-name={prefix}",
           # a starved shared machine: the stub's health check waits longer; one 64 MB region, no growth
           "--backend-config", "python,stub-timeout-seconds=300",
           "--backend-config", "python,shm-default-byte-size=67108864"]
    for m in models:
        cmd += ["--load-model", m]
    run_env = dict(os.environ)
    run_env["PATH"] = f"{env.bin_dir}:{run_env.get('PATH', '')}"
    run_env["LD_LIBRARY_PATH"] = env.lib_path + (f":{run_env['LD_LIBRARY_PATH']}" if run_env.get("LD_LIBRARY_PATH") else "")
    run_env.pop("PYTHONPATH", None)
    log = work / "tritonserver.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=run_env, start_new_session=True,
                                cwd=work)
    server = Server(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", proc, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if server.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready after {timeout_s:.0f} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        _kill(proc)
        for leftover in Path("/dev/shm").glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
