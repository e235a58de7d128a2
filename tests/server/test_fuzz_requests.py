"""Hypothesis-generated completion and chat requests, mostly valid, sometimes not, against the in-process app
over a real LLMEngine with a random-token runner: every answer is a 200 of the right shape or a 400 naming what is
wrong, never a 5xx, never a hang. (Schema-driven fuzzing rarely gets past validation; this goes deeper.)"""

from __future__ import annotations

import json

import pytest
from engine_stub import MAX_MODEL_LEN, stub_engine
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from server_helpers import call_with_timeout

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.server.app import create_app
from jaxserve.server.metrics import ServerMetrics

MODEL = "stub"
VOCAB = 49152
REQUEST_TIMEOUT_S = 20

texts = st.text(st.characters(codec="utf-8"), max_size=40)
token_lists = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


SHARED = {
    "max_tokens": _optional(st.integers(-1, 24)),
    "temperature": _optional(st.floats(-0.5, 2.0)),
    "top_p": _optional(st.floats(0.0, 1.2)),
    "top_k": _optional(st.integers(-2, 50)),
    "min_p": _optional(st.floats(-0.1, 1.0)),
    "n": _optional(st.integers(0, 3)),
    "seed": _optional(st.integers(-(2**63), 2**63 - 1)),
    "stop": _optional(st.one_of(texts, st.lists(texts, max_size=3))),
    "stop_token_ids": _optional(st.lists(st.integers(-1, VOCAB), max_size=3)),
    "presence_penalty": _optional(st.floats(-2.5, 2.5)),
    "frequency_penalty": _optional(st.floats(-2.5, 2.5)),
    "repetition_penalty": _optional(st.floats(0.0, 2.0)),
    "min_tokens": _optional(st.integers(-1, 8)),
    "ignore_eos": _optional(st.booleans()),
    "logit_bias": _optional(st.dictionaries(st.integers(-1, VOCAB).map(str) | st.just("x"),
                                            st.floats(-120, 120), max_size=4)),
    "prompt_logprobs": _optional(st.integers(-1, 5)),
    "truncate_prompt_tokens": _optional(st.integers(-2, MAX_MODEL_LEN + 1)),
    "cache_salt": _optional(texts),
    "priority": _optional(st.integers(-1, 1)),
    "stream": _optional(st.booleans()),
    "stream_options": _optional(st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()})),
    "include_stop_str_in_output": _optional(st.booleans()),
    "skip_special_tokens": _optional(st.booleans()),
    "some_unknown_field": _optional(st.integers()),
}
COMPLETION = {**SHARED, "prompt": st.one_of(texts.filter(bool), st.lists(texts.filter(bool), min_size=1, max_size=3),
                                            token_lists, st.lists(token_lists, min_size=1, max_size=2)),
              "logprobs": _optional(st.integers(-1, 6)), "echo": _optional(st.booleans()),
              "add_special_tokens": _optional(st.booleans())}
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]),
                                 "content": st.one_of(texts, st.lists(st.fixed_dictionaries(
                                     {"type": st.just("text"), "text": texts}), max_size=2))})
CHAT = {**SHARED, "messages": st.lists(MESSAGE, min_size=1, max_size=3),
        "logprobs": _optional(st.booleans()), "top_logprobs": _optional(st.integers(-1, 6)),
        "max_completion_tokens": _optional(st.integers(0, 24)),
        "chat_template_kwargs": _optional(st.dictionaries(st.sampled_from(["x", "messages", "tools"]),
                                                          st.integers(), max_size=2))}


def _bodies(fields: dict) -> st.SearchStrategy:
    required = {k: v for k, v in fields.items() if k in ("prompt", "messages")}
    return st.fixed_dictionaries(required, optional={k: v for k, v in fields.items() if k not in required}).map(
        lambda body: {"model": MODEL, **{k: v for k, v in body.items() if v is not None}})


@pytest.fixture(scope="module")
def client():
    metrics = ServerMetrics(MODEL)
    engine = AsyncLLMEngine(stub_engine, on_finished=metrics.on_finished, on_step=metrics.on_step,
                            on_output=metrics.on_output)
    engine.start()
    assert engine.ready.wait(60) and engine.is_ready, engine.load_error
    with TestClient(create_app(engine, MODEL, metrics)) as test_client:
        yield lambda path, body: call_with_timeout(lambda: test_client.post(path, json=body), REQUEST_TIMEOUT_S)
    engine.shutdown()


def _check(path: str, body: dict, response) -> None:
    assert response.status_code in (200, 400), (body, response.status_code, response.text[:800])
    if response.status_code == 400:
        error = response.json()["error"]
        event(f"400 {error['param']}")
        assert error["code"] == 400 and error["message"], response.text
        return
    if body.get("stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all("error" not in c for c in chunks), chunks
        finishing = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"] is not None]
        assert all(ch["finish_reason"] in ("stop", "length") for ch in finishing)
        return
    data = response.json()
    assert data["choices"] and all(ch["finish_reason"] in ("stop", "length") for ch in data["choices"])
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    limit = body.get("max_completion_tokens", body.get("max_tokens")) or MAX_MODEL_LEN  # chat: the former wins
    assert usage["completion_tokens"] <= len(data["choices"]) * limit


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies(COMPLETION))
def test_completions_never_fail_on_the_server(client, body):
    _check("/v1/completions", body, client("/v1/completions", body))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies(CHAT))
def test_chat_never_fails_on_the_server(client, body):
    _check("/v1/chat/completions", body, client("/v1/chat/completions", body))
