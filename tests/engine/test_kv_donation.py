"""KV pages are donated to every step (updated in place), and warm-up leaves nothing to compile later."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from engine_helpers import run_to_completion, tokens

from jaxserve.sampling_params import SamplingParams


def test_each_step_donates_the_previous_kv_pages(llm):
    engine = llm.engine
    engine.add_request("donate", tokens(800, 20), SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    for _ in range(3):  # a prefill step, then decode steps
        before = dict(engine.runner.cache)
        shapes = {k: (v.shape, v.dtype) for k, v in before.items()}
        engine.step()
        after = engine.runner.cache
        for name in ("k", "v"):
            assert before[name].is_deleted(), f"the {name} pages were copied, not donated"
            assert not after[name].is_deleted()
            assert (after[name].shape, after[name].dtype) == shapes[name]
    run_to_completion(engine)


def test_the_step_writes_this_requests_kv_into_its_own_pages_only(llm):
    engine = llm.engine
    k_before = np.asarray(engine.runner.cache["k"])
    engine.add_request("pages", tokens(801, 40), SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))
    seq = engine.requests["pages"].seqs[0]
    engine.step()
    pages = list(seq.block_table)
    k_after = np.asarray(engine.runner.cache["k"])
    run_to_completion(engine)
    assert len(pages) == 3 and 0 not in pages
    changed = {int(p) for p in np.nonzero(np.any(k_after != k_before, axis=(0, 1, 3, 4)))[0]}
    assert set(pages) <= changed and changed <= set(pages) | {0}, "K/V written outside the sequence's pages"
    block = engine.block_manager.block_size
    # the third page holds 40 - 32 = 8 tokens; its other slots stay untouched
    last = pages[2]
    assert np.any(k_after[:, :, last, :8] != k_before[:, :, last, :8])
    np.testing.assert_array_equal(k_after[:, :, last, 8:block], k_before[:, :, last, 8:block])


@pytest.fixture(scope="module")
def warm_workload(tiny_model):
    """A fresh fully warmed-up engine driven through a mixed workload; what compiled meanwhile."""
    from jaxserve import LLM

    engine = LLM(str(tiny_model[0]), skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=16,
                 max_num_batched_tokens=64, progress=False).engine
    assert engine.runner.warmed_up and engine.config.compile_all_buckets
    runner = engine.runner
    jitted = {name: f for name, f in vars(runner.steps).items() if hasattr(f, "_cache_size")}  # the jitted steps
    assert any("model" in name for name in jitted)
    before = {name: f._cache_size() for name, f in jitted.items()}
    compiles = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event.startswith("/jax/core/compile/"):
            compiles.append((event, kwargs.get("fun_name")))

    params = [
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.7, top_p=0.8, seed=1, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=1.0, max_tokens=7, ignore_eos=True),
        SamplingParams(temperature=0, repetition_penalty=1.2, logprobs=2, max_tokens=9, ignore_eos=True),
        SamplingParams(n=3, temperature=0.9, min_tokens=2, max_tokens=6),
    ]
    rng = np.random.default_rng(9)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for wave, count in enumerate((1, 5, 16, 3)):  # row buckets 8 and 16, token buckets 8..64
            for i in range(count):
                n = int(rng.integers(1, 100))
                p = params[(wave + i) % len(params)]
                if wave == 3:  # prompt logprobs, alone in their steps
                    p = SamplingParams(temperature=0, prompt_logprobs=2, max_tokens=4, ignore_eos=True)
                engine.add_request(f"w{wave}-{i}", tokens(900 + 50 * wave + i, n), p)
                if wave == 3:
                    run_to_completion(engine)
            run_to_completion(engine)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    after = {name: f._cache_size() for name, f in jitted.items()}
    return engine, before, after, compiles


def test_no_model_step_compiles_after_warmup(warm_workload):
    engine, before, after, _ = warm_workload
    assert engine.stats()["num_compiles_after_warmup"] == 0
    assert engine.num_steps > 40
    model_step = next(name for name in before if "model" in name)
    assert after[model_step] == before[model_step] == len(engine.runner.token_buckets)


def test_no_sampler_compiles_after_warmup(warm_workload):
    _, before, after, compiles = warm_workload
    assert after == before
    assert not compiles, f"compiled after warm-up: {compiles}"
