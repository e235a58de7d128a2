"""cpu_kernels.gumbel_sample against jax.random: the kernel regenerates jax's threefry bits and Gumbel noise
natively, so its draws must be the tokens `argmax(logits / T + jax.random.gumbel(key, ...))` picks, row for row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cpu_kernels as ck

pytestmark = pytest.mark.skipif(not ck.available(), reason=f"CPU kernels unavailable: {ck.unavailable_reason()}")

_native = jax.jit(ck.gumbel_sample)
_reference = jax.jit(ck.gumbel_sample_reference)


def _keys(rows: int, seed: int = 0) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(rows))


def test_defaults_are_the_prng_the_kernel_reproduces():
    assert ck.matches_jax_random(), "jax's default PRNG changed: the native sampler would fall back to XLA's noise"


@pytest.mark.parametrize("vocab", [1, 7, 512, 513, 4099, 49_152])
def test_draws_equal_jax_random_gumbel_max(vocab):
    """Vocabularies below, at and across the kernel's 512-element chunks; temperatures 0 (argmax), low and high."""
    rng = np.random.default_rng(vocab)
    rows = 24
    logits = jnp.asarray(rng.normal(0, 3, (rows, vocab)), jnp.float32)
    temperature = jnp.asarray(np.tile([0.0, 0.3, 1.0, 2.5], rows // 4), jnp.float32)
    keys = _keys(rows, seed=vocab)
    tokens, logprob = (np.asarray(a) for a in _native(logits, temperature, keys))
    ref_tokens, ref_logprob = (np.asarray(a) for a in _reference(logits, temperature, keys))
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(logprob, ref_logprob, atol=2e-5)


def test_noise_matches_at_the_decision_boundary():
    """Two tokens whose logits differ by d: the draw flips where g1 - g0 crosses d, so 4096 rows of random d test
    the noise values themselves (to a few ulp), not just which of 49k candidates is far ahead."""
    rng = np.random.default_rng(1)
    rows = 4096
    d = rng.uniform(-4, 4, rows).astype(np.float32)
    logits = jnp.asarray(np.stack([np.zeros(rows, np.float32), d], axis=1))
    temperature, keys = jnp.ones(rows, jnp.float32), _keys(rows, seed=11)
    tokens = np.asarray(_native(logits, temperature, keys)[0])
    np.testing.assert_array_equal(tokens, np.asarray(_reference(logits, temperature, keys)[0]))
    assert 0.2 < tokens.mean() < 0.8, "both tokens must be drawn for the check to mean anything"


def test_pure_noise_argmax_and_frequencies():
    """Zero logits: the token is the argmax of jax.random.gumbel's own draw; over many keys the draws of a small
    vocabulary follow softmax(logits / T)."""
    key = jax.random.PRNGKey(3)
    noise = jax.random.gumbel(key, (49_152,), jnp.float32)
    token = int(_native(jnp.zeros((1, 49_152), jnp.float32), jnp.ones(1, jnp.float32), key[None])[0][0])
    assert token == int(jnp.argmax(noise))
    rows, logits = 20_000, np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    tokens = np.asarray(_native(jnp.tile(jnp.asarray(logits), (rows, 1)), jnp.full(rows, 0.5, jnp.float32),
                                _keys(rows, seed=5))[0])
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum()
    np.testing.assert_allclose(np.bincount(tokens, minlength=4) / rows, expected, atol=0.015)


def test_padding_rows_nan_minus_inf_and_bad_shapes():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1, (6, 700)).astype(np.float32)
    logits[0, 600] = np.nan  # like jnp.argmax over the noisy scores: the NaN wins; its logprob is NaN
    logits[1, :] = -np.inf  # no distribution: token 0, logprob -inf
    temperature, keys = jnp.full(6, 0.8, jnp.float32), _keys(6)
    tokens, logprob = (np.asarray(a) for a in _native(jnp.asarray(logits), temperature, keys, jnp.int32(4)))
    assert tokens[0] == 600 and np.isnan(logprob[0])
    assert tokens[1] == 0 and logprob[1] == -np.inf
    ref_tokens, ref_logprob = (np.asarray(a) for a in _reference(jnp.asarray(logits[2:4]), temperature[2:4],
                                                                  keys[2:4]))
    np.testing.assert_array_equal(tokens[2:4], ref_tokens)
    np.testing.assert_allclose(logprob[2:4], ref_logprob, atol=1e-5)
    assert not tokens[4:].any() and not logprob[4:].any(), "rows from valid_rows on are padding: zeros"
    with pytest.raises(ValueError, match="rows, vocab"):
        ck.gumbel_sample(jnp.zeros((3,), jnp.float32), temperature, keys)
    with pytest.raises(ValueError, match="keys"):
        ck.gumbel_sample(jnp.zeros((6, 5), jnp.float32), temperature, keys[:, :1])
