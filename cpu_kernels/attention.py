"""`paged_attention`: packed queries over paged K/V on the CPU, read in place through block tables; and its reference.

One call serves prefill chunks, decode tokens and mixed steps. Token t (sequence `token_seq[t]`, position
`positions[t]`) attends to its sequence's keys at positions <= its own (and inside the sliding window, if any):
positions below the sequence's `context_lens` come from its pages, later ones from this step's `k_new` / `v_new`
(the sequence's rows start at `query_start_loc`). Tokens at or past `num_tokens` are padding and get zeros.
"""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp

from .build import load


def paged_attention(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                    k_scale: jax.Array | None, v_scale: jax.Array | None, layer: jax.Array | int,
                    block_tables: jax.Array, context_lens: jax.Array, query_start_loc: jax.Array,
                    token_seq: jax.Array, positions: jax.Array, num_tokens: jax.Array | int, *, scale: float,
                    sliding_window: int | None = None) -> jax.Array:
    """float32 attention output `[T, Hq, D]`.

    `q [T, Hq, D]`, `k_new, v_new [T, Hkv, D]`; pages `[L, Hkv, blocks, block_size, D]` float32, bfloat16 (or its
    uint16 bits) or int8 with `k_scale, v_scale [L, Hkv, blocks, block_size]`; `block_tables [S, W]`,
    `context_lens [S]`, `query_start_loc [S + 1]`, `token_seq, positions [T]` int32.
    """
    load()
    empty = jnp.zeros((1,), jnp.float32)
    i32 = lambda a: jnp.asarray(a, jnp.int32)  # noqa: E731
    call = jax.ffi.ffi_call("cpuk_paged_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32))
    return call(q.astype(jnp.float32), k_new.astype(jnp.float32), v_new.astype(jnp.float32), k_pages, v_pages,
                empty if k_scale is None else k_scale, empty if v_scale is None else v_scale, i32(layer),
                i32(block_tables), i32(context_lens), i32(query_start_loc), i32(token_seq), i32(positions),
                i32(num_tokens), scale=np.float32(scale), sliding_window=np.int64(sliding_window or 0))


def _as_float(pages: jax.Array, scales: jax.Array | None) -> jax.Array:
    if pages.dtype == jnp.uint16:
        pages = jax.lax.bitcast_convert_type(pages, jnp.bfloat16)
    pages = pages.astype(jnp.float32)
    return pages if scales is None else pages * scales[..., None]


def paged_attention_reference(q, k_new, v_new, k_pages, v_pages, k_scale, v_scale, layer, block_tables,
                              context_lens, query_start_loc, token_seq, positions, num_tokens, *, scale,
                              sliding_window=None) -> jax.Array:
    """`paged_attention` in plain jnp: every token gathers its sequence's whole table and runs a masked softmax."""
    num_tokens_all, num_heads, head_dim = q.shape
    num_kv = k_new.shape[1]
    group = num_heads // num_kv
    kp = _as_float(k_pages[layer], None if k_scale is None else k_scale[layer])  # [Hkv, NB, B, D]
    vp = _as_float(v_pages[layer], None if v_scale is None else v_scale[layer])
    block_size = kp.shape[2]
    tables = block_tables[token_seq]  # [T, W]
    k_ctx = kp[:, tables].reshape(num_kv, num_tokens_all, -1, head_dim)  # [Hkv, T, W*B, D]
    v_ctx = vp[:, tables].reshape(num_kv, num_tokens_all, -1, head_dim)
    ctx_pos = jnp.arange(k_ctx.shape[2])
    ctx = context_lens[token_seq]
    low = positions - sliding_window + 1 if sliding_window else jnp.zeros_like(positions)
    ctx_ok = (ctx_pos[None, :] < ctx[:, None]) & (ctx_pos[None, :] >= low[:, None])  # [T, W*B]
    # This step's keys: same sequence, at or before the query, not already in the pages.
    valid = jnp.arange(num_tokens_all) < num_tokens
    key_pos = positions[None, :]
    new_ok = ((token_seq[:, None] == token_seq[None, :]) & (key_pos <= positions[:, None]) & valid[None, :]
              & (key_pos >= ctx[:, None]) & (key_pos >= low[:, None]))  # [T, T]
    qh = (q.astype(jnp.float32) * scale).reshape(num_tokens_all, num_kv, group, head_dim)
    s_ctx = jnp.einsum("tkgd,ktsd->tkgs", qh, k_ctx, precision="highest")
    s_new = jnp.einsum("tkgd,ukd->tkgu", qh, k_new.astype(jnp.float32), precision="highest")
    s_ctx = jnp.where(ctx_ok[:, None, None, :], s_ctx, -jnp.inf)
    s_new = jnp.where(new_ok[:, None, None, :], s_new, -jnp.inf)
    p = jax.nn.softmax(jnp.concatenate([s_ctx, s_new], axis=-1), axis=-1)
    out = (jnp.einsum("tkgs,ktsd->tkgd", p[..., :s_ctx.shape[-1]], v_ctx, precision="highest")
           + jnp.einsum("tkgu,ukd->tkgd", p[..., s_ctx.shape[-1]:], v_new.astype(jnp.float32), precision="highest"))
    out = out.reshape(num_tokens_all, num_heads, head_dim)
    return jnp.where(valid[:, None, None], out, 0.0)
