"""In-process app over a fake engine: queue-length and body-size limits, request logs, the latency histograms."""

from __future__ import annotations

import logging
import re
import time

import pytest
from fastapi.testclient import TestClient

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.outputs import CompletionOutput, RequestMetrics, RequestOutput
from jaxserve.server.app import create_app
from jaxserve.server.metrics import ServerMetrics

SECRET_PROMPT = "my secret prompt text"


class TimedFakeEngine:
    """One token per step per request, with RequestMetrics timestamps and cumulative step-token counters."""

    def __init__(self) -> None:
        self.requests: dict[str, dict] = {}
        self.step_tokens = {"decode": 0}

    def add_request(self, request_id, prompt, params, arrival_time=None, cache_salt=None):
        self.requests[request_id] = {"max": params.max_tokens, "n": 0, "prompt": [1, 2, 3],
                                     "metrics": RequestMetrics(arrival_time or time.monotonic())}

    def abort_request(self, request_id):
        self.requests.pop(request_id, None)

    def has_unfinished_requests(self):
        return bool(self.requests)

    def get_tokenizer(self):
        return None

    def stats(self):
        return {"num_running": len(self.requests), "num_waiting": 0, "step_tokens": dict(self.step_tokens)}

    def step(self):
        time.sleep(0.002)
        now = time.monotonic()
        outs = []
        for rid, st in list(self.requests.items()):
            m = st["metrics"]
            if m.first_scheduled_time is None:
                m.first_scheduled_time = now
                self.step_tokens["decode"] += len(st["prompt"])
            st["n"] += 1
            self.step_tokens["decode"] += 1
            if m.first_token_time is None:
                m.first_token_time = now
            done = st["n"] >= st["max"]
            if done:
                m.finished_time = now
                del self.requests[rid]
            outs.append(RequestOutput(rid, None, st["prompt"], None, [CompletionOutput(
                0, "x" * st["n"], [7] * st["n"], None, None, "length" if done else None)], done, m))
        return outs


@pytest.fixture
def served():
    metrics = ServerMetrics("m")
    engine = AsyncLLMEngine(TimedFakeEngine, on_finished=metrics.on_finished, on_step=metrics.on_step,
                            on_output=metrics.on_output)
    engine.start()
    assert engine.ready.wait(5) and engine.is_ready
    app = create_app(engine, "m", metrics, max_queue_len=2, max_body_bytes=2000)
    yield engine, TestClient(app)
    engine.shutdown()


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing"
    return float(match.group(1))


def test_queue_limit_503_with_retry_after(served):
    engine, client = served
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    assert client.post("/v1/completions", json=body).status_code == 200
    engine.last_stats = {**engine.last_stats, "num_waiting": 2}
    for path, req in (("/v1/completions", body),
                      ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]})):
        resp = client.post(path, json=req)
        assert resp.status_code == 503, resp.text
        assert int(resp.headers["retry-after"]) >= 1
        err = resp.json()["error"]
        assert err["code"] == 503 and "overloaded" in err["message"] and err["type"]
    assert client.get("/health").status_code == 200  # only generation routes are limited
    engine.last_stats = {**engine.last_stats, "num_waiting": 1}
    assert client.post("/v1/completions", json=body).status_code == 200


def test_body_limit_413(served):
    _, client = served
    big = {"model": "m", "prompt": "x" * 5000, "max_tokens": 2}
    resp = client.post("/v1/completions", json=big)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == 413 and "2000" in resp.json()["error"]["message"]

    def chunks():  # no Content-Length: the actual size counts
        for _ in range(10):
            yield b" " * 300

    resp = client.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413
    small = client.post("/v1/completions", json={"model": "m", "prompt": "x" * 100, "max_tokens": 2})
    assert small.status_code == 200


def test_request_log_line_and_histograms(served, caplog):
    _, client = served
    caplog.set_level(logging.INFO, logger="jaxserve.server")
    resp = client.post("/v1/completions", json={"model": "m", "prompt": SECRET_PROMPT, "max_tokens": 4})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4
    with client.stream("POST", "/v1/completions",
                       json={"model": "m", "prompt": SECRET_PROMPT, "max_tokens": 3, "stream": True}) as stream:
        assert "[DONE]" in "".join(stream.iter_text())
    deadline = time.monotonic() + 5
    while len([r for r in caplog.records if "finished request" in r.getMessage()]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxserve.server"]
    finished = [line for line in lines if "finished request" in line]
    assert len(finished) == 2
    assert all(SECRET_PROMPT not in line for line in lines)
    first = finished[0]
    assert re.search(r"cmpl-\S+-0", first) and "prompt_tokens=3" in first and "completion_tokens=4" in first
    assert re.search(r"ttft=\d+\.\d+s", first) and re.search(r"total=\d+\.\d+s", first)
    assert "finish_reason=length" in first

    text = client.get("/metrics").text
    p = "jaxserve:"
    assert _sample(text, f"{p}request_prompt_tokens_count") == 2
    assert _sample(text, f"{p}request_prompt_tokens_sum") == 6
    assert _sample(text, f"{p}request_generation_tokens_sum") == 7
    assert _sample(text, f"{p}inter_token_latency_seconds_count") == 5  # (4 - 1) + (3 - 1) gaps
    assert _sample(text, f"{p}request_time_per_output_token_seconds_count") == 2
    for name in ("request_queue_time_seconds", "request_prefill_time_seconds", "request_decode_time_seconds",
                 "time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert _sample(text, f"{p}{name}_count") == 2, name
        assert _sample(text, f"{p}{name}_sum") >= 0
    assert f'{p}inter_token_latency_seconds_bucket{{model_name="m",le="0.001"}}' in text
    assert f"# TYPE {p}iteration_tokens_total histogram" in text
    steps = _sample(text, f"{p}iteration_tokens_total_count")
    assert 4 <= steps <= 7 and _sample(text, f"{p}iteration_tokens_total_sum") == 6 + 7
