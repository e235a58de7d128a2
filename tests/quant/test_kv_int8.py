"""The int8 KV cache: per-token, per-head scales, bytes per token, page layout, and attention close to float."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.attention.xla import context_chunk_blocks, paged_attention
from jaxserve.config import CacheConfig, ModelConfig
from jaxserve.kv_cache import allocate_kv_cache, gather_pages, kv_bytes_per_token, quantize_kv, write_kv

MODEL = ModelConfig("llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=32)
SMOLLM2 = ModelConfig("llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64)
BLOCK = 8


def test_bytes_per_token_include_scales_and_stay_under_055x_bfloat16():
    for model in (MODEL, SMOLLM2):
        assert kv_bytes_per_token(model, "int8") == 2 * model.num_layers * model.num_kv_heads * (model.head_dim + 4)
    # (head_dim + 4) / (2 head_dim) <= 0.55 from head_dim 40 up: every model the engine targets (64, 128).
    assert kv_bytes_per_token(SMOLLM2, "int8") <= 0.55 * kv_bytes_per_token(SMOLLM2, "bfloat16")
    assert kv_bytes_per_token(SMOLLM2, "int8") / kv_bytes_per_token(SMOLLM2, "bfloat16") == pytest.approx(68 / 128)


def test_int8_cache_layout_page_axis_is_axis_2_everywhere():
    cache = allocate_kv_cache(MODEL, 5, BLOCK, "int8")
    assert set(cache) == {"k", "v", "k_scale", "v_scale"}
    assert cache["k"].dtype == jnp.int8 and cache["k"].shape == (2, 2, 5, BLOCK, 32)
    assert cache["k_scale"].dtype == jnp.float32 and cache["k_scale"].shape == (2, 2, 5, BLOCK)
    assert all(a.shape[2] == 5 for a in cache.values())
    total = sum(a.size * a.dtype.itemsize for a in cache.values())
    assert total == 5 * BLOCK * kv_bytes_per_token(MODEL, "int8")


def test_config_accepts_int8_and_rejects_unknown_kv_dtypes():
    assert CacheConfig(kv_cache_dtype="int8").kv_cache_dtype == "int8"
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        CacheConfig(kv_cache_dtype="int4")


def test_quantize_kv_error_is_at_most_half_a_step_per_token_and_head():
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3, 32)) * jnp.arange(1, 8)[:, None, None]
    x = x.at[2, 1].set(0.0)  # an all-zero head must not divide by zero
    values, scales = quantize_kv(x)
    assert values.dtype == jnp.int8 and scales.shape == (7, 3)
    err = jnp.abs(values.astype(jnp.float32) * scales[..., None] - x)
    assert bool(jnp.all(err <= scales[..., None] / 2 + 1e-7))
    assert float(scales[2, 1]) == 0.0


def test_write_then_gather_dequantizes_each_token_with_its_own_scale():
    cache = allocate_kv_cache(MODEL, 6, BLOCK, "int8")
    rng = np.random.default_rng(0)
    k = rng.standard_normal((5, 2, 32)).astype(np.float32) * np.array([1, 10, 100, 0.1, 3])[:, None, None]
    v = -k
    slots = jnp.asarray([3 * BLOCK + 0, 3 * BLOCK + 1, 1 * BLOCK + 7, 5 * BLOCK + 2, 2 * BLOCK + 4])
    cache = write_kv(cache, jnp.int32(1), jnp.asarray(k), jnp.asarray(v), slots)
    assert float(jnp.abs(cache["k"][0]).max()) == 0  # layer 0 untouched
    k_pages, v_pages = gather_pages(cache, jnp.int32(1), jnp.asarray([[3, 1, 5, 2]]))  # [Hkv, 1, 4, B, D]
    got = np.asarray(k_pages)[:, 0]
    picks = [(0, 0), (0, 1), (1, 7), (2, 2), (3, 4)]
    for t, (page, offset) in enumerate(picks):
        step = np.abs(k[t]).max(axis=-1, keepdims=True) / 127
        assert np.all(np.abs(got[:, page, offset] - k[t]) <= step / 2 + 1e-6)
        np.testing.assert_allclose(np.asarray(v_pages)[:, 0, page, offset], -got[:, page, offset])


@pytest.mark.parametrize("query_len", [1, 5])  # decode (per-token page reads) and a prefill chunk (per sequence)
def test_paged_attention_over_int8_pages_is_close_to_float_pages(query_len):
    context, hq, hkv, d = 40, 4, 2, 32
    rng = np.random.default_rng(1)
    chunk = context_chunk_blocks(BLOCK)
    pages = -(-(context + query_len) // BLOCK)
    table = np.zeros((1, -(-pages // chunk) * chunk), np.int32)
    table[0, :pages] = np.arange(pages, 0, -1)  # reversed pages, so a table mix-up cannot pass
    pos = np.arange(context + query_len)
    slots = jnp.asarray(table[0, pos // BLOCK] * BLOCK + pos % BLOCK, jnp.int32)
    k_all = jnp.asarray(rng.standard_normal((context + query_len, hkv, d)).astype(np.float32))
    v_all = jnp.asarray(rng.standard_normal((context + query_len, hkv, d)).astype(np.float32))
    q = jnp.asarray(rng.standard_normal((query_len, hq, d)).astype(np.float32))
    meta = AttentionMetadata(slots[context:], jnp.asarray(table), jnp.asarray([context + query_len], jnp.int32),
                             jnp.asarray([0, query_len], jnp.int32))
    outs = {}
    for kv_dtype in ("float32", "int8"):
        cache = allocate_kv_cache(MODEL, pages + 1, BLOCK, kv_dtype)
        cache = write_kv(cache, jnp.int32(0), k_all, v_all, slots)
        outs[kv_dtype] = np.asarray(paged_attention(q, k_all[context:], v_all[context:], cache, jnp.int32(0), meta,
                                                    jnp.asarray(pos[context:], jnp.int32), scale=d ** -0.5))
    # K/V carry relative errors <= 1/254 of each head's max: scores (|q.k| ~ sqrt(d) * scale) move by ~1e-2 and
    # outputs (averages of V rows ~N(0,1)) by a few 1e-3. 2e-2 absolute is comfortably above that and far below
    # what a wrong scale (outputs off by O(1)) or a wrong page would give.
    np.testing.assert_allclose(outs["int8"], outs["float32"], atol=2e-2)
    assert np.abs(outs["int8"] - outs["float32"]).max() > 0  # the int8 path really ran
