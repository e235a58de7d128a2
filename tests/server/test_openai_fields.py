"""Request fields beyond the basics, through the official OpenAI client against the shared server subprocess:
penalties, top_k, min_p, echo, several prompts, logit_bias, prompt_logprobs, continuous usage, prompt truncation,
cache_salt / unknown fields, and the errors of the new fields."""

from __future__ import annotations

from collections import Counter

import httpx
import openai
import pytest
from server_helpers import MODEL

PROMPT = "The capital of France is"
COUNT = "Count: 1, 2, 1, 2, 1, 2"


def greedy(client, prompt, max_tokens=8, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


def tokenize(server_url, text):
    return httpx.post(f"{server_url}/tokenize", json={"prompt": text}).json()["tokens"]


def test_penalties_follow_their_formulas_and_break_a_repetition(client):
    plain = greedy(client, COUNT, 24).choices[0].text
    assert plain.startswith(", 1, 2, 1, 2, 1, 2")  # without penalties the model keeps counting
    for presence, frequency in ((0.0, 2.0), (2.0, 0.0), (1.0, 1.0)):
        resp = greedy(client, COUNT, 24, presence_penalty=presence, frequency_penalty=frequency, logprobs=20)
        lp = resp.choices[0].logprobs
        for i, chosen in enumerate(lp.tokens):  # greedy over raw logprobs minus the penalties of output tokens
            seen = Counter(lp.tokens[:i])
            score = {t: v - frequency * seen[t] - presence * (seen[t] > 0) for t, v in lp.top_logprobs[i].items()}
            assert score[chosen] >= max(score.values()) - 1e-3, (presence, frequency, i, chosen, score)
        if frequency:
            assert resp.choices[0].text != plain
    repetition = greedy(client, COUNT, 24, extra_body={"repetition_penalty": 2.0}).choices[0].text
    assert not repetition.startswith(", 1, 2, 1, 2"), repetition


def test_top_k_1_and_min_p_1_sample_the_greedy_token(client):
    expected = greedy(client, PROMPT, 6).choices[0].text
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        for seed in (1, 2):
            resp = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=seed,
                                             extra_body=extra)
            assert resp.choices[0].text == expected, extra


def test_echo_and_several_prompts(client, server_url):
    prompts = [PROMPT, "Once upon a time"]
    singles = [greedy(client, p, 5).choices[0].text for p in prompts]
    both = greedy(client, prompts, 5)
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == singles
    assert both.usage.prompt_tokens == sum(len(tokenize(server_url, p)) for p in prompts)
    assert both.usage.completion_tokens == 10
    echoed = greedy(client, prompts, 5, echo=True)
    assert [c.text for c in echoed.choices] == [p + s for p, s in zip(prompts, singles)]
    stream = list(greedy(client, PROMPT, 5, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in stream) == PROMPT + singles[0]


def test_logit_bias_forces_and_bans_tokens(client, server_url):
    (forced,) = tokenize(server_url, " banana")
    resp = greedy(client, PROMPT, 3, logit_bias={str(forced): 100}, logprobs=0)
    assert resp.choices[0].text == " banana" * 3
    first = greedy(client, PROMPT, 1, logprobs=0).choices[0].text
    (first_id,) = tokenize(server_url, first)
    banned = greedy(client, PROMPT, 1, logit_bias={str(first_id): -100}).choices[0].text
    assert banned != first
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                          temperature=0, logit_bias={str(forced): 100})
    assert chat.choices[0].message.content == " banana" * 2


def test_prompt_logprobs_agree_with_generation_logprobs(client, server_url):
    gen = greedy(client, PROMPT, 1, logprobs=1)
    token, logprob = gen.choices[0].logprobs.tokens[0], gen.choices[0].logprobs.token_logprobs[0]
    ids = tokenize(server_url, PROMPT + token)
    resp = greedy(client, ids, 1, extra_body={"prompt_logprobs": 2})
    plp = resp.choices[0].model_extra["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    for pos in range(1, len(ids)):
        entry = plp[pos]
        assert str(ids[pos]) in entry and 2 <= len(entry) <= 3
        assert all(v["logprob"] <= 0 and v["decoded_token"] is not None for v in entry.values())
        assert sorted(v["rank"] for v in entry.values() if v["rank"] is not None)[:2] == [1, 2]
    last = plp[-1][str(ids[-1])]
    assert last["logprob"] == pytest.approx(logprob, abs=1e-3) and last["rank"] == 1  # the greedy token
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                          temperature=0, extra_body={"prompt_logprobs": 0})
    chat_plp = chat.model_extra["prompt_logprobs"]
    assert chat_plp[0] is None and len(chat_plp) == chat.usage.prompt_tokens
    assert all(len(e) == 1 and next(iter(e.values()))["rank"] is None for e in chat_plp[1:])


def test_echo_with_logprobs_scores_the_prompt(client, server_url):
    """lm-eval's loglikelihood request: echo + logprobs + max_tokens 1."""
    ids = tokenize(server_url, PROMPT)
    resp = greedy(client, PROMPT, 1, echo=True, logprobs=1)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1
    assert "".join(lp.tokens) == resp.choices[0].text and resp.choices[0].text.startswith(PROMPT)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    scored = greedy(client, ids, 1, extra_body={"prompt_logprobs": 1}).choices[0].model_extra["prompt_logprobs"]
    for pos in range(1, len(ids)):
        assert lp.token_logprobs[pos] == pytest.approx(scored[pos][str(ids[pos])]["logprob"], abs=1e-4)
        assert 1 <= len(lp.top_logprobs[pos]) <= 2 and lp.tokens[pos] in lp.top_logprobs[pos]
    assert resp.choices[0].model_extra.get("prompt_logprobs") is None  # only when asked for
    chunks = list(greedy(client, PROMPT, 3, echo=True, logprobs=1, stream=True))  # streamed: the same head first
    head = chunks[0].choices[0]
    assert head.text == PROMPT and head.logprobs.tokens == lp.tokens[:-1]
    assert head.logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:-1], abs=1e-5)
    assert "".join(c.choices[0].text for c in chunks if c.choices).startswith(PROMPT + lp.tokens[-1])


def test_continuous_usage_stats(client):
    chunks = list(greedy(client, PROMPT, 6, stream=True,
                         stream_options={"include_usage": True, "continuous_usage_stats": True}))
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 6
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[0] <= 1 and counts[-2] == 6
    assert {c.usage.prompt_tokens for c in chunks} == {final.usage.prompt_tokens}
    assert all(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens for c in chunks)
    plain = list(greedy(client, PROMPT, 3, stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in plain[:-1]) and plain[-1].usage.completion_tokens == 3


def test_truncate_prompt_tokens_keeps_the_last_tokens(client, server_url):
    long_prompt = "Here is a long introduction that the model will not see. " * 3 + PROMPT
    ids = tokenize(server_url, long_prompt)
    resp = greedy(client, long_prompt, 5, extra_body={"truncate_prompt_tokens": 6})
    assert resp.usage.prompt_tokens == 6
    assert resp.choices[0].text == greedy(client, ids[-6:], 5).choices[0].text
    whole = greedy(client, long_prompt, 5, extra_body={"truncate_prompt_tokens": -1})
    assert whole.usage.prompt_tokens == len(ids)


def _metric(server_url: str, name: str) -> float:
    text = httpx.get(f"{server_url}/metrics").text
    line = next(l for l in text.splitlines() if l.startswith(f'jaxserve:{name}{{model_name="{MODEL}"}} '))
    return float(line.rsplit(" ", 1)[1])


def test_cached_tokens_cache_salt_and_unknown_fields(client, server_url):
    """A repeated prompt is served from the prefix cache (full pages, the last token recomputed) within its salt."""
    prompt = "A shared system prompt that many requests start with, long enough to fill pages. " * 4 + PROMPT
    n_prompt = len(tokenize(server_url, prompt))
    queries, hits = _metric(server_url, "prefix_cache_queries_total"), _metric(server_url, "prefix_cache_hits_total")
    first = greedy(client, prompt, 2, extra_body={"cache_salt": "tenant-a", "no_such_field": {"x": 1}})
    again = greedy(client, prompt, 2, extra_body={"cache_salt": "tenant-a"})
    other = greedy(client, prompt, 2, extra_body={"cache_salt": "tenant-b"})
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == (n_prompt - 1) // 16 * 16 > 0
    assert other.usage.prompt_tokens_details.cached_tokens == 0  # another tenant's salt never hits
    assert first.choices[0].text == again.choices[0].text == other.choices[0].text
    assert _metric(server_url, "prefix_cache_queries_total") == queries + 3 * n_prompt
    assert _metric(server_url, "prefix_cache_hits_total") == hits + again.usage.prompt_tokens_details.cached_tokens


@pytest.mark.parametrize(("extra", "param"), [
    ({"priority": 1}, "priority"),
    ({"n": 129}, "n"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"truncate_prompt_tokens": 513}, "truncate_prompt_tokens"),
    ({"logit_bias": {"49152": 1}}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"cache_salt": ""}, "cache_salt"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_new_field_errors(server_url, extra, param):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, **extra}
    resp = httpx.post(f"{server_url}/v1/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == 400 and error["param"] == param and param in error["message"], error


def test_new_field_errors_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                       logit_bias={"-1": 5})
    assert exc.value.status_code == 400 and "logit_bias" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    assert "messages" in exc.value.message
