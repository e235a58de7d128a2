"""The engine adapter (attention/pallas.py) on engine-shaped inputs: uint16-stored bfloat16 pages, int8 pages with
scales, decode steps and mixed steps, against the XLA path and the references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import assert_close

from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.attention.pallas import make_pallas_attention
from jaxserve.attention.xla import paged_attention as xla_paged_attention
from pallas_kernels import reference

LAYERS, KV_HEADS, GROUPS, HEAD_DIM, BLOCK, PAGES, WIDTH, ROWS = 2, 2, 3, 64, 16, 24, 4, 4
SCALE = HEAD_DIM ** -0.5


def _step(new: list[int], context: list[int], tokens: int, seed: int = 0):
    """Metadata of one engine step: `new[s]` new tokens after `context[s]` cached ones, padded to `tokens`."""
    rng = np.random.default_rng(seed)
    num = len(new)
    lens = np.zeros(ROWS, np.int32)
    lens[:num] = np.add(new, context)
    qsl = np.full(ROWS + 1, sum(new), np.int32)
    qsl[:num + 1] = np.concatenate([[0], np.cumsum(new)])
    tables = np.zeros((ROWS, WIDTH), np.int32)
    tables[:num] = rng.permutation(np.arange(1, PAGES))[:num * WIDTH].reshape(num, WIDTH)
    positions = np.zeros(tokens, np.int32)
    for s in range(num):
        positions[qsl[s]:qsl[s + 1]] = context[s] + np.arange(new[s])
    meta = AttentionMetadata(jnp.zeros(tokens, jnp.int32), jnp.asarray(tables), jnp.asarray(lens), jnp.asarray(qsl))
    return meta, jnp.asarray(positions)


STEPS = {"decode": ([1, 1, 1], [0, 15, 40]), "mixed": ([5, 1, 20], [16, 31, 3])}


@pytest.mark.parametrize("step", ["mixed", pytest.param("decode", marks=pytest.mark.slow)])
def test_adapter_bf16_pages_stored_as_uint16_match_xla(step: str) -> None:
    new, context = STEPS[step]
    tokens = 32
    meta, positions = _step(new, context, tokens)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    shape = (LAYERS, KV_HEADS, PAGES, BLOCK, HEAD_DIM)
    k_bf16 = jax.random.normal(keys[0], shape).astype(jnp.bfloat16)
    v_bf16 = jax.random.normal(keys[1], shape).astype(jnp.bfloat16)
    cache = {"k": jax.lax.bitcast_convert_type(k_bf16, jnp.uint16),
             "v": jax.lax.bitcast_convert_type(v_bf16, jnp.uint16)}
    q = jax.random.normal(keys[2], (tokens, KV_HEADS * GROUPS, HEAD_DIM)).astype(jnp.bfloat16)
    # The step's own K/V as the model would pass them (already written to the pages, read back from them here).
    blocks = meta.block_tables[meta.token_to_seq(tokens), positions // BLOCK]
    k_new = k_bf16[1, :, blocks, positions % BLOCK]  # [T, Hkv, D]
    v_new = v_bf16[1, :, blocks, positions % BLOCK]  # [T, Hkv, D]
    args = (q, k_new, v_new, cache, jnp.int32(1), meta, positions)
    out = make_pallas_attention("tpu", interpret=True)(*args, scale=SCALE)
    ref = xla_paged_attention(*args, scale=SCALE)
    real = int(meta.num_tokens)
    assert_close(out[:real], ref[:real], "bfloat16")


@pytest.mark.parametrize("step", ["decode", pytest.param("mixed", marks=pytest.mark.slow)])
def test_adapter_int8_pages_with_scales_match_reference(step: str) -> None:
    new, context = STEPS[step]
    tokens = 32
    meta, positions = _step(new, context, tokens, seed=2)
    rng = np.random.default_rng(3)
    shape = (LAYERS, KV_HEADS, PAGES, BLOCK, HEAD_DIM)
    cache = {"k": jnp.asarray(rng.integers(-127, 128, shape), jnp.int8),
             "v": jnp.asarray(rng.integers(-127, 128, shape), jnp.int8),
             "k_scale": jnp.asarray(rng.uniform(0.002, 0.02, shape[:-1]), jnp.float32),
             "v_scale": jnp.asarray(rng.uniform(0.002, 0.02, shape[:-1]), jnp.float32)}
    q = jnp.asarray(rng.standard_normal((tokens, KV_HEADS * GROUPS, HEAD_DIM)), jnp.float32)
    unused = jnp.zeros((tokens, KV_HEADS, HEAD_DIM), jnp.float32)
    out = make_pallas_attention("gpu", interpret=True)(q, unused, unused, cache, jnp.int32(0), meta, positions,
                                                       scale=SCALE)
    ref = reference.ragged_paged_attention(q, cache["k"][0], cache["v"][0], meta.block_tables, meta.seq_lens,
                                           meta.query_start_loc, ROWS, scale=SCALE, k_scales=cache["k_scale"][0],
                                           v_scales=cache["v_scale"][0])
    assert_close(out, ref, "int8")
