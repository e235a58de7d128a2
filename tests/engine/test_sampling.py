"""SamplingParams through the engine: stops, lengths, EOS handling, logprobs against transformers, penalties."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import hf_log_softmax, tokens

from jaxserve.sampling_params import SamplingParams


def _greedy(llm, prompt, **kw):
    params = SamplingParams(**{"temperature": 0.0, "ignore_eos": True, "max_tokens": 16, **kw})
    return llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]


def test_max_tokens_gives_exactly_that_many_and_length(llm):
    for n in (1, 7, 20):
        out = _greedy(llm, tokens(10, 12), max_tokens=n).outputs[0]
        assert len(out.token_ids) == n and out.finish_reason == "length" and out.stop_reason is None


def test_max_tokens_none_runs_to_max_model_len(llm):
    out = _greedy(llm, tokens(11, 240), max_tokens=None).outputs[0]
    assert len(out.token_ids) == 256 - 240 and out.finish_reason == "length"


def test_stop_token_ids_end_the_output_at_that_token(llm):
    prompt = tokens(12, 15)
    full = _greedy(llm, prompt, max_tokens=24).outputs[0].token_ids
    i = next(i for i in range(3, 24) if full[i] not in full[:i])
    unused = next(t for t in range(3, 256) if t not in full)
    out = _greedy(llm, prompt, max_tokens=24, stop_token_ids=[unused, full[i]]).outputs[0]
    assert out.token_ids == full[:i + 1]
    assert out.finish_reason == "stop" and out.stop_reason == full[i]


def test_min_tokens_suppresses_stop_token_ids(llm):
    prompt = tokens(12, 15)
    full = _greedy(llm, prompt, max_tokens=24).outputs[0].token_ids
    stop = full[2] if full[2] not in full[:2] else full[0]
    out = _greedy(llm, prompt, max_tokens=24, min_tokens=12, stop_token_ids=[stop]).outputs[0]
    assert len(out.token_ids) >= 12 and stop not in out.token_ids[:12]
    assert out.finish_reason == "length" or (out.token_ids[-1] == stop and out.stop_reason == stop)


def test_logprobs_match_transformers(llm, tiny_model):
    prompt = tokens(13, 20)
    out = _greedy(llm, prompt, max_tokens=8, logprobs=5).outputs[0]
    ref = hf_log_softmax(tiny_model[1], prompt + out.token_ids)[len(prompt) - 1:-1]
    assert len(out.logprobs) == 8
    for pos, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert token in entry and len(entry) == 5  # greedy: the sampled token is the top-1
        assert all(v <= 0 for v in entry.values())
        assert token == int(np.argmax(ref[pos]))
        for tid, lp in entry.items():
            assert abs(lp - ref[pos, tid]) < 1e-4
        assert set(np.argsort(-ref[pos])[:5]) <= set(entry)
    assert out.cumulative_logprob == pytest.approx(sum(e[t] for t, e in zip(out.token_ids, out.logprobs)), abs=1e-4)


def test_sampled_token_logprob_is_included_when_outside_the_top_k(llm):
    out = llm.generate({"prompt_token_ids": tokens(14, 10)},
                       SamplingParams(temperature=5.0, seed=3, max_tokens=24, logprobs=1), use_tqdm=False)[0]
    entries = out.outputs[0].logprobs
    assert all(t in e and len(e) in (1, 2) for t, e in zip(out.outputs[0].token_ids, entries))
    assert any(len(e) == 2 for e in entries), "at temperature 5 some draw should miss the top-1"


def test_logprobs_zero_returns_only_the_sampled_token(llm):
    try:
        out = _greedy(llm, tokens(15, 10), max_tokens=4, logprobs=0).outputs[0]
    finally:
        for request_id in list(llm.engine.requests):
            llm.engine.abort_request(request_id)
    assert [list(e) for e in out.logprobs] == [[t] for t in out.token_ids]


def test_prompt_logprobs_match_transformers(llm, tiny_model):
    prompt = tokens(16, 30)
    out = _greedy(llm, prompt, max_tokens=2, prompt_logprobs=3)
    ref = hf_log_softmax(tiny_model[1], prompt)
    plp = out.prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None
    for i in range(1, len(prompt)):
        entry = plp[i]
        assert prompt[i] in entry and len(entry) in (3, 4)
        for tid, lp in entry.items():
            assert abs(lp - ref[i - 1, tid]) < 1e-4
        assert set(np.argsort(-ref[i - 1])[:3]) <= set(entry)


def test_penalties_reduce_repetition(llm):
    prompt = tokens(17, 8, high=40)
    base = _greedy(llm, prompt, max_tokens=64).outputs[0].token_ids
    repeats = len(base) - len(set(base))
    assert repeats > 10, "the reference continuation should repeat itself for this test to mean anything"
    rep = _greedy(llm, prompt, max_tokens=64, repetition_penalty=2.0).outputs[0].token_ids
    pres = _greedy(llm, prompt, max_tokens=64, presence_penalty=2.0).outputs[0].token_ids
    freq = _greedy(llm, prompt, max_tokens=64, frequency_penalty=2.0).outputs[0].token_ids
    for penalised in (rep, pres, freq):
        assert len(penalised) - len(set(penalised)) < repeats // 4
        assert penalised[0] == base[0], "nothing is penalised before the first output token"
    assert max(np.bincount(freq)) < max(np.bincount(base)) // 4


# -- text-level behaviour on the default model ---------------------------------------------------------------------

def _text(default_llm, prompt, **kw):
    params = SamplingParams(**{"temperature": 0.0, "max_tokens": 32, "ignore_eos": True, **kw})
    return default_llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]


@pytest.fixture(scope="module")
def story(default_llm):
    full = _text(default_llm, "Once upon a time")
    assert len(full.text) > 40
    return full


def test_stop_string_truncates_the_text(default_llm, story):
    idx = len(story.text) // 2
    stop = story.text[idx:idx + 5]
    idx = story.text.find(stop)
    out = _text(default_llm, "Once upon a time", stop=[stop])
    assert out.text == story.text[:idx]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.token_ids == story.token_ids[:len(out.token_ids)] and len(out.token_ids) < len(story.token_ids)
    kept = _text(default_llm, "Once upon a time", stop=stop, include_stop_str_in_output=True)
    assert kept.text == story.text[:idx + len(stop)] and kept.stop_reason == stop


def test_streamed_text_never_shows_a_stop_string(default_llm, story):
    idx = len(story.text) * 2 // 3
    stop = story.text[idx:idx + 6]
    engine = default_llm.engine
    engine.add_request("stream", "Once upon a time", SamplingParams(temperature=0, max_tokens=32, stop=stop))
    snapshots = []
    while engine.has_unfinished_requests():
        snapshots += [o for o in engine.step() if o.request_id == "stream"]
    final = snapshots[-1]
    assert final.finished and not any(o.finished for o in snapshots[:-1])
    assert final.outputs[0].text == story.text[:story.text.find(stop)]
    for o in snapshots:
        assert final.outputs[0].text.startswith(o.outputs[0].text) and stop not in o.outputs[0].text
        assert final.outputs[0].token_ids[:len(o.outputs[0].token_ids)] == o.outputs[0].token_ids


def test_request_output_fields(default_llm):
    tok = default_llm.get_tokenizer()
    out = default_llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)[0]
    assert out.prompt == "Once upon a time" and out.prompt_token_ids == tok.encode("Once upon a time")
    assert out.finished and out.prompt_logprobs is None and len(out.outputs) == 1
    c = out.outputs[0]
    assert c.index == 0 and c.logprobs is None and c.cumulative_logprob is None
    assert c.text == tok.decode(c.token_ids)
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time


def test_the_earliest_of_several_stop_strings_wins(default_llm, story):
    early, late = story.text[8:12], story.text[-6:-2]
    idx = min(story.text.find(early), story.text.find(late))
    out = _text(default_llm, "Once upon a time", stop=[late, early, "never-appears-xyz"])
    assert out.text == story.text[:idx] and out.stop_reason in (early, late)


def test_eos_min_tokens_and_ignore_eos(default_llm):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    eos = set(default_llm.engine.eos_token_ids)
    plain = default_llm.chat(messages, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0].outputs[0]
    assert plain.finish_reason == "stop" and plain.stop_reason is None and plain.token_ids[-1] in eos
    n = len(plain.token_ids)
    assert n < 30
    longer = default_llm.chat(messages, SamplingParams(temperature=0, max_tokens=n + 12, min_tokens=n + 5),
                              use_tqdm=False)[0].outputs[0]
    assert len(longer.token_ids) >= n + 5 and not eos & set(longer.token_ids[:n + 5])
    assert longer.token_ids[:n - 1] == plain.token_ids[:n - 1]
    ignored = default_llm.chat(messages, SamplingParams(temperature=0, max_tokens=n + 6, ignore_eos=True),
                               use_tqdm=False)[0].outputs[0]
    assert len(ignored.token_ids) == n + 6 and ignored.finish_reason == "length"
    assert ignored.token_ids[:n] == plain.token_ids

