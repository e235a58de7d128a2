"""Paged attention through the native CPU kernel (`cpu_kernels.paged_attention`), with the XLA path's signature.

The kernel reads every key from its page in place (the XLA path gathers pages into a copy first) and takes this
step's new K/V exactly as computed, so its outputs match the XLA path to float32 rounding.
"""

from __future__ import annotations

import jax

import cpu_kernels
from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.kv_cache import KVCache


def paged_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: KVCache, layer: jax.Array,
                    meta: AttentionMetadata, positions: jax.Array, *, scale: float,
                    sliding_window: int | None = None) -> jax.Array:
    """Attention of packed queries `q [T, Hq, D]` over their sequences' pages and this step's `k, v [T, Hkv, D]`."""
    out = cpu_kernels.paged_attention(
        q, k, v, cache["k"], cache["v"], cache.get("k_scale"), cache.get("v_scale"), layer, meta.block_tables,
        meta.context_lens, meta.query_start_loc, meta.token_to_seq(q.shape[0]), positions, meta.num_tokens,
        scale=scale, sliding_window=sliding_window)
    return out.astype(q.dtype)
