"""Pure-jnp references for the paged attention kernels, with the kernels' signatures.

They gather every page of every sequence and run a plain masked softmax in float32: slow and memory-hungry, but
obviously right. Tests compare the kernels (interpret mode) against them; nothing in the engine calls them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _dequantize(pages: jax.Array, scales: jax.Array | None) -> jax.Array:
    pages = pages.astype(jnp.float32)
    return pages if scales is None else pages * scales[..., None].astype(jnp.float32)


def _masked_softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [N, Hkv, G, D], k/v [Hkv, N, S, D], mask [N, S] -> [N, Hkv, G, D]; rows with no key give zeros."""
    scores = jnp.einsum("nkgd,knsd->nkgs", q, k)
    scores = jnp.where(mask[:, None, None, :], scores, -jnp.inf)
    m = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.where(mask[:, None, None, :], jnp.exp(scores - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    l = p.sum(axis=-1, keepdims=True)
    out = jnp.einsum("nkgs,knsd->nkgd", p, v)
    return jnp.where(l > 0, out / jnp.where(l > 0, l, 1.0), 0.0)


def _gather(pages: jax.Array, scales: jax.Array | None, tables: jax.Array) -> jax.Array:
    """Pages [Hkv, NB, BS, D] of each row of `tables` [N, M] -> [Hkv, N, M * BS, D] float32."""
    gathered = _dequantize(pages, scales)[:, tables]  # [Hkv, N, M, BS, D]
    hkv, n, m, bs, d = gathered.shape
    return gathered.reshape(hkv, n, m * bs, d)


def paged_decode_attention(q, k_pages, v_pages, lengths, block_tables, *, scale, k_scales=None, v_scales=None,
                           pages_per_compute_block=None, interpret=False, **_):
    """One query token per sequence: `q [B, Hq, D]` attends to the first `lengths[b]` tokens of its pages."""
    del pages_per_compute_block, interpret
    b, hq, d = q.shape
    hkv = k_pages.shape[0]
    qh = q.astype(jnp.float32).reshape(b, hkv, hq // hkv, d) * scale
    k = _gather(k_pages, k_scales, block_tables)
    v = _gather(v_pages, v_scales, block_tables)
    mask = jnp.arange(k.shape[2])[None, :] < lengths[:, None]
    return _masked_softmax_attention(qh, k, v, mask).reshape(b, hq, d).astype(q.dtype)


def ragged_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs, *, scale,
                           k_scales=None, v_scales=None, interpret=False, **_):
    """Causal attention of packed query chunks `q [T, Hq, D]` over their sequences' pages.

    Query token i of sequence s sits at position `seq_lens[s] - query_len[s] + i` and attends to every position
    up to its own. Tokens past `query_start_loc[num_seqs]` are padding and get zeros.
    """
    del interpret
    t, hq, d = q.shape
    hkv = k_pages.shape[0]
    num_seqs = jnp.reshape(num_seqs, ())
    tok = jnp.arange(t)
    seq = jnp.clip(jnp.searchsorted(query_start_loc[1:], tok, side="right"), 0, block_tables.shape[0] - 1)
    query_lens = query_start_loc[1:] - query_start_loc[:-1]
    pos = seq_lens[seq] - query_lens[seq] + tok - query_start_loc[seq]
    valid = tok < query_start_loc[num_seqs]
    k = _gather(k_pages, k_scales, block_tables[seq])
    v = _gather(v_pages, v_scales, block_tables[seq])
    mask = (jnp.arange(k.shape[2])[None, :] <= pos[:, None]) & valid[:, None]
    qh = q.astype(jnp.float32).reshape(t, hkv, hq // hkv, d) * scale
    return _masked_softmax_attention(qh, k, v, mask).reshape(t, hq, d).astype(q.dtype)
