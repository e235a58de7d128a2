"""The OpenAI client against a real server subprocess (default model, CPU)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from server_helpers import MODEL

PROMPT = "The capital of France is"


def test_models_and_health(client, server_url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(f"{server_url}/health").status_code == 200


def test_completion_stream_matches_non_stream(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 8
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].choices[0].text == ""
    assert all(c.usage is None for c in chunks)


def test_chat_paris_and_stream_roles(client):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12, temperature=0)
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == resp.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == resp.choices[0].finish_reason
    assert chunks[-2].choices[0].delta.content in (None, "")


def test_n2_seed_and_stop(client):
    kw = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6, "temperature": 1.0, "seed": 1234, "n": 2}
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert sorted(c.index for c in a.choices) == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    stopped = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stop=["."])
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].stop_reason == "."
    assert "." not in stopped.choices[0].text


def test_logprobs(client):
    resp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == resp.choices[0].text
    assert all(len(t) >= 2 for t in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)


def test_usage_matches_tokenize(client, server_url):
    tok = httpx.post(f"{server_url}/tokenize", json={"prompt": PROMPT}).json()
    resp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0)
    assert resp.usage.prompt_tokens == tok["count"] == len(tok["tokens"])
    assert resp.usage.total_tokens == tok["count"] + 2
    detok = httpx.post(f"{server_url}/detokenize", json={"tokens": tok["tokens"]}).json()
    assert PROMPT in detok["prompt"]


def test_errors(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt="hello " * 600, max_tokens=4)
    assert "512" in exc.value.message and exc.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=MODEL, prompt=PROMPT, temperature=-1)
    assert "temperature" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=PROMPT, suffix="x")


def test_disconnect_mid_stream_then_metrics(client, server_url):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/completions", json=body, timeout=60) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i >= 4:
                break
    body["stream"] = False
    with pytest.raises(httpx.TimeoutException):  # a non-streaming client that hangs up
        httpx.post(f"{server_url}/v1/completions", json=body, timeout=1.5)
    resp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0)
    assert resp.choices[0].text
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{server_url}/metrics").text
        running = [line for line in text.splitlines() if line.startswith("jaxserve:num_requests_running")]
        if running and running[0].endswith(" 0"):
            break
        assert time.monotonic() < deadline, running
        time.sleep(0.2)
    for name in ("num_requests_waiting", "kv_cache_usage_perc", "prompt_tokens_total", "generation_tokens_total",
                 "request_success_total", "num_preemptions_total", "time_to_first_token_seconds_bucket",
                 "e2e_request_latency_seconds_count"):
        assert f"jaxserve:{name}" in text
    aborted = [line for line in text.splitlines() if 'finished_reason="abort"' in line]
    assert aborted and int(aborted[0].split()[-1]) >= 2
