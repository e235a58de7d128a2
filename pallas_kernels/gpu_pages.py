"""GPU (Triton) building block: attend query rows to one sequence's pages, gathered straight from global memory.

Each loop step gathers `pages_per_block` pages of one KV head by page id (a pointer tensor; Triton pipelines the
loads across steps with `num_stages`), so no page is copied ahead of use. Loads of pages past the end are masked off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.common import cdiv, online_softmax_update


def load_block(ref, index_base, pages, valid, scales: bool):
    """Gather pages `index_base + pages [P]` of a flattened page array (masked where not `valid`).

    Every axis is indexed by an array (page ids, then iotas) rather than slices: the Triton lowering turns that into
    one pointer tensor, and interpret mode cannot mix array and slice indices.
    """
    shape = (pages.shape[0],) + ref.shape[1:]
    index = tuple(jax.lax.broadcasted_iota(jnp.int32, shape, axis) for axis in range(1, len(shape)))
    index = (jax.lax.broadcast_in_dim(index_base + pages, shape, (0,)),) + index
    mask = jax.lax.broadcast_in_dim(valid, shape, (0,))
    block = pltriton.load(ref.at[index], mask=mask, other=0)
    return block.reshape(1, -1) if scales else block.reshape(-1, ref.shape[-1])


def attend_pages(state, q, table_ref, table_offset, first_page, end_page, row_pos, row_ok, refs, *, base,
                 scale: float, pages_per_block: int, table_width: int):
    """Fold pages `first_page <= p < end_page` (positions < end_page * BS, causally masked by `row_pos`) into state.

    `table_ref[table_offset + p]` (p < `table_width`) is page p of the sequence, read by masked gathers of the
    entries a step needs (the tables are never padded or copied); `refs` = (k, v, k_scales, v_scales) flattened to
    `[L * Hkv * NB, BS(, D)]`, `base` the index of this layer and head's first page.
    """
    k_ref, v_ref, ks_ref, vs_ref = refs
    block_size = k_ref.shape[1]
    chunk = pages_per_block * block_size

    def body(j, state):
        local = first_page + j * pages_per_block + jnp.arange(pages_per_block)
        valid = local < end_page
        entry = table_offset + jnp.minimum(local, table_width - 1)
        pages = pltriton.load(table_ref.at[(entry,)], mask=valid, other=0)
        k = load_block(k_ref, base, pages, valid, False)
        v = load_block(v_ref, base, pages, valid, False)
        if ks_ref is not None:
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
        if ks_ref is not None:
            scores = scores * load_block(ks_ref, base, pages, valid, True)
        key_pos = ((first_page + j * pages_per_block) * block_size + jnp.arange(chunk))[None, :]
        mask = row_ok & (key_pos <= row_pos) & (key_pos < end_page * block_size)

        def weighted_values(p):
            if vs_ref is not None:
                p = p * load_block(vs_ref, base, pages, valid, True)
            return jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)

        return online_softmax_update(state, scores, mask, weighted_values)

    return jax.lax.fori_loop(0, cdiv(jnp.maximum(end_page - first_page, 0), pages_per_block), body, state)
