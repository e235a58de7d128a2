"""TPU building block: attend a block of query rows to one sequence's pages, streamed from HBM by DMA.

Pages stay in HBM (`memory_space=ANY`); each step of the loop copies `pages_per_compute_block` pages of one KV head
into VMEM while the previous block is being used (two buffers), so page reads overlap compute. Only pages holding
positions below the sequence's `kv_len` are copied: the loop stops at the last block and the tail pages of that
block are skipped, so pages beyond a sequence's length are never loaded.

The block tables stay in HBM too (`[S, M]`): at 131,072 tokens of 16-token pages and 256 sequences they
are 8 MiB, far past the 1 MiB of SMEM. A program copies into an SMEM scratch only the chunks of its sequence's row
that it walks, `table_chunk` entries at a time, two chunk buffers: the next chunk is fetched when the page loop
enters a chunk, and waited for just before the first page DMA that needs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import State, cdiv, div, online_softmax_update


@dataclasses.dataclass(frozen=True)
class PageRefs:
    """The refs a kernel needs to stream one KV head's pages (scale refs are None for float pages)."""

    tables: Any  # HBM [S, M] int32 block tables (2-D: a rank-1 HBM operand needs a TPU attached to lower)
    k_hbm: Any  # HBM [L, Hkv, NB, BS, D]
    v_hbm: Any
    ks_hbm: Any  # HBM [L, Hkv, NB, BS] float32 or None
    vs_hbm: Any
    k_buf: Any  # VMEM [2, P, BS, D]
    v_buf: Any
    ks_buf: Any  # VMEM [2, P, BS] float32 or None
    vs_buf: Any
    sems: Any  # DMA semaphores [2]
    table_buf: Any  # SMEM [2 * C] int32: two chunks of C block-table entries of the current sequence
    table_sems: Any  # DMA semaphores [2]


def scratch_shapes(pages_per_block: int, block_size: int, head_dim: int, page_dtype, quantized: bool,
                   table_chunk: int) -> list:
    """Scratch matching `PageRefs` after the HBM inputs: k_buf, v_buf, (ks_buf, vs_buf,) sems, table_buf,
    table_sems."""
    shapes = [pltpu.VMEM((2, pages_per_block, block_size, head_dim), page_dtype)] * 2
    if quantized:
        shapes += [pltpu.VMEM((2, pages_per_block, block_size), jnp.float32)] * 2
    return shapes + [pltpu.SemaphoreType.DMA((2,)), pltpu.SMEM((2 * table_chunk,), jnp.int32),
                     pltpu.SemaphoreType.DMA((2,))]


def page_refs(tables, k_hbm, v_hbm, rest, quantized: bool):
    """(PageRefs, output ref) from a kernel's refs after the scalar prefetch and q: `rest` is
    [k_scales, v_scales,] out, k_buf, v_buf, [ks_buf, vs_buf,] sems, table_buf, table_sems."""
    if quantized:
        ks_hbm, vs_hbm, o_ref, k_buf, v_buf, ks_buf, vs_buf, sems, table_buf, table_sems = rest
    else:
        o_ref, k_buf, v_buf, sems, table_buf, table_sems = rest
        ks_hbm = vs_hbm = ks_buf = vs_buf = None
    return PageRefs(tables, k_hbm, v_hbm, ks_hbm, vs_hbm, k_buf, v_buf, ks_buf, vs_buf, sems, table_buf,
                    table_sems), o_ref


class _Table:
    """Where block-table entry p of sequence `row` lives in the SMEM chunk buffers."""

    def __init__(self, refs: PageRefs, row, table_width: int, pages_per_block: int):
        self.refs, self.row, self.width = refs, row, table_width
        self.chunk = refs.table_buf.shape[0] // 2
        # One chunk holds the whole row when the row is no wider than a chunk (then chunk index is always 0).
        self.single = self.chunk >= table_width
        self.blocks_per_chunk = None if self.single else self.chunk // pages_per_block

    def chunk_of_block(self, block):
        return 0 if self.single else div(block, self.blocks_per_chunk)

    def _start(self, k):
        # The last chunk is moved back to end at the row's end (only when M is not a multiple of the chunk), so the
        # copy never reads past the row.
        return k * self.chunk if self.single else jnp.minimum(k * self.chunk, self.width - self.chunk)

    def copy(self, k):
        slot = jax.lax.rem(k, 2)
        src = self.refs.tables.at[self.row, pl.ds(self._start(k), self.chunk)]
        dst = self.refs.table_buf.at[pl.ds(slot * self.chunk, self.chunk)]
        return pltpu.make_async_copy(src, dst, self.refs.table_sems.at[slot])

    def entry(self, k, p):
        """Page id of entry p (< M where it matters; clamped into the chunk otherwise) from chunk k."""
        offset = jnp.clip(p - self._start(k), 0, self.chunk - 1)
        return self.refs.table_buf[jax.lax.rem(k, 2) * self.chunk + offset]


def _copies(refs: PageRefs, table: _Table | None, layer, head, block, slot, kv_len, block_size: int):
    """(condition, copy descriptor) for every page of KV block `block` into buffer `slot`.

    With `table=None` the descriptors are for waiting only: the wait needs the destination and semaphore, not the
    source page, so page 0 stands in (and no table entry is read).
    """
    pages_per_block = refs.k_buf.shape[1]
    k = None if table is None else table.chunk_of_block(block)
    out = []
    for c in range(pages_per_block):
        p = block * pages_per_block + c
        page = 0 if table is None else table.entry(k, p)
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
    table = _Table(refs, row, table_width, pages_per_block)
    where = {"layer": layer, "head": head, "kv_len": kv_len, "block_size": block_size}

    @pl.when(num_blocks > 0)
    def _():
        first = table.copy(0)
        first.start()
        first.wait()
        _run(_copies(refs, table, block=0, slot=0, **where), "start")

    def body(j, state):
        slot = jax.lax.rem(j, 2)
        if not table.single:
            k = div(j, table.blocks_per_chunk)

            # Entering chunk k: fetch chunk k + 1 (into the buffer chunk k - 1 used, no longer read) if needed.
            @pl.when((jax.lax.rem(j, table.blocks_per_chunk) == 0) & ((k + 1) * table.chunk * block_size < kv_len))
            def _():
                table.copy(k + 1).start()

        @pl.when(j + 1 < num_blocks)
        def _():
            if not table.single:
                @pl.when(jax.lax.rem(j + 1, table.blocks_per_chunk) == 0)
                def _():
                    table.copy(div(j + 1, table.blocks_per_chunk)).wait()

            _run(_copies(refs, table, block=j + 1, slot=1 - slot, **where), "start")

        _run(_copies(refs, None, block=j, slot=slot, **where), "wait")
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
