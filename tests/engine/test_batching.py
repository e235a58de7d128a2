"""Continuous batching must not change results: chunking, preemption, batch composition, aborts, seeds, n > 1."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import assert_pool_whole, run_to_completion, tokens

from jaxserve.sampling_params import SamplingParams


def _ids(outs) -> list[list[int]]:
    """Token ids of every sample of every request, flattened in order."""
    return [c.token_ids for o in outs for c in o.outputs]


def _prompts(seed: int, lengths) -> list[dict]:
    return [{"prompt_token_ids": tokens(seed + i, n)} for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def small_step_llm(tiny_model):
    """The tiny model with 16-token steps: every prompt longer than 16 tokens is prefilled in chunks."""
    from jaxserve import LLM

    return LLM(str(tiny_model[0]), skip_tokenizer_init=True, dtype="float32", max_model_len=256, max_num_seqs=8,
               max_num_batched_tokens=16, compile_all_buckets=False, progress=False)


def test_chunked_prefill_matches_unchunked(llm, small_step_llm):
    prompts = _prompts(100, [60, 77, 100, 91])
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, prompt_logprobs=2)
    whole = [llm.generate(p, params, use_tqdm=False)[0] for p in prompts]  # each prompt in one step
    chunked = small_step_llm.generate(prompts, params, use_tqdm=False)
    assert small_step_llm.engine.num_steps >= sum(-(-len(p["prompt_token_ids"]) // 16) for p in prompts)
    assert _ids(chunked) == _ids(whole)
    for a, b in zip(chunked, whole):
        assert len(a.prompt_logprobs) == len(b.prompt_logprobs) and a.prompt_logprobs[0] is None
        for ea, eb in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]):
            assert ea.keys() == eb.keys()
            np.testing.assert_allclose(list(ea.values()), list(eb.values()), atol=1e-4)
    assert_pool_whole(small_step_llm.engine)


def test_preemption_under_a_tiny_pool_gives_the_same_outputs(llm, tiny_model):
    from jaxserve import LLM

    small = LLM(str(tiny_model[0]), skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=8,
                max_num_batched_tokens=64, num_kv_blocks=9, compile_all_buckets=False, progress=False)
    assert small.engine.block_manager.num_usable_blocks == 8
    prompts = _prompts(200, [20, 31, 25, 18, 28, 22])
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, prompt_logprobs=1) for _ in prompts]
    params[1] = SamplingParams(temperature=0.8, top_k=20, seed=11, max_tokens=40, ignore_eos=True, prompt_logprobs=1)
    params[3] = SamplingParams(n=2, temperature=1.0, seed=12, max_tokens=40, ignore_eos=True, prompt_logprobs=1,
                               logprobs=2)
    expected = llm.generate(prompts, params, use_tqdm=False)
    got = small.generate(prompts, params, use_tqdm=False)
    assert small.engine.stats()["num_preemptions"] > 0
    assert llm.engine.stats()["num_preemptions"] == 0
    assert _ids(got) == _ids(expected) and len(_ids(got)) == len(prompts) + 1
    for a, b in zip(got[3].outputs, expected[3].outputs):  # logprobs are recorded once per token, not per compute
        assert len(a.logprobs) == 40 and a.cumulative_logprob == pytest.approx(b.cumulative_logprob, abs=1e-3)
    for g, e in zip(got, expected):  # recomputed prompts must not record their prompt logprobs twice
        assert len(g.prompt_logprobs) == len(e.prompt_logprobs) == len(g.prompt_token_ids)
        for a, b in zip(g.prompt_logprobs[1:], e.prompt_logprobs[1:]):
            assert a.keys() == b.keys() and np.allclose(list(a.values()), list(b.values()), atol=1e-4)
    assert_pool_whole(small.engine)
    # Aborts under pool pressure return every page too.
    engine = small.engine
    for i, p in enumerate(prompts):
        engine.add_request(f"abort-{i}", p, params[0])
    for _ in range(12):
        engine.step()
    for i in range(0, len(prompts), 2):
        engine.abort_request(f"abort-{i}")
    finished = run_to_completion(engine)
    assert set(finished) == {f"abort-{i}" for i in range(1, len(prompts), 2)}
    assert_pool_whole(engine)


def test_prompt_logprobs_request_batched_with_a_plain_request(llm):
    prompts = _prompts(250, [12, 9])
    params = [SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=1),
              SamplingParams(temperature=0, max_tokens=3)]
    try:
        outs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        for request_id in list(llm.engine.requests):
            llm.engine.abort_request(request_id)
    assert len(outs[0].prompt_logprobs) == 12 and outs[1].prompt_logprobs is None


def test_aborts_free_every_page(llm):
    engine = llm.engine
    lengths = [120, 90, 5, 60, 33, 100]
    for i, n in enumerate(lengths):
        engine.add_request(f"a{i}", tokens(300 + i, n), SamplingParams(temperature=0, max_tokens=30,
                                                                      ignore_eos=True))
    engine.step()  # a budget of 128 tokens: a0 prefilled, a1 started, the rest still waiting
    bm = engine.block_manager
    assert engine.stats()["num_waiting"] > 0 and bm.num_free_blocks < bm.num_usable_blocks
    engine.abort_request("a5")  # waiting
    engine.abort_request("a1")  # mid-prefill
    engine.abort_request("no-such-request")
    seen = set()
    for _ in range(8):
        seen |= {o.request_id for o in engine.step()}
    engine.abort_request("a0")  # decoding
    assert not {"a5", "a1"} & seen
    finished = run_to_completion(engine)
    assert set(finished) == {"a2", "a3", "a4"}
    assert all(len(o.outputs[0].token_ids) == 30 for o in finished.values())


def test_request_alone_equals_the_same_request_in_a_mixed_batch_of_32(llm):
    rng = np.random.default_rng(5)
    lengths = [int(n) for n in rng.integers(3, 90, 32)]
    prompts = _prompts(400, lengths)
    params = []
    for i in range(32):
        max_tokens = int(rng.integers(5, 40))
        kind = i % 4
        if kind == 0:
            params.append(SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        elif kind == 1:
            params.append(SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=1000 + i, max_tokens=max_tokens,
                                         ignore_eos=True))
        elif kind == 2:
            params.append(SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5, logprobs=3,
                                         max_tokens=max_tokens, ignore_eos=True))
        else:
            params.append(SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True))
    batch = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in batch] == [p.max_tokens for p in params]
    for i in range(0, 32, 4):
        for j in (i, i + 1, i + 2):  # greedy, seeded, penalised: deterministic, so alone == in the batch
            alone = llm.generate(prompts[j], params[j], use_tqdm=False)[0]
            assert alone.outputs[0].token_ids == batch[j].outputs[0].token_ids, f"request {j} (kind {j % 4})"
    for j in range(2, 32, 4):
        for ea, eb in zip(batch[j].outputs[0].logprobs, llm.generate(prompts[j], params[j], use_tqdm=False)[0]
                          .outputs[0].logprobs):
            assert ea.keys() == eb.keys() and np.allclose(list(ea.values()), list(eb.values()), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_seed_dependent(llm):
    prompt = {"prompt_token_ids": tokens(500, 12)}
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=42, max_tokens=24, ignore_eos=True)
    first = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    again = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    others = _prompts(510, [40, 7, 64])
    mixed = llm.generate(others + [prompt], [SamplingParams(temperature=1.0, max_tokens=30)] * 3 + [params],
                         use_tqdm=False)[-1].outputs[0].token_ids
    assert first == again == mixed
    other_seed = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=43, max_tokens=24, ignore_eos=True)
    assert llm.generate(prompt, other_seed, use_tqdm=False)[0].outputs[0].token_ids != first
    greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)
    assert greedy[0].outputs[0].token_ids != first, "temperature 0.8 should leave the greedy path somewhere"


def test_n_samples(llm):
    prompt = {"prompt_token_ids": tokens(600, 10)}
    out = llm.generate(prompt, SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True),
                       use_tqdm=False)[0]
    assert sorted(o.index for o in out.outputs) == [0, 1, 2, 3]
    assert all(len(o.token_ids) == 16 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) >= 3
    again = llm.generate(prompt, SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True),
                         use_tqdm=False)[0]
    assert [o.token_ids for o in again.outputs] == [o.token_ids for o in out.outputs]
    greedy = llm.generate(prompt, SamplingParams(n=3, temperature=0, max_tokens=16, ignore_eos=True),
                          use_tqdm=False)[0]
    single = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)[0]
    assert [o.token_ids for o in greedy.outputs] == [single.outputs[0].token_ids] * 3


def test_unseeded_sampling_differs_between_requests(llm):
    prompt = {"prompt_token_ids": tokens(700, 10)}
    params = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    outs = _ids(llm.generate([prompt] * 4, params, use_tqdm=False))
    later = _ids(llm.generate(prompt, params, use_tqdm=False))
    assert len({tuple(o) for o in outs + later}) == 5
