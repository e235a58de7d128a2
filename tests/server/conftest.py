"""One server subprocess per test module, on a free port, with the default model and small settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

MODEL = "SmolLM2-135M-Instruct"
SERVER_FLAGS = ["--max-model-len", "512", "--max-num-seqs", "16", "--max-num-batched-tokens", "128",
                "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*extra_flags: str) -> tuple[subprocess.Popen, str]:
    """A `jaxserve serve` subprocess on a free port, once /health answers 200 (the caller stops it)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxserve.cli", "--log-level", "WARNING", "serve",
                             "--port", str(port), *SERVER_FLAGS, *extra_flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy")
            time.sleep(0.5)
    except BaseException:
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 40 s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server_url():
    proc, url = start_server()
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def client(server_url):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def server_process():
    """A fresh server subprocess for one test: (process, url); stopped afterwards if the test did not."""
    proc, url = start_server()
    try:
        yield proc, url
    finally:
        stop_server(proc)
