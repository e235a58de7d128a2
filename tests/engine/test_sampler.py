"""The sampler function on crafted logits: filters, penalties, bans, Gumbel-max statistics and determinism."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import cpu_kernels
from jaxserve.engine.sampler import SamplingTensors, sample
from jaxserve.sampling_params import MAX_LOGPROBS

_sample = jax.jit(sample, static_argnames=("variant", "native"))
# The XLA reduction, and the native CPU kernel's (cpu_kernels.greedy) where it builds here.
NATIVE = [False, pytest.param(True, marks=pytest.mark.skipif(
    not cpu_kernels.available(), reason=f"CPU kernels unavailable: {cpu_kernels.unavailable_reason()}"))]


def _tensors(rows: int, *, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, presence=0.0, frequency=0.0,
             repetition=1.0, seeds=None, step=0, sample_index=0, token_ids=None, num_prompt=0,
             banned=None, bias=None) -> SamplingTensors:
    full = functools.partial(np.full, rows)
    seeds = np.arange(rows) if seeds is None else np.broadcast_to(np.asarray(seeds), (rows,))
    seed = np.stack([seeds & 0xFFFFFFFF, seeds >> 32, np.full(rows, sample_index)], axis=1).astype(np.uint32)
    token_ids = np.broadcast_to(_pad(token_ids or [], 4), (rows, 4))
    banned = np.broadcast_to(_pad(banned or [], 2), (rows, 2))
    bias = bias or {}
    bias_ids = np.broadcast_to(_pad(list(bias), 3), (rows, 3))
    bias_values = np.broadcast_to(np.asarray(list(bias.values()) + [0.0] * (3 - len(bias)), np.float32), (rows, 3))
    return SamplingTensors(
        temperature=full(temperature, np.float32), top_p=full(top_p, np.float32), top_k=full(top_k, np.int32),
        min_p=full(min_p, np.float32), presence_penalty=full(presence, np.float32),
        frequency_penalty=full(frequency, np.float32), repetition_penalty=full(repetition, np.float32),
        seed=seed, step=np.broadcast_to(np.asarray(step, np.int32), (rows,)).copy(),
        token_ids=np.asarray(token_ids, np.int32), num_prompt_tokens=full(num_prompt, np.int32),
        banned_ids=np.asarray(banned, np.int32), bias_ids=np.asarray(bias_ids, np.int32),
        bias_values=np.asarray(bias_values, np.float32))


def _pad(ids: list[int], width: int) -> np.ndarray:
    return np.asarray(list(ids) + [-1] * (width - len(ids)), np.int32)


def _draw(logits, variant="full", **kw) -> np.ndarray:
    """Tokens drawn for `logits` (one row, repeated `rows` times, or a batch); small vocabularies are padded
    with -30 logits (the full variant's top-logprobs need at least MAX_LOGPROBS entries)."""
    logits = np.asarray(logits, np.float32)
    if logits.shape[-1] < 32:
        filler = np.full((*logits.shape[:-1], 32 - logits.shape[-1]), -30.0, np.float32)
        logits = np.concatenate([logits, filler], axis=-1)
    if logits.ndim == 1:
        logits = np.broadcast_to(logits, (kw.pop("rows", 256), logits.shape[0]))
    native = kw.pop("native", False)
    return np.asarray(_sample(logits, _tensors(logits.shape[0], **kw), variant=variant, native=native)["tokens"])


def _random_logits(rows: int, vocab: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (rows, vocab)).astype(np.float32)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("variant", ["greedy", "sample", "full"])
def test_temperature_zero_is_argmax_in_every_variant(variant, native):
    logits = _random_logits(32)
    out = _sample(logits, _tensors(32, temperature=0.0), variant=variant, native=native)
    np.testing.assert_array_equal(out["tokens"], logits.argmax(-1))
    expected = jax.nn.log_softmax(logits)[np.arange(32), logits.argmax(-1)]
    np.testing.assert_allclose(out["logprob"], expected, atol=1e-6)


def test_top_k_one_and_tiny_top_p_pick_the_argmax():
    logits = _random_logits(64)
    np.testing.assert_array_equal(_draw(logits, top_k=1, temperature=1.5), logits.argmax(-1))
    np.testing.assert_array_equal(_draw(logits, top_p=1e-6, temperature=1.5), logits.argmax(-1))


def test_top_k_keeps_exactly_the_k_best():
    logits = np.log(np.array([0.3, 0.25, 0.2, 0.15, 0.1], np.float32))
    assert set(_draw(logits, top_k=3, rows=512)) == {0, 1, 2}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert set(_draw(logits, top_p=0.7, rows=512)) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(_draw(logits, top_p=0.85, rows=512)) == {0, 1, 2}


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    logits = np.log(np.array([0.4, 0.3, 0.19, 0.11], np.float32))
    assert set(_draw(logits, min_p=0.5, rows=512)) == {0, 1}  # threshold 0.2
    assert set(_draw(logits, min_p=0.25, rows=512)) == {0, 1, 2, 3}  # threshold 0.1


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_sample_frequencies_follow_the_tempered_softmax(temperature, native):
    logits = np.array([1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
    draws = _draw(logits, variant="sample", temperature=temperature, rows=4000, native=native)
    freq = np.bincount(draws, minlength=5) / len(draws)
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    np.testing.assert_allclose(freq, expected, atol=0.03)


def test_presence_and_frequency_penalties_subtract_exactly():
    logits = np.array([1.0, 0.9, -5.0, -5.0], np.float32)
    output_twice = [3, 3, 0, 0]  # prompt [3, 3], output [0, 0]: token 0 appears twice in the output
    kw = dict(temperature=0.0, token_ids=output_twice, num_prompt=2, rows=1)
    assert _draw(logits, **kw)[0] == 0
    assert _draw(logits, frequency=0.04, **kw)[0] == 0  # 1.0 - 2 * 0.04 = 0.92 > 0.9
    assert _draw(logits, frequency=0.06, **kw)[0] == 1  # 1.0 - 2 * 0.06 = 0.88 < 0.9
    assert _draw(logits, presence=0.09, **kw)[0] == 0  # 1.0 - 0.09 = 0.91 > 0.9 (once, whatever the count)
    assert _draw(logits, presence=0.11, **kw)[0] == 1
    # Tokens seen only in the prompt are not penalised by presence / frequency penalties.
    prompt_only = dict(temperature=0.0, token_ids=[0, 0, 3], num_prompt=2, rows=1)
    assert _draw(logits, presence=2.0, frequency=2.0, **prompt_only)[0] == 0


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    pos = np.array([2.0, 1.5, -9.0], np.float32)
    seen0 = dict(temperature=0.0, token_ids=[0, 2], num_prompt=2, rows=1)  # token 0 is in the prompt
    assert _draw(pos, repetition=1.2, **seen0)[0] == 0  # 2.0 / 1.2 = 1.67 > 1.5
    assert _draw(pos, repetition=1.5, **seen0)[0] == 1  # 2.0 / 1.5 = 1.33 < 1.5
    neg = np.array([-1.0, -1.2, -9.0], np.float32)
    assert _draw(neg, repetition=1.1, **seen0)[0] == 0  # -1.0 * 1.1 = -1.1 > -1.2
    assert _draw(neg, repetition=1.3, **seen0)[0] == 1  # -1.0 * 1.3 = -1.3 < -1.2
    assert _draw(neg, repetition=0.5, token_ids=[1], num_prompt=1, temperature=0.0, rows=1)[0] == 1


def test_banned_ids_are_never_chosen():
    logits = _random_logits(16)
    best = logits.argmax(-1)
    second = np.argsort(logits, -1)[:, -2]
    for row in range(16):
        out = _draw(logits[row], temperature=0.0, banned=[int(best[row])], rows=1)
        assert out[0] == second[row]
    flat = np.zeros(8, np.float32)
    assert not {0, 1} & set(_draw(flat, banned=[0, 1], rows=512))


def test_gumbel_draws_are_deterministic_per_seed_step_and_sample_index():
    logits = np.zeros((8, 1000), np.float32)
    base = dict(variant="sample", seeds=12345)
    a = _draw(logits, step=3, **base)
    assert len(set(a)) == 1, "one seed and step must give one token whatever the row"
    np.testing.assert_array_equal(_draw(logits, step=3, **base), a)
    np.testing.assert_array_equal(_draw(logits[:1], step=3, **base), a[:1])  # batch size does not matter
    steps = [_draw(logits[:1], step=s, **base)[0] for s in range(16)]
    assert len(set(steps)) >= 14
    indices = [_draw(logits[:1], step=3, sample_index=i, **base)[0] for i in range(16)]
    assert len(set(indices)) >= 14
    seeds = [_draw(logits[:1], step=3, variant="sample", seeds=s)[0] for s in (1, 2, 3, 2**40 + 1, 2**40 + 2)]
    assert len(set(seeds)) >= 4
    np.testing.assert_array_equal(_draw(logits, variant="full", step=3, seeds=12345), a)


def test_logprobs_are_of_the_raw_distribution_and_top_logprobs_are_sorted():
    logits = _random_logits(8, vocab=64)
    out = _sample(logits, _tensors(8, temperature=0.7, top_k=5, repetition=1.5, token_ids=[1, 2, 3], num_prompt=3),
                  variant="full")
    raw = np.asarray(jax.nn.log_softmax(logits))
    tokens = np.asarray(out["tokens"])
    np.testing.assert_allclose(out["logprob"], raw[np.arange(8), tokens], atol=1e-6)
    top = np.asarray(out["top_logprobs"])
    assert top.shape == (8, MAX_LOGPROBS)
    np.testing.assert_allclose(top, -np.sort(-raw, axis=-1)[:, :MAX_LOGPROBS], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(raw, np.asarray(out["top_ids"]), -1), top, atol=1e-6)


def test_logit_bias_adds_to_logits_before_choosing():
    logits = _random_logits(8)
    worst = logits.argmin(-1)
    for row in range(8):
        forced = int(worst[row])
        assert _draw(logits[row], temperature=0.0, bias={forced: 100.0}, rows=1)[0] == forced
        assert _draw(logits[row], temperature=1.0, bias={forced: 100.0}, rows=4).tolist() == [forced] * 4
    best = int(logits[0].argmax())
    banned = _draw(logits[0], temperature=0.0, bias={best: -100.0}, rows=1)[0]
    assert banned == int(np.argsort(logits[0])[-2])
    out = _sample(logits[:1], _tensors(1, temperature=0.0, bias={int(worst[0]): 100.0}), variant="full")
    expected = jax.nn.log_softmax(logits[:1])[0, int(worst[0])]
    np.testing.assert_allclose(out["logprob"][0], expected, atol=1e-5)  # logprobs stay the model's own


@pytest.mark.parametrize("native", NATIVE[1:])
def test_native_reduction_draws_the_xla_tokens_and_logprobs(native):
    """Mixed greedy / sampled rows over a real-sized vocabulary: the same tokens (the noise is the same) and the
    drawn tokens' raw logprobs, with the native argmax and log-normaliser in place of XLA's."""
    logits = _random_logits(12, vocab=49_152, seed=3)
    temperature = np.where(np.arange(12) % 3 == 0, 0.0, 0.9).astype(np.float32)
    tensors = _tensors(12, seeds=np.arange(12) + 100, step=5)
    tensors = SamplingTensors(**{**tensors.__dict__, "temperature": temperature})
    raw = np.asarray(jax.nn.log_softmax(logits))
    for variant in ("greedy", "sample"):
        ours, ref = (_sample(logits, tensors, variant=variant, native=n) for n in (native, False))
        np.testing.assert_array_equal(ours["tokens"], ref["tokens"])
        np.testing.assert_allclose(ours["logprob"], raw[np.arange(12), np.asarray(ours["tokens"])], atol=2e-5)
