"""Unknown request fields: accepted, ignored, and logged by name only (WARNING the first time, DEBUG after)."""

from __future__ import annotations

import logging
import uuid

import pytest
from engine_stub import stub_engine
from fastapi.testclient import TestClient

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.server.app import create_app

SECRET = "value-that-must-not-be-logged"


@pytest.fixture(scope="module")
def client():
    engine = AsyncLLMEngine(stub_engine)
    engine.start()
    assert engine.ready.wait(60) and engine.is_ready, engine.load_error
    with TestClient(create_app(engine, "stub")) as test_client:
        yield test_client
    engine.shutdown()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jaxserve.server" and r.levelno == logging.WARNING]


def test_unknown_fields_are_accepted_and_named_once(client, caplog):
    caplog.set_level(logging.DEBUG, logger="jaxserve.server")
    field = f"unknown_{uuid.uuid4().hex[:8]}"
    body = {"model": "stub", "prompt": "hello", "max_tokens": 2, field: SECRET}
    for _ in range(3):
        assert client.post("/v1/completions", json=body).status_code == 200
    chat = {"model": "stub", "max_tokens": 2, field: SECRET, "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    warned = _warnings(caplog)
    assert len(warned) == 1 and field in warned[0]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and field in r.getMessage()]
    assert len(debug) == 3
    other = f"other_{uuid.uuid4().hex[:8]}"
    assert client.post("/v1/completions", json={**body, other: 1}).status_code == 200
    assert len(_warnings(caplog)) == 2 and other in _warnings(caplog)[-1]
    assert all(SECRET not in r.getMessage() for r in caplog.records)
