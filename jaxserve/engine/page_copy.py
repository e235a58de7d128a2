"""Copy-on-write on the device: copy whole KV pages, for every array of the cache (K, V and any scales)."""

from __future__ import annotations

import jax

from jaxserve.kv_cache import KVCache

PAGE_AXIS = 2  # every cache array is [layers, kv_heads, pages, ...]


def copy_pages(cache: KVCache, pairs: jax.Array) -> KVCache:
    """Copy page `pairs[i, 0]` onto page `pairs[i, 1]` in every cache array (jit with the cache donated).

    All sources are read before any destination is written, so a page freed and reused within one step is
    copied from its old content. Padding pairs are (0, 0): the reserved page onto itself.
    """
    src, dst = pairs[:, 0], pairs[:, 1]

    def copy(pages: jax.Array) -> jax.Array:
        index = (slice(None),) * PAGE_AXIS
        return pages.at[index + (dst,)].set(pages[index + (src,)])

    return jax.tree_util.tree_map(copy, cache)
