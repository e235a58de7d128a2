"""Paged attention in plain jnp: the reference implementation and the CPU path.

One function serves prefill chunks, decode tokens and mixes of both. For each packed token it combines
  1. attention to the step's own new tokens of the same sequence (causal, dense over the bucket), and
  2. attention to the sequence's earlier tokens, read from its pages a chunk of pages at a time,
with an online softmax. Page loops have traced trip counts, so one compiled step serves every context length.

Earlier pages are read one of two ways, chosen on device per step:
  - decode steps (one token per sequence): each token gathers its own sequence's pages;
  - prefill steps: the loop runs over the sequences that have earlier pages (usually one continuing a chunked
    prompt) and reads each sequence's pages once for all of its tokens. Gathering per token here would copy the
    same pages once per prompt token.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.kv_cache import KVCache, gather_pages

# Pages read per loop iteration are chosen so an iteration covers about this many tokens. Every token of a step
# runs as many iterations as the longest context, so short chunks waste less on mixed lengths; on a 2-core CPU
# the offline benchmark ran at 62 (256), 74 (128), 88 (64) and 79 (32) output tokens/s.
CONTEXT_CHUNK_TOKENS = 64

State = tuple[jax.Array, jax.Array, jax.Array]  # running max, normaliser, accumulator, head-major [Hkv, T, G(, D)]


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

    Returns `[T, Hq, D]` in q's dtype. Only context positions (< the sequence's context length) are read from
    pages, so it does not matter whether this step's K/V were written to the cache before the call.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    qh = (q.astype(jnp.float32) * scale).reshape(num_tokens, num_kv_heads, num_heads // num_kv_heads, head_dim)
    qh = qh.transpose(1, 0, 2, 3)  # [Hkv, T, G, D]
    token_seq = meta.token_to_seq(num_tokens)
    valid = jnp.arange(num_tokens) < meta.num_tokens

    def window_ok(key_pos: jax.Array) -> jax.Array | bool:
        """Sliding-window mask for keys at `key_pos` (broadcast against [T, keys])."""
        return True if sliding_window is None else key_pos > positions[:, None] - sliding_window

    state = _attend_new_tokens(qh, k, v, token_seq, positions, valid, window_ok)
    context_lens = jnp.where(valid, meta.context_lens[token_seq], 0)
    args = (qh, cache, layer, meta, token_seq, context_lens, window_ok)
    state = jax.lax.cond(_read_per_token(meta, cache), lambda s: _context_per_token(s, *args),
                         lambda s: _context_per_sequence(s, *args), state)
    m, l, acc = state
    out = (acc / l[..., None]).transpose(1, 0, 2, 3)
    return out.reshape(num_tokens, num_heads, head_dim).astype(q.dtype)


# A per-token iteration gathers pages for every token of the step as well as scoring them; a per-sequence one
# gathers one sequence's pages once. Gathering a key costs about as much as scoring it against the step's tokens.
PER_TOKEN_ITERATION_COST = 2


def _read_per_token(meta: AttentionMetadata, cache: KVCache) -> jax.Array:
    """Whether reading earlier pages per token beats reading them per sequence for this step (on device).

    Per token, the loop runs as many iterations as the longest context needs; per sequence, one per chunk of every
    sequence's context. Decode steps and mixed steps (many short-query sequences with context beside a prompt chunk,
    or many prompts continuing from cached prefixes) read per token; a long prompt continuing alone reads per
    sequence, where gathering its pages once for every token avoids copying them once per token.
    """
    _, chunk_tokens = _chunk_geometry(cache)
    chunks = (meta.context_lens + chunk_tokens - 1) // chunk_tokens
    is_decode = jnp.max(meta.query_lens) <= 1
    return is_decode | (PER_TOKEN_ITERATION_COST * jnp.max(chunks) < jnp.sum(chunks))


def _attend_new_tokens(qh, k, v, token_seq, positions, valid, window_ok) -> State:
    """Causal attention among the step's own tokens of each sequence (padding tokens only see themselves)."""
    idx = jnp.arange(qh.shape[1])
    mask = (token_seq[:, None] == token_seq[None, :]) & (positions[None, :] <= positions[:, None]) & valid[None, :]
    mask = (mask & window_ok(positions[None, :])) | (idx[:, None] == idx[None, :])
    scores = jnp.einsum("ktgd,skd->ktgs", qh, k.astype(jnp.float32))
    scores = jnp.where(mask[None, :, None, :], scores, -jnp.inf)
    m = scores.max(axis=-1)
    p = jnp.exp(scores - m[..., None])
    return m, p.sum(axis=-1), jnp.einsum("ktgs,skd->ktgd", p, v.astype(jnp.float32))


def _online_softmax_update(state: State, scores: jax.Array, values: jax.Array, values_spec: str) -> State:
    """Fold a block of masked `scores [Hkv, T, G, S]` and its values into the running softmax."""
    m, l, acc = state
    m_new = jnp.maximum(m, scores.max(axis=-1))
    correction = jnp.exp(m - m_new)
    p = jnp.exp(scores - m_new[..., None])
    acc = acc * correction[..., None] + jnp.einsum(f"ktgs,{values_spec}->ktgd", p, values,
                                                   preferred_element_type=jnp.float32)
    return m_new, l * correction + p.sum(axis=-1), acc


def _chunk_geometry(cache: KVCache) -> tuple[int, int]:
    block_size = cache["k"].shape[3]
    chunk_blocks = context_chunk_blocks(block_size)
    return chunk_blocks, chunk_blocks * block_size


def _context_per_token(state: State, qh, cache, layer, meta, token_seq, context_lens, window_ok) -> State:
    """Each token reads its own sequence's pages (decode: one token per sequence)."""
    num_kv_heads, num_tokens, _, head_dim = qh.shape
    chunk_blocks, chunk_tokens = _chunk_geometry(cache)

    def read_chunk(j, state):
        table = jax.lax.dynamic_slice_in_dim(meta.block_tables, j * chunk_blocks, chunk_blocks, axis=1)
        k_pages, v_pages = gather_pages(cache, layer, table[token_seq])  # [Hkv, T, C, B, D]
        k_pages = k_pages.reshape(num_kv_heads, num_tokens, chunk_tokens, head_dim)
        v_pages = v_pages.reshape(num_kv_heads, num_tokens, chunk_tokens, head_dim)
        scores = jnp.einsum("ktgd,ktsd->ktgs", qh, k_pages, preferred_element_type=jnp.float32)
        key_pos = j * chunk_tokens + jnp.arange(chunk_tokens)
        ok = (key_pos[None, :] < context_lens[:, None]) & window_ok(key_pos[None, :])  # [T, S]
        scores = jnp.where(ok[None, :, None, :], scores, -jnp.inf)
        return _online_softmax_update(state, scores, v_pages, "ktsd")

    num_chunks = (context_lens.max() + chunk_tokens - 1) // chunk_tokens
    return jax.lax.fori_loop(0, num_chunks, read_chunk, state)


def _context_per_sequence(state: State, qh, cache, layer, meta, token_seq, context_lens, window_ok) -> State:
    """Each sequence with earlier pages reads them once, for all of its tokens (prefill)."""
    num_kv_heads, num_tokens, _, head_dim = qh.shape
    chunk_blocks, chunk_tokens = _chunk_geometry(cache)
    seq_context = meta.context_lens

    def read_sequence(row, state):
        def read_chunk(j, state):
            table = jax.lax.dynamic_slice(meta.block_tables, (row, j * chunk_blocks), (1, chunk_blocks))
            k_pages, v_pages = gather_pages(cache, layer, table)  # [Hkv, 1, C, B, D]
            k_pages = k_pages.reshape(num_kv_heads, chunk_tokens, head_dim)
            v_pages = v_pages.reshape(num_kv_heads, chunk_tokens, head_dim)
            scores = jnp.einsum("ktgd,ksd->ktgs", qh, k_pages, preferred_element_type=jnp.float32)
            key_pos = j * chunk_tokens + jnp.arange(chunk_tokens)
            ok = (token_seq[:, None] == row) & (key_pos[None, :] < context_lens[:, None]) & window_ok(key_pos[None])
            scores = jnp.where(ok[None, :, None, :], scores, -jnp.inf)
            return _online_softmax_update(state, scores, v_pages, "ksd")

        num_chunks = (seq_context[row] + chunk_tokens - 1) // chunk_tokens
        return jax.lax.fori_loop(0, num_chunks, read_chunk, state)

    num_rows = jnp.sum(meta.query_lens > 0)
    return jax.lax.fori_loop(0, num_rows, read_sequence, state)
