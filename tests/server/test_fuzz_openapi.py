"""Property-based fuzzing of every operation in the app's OpenAPI schema (schemathesis, positive and negative
inputs), in process, over a real LLMEngine whose runner draws random tokens: no 5xx and no hang, ever.

A request that takes longer than REQUEST_TIMEOUT_S fails the test (the app runs in another thread, so a hang
cannot block the check); the whole test is bounded by its example budget and a pytest timeout.
"""

from __future__ import annotations

import json

import pytest

schemathesis = pytest.importorskip("schemathesis")

from engine_stub import stub_engine
from hypothesis import HealthCheck, settings
from schemathesis.generation.modes import GenerationMode
from server_helpers import call_with_timeout

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.server.app import create_app
from jaxserve.server.metrics import ServerMetrics

MODEL = "stub"
REQUEST_TIMEOUT_S = 20
EXAMPLES_PER_OPERATION = 40


metrics = ServerMetrics(MODEL)
engine = AsyncLLMEngine(stub_engine, on_finished=metrics.on_finished, on_step=metrics.on_step,
                        on_output=metrics.on_output)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(engine, MODEL, metrics))
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=EXAMPLES_PER_OPERATION)


@pytest.fixture(scope="module", autouse=True)
def running_engine():
    """The engine starts (and loads its tokenizer) when the tests run, not at collection."""
    engine.start()
    assert engine.ready.wait(60) and engine.is_ready, engine.load_error
    yield
    engine.shutdown()




@pytest.mark.timeout(180)
@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
def test_no_server_error_and_no_hang(case):
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = MODEL  # a random name is a 404 before anything else runs
    try:
        response = call_with_timeout(case.call, REQUEST_TIMEOUT_S)
    except TimeoutError:
        pytest.fail(f"no answer within {REQUEST_TIMEOUT_S} s: {case.method} {case.path} {case.body!r}"[:2000])
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:1000])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] == response.status_code and error["message"], response.text[:500]
    elif "text/event-stream" in response.headers.get("content-type", ""):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", response.text[-500:]
        for event in events[:-1]:
            assert "error" not in json.loads(event), event
