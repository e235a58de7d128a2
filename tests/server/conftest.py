"""Server subprocesses on free ports with the default model and small settings: one shared by every test module
that only sends requests (starting one costs about a minute here), fresh ones for tests that stop them."""

from __future__ import annotations

import os

import pytest
from server_helpers import SERVER_FLAGS

from jaxserve.server.testing import start_server


@pytest.fixture(scope="session")
def server_url():
    """The shared server's URL (session-wide: tests must not rely on its counters starting at zero).

    JAXSERVE_TEST_SERVER_URL points the tests at a server already running with SERVER_FLAGS instead.
    """
    if os.environ.get("JAXSERVE_TEST_SERVER_URL"):
        yield os.environ["JAXSERVE_TEST_SERVER_URL"]
        return
    server = start_server(SERVER_FLAGS)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def client(server_url):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def server_process():
    """A fresh server subprocess for one test: (process, url); stopped afterwards if the test did not."""
    server = start_server(SERVER_FLAGS)
    try:
        yield server.proc, server.url
    finally:
        server.stop()
