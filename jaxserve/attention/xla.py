"""Paged attention in plain jnp: the reference implementation and the CPU path.

One function serves prefill chunks, decode tokens and mixes of both. For each packed token it combines
  1. attention to the step's own new tokens of the same sequence (causal, dense over the bucket), and
  2. attention to the sequence's earlier tokens, read from its pages a chunk of pages at a time,
with an online softmax. The page loop runs `ceil(max context / chunk)` times, a traced trip count, so one compiled
step serves every context length and pages past a sequence's length are never read in bulk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.kv_cache import KVCache, gather_pages

# Pages read per loop iteration are chosen so an iteration covers about this many tokens.
CONTEXT_CHUNK_TOKENS = 256


def context_chunk_blocks(block_size: int) -> int:
    """Pages per iteration of the context loop; block tables are padded to a multiple of it."""
    return max(1, CONTEXT_CHUNK_TOKENS // block_size)


def paged_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    cache: KVCache,
    layer: jax.Array,
    meta: AttentionMetadata,
    positions: jax.Array,
    *,
    scale: float,
    sliding_window: int | None = None,
) -> jax.Array:
    """Attention of packed queries `q [T, Hq, D]` over their sequences' cached pages and new keys `k, v [T, Hkv, D]`.

    Returns `[T, Hq, D]` in q's dtype. The new K/V must already be written to the cache or not: only context
    positions (< context length of the sequence) are read from pages.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    groups = num_heads // num_kv_heads
    block_size = cache["k"].shape[3]
    chunk_blocks = context_chunk_blocks(block_size)
    chunk_tokens = chunk_blocks * block_size

    qg = (q.astype(jnp.float32) * scale).reshape(num_tokens, num_kv_heads, groups, head_dim)
    token_seq = meta.token_to_seq(num_tokens)
    token_idx = jnp.arange(num_tokens)
    valid = token_idx < meta.num_tokens

    # 1. The step's own tokens: same sequence, not in the future, real (padding only ever sees itself).
    scores = jnp.einsum("tkgd,skd->tkgs", qg, k.astype(jnp.float32))
    mask = (token_seq[:, None] == token_seq[None, :]) & (positions[None, :] <= positions[:, None]) & valid[None, :]
    if sliding_window is not None:
        mask &= positions[None, :] > positions[:, None] - sliding_window
    mask |= token_idx[:, None] == token_idx[None, :]
    scores = jnp.where(mask[:, None, None, :], scores, -jnp.inf)
    m = scores.max(axis=-1)
    p = jnp.exp(scores - m[..., None])
    l = p.sum(axis=-1)
    acc = jnp.einsum("tkgs,skd->tkgd", p, v.astype(jnp.float32))

    # 2. Earlier tokens from the pages, chunk by chunk.
    context_lens = jnp.where(valid, meta.context_lens[token_seq], 0)
    num_chunks = (context_lens.max() + chunk_tokens - 1) // chunk_tokens
    offsets = jnp.arange(chunk_tokens).reshape(chunk_blocks, block_size)

    def read_chunk(j, state):
        m, l, acc = state
        table = jax.lax.dynamic_slice_in_dim(meta.block_tables, j * chunk_blocks, chunk_blocks, axis=1)
        k_pages, v_pages = gather_pages(cache, layer, table[token_seq])  # [T, C, Hkv, B, D]
        s = jnp.einsum("tkgd,tckbd->tkgcb", qg, k_pages.astype(jnp.float32))
        key_pos = j * chunk_tokens + offsets  # [C, B]
        ok = key_pos[None] < context_lens[:, None, None]
        if sliding_window is not None:
            ok &= key_pos[None] > positions[:, None, None] - sliding_window
        s = jnp.where(ok[:, None, None], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=(-2, -1)))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None, None])
        l = l * correction + p.sum(axis=(-2, -1))
        acc = acc * correction[..., None] + jnp.einsum("tkgcb,tckbd->tkgd", p, v_pages.astype(jnp.float32))
        return m_new, l, acc

    m, l, acc = jax.lax.fori_loop(0, num_chunks, read_chunk, (m, l, acc))
    out = acc / l[..., None]
    return out.reshape(num_tokens, num_heads, head_dim).astype(q.dtype)
