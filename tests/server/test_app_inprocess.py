"""App behaviour that needs no model: /health while loading, API-key checks."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.server.app import create_app


def test_health_503_while_loading_and_api_key():
    release = threading.Event()
    engine = AsyncLLMEngine(lambda: release.wait(10))
    engine.start()
    app = create_app(engine, "m", api_key="secret")
    client = TestClient(app)
    resp = client.get("/health")
    assert resp.status_code == 503
    assert resp.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/v1/models", headers={"Authorization": "Bearer secret"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "m"
    release.set()
    engine.shutdown()
