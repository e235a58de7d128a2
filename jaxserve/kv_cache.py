"""The paged KV cache: fixed-shape page arrays, written through a slot mapping.

Layout (per K and per V): `[num_layers, num_kv_heads, num_blocks, block_size, head_dim]`. Each layer's slice is
the `[kv_heads, pages, page_size, head_dim]` layout the Pallas paged-attention kernels of jax (TPU and GPU) read, so
kernels can address it without a relayout. Page 0 is reserved: padding tokens write there and no sequence owns it.
The arrays are donated to every jitted step and updated in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import ModelConfig

KVCache = dict[str, jax.Array]  # {"k": pages, "v": pages}

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def kv_bytes_per_token(model: ModelConfig, kv_dtype: str) -> int:
    """Bytes of K and V for one token over all layers: 2 x layers x kv_heads x head_dim x dtype bytes."""
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * _DTYPE_BYTES[kv_dtype]


def num_blocks_for_budget(model: ModelConfig, kv_dtype: str, block_size: int, budget_bytes: int) -> int:
    """How many pages (the reserved one included) fit in `budget_bytes`."""
    return budget_bytes // (kv_bytes_per_token(model, kv_dtype) * block_size)


def allocate_kv_cache(model: ModelConfig, num_blocks: int, block_size: int, kv_dtype: str) -> KVCache:
    """Zero-filled K and V page arrays on the default device."""
    shape = (model.num_layers, model.num_kv_heads, num_blocks, block_size, model.head_dim)
    dtype = jnp.dtype(kv_dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def write_kv(cache: KVCache, layer: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array) -> KVCache:
    """Scatter new K/V `[tokens, kv_heads, head_dim]` of one layer into their slots (in place under donation)."""
    block_size = cache["k"].shape[3]
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    return {
        "k": cache["k"].at[layer, :, blocks, offsets].set(k.astype(cache["k"].dtype)),
        "v": cache["v"].at[layer, :, blocks, offsets].set(v.astype(cache["v"].dtype)),
    }


def gather_pages(cache: KVCache, layer: jax.Array, blocks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """K and V of the pages `blocks` `[tokens, n]` of one layer: each `[tokens, n, kv_heads, block_size, head_dim]`."""
    return cache["k"][layer, :, blocks], cache["v"][layer, :, blocks]


def cache_nbytes(cache: KVCache) -> int:
    """Device bytes held by the page arrays."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in cache.values()))
