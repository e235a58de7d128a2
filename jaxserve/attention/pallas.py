"""The engine's attention call adapted to the Pallas kernels (`pallas_kernels`), which know nothing of models.

The model writes each step's K/V into the pages before calling attention, so the kernels read every key from the
pages and the step's `k`, `v` and `positions` are not needed (positions follow from `seq_lens` and
`query_start_loc`). Decode steps (every sequence has at most one new token) run the decode kernel, anything else
the ragged kernel; the choice is a `lax.cond` on device, as in `attention/xla.py`. The whole cache goes to the
kernels with the layer index, so no layer slice is copied out per call. Pages may hold a padded head dim
(`attention.dispatch.page_head_dim`); the kernels pad q and return the model's head dim.

In a decode step the real sequences are packed first with one token each, so token i belongs to table row i: the
decode kernel runs on the first min(T, S) rows with the block tables as they are (no `[T, M]` gather of table
rows per layer) and the result is padded back to the T tokens of the bucket.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

import pallas_kernels
from jaxserve.attention.metadata import AttentionMetadata

KVCache = dict[str, jax.Array]


def logical_pages(pages: jax.Array) -> jax.Array:
    """Pages in their logical dtype: on CPU, bfloat16 pages are stored as uint16 bit patterns (see kv_cache.py)."""
    return jax.lax.bitcast_convert_type(pages, jnp.bfloat16) if pages.dtype == jnp.uint16 else pages


def make_pallas_attention(kernel_backend: str, interpret: bool = False, **kernel_options) -> Callable:
    """An attention function with the engine's signature (`attention.xla.paged_attention`) running the kernels.

    `kernel_backend` is "tpu" or "gpu"; `interpret` runs them in Pallas interpret mode (CPU, tests).
    `kernel_options` (e.g. `pages_per_compute_block`) go to both kernels.
    """

    def paged_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: KVCache, layer: jax.Array,
                        meta: AttentionMetadata, positions: jax.Array, *, scale: float,
                        sliding_window: int | None = None) -> jax.Array:
        """Attention of packed queries `q [T, Hq, D]` over their sequences' pages (this step's K/V included)."""
        del k, v, positions
        if sliding_window is not None:
            raise ValueError("the Pallas kernels do not implement sliding-window attention; "
                             "attention.dispatch falls back to the XLA path for such models")
        k_pages, v_pages = logical_pages(cache["k"]), logical_pages(cache["v"])
        quantized = k_pages.dtype == jnp.int8
        q_in = q if quantized else q.astype(k_pages.dtype)
        # The kernels return q's head dim; the model reads [T, Hq, head_dim] whatever the pages hold.
        pages = dict(k_scales=cache.get("k_scale"), v_scales=cache.get("v_scale"), layer=layer, scale=scale,
                     backend=kernel_backend, interpret=interpret, **kernel_options)
        num_tokens = q.shape[0]

        def decode(q_in):
            rows = min(num_tokens, meta.seq_lens.shape[0])
            # Rows without a token this step (padding rows: query length 0) get length 0, hence zeros.
            lengths = jnp.where(meta.query_lens[:rows] > 0, meta.seq_lens[:rows], 0)
            tables = meta.block_tables if rows == meta.block_tables.shape[0] else meta.block_tables[:rows]
            out = pallas_kernels.paged_decode_attention(q_in[:rows], k_pages, v_pages, lengths, tables, **pages)
            return jnp.pad(out, ((0, num_tokens - rows), (0, 0), (0, 0))) if rows < num_tokens else out

        def ragged(q_in):
            num_seqs = jnp.asarray(meta.seq_lens.shape[0], jnp.int32)
            return pallas_kernels.ragged_paged_attention(q_in, k_pages, v_pages, meta.block_tables, meta.seq_lens,
                                                         meta.query_start_loc, num_seqs, **pages)

        out = jax.lax.cond(jnp.max(meta.query_lens) <= 1, decode, ragged, q_in)
        return out.astype(q.dtype)

    return paged_attention
