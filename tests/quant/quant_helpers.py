"""Helpers for quantization tests: a paged forward pass with a chosen KV dtype."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


def prompt_logits(config: Any, params: Any, tokens: list[int], kv_dtype: str = "float32",
                  chunks: list[int] | None = None, block_size: int = 8) -> np.ndarray:
    """float32 logits [T, V] of `jaxserve.model.llama.forward` over a fresh paged cache of `kv_dtype`.

    `chunks` splits the prompt (later chunks read the earlier ones back from the pages, int8 ones dequantized).
    """
    import jax
    import jax.numpy as jnp

    from jaxserve.attention.metadata import AttentionMetadata
    from jaxserve.attention.xla import context_chunk_blocks
    from jaxserve.kv_cache import allocate_kv_cache
    from jaxserve.model.llama import compute_logits, forward

    params = jax.device_put(params)
    num_pages = -(-len(tokens) // block_size)
    cache = allocate_kv_cache(config, num_pages + 1, block_size, kv_dtype)
    chunk = context_chunk_blocks(block_size)
    table = np.zeros((1, -(-num_pages // chunk) * chunk), np.int32)
    table[0, :num_pages] = np.arange(num_pages, 0, -1)
    step = jax.jit(functools.partial(forward, config=config), donate_argnames=("cache",))
    out, start = [], 0
    for n in chunks or [len(tokens)]:
        pos = np.arange(start, start + n, dtype=np.int32)
        slots = (table[0, pos // block_size] * block_size + pos % block_size).astype(np.int32)
        meta = AttentionMetadata(jnp.asarray(slots), jnp.asarray(table), jnp.asarray([start + n], jnp.int32),
                                 jnp.asarray([0, n], jnp.int32))
        hidden, cache = step(params, tokens=jnp.asarray(tokens[start:start + n], jnp.int32),
                             positions=jnp.asarray(pos), cache=cache, meta=meta)
        out.append(np.asarray(jax.jit(compute_logits)(params, hidden)))
        start += n
    return np.concatenate(out)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest logit difference relative to the spread (std) of the reference logits."""
    return float(np.abs(ours - ref).max() / ref.std())
