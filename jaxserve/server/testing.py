"""A `jaxserve serve` subprocess on a free port, for tests and benchmarks (one implementation for both)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import httpx

import jaxserve

# The checkout this jaxserve was imported from: the server subprocess imports the same code.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jaxserve.__file__)))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running server: `url`, the process, and its log file (stderr and stdout)."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: str, temporary_log: bool = False) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path
        self.temporary_log = temporary_log

    def log_tail(self, num_chars: int = 3000) -> str:
        """The end of the server's log."""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-num_chars:]

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM (graceful drain), SIGKILL after `timeout` s; returns the exit status (a temporary log is
        deleted)."""
        status = stop_process(self.proc, timeout)
        if self.temporary_log and os.path.exists(self.log_path):
            os.remove(self.log_path)
        return status


def stop_process(proc: subprocess.Popen, timeout: float = 40.0) -> int:
    """SIGTERM, then SIGKILL if `proc` is still there after `timeout` s; returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def start_server(flags: Sequence[str] = (), *, log_level: str = "WARNING", timeout: float = 240.0,
                 log_path: str | None = None, echo: bool = False) -> ServerProcess:
    """Start `python -m jaxserve.cli serve FLAGS --port <free>` and return once /health answers 200.

    The log goes to `log_path` (a temporary file by default; a file, not a pipe, so a chatty server never blocks
    on a full pipe); `echo` prints where it is. Raises RuntimeError (with the log's tail) if the server exits or
    is not healthy within `timeout` s; the process is stopped then.
    """
    port = free_port()
    temporary_log = log_path is None
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="jaxserve-server-", suffix=".log")
        os.close(fd)
    python_path = os.pathsep.join(p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1",
           "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    cmd = [sys.executable, "-m", "jaxserve.cli", "--log-level", log_level, "serve", "--port", str(port), *flags]
    if echo:
        print("launching:", " ".join(cmd), f"(log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, temporary_log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode}: {server.log_tail()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout:.0f} s: {server.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
