"""What the server hands the engine: cache_salt, truncated prompts, add_special_tokens, logit_bias as token ids
(in process, over the real engine with a random-token runner)."""

from __future__ import annotations

import pytest
from engine_stub import stub_engine
from fastapi.testclient import TestClient

from jaxserve.engine.async_engine import AsyncLLMEngine
from jaxserve.server.app import create_app


@pytest.fixture(scope="module")
def served():
    calls: list[dict] = []

    def factory():
        engine = stub_engine()
        add = engine.add_request

        def recording_add(request_id, prompt, params=None, arrival_time=None, cache_salt=None):
            calls.append({"prompt": prompt, "params": params, "cache_salt": cache_salt})
            add(request_id, prompt, params, arrival_time=arrival_time, cache_salt=cache_salt)
            calls[-1]["seqs"] = engine.requests[request_id].seqs

        engine.add_request = recording_add
        return engine

    engine = AsyncLLMEngine(factory)
    engine.start()
    assert engine.ready.wait(60) and engine.is_ready, engine.load_error
    with TestClient(create_app(engine, "stub")) as client:
        yield client, calls, engine.get_tokenizer()
    engine.shutdown()


def _post(client, **body):
    resp = client.post("/v1/completions", json={"model": "stub", "max_tokens": 2, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_cache_salt_reaches_every_sequence(served):
    client, calls, _ = served
    _post(client, prompt="hello", n=2, cache_salt="tenant-a")
    assert calls[-1]["cache_salt"] == "tenant-a"
    assert [s.cache_salt for s in calls[-1]["seqs"]] == ["tenant-a", "tenant-a"]
    _post(client, prompt="hello")
    assert calls[-1]["cache_salt"] is None


def test_truncation_and_special_tokens(served):
    client, calls, tokenizer = served
    text = "one two three four five six seven eight"
    ids = tokenizer.encode(text)
    data = _post(client, prompt=text, truncate_prompt_tokens=3)
    assert calls[-1]["prompt"]["prompt_token_ids"] == ids[-3:] and data["usage"]["prompt_tokens"] == 3
    _post(client, prompt=list(range(100, 110)), truncate_prompt_tokens=4)
    assert calls[-1]["prompt"]["prompt_token_ids"] == [106, 107, 108, 109]
    _post(client, prompt=text, add_special_tokens=False)
    assert calls[-1]["prompt"]["prompt_token_ids"] == tokenizer.encode(text, add_special_tokens=False)


def test_logit_bias_becomes_token_ids(served):
    client, calls, _ = served
    _post(client, prompt="hello", logit_bias={"42": 5.5, "7": -100})
    assert calls[-1]["params"].logit_bias == {42: 5.5, 7: -100.0}
    assert calls[-1]["params"].needs_full_sampler
