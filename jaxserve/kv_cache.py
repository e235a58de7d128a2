"""The paged KV cache: fixed-shape page arrays, written through a slot mapping.

Layout (per K and per V): `[num_layers, num_kv_heads, num_blocks, block_size, head_dim]`. Each layer's slice is
the `[kv_heads, pages, page_size, head_dim]` layout the Pallas paged-attention kernels of jax (TPU and GPU) read, so
kernels can address it without a relayout. Page 0 is reserved: padding tokens write there and no sequence owns it.
The arrays are donated to every jitted step and updated in place.

int8 pages (`kv_dtype="int8"`) add per-token, per-head symmetric scales, `"k_scale"` and `"v_scale"` of shape
`[num_layers, num_kv_heads, num_blocks, block_size]` float32, so that K = k_int8 * k_scale. Every array of the cache
dict has the page axis at axis 2 (copy-on-write copies pages generically along it). K/V are quantized on write and
dequantized on read (`gather_pages`); the Pallas kernels accept the same per-layer slices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.config import ModelConfig

KVCache = dict[str, jax.Array]  # {"k": pages, "v": pages} (+ "k_scale", "v_scale" for int8 pages)

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}
_SCALE_BYTES = 4  # one float32 scale per token, head and K/V for int8 pages
INT8_MAX = 127.0


def kv_bytes_per_token(model: ModelConfig, kv_dtype: str, head_dim: int | None = None) -> int:
    """Bytes of K and V for one token over all layers: 2 x layers x kv_heads x (head_dim x dtype bytes + scale
    bytes for int8). `head_dim` is the pages' (padded for some attention backends, see `allocate_kv_cache`);
    default the model's."""
    head_dim = model.head_dim if head_dim is None else head_dim
    per_head = head_dim * _DTYPE_BYTES[kv_dtype] + (_SCALE_BYTES if kv_dtype == "int8" else 0)
    return 2 * model.num_layers * model.num_kv_heads * per_head


def num_blocks_for_budget(model: ModelConfig, kv_dtype: str, block_size: int, budget_bytes: int) -> int:
    """How many pages (the reserved one included) fit in `budget_bytes`."""
    return budget_bytes // (kv_bytes_per_token(model, kv_dtype) * block_size)


def storage_dtype(kv_dtype: str, platform: str | None = None) -> jnp.dtype:
    """The dtype the page arrays are held in.

    On CPU, bfloat16 pages are held as their uint16 bit patterns: XLA:CPU lowers a bfloat16 scatter through a
    float32 copy of the whole operand, which made every decode step rewrite the entire pool (1.3 s per step for
    SmolLM2 with 400 pages, against ~20 ms for the in-place integer scatter). Bitcasts are free.
    """
    platform = platform or jax.default_backend()
    if kv_dtype == "bfloat16" and platform == "cpu":
        return jnp.dtype(jnp.uint16)
    return jnp.dtype(kv_dtype)


def _logical(pages: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(pages, jnp.bfloat16) if pages.dtype == jnp.uint16 else pages


def _stored(values: jax.Array, storage: jnp.dtype) -> jax.Array:
    if storage == jnp.uint16:
        return jax.lax.bitcast_convert_type(values.astype(jnp.bfloat16), jnp.uint16)
    return values.astype(storage)


def allocate_kv_cache(model: ModelConfig, num_blocks: int, block_size: int, kv_dtype: str,
                      sharding: jax.sharding.Sharding | None = None, head_dim: int | None = None) -> KVCache:
    """Zero-filled K and V page arrays, on the default device or created in place with `sharding` (every
    device then allocates only its own part, e.g. its KV heads under tensor parallelism).

    `head_dim` (default the model's) may be larger than the model's: the Pallas kernels want some head dims
    stored padded (`attention.dispatch.page_head_dim`); `write_kv` then writes zeros in the extra columns.
    """
    head_dim = model.head_dim if head_dim is None else head_dim
    if head_dim < model.head_dim:
        raise ValueError(f"page head_dim {head_dim} is smaller than the model's {model.head_dim}")
    shape = (model.num_layers, model.num_kv_heads, num_blocks, block_size, head_dim)
    dtype = storage_dtype(kv_dtype, None if sharding is None else next(iter(sharding.device_set)).platform)

    def zeros() -> KVCache:
        cache = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        if kv_dtype == "int8":
            cache["k_scale"] = jnp.zeros(shape[:-1], jnp.float32)
            cache["v_scale"] = jnp.zeros(shape[:-1], jnp.float32)
        return cache

    return zeros() if sharding is None else jax.jit(zeros, out_shardings=sharding)()


def quantize_kv(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 per token and head: `x [tokens, heads, head_dim]` -> (int8 values, float32 scales
    `[tokens, heads]`) with x ~= values * scales."""
    x = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x), axis=-1) / INT8_MAX
    safe = jnp.where(scale == 0, 1.0, scale)
    values = jnp.clip(jnp.round(x / safe[..., None]), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return values, scale


def write_kv(cache: KVCache, layer: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array) -> KVCache:
    """Scatter new K/V `[tokens, kv_heads, head_dim]` of one layer into their slots (in place under donation).

    Pages with a larger (padded) head dim get zeros in the extra columns (quantization scales are computed on the
    real columns, which the zeros do not change)."""
    block_size, page_dim = cache["k"].shape[3], cache["k"].shape[-1]
    if k.shape[-1] < page_dim:
        pad = ((0, 0), (0, 0), (0, page_dim - k.shape[-1]))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    blocks, offsets = slot_mapping // block_size, slot_mapping % block_size
    if "k_scale" in cache:
        (kq, ks), (vq, vs) = quantize_kv(k), quantize_kv(v)
        return {
            "k": cache["k"].at[layer, :, blocks, offsets].set(kq),
            "v": cache["v"].at[layer, :, blocks, offsets].set(vq),
            "k_scale": cache["k_scale"].at[layer, :, blocks, offsets].set(ks),
            "v_scale": cache["v_scale"].at[layer, :, blocks, offsets].set(vs),
        }
    return {
        "k": cache["k"].at[layer, :, blocks, offsets].set(_stored(k, cache["k"].dtype)),
        "v": cache["v"].at[layer, :, blocks, offsets].set(_stored(v, cache["v"].dtype)),
    }


def gather_pages(cache: KVCache, layer: jax.Array, blocks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """K and V of the pages `blocks` `[tokens, n]` of one layer, each `[kv_heads, tokens, n, block_size, head_dim]`.

    Heads come first so attention's batched dots (batch = head, token) read the gathered pages without a
    transpose; one gather over (layer, page) avoids slicing out the layer first. int8 pages come back dequantized
    as float32 (values x per-token scales: the multiply fuses into the gather's consumer).
    """
    num_layers, num_kv_heads, _, block_size, head_dim = cache["k"].shape
    index = jnp.stack([jnp.broadcast_to(layer, blocks.shape), blocks], axis=-1)  # [tokens, n, 2]
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(0, 3, 4), collapsed_slice_dims=(0, 2),
                                          start_index_map=(0, 2))
    sizes = (1, num_kv_heads, 1, block_size, head_dim)
    gather = functools.partial(jax.lax.gather, start_indices=index, dimension_numbers=dims, slice_sizes=sizes,
                               mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    if "k_scale" not in cache:
        return _logical(gather(cache["k"])), _logical(gather(cache["v"]))
    scale_dims = jax.lax.GatherDimensionNumbers(offset_dims=(0, 3), collapsed_slice_dims=(0, 2),
                                                start_index_map=(0, 2))
    gather_scale = functools.partial(jax.lax.gather, start_indices=index, dimension_numbers=scale_dims,
                                     slice_sizes=sizes[:-1], mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return tuple(gather(cache[name]).astype(jnp.float32) * gather_scale(cache[f"{name}_scale"])[..., None]
                 for name in ("k", "v"))


def cache_nbytes(cache: KVCache) -> int:
    """Device bytes held by the page arrays."""
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in cache.values()))
