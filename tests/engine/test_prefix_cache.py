"""Prefix caching, shared samples and salts on the tiny model: same outputs, exact hit counts, exact K/V."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from engine_helpers import assert_pool_whole, run_to_completion, tokens

from jaxserve.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
SEEDED = SamplingParams(temperature=0.8, top_k=40, seed=5, max_tokens=12, ignore_eos=True)


@contextlib.contextmanager
def caching(engine, on: bool):
    """Run with prefix caching on or off, starting from an empty cache (and leave an empty one behind)."""
    bm = engine.block_manager
    before = bm.enable_caching
    bm.enable_caching = on
    bm.reset_prefix_cache()
    try:
        yield
    finally:
        bm.enable_caching = before
        bm.reset_prefix_cache()


def _ids(outs) -> list[list[int]]:
    return [c.token_ids for o in outs for c in o.outputs]


def _shared_prompts(seed: int, prefix_len: int, suffix_lens) -> list[list[int]]:
    prefix = tokens(seed, prefix_len)
    return [prefix + tokens(seed + 1 + i, n) for i, n in enumerate(suffix_lens)]


def _hits(engine) -> tuple[int, int]:
    stats = engine.stats()
    return stats["prefix_cache_queries"], stats["prefix_cache_hits"]


def test_outputs_are_identical_with_and_without_caching(llm):
    prompts = _shared_prompts(1000, 70, [5, 17, 1, 40]) + _shared_prompts(1100, 33, [9, 30])
    params = [GREEDY, SEEDED] * 3

    def turns():
        first = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        # A second turn: the conversation so far (generated tokens included) plus a new message.
        follow = [p + o.outputs[0].token_ids + tokens(1200 + i, 6) for i, (p, o) in enumerate(zip(prompts, first))]
        second = llm.generate([{"prompt_token_ids": p} for p in follow], params, use_tqdm=False)
        return first + second

    with caching(llm.engine, False):
        expected = turns()
    with caching(llm.engine, True):
        queries, hits = _hits(llm.engine)
        got = turns()
        again = turns()  # everything cached now
        new_queries, new_hits = _hits(llm.engine)
    assert _ids(got) == _ids(expected) and _ids(again) == _ids(expected)
    for a, b in zip(got + again, expected * 2):
        if a.outputs[0].logprobs is not None:
            for ea, eb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
                assert ea.keys() == eb.keys()
                np.testing.assert_allclose(list(ea.values()), list(eb.values()), atol=1e-4)
    assert sum(o.num_cached_tokens for o in expected) == 0
    assert all(o.num_cached_tokens > 0 for o in got[len(prompts):]), "second turns reuse the first turns' pages"
    assert new_hits - hits == sum(o.num_cached_tokens for o in got + again)
    assert new_queries - queries == sum(len(o.prompt_token_ids) for o in got + again)


def test_hits_are_counted_exactly_for_a_known_prefix(llm):
    engine = llm.engine
    block = engine.config.cache.block_size
    assert block == 16
    prefix = tokens(1300, 40)
    a = prefix + tokens(1301, 5)  # 45 tokens: pages 0 and 1 full
    with caching(engine, True):
        q0, h0 = _hits(engine)
        out_a = llm.generate({"prompt_token_ids": a}, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                             use_tqdm=False)[0]
        assert out_a.num_cached_tokens == 0 and _hits(engine) == (q0 + 45, h0)
        gen = out_a.outputs[0].token_ids
        cases = [
            (prefix + tokens(1302, 7), 32),  # shares pages 0-1
            (a, 32),  # the same prompt: page 2 is not full within the prompt
            (a + gen[:3], 32),  # 48 tokens, page 2 cached (it holds 3 generated tokens), but the last token is
                                # always computed, so page 2 is recomputed
            (a + gen[:4], 48),  # 49 tokens: page 2 (generated tokens included) is reused
            (tokens(1303, 3) + prefix, 0),  # same tokens at other positions: no hit
            (prefix[:16] + tokens(1304, 20), 16),
        ]
        for prompt, expected in cases:
            q, h = _hits(engine)
            out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=2),
                               use_tqdm=False)[0]
            assert out.num_cached_tokens == expected, (len(prompt), expected)
            assert _hits(engine) == (q + len(prompt), h + expected)


def test_pages_being_written_in_a_step_are_not_hits_for_that_step(llm):
    engine = llm.engine
    prompt = tokens(1400, 40)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    with caching(engine, True):
        for i in range(3):
            engine.add_request(f"same-{i}", prompt, params)
        engine.step()  # the first computes the prompt; the others wait for its pages rather than compute them too
        assert [s.num_computed_tokens for i in range(3) for s in engine.requests[f"same-{i}"].seqs] == [40, 0, 0]
        engine.step()  # the first decodes (decode and prefill steps alternate)
        engine.step()  # the others take its pages from the cache and compute only the rest
        assert [s.num_computed_tokens for i in range(3) for s in engine.requests[f"same-{i}"].seqs] == [41, 40, 40]
        outs = run_to_completion(engine)
    assert [outs[f"same-{i}"].num_cached_tokens for i in range(3)] == [0, 32, 32]
    assert _ids(outs.values()) == [outs["same-0"].outputs[0].token_ids] * 3


def test_prompt_logprobs_requests_compute_the_whole_prompt(llm):
    prompt = tokens(1500, 50)
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=1)
    with caching(llm.engine, True):
        llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=1), use_tqdm=False)
        out = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    with caching(llm.engine, False):
        ref = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
    assert out.num_cached_tokens == 0 and len(out.prompt_logprobs) == len(prompt)
    for a, b in zip(out.prompt_logprobs[1:], ref.prompt_logprobs[1:]):
        assert a.keys() == b.keys() and np.allclose(list(a.values()), list(b.values()), atol=1e-5)


def test_salts_isolate(llm):
    prompt = {"prompt_token_ids": tokens(1600, 40)}
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    engine = llm.engine
    with caching(engine, True):
        def cached(request_id: str, salt: str | None) -> int:
            engine.add_request(request_id, prompt, params, cache_salt=salt)
            return run_to_completion(engine)[request_id].num_cached_tokens

        assert cached("t1-a", "tenant-1") == 0
        assert cached("t2-a", "tenant-2") == 0
        assert cached("none-a", None) == 0
        assert cached("empty-a", "") == 0
        assert cached("t1-b", "tenant-1") == 32
        assert cached("t2-b", "tenant-2") == 32
        assert cached("none-b", None) == 32
        assert cached("empty-b", "") == 32
        with pytest.raises(ValueError, match="cache_salt"):
            engine.add_request("bad", prompt, params, cache_salt=3)


def _page_kv(engine, page: int) -> np.ndarray:
    return np.stack([np.asarray(engine.runner.cache[name][:, :, page]) for name in ("k", "v")])


def test_reused_pages_hold_exactly_the_kv_of_a_fresh_prefill(llm):
    engine = llm.engine
    prefix = tokens(1700, 48)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    def prefix_pages_after_prefill(request_id: str, prompt: list[int]) -> tuple[np.ndarray, int]:
        engine.add_request(request_id, prompt, params)
        engine.step()
        seq = engine.requests[request_id].seqs[0]
        kv = np.stack([_page_kv(engine, page) for page in seq.block_table[:3]])
        engine.abort_request(request_id)
        return kv, seq.num_cached_tokens

    with caching(engine, True):
        llm.generate({"prompt_token_ids": prefix + tokens(1701, 9)}, params, use_tqdm=False)
        reused, cached = prefix_pages_after_prefill("reuse", prefix + tokens(1702, 9))
    with caching(engine, True):
        fresh, not_cached = prefix_pages_after_prefill("fresh", prefix + tokens(1702, 9))
    assert (cached, not_cached) == (48, 0)
    np.testing.assert_allclose(reused, fresh, rtol=0, atol=1e-6)


def test_samples_share_the_prompt_pages_and_copy_on_write(llm):
    engine = llm.engine
    bm = engine.block_manager
    prompt = tokens(1800, 40)  # pages 0-1 full, page 2 holds 8 tokens
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=20, ignore_eos=True, logprobs=1)
    copies = bm.num_page_copies
    engine.add_request("fork", prompt, params)
    engine.step()  # prefill once; all four samples draw a first token
    seqs = engine.requests["fork"].seqs
    table = list(seqs[0].block_table)
    assert len(table) == 3 and all(s.block_table == table for s in seqs)
    assert bm.num_usable_blocks - bm.num_free_blocks == 3, "n=4 holds the prompt once"
    assert [bm.ref_counts[p] for p in table] == [4, 4, 4]
    shared_tail = _page_kv(engine, table[2])
    engine.step()  # each sample writes its token 40 into page 2: three copy it first, the last keeps it
    assert bm.num_page_copies - copies == 3
    assert bm.num_usable_blocks - bm.num_free_blocks == 6
    assert [bm.ref_counts[p] for p in table[:2]] == [4, 4]
    tails = [s.block_table[2] for s in seqs]
    assert len(set(tails)) == 4 and table[2] in tails
    for page in tails:  # the copied prompt slots are intact; slot 8 is each sample's own
        np.testing.assert_array_equal(_page_kv(engine, page)[..., :8, :], shared_tail[..., :8, :])
    assert len({_page_kv(engine, page)[..., 8, :].tobytes() for page in tails}) == 4
    out = run_to_completion(engine)["fork"]
    samples = [c.token_ids for c in out.outputs]
    assert len({tuple(s) for s in samples}) == 4
    # Each sample's logprobs equal a teacher-forced recompute of its own text: no sibling's writes leaked in.
    with caching(engine, False):
        for c in out.outputs:
            forced = llm.generate({"prompt_token_ids": prompt + c.token_ids[:-1]},
                                  SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)[0]
            for k, (tok, entry) in enumerate(zip(c.token_ids[:-1], c.logprobs)):
                assert entry[tok] == pytest.approx(forced.prompt_logprobs[len(prompt) + k][tok], abs=1e-4)


@pytest.fixture(scope="module")
def small_pool_llm(tiny_model):
    """Caching on, 11 usable pages of 16 tokens: a working set of a few prompts evicts cached pages."""
    from jaxserve import LLM

    return LLM(str(tiny_model[0]), skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=4,
               max_num_batched_tokens=64, num_kv_blocks=12, compile_all_buckets=False, progress=False)


def test_eviction_under_pressure_keeps_outputs_exact(llm, small_pool_llm):
    engine = small_pool_llm.engine
    assert engine.block_manager.enable_caching and engine.block_manager.num_usable_blocks == 11
    prompts = []
    for round_ in range(3):  # three shared prefixes, revisited in rounds: hits, then evictions, then misses
        for p in range(3):
            prompts += _shared_prompts(1900 + 10 * p, 48, [3 + round_, 11 + round_])
    params = [GREEDY if i % 2 else SEEDED for i in range(len(prompts))]
    with caching(llm.engine, False):
        expected = [llm.generate({"prompt_token_ids": p}, q, use_tqdm=False)[0] for p, q in zip(prompts, params)]
    got = [small_pool_llm.generate({"prompt_token_ids": p}, q, use_tqdm=False)[0] for p, q in zip(prompts, params)]
    together = small_pool_llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert _ids(got) == _ids(expected) and _ids(together) == _ids(expected)
    stats = engine.stats()
    assert stats["prefix_cache_hits"] > 0 and engine.block_manager.num_evictions > 0
    assert stats["num_preemptions"] > 0
    assert_pool_whole(engine)


def test_caching_can_be_turned_off(tiny_model):
    from jaxserve import LLM

    off = LLM(str(tiny_model[0]), skip_tokenizer_init=True, max_model_len=64, max_num_seqs=2,
              max_num_batched_tokens=32, enable_prefix_caching=False, compile_all_buckets=False, progress=False)
    prompt = {"prompt_token_ids": tokens(2000, 40)}
    outs = [off.generate(prompt, SamplingParams(max_tokens=2), use_tqdm=False)[0] for _ in range(2)]
    assert [o.num_cached_tokens for o in outs] == [0, 0]
    assert off.engine.stats()["prefix_cache_queries"] == 0 and off.engine.block_manager.num_cached_blocks == 0


def test_many_samples_of_a_short_prompt_stay_in_the_warmed_up_shapes(llm):
    compiles = llm.engine.stats()["num_compiles_after_warmup"]
    out = llm.generate({"prompt_token_ids": tokens(2100, 5)},
                       SamplingParams(n=20, temperature=1.0, seed=9, max_tokens=6, ignore_eos=True), use_tqdm=False)[0]
    assert sorted(c.index for c in out.outputs) == list(range(20)) and all(len(c.token_ids) == 6 for c in out.outputs)
    assert llm.engine.stats()["num_compiles_after_warmup"] == compiles
    with pytest.raises(ValueError, match="max_num_seqs"):
        llm.engine.add_request("too-many", tokens(2101, 5), SamplingParams(n=33))


@pytest.mark.slow
def test_default_model_chat_turns_are_identical_with_and_without_caching(default_llm):
    """The real model and its chat template: history re-rendered each turn, replies re-encoded from text."""
    system = {"role": "system", "content": "You are a terse assistant. " * 20}
    params = SamplingParams(temperature=0, max_tokens=16)

    def conversation():
        convs = [[system, {"role": "user", "content": q}] for q in ("Name a colour.", "Name a city.")]
        texts, cached = [], []
        for follow_up in ("Why?", "Another one?"):
            outs = default_llm.chat(convs, params, use_tqdm=False)
            texts += [o.outputs[0].text for o in outs]
            cached += [o.num_cached_tokens for o in outs]
            for conv, out in zip(convs, outs):
                conv += [{"role": "assistant", "content": out.outputs[0].text}, {"role": "user", "content": follow_up}]
        return texts, cached

    with caching(default_llm.engine, False):
        expected, none = conversation()
    with caching(default_llm.engine, True):
        got, cached = conversation()
    assert got == expected and not any(none)
    assert cached[1] > 0 and all(c > 0 for c in cached[2:]), cached
