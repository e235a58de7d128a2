"""Whole KV pages on the device, for every array of the cache (K, V and any scales): copy-on-write within a pool,
and the take / put halves that move pages between pools (engine/kv_transfer.py)."""

from __future__ import annotations

import jax

from jaxserve.kv_cache import KVCache

PAGE_AXIS = 2  # every cache array is [layers, kv_heads, pages, ...]
_INDEX = (slice(None),) * PAGE_AXIS


def take_pages(cache: KVCache, pages: jax.Array) -> KVCache:
    """The pages `pages` of every cache array: `[layers, kv_heads, len(pages), ...]`."""
    return {name: array[_INDEX + (pages,)] for name, array in cache.items()}


def put_pages(cache: KVCache, pages: jax.Array, values: KVCache) -> KVCache:
    """Write `values` (as from `take_pages`) into the pages `pages` of `cache` (jit with the cache donated)."""
    return {name: array.at[_INDEX + (pages,)].set(values[name]) for name, array in cache.items()}


def copy_pages(cache: KVCache, pairs: jax.Array) -> KVCache:
    """Copy page `pairs[i, 0]` onto page `pairs[i, 1]` in every cache array (jit with the cache donated).

    All sources are read before any destination is written, so a page freed and reused within one step is
    copied from its old content. Padding pairs are (0, 0): the reserved page onto itself.
    """
    return put_pages(cache, pairs[:, 1], take_pages(cache, pairs[:, 0]))
