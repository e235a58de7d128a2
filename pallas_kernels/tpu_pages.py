"""TPU building block: attend a block of query rows to one sequence's pages, streamed from HBM by DMA.

Pages stay in HBM (`memory_space=ANY`); each step of the loop copies `pages_per_compute_block` pages of one KV head
into VMEM while the previous block is being used (two buffers), so page reads overlap compute. Only pages holding
positions below the sequence's `kv_len` are copied: the loop stops at the last block and the tail pages of that
block are skipped, so pages beyond a sequence's length are never loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import State, cdiv, online_softmax_update


@dataclasses.dataclass(frozen=True)
class PageRefs:
    """The refs a kernel needs to stream one KV head's pages (scale refs are None for float pages)."""

    tables: Any  # SMEM [S * M] int32, block tables flattened (2-D SMEM arrays pad to [8, 128] tiles)
    k_hbm: Any  # HBM [L, Hkv, NB, BS, D]
    v_hbm: Any
    ks_hbm: Any  # HBM [L, Hkv, NB, BS] float32 or None
    vs_hbm: Any
    k_buf: Any  # VMEM [2, P, BS, D]
    v_buf: Any
    ks_buf: Any  # VMEM [2, P, BS] float32 or None
    vs_buf: Any
    sems: Any  # DMA semaphores [2]


def scratch_shapes(pages_per_block: int, block_size: int, head_dim: int, page_dtype, quantized: bool) -> list:
    """VMEM buffers and semaphores matching `PageRefs` (k_buf, v_buf, ks_buf, vs_buf, sems; scales if int8)."""
    shapes = [pltpu.VMEM((2, pages_per_block, block_size, head_dim), page_dtype)] * 2
    if quantized:
        shapes += [pltpu.VMEM((2, pages_per_block, block_size), jnp.float32)] * 2
    return shapes + [pltpu.SemaphoreType.DMA((2,))]


def _copies(refs: PageRefs, layer, head, row, table_width: int, block, slot, kv_len, block_size: int):
    """(condition, copy descriptor) for every page of KV block `block` of sequence `row` into buffer `slot`."""
    pages_per_block = refs.k_buf.shape[1]
    out = []
    for c in range(pages_per_block):
        p = block * pages_per_block + c
        page = refs.tables[row * table_width + jnp.minimum(p, table_width - 1)]
        needed = p * block_size < kv_len
        sem = refs.sems.at[slot]
        out.append((needed, pltpu.make_async_copy(refs.k_hbm.at[layer, head, page], refs.k_buf.at[slot, c], sem)))
        out.append((needed, pltpu.make_async_copy(refs.v_hbm.at[layer, head, page], refs.v_buf.at[slot, c], sem)))
        if refs.ks_hbm is not None:
            out.append((needed, pltpu.make_async_copy(refs.ks_hbm.at[layer, head, page], refs.ks_buf.at[slot, c],
                                                      sem)))
            out.append((needed, pltpu.make_async_copy(refs.vs_hbm.at[layer, head, page], refs.vs_buf.at[slot, c],
                                                      sem)))
    return out


def _run(copies, method: str) -> None:
    for needed, copy in copies:
        pl.when(needed)(getattr(copy, method))


def attend_sequence(state: State, q: jax.Array, row_pos: jax.Array, row_ok: jax.Array, kv_len, refs: PageRefs,
                    *, layer, head, row, table_width: int, scale: float) -> State:
    """Fold sequence `row`'s keys at positions < `kv_len` into `state` for query rows `q [R, D]`.

    `row_pos [R, 1]` is each query row's position (it sees keys at positions <= it) and `row_ok [R, 1]` marks the
    rows that belong to this sequence.
    """
    _, pages_per_block, block_size, _ = refs.k_buf.shape
    chunk = pages_per_block * block_size
    quantized = refs.ks_buf is not None
    num_blocks = cdiv(kv_len, chunk)
    where = {"layer": layer, "head": head, "row": row, "table_width": table_width, "kv_len": kv_len,
             "block_size": block_size}

    @pl.when(num_blocks > 0)
    def _():
        _run(_copies(refs, block=0, slot=0, **where), "start")

    def body(j, state):
        slot = jax.lax.rem(j, 2)

        @pl.when(j + 1 < num_blocks)
        def _():
            _run(_copies(refs, block=j + 1, slot=1 - slot, **where), "start")

        _run(_copies(refs, block=j, slot=slot, **where), "wait")
        # int8 pages go one page at a time: a page's scales are one lane-major row `[1, BS]` that scales that
        # page's score columns and probabilities directly (no transpose into the K/V row orientation, and no
        # relayout of the scale arrays in HBM). Float pages take the whole block at once.
        pieces = [(c, 1) for c in range(pages_per_block)] if quantized else [(0, pages_per_block)]
        for first, count in pieces:
            state = _attend_piece(state, q, row_pos, row_ok, kv_len, refs, slot, first, count,
                                  j * chunk + first * block_size, scale)
        return state

    return jax.lax.fori_loop(0, num_blocks, body, state)


def _attend_piece(state: State, q, row_pos, row_ok, kv_len, refs: PageRefs, slot, first: int, count: int,
                  key_start, scale: float) -> State:
    """Online-softmax step over pages `first:first + count` of buffer `slot`, whose first key is `key_start`."""
    _, _, block_size, head_dim = refs.k_buf.shape
    n = count * block_size
    key_row = key_start + jax.lax.broadcasted_iota(jnp.int32, (1, n), 1)
    key_col = key_start + jax.lax.broadcasted_iota(jnp.int32, (n, 1), 0)
    k = refs.k_buf[slot, pl.ds(first, count)].reshape(n, head_dim)
    v = refs.v_buf[slot, pl.ds(first, count)].reshape(n, head_dim)
    if refs.ks_buf is not None:
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    # Buffer rows past kv_len hold stale or uninitialised data: zero them (and their scales) so 0 * NaN never
    # reaches the sum; their scores are masked below.
    v = jnp.where(key_col < kv_len, v, jnp.zeros_like(v))
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    if refs.ks_buf is not None:
        scores = scores * refs.ks_buf[slot, pl.ds(first, 1), :]
    mask = row_ok & (key_row <= row_pos) & (key_row < kv_len)

    def weighted_values(p):
        if refs.vs_buf is not None:
            p = p * jnp.where(key_row < kv_len, refs.vs_buf[slot, pl.ds(first, 1), :], 0.0)
        return jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)

    return online_softmax_update(state, scores, mask, weighted_values)
