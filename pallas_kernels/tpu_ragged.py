"""Ragged paged attention for TPU (Mosaic): causal attention for packed query chunks of several sequences.

The packed tokens are cut into fixed blocks of `queries_per_block` tokens; grid `(query_blocks, kv_heads)`, both
parallel. A program holds one block's tokens for the G query heads of one KV head (rows = tokens x G, token-major)
and walks the sequences whose chunks overlap the block (`query_start_loc`). For each, it streams that sequence's
pages up to the block's last position of that sequence and masks causally per row. The step's own K/V are already
in the pages (the model writes them first), so prefill chunks, decode tokens and mixes all take this one path.
The block tables stay in HBM (`tpu_pages`); block sizes follow `tpu_rules.plan_ragged` for the chip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_rules
from pallas_kernels.chips import detect_chip
from pallas_kernels.common import (
    check_pages,
    finalize,
    fold_overlapping_sequences,
    initial_state,
    with_layer_axis,
)
from pallas_kernels.tpu_pages import attend_sequence, page_refs, scratch_shapes


def default_queries_per_block(groups: int) -> int:
    """Tokens per query block for the smallest MXU (128 rows); see `tpu_rules.plan_ragged` for the chip's."""
    return tpu_rules.queries_for_rows(128, groups)


def _kernel(seq_lens_ref, qsl_ref, num_seqs_ref, layer_ref, q_ref, tables_hbm, k_hbm, v_hbm, *rest, scale: float,
            table_width: int, groups: int, quantized: bool):
    refs, o_ref = page_refs(tables_hbm, k_hbm, v_hbm, rest, quantized)
    i, h = pl.program_id(0), pl.program_id(1)
    q = q_ref[...]
    rows, head_dim = q.shape
    q_lo = i * (rows // groups)
    q_hi = q_lo + rows // groups
    # Token of each row (rows are token-major: token x G + head). Vector integer division is avoided on purpose:
    # the float form is exact for these small integers and certain to lower on Mosaic.
    row = jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0).astype(jnp.float32)
    tok = q_lo + jnp.floor((row + 0.5) * (1.0 / groups)).astype(jnp.int32)
    num_seqs = num_seqs_ref[0]

    def attend(state, s, row_pos, row_ok, kv_len):
        return attend_sequence(state, q, row_pos, row_ok, kv_len, refs, layer=layer_ref[0], head=h, row=s,
                               table_width=table_width, scale=scale)

    state = fold_overlapping_sequences(qsl_ref, seq_lens_ref, num_seqs, q_lo, q_hi, tok,
                                       initial_state(rows, head_dim), attend)
    o_ref[...] = finalize(state).astype(o_ref.dtype)


def ragged_paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, block_tables: jax.Array,
                           seq_lens: jax.Array, query_start_loc: jax.Array, num_seqs: jax.Array | int, *,
                           scale: float, k_scales: jax.Array | None = None, v_scales: jax.Array | None = None,
                           pages_per_compute_block: int | None = None, queries_per_block: int | None = None,
                           table_chunk: int | None = None, layer: jax.Array | int | None = None, chip=None,
                           interpret=False) -> jax.Array:
    """Causal attention of packed chunks `q [T, Hq, D]` over paged K/V `[Hkv, NB, BS, D]` -> `[T, Hq, D]`.

    Sequence s owns tokens `query_start_loc[s]:query_start_loc[s + 1]` of q, has `seq_lens[s]` tokens in its pages
    after this step (its new tokens included) and pages `block_tables[s]`; only the first `num_seqs` sequences are
    read and tokens past theirs get zeros. int8 pages take per-token scales `[Hkv, NB, BS]`. `layer` and
    `interpret` as for `tpu_decode.paged_decode_attention`; block sizes not given follow `tpu_rules.plan_ragged`
    for `chip`.
    """
    num_tokens, num_heads, head_dim = q.shape
    check_pages(q.dtype, k_pages, v_pages, k_scales, v_scales, head_dim, num_heads)
    k_pages, v_pages, k_scales, v_scales, layer = with_layer_axis(k_pages, v_pages, k_scales, v_scales, layer)
    _, num_kv_heads, _, block_size, _ = k_pages.shape
    groups = num_heads // num_kv_heads
    chip = chip or detect_chip("tpu")
    plan = tpu_rules.plan_ragged(chip, block_size=block_size, head_dim=head_dim, page_dtype=k_pages.dtype,
                                 q_dtype=q.dtype, groups=groups, table_width=block_tables.shape[1],
                                 num_tokens=num_tokens, pages_per_compute_block=pages_per_compute_block,
                                 queries_per_block=queries_per_block, table_chunk=table_chunk)
    pages_per_compute_block, block_q = plan.pages_per_compute_block, plan.queries_per_block
    tpu_rules.check_tpu_pages(block_size, head_dim, k_pages.dtype, pages_per_compute_block)
    tpu_rules.check_tpu_query_block(block_q, groups)
    quantized = k_scales is not None
    padded = -(-num_tokens // block_q) * block_q
    qh = jnp.pad(q, ((0, padded - num_tokens), (0, 0), (0, 0))).reshape(padded, num_kv_heads, groups, head_dim)
    qh = qh.transpose(1, 0, 2, 3).reshape(num_kv_heads, padded * groups, head_dim)

    q_spec = pl.BlockSpec((None, block_q * groups, head_dim), lambda i, h, *_: (h, i, 0))
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    kernel = functools.partial(_kernel, scale=scale, table_width=block_tables.shape[1], groups=groups,
                               quantized=quantized)
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(padded // block_q, num_kv_heads),
            in_specs=[q_spec] + [any_spec] * (5 if quantized else 3),
            out_specs=q_spec,
            scratch_shapes=scratch_shapes(pages_per_compute_block, block_size, head_dim, k_pages.dtype, quantized,
                                          plan.table_chunk),
        ),
        out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="jaxserve_ragged_paged_tpu",
    )(seq_lens.astype(jnp.int32), query_start_loc.astype(jnp.int32),
      jnp.reshape(jnp.asarray(num_seqs, jnp.int32), (1,)), jnp.reshape(jnp.asarray(layer, jnp.int32), (1,)),
      qh, block_tables.astype(jnp.int32), k_pages, v_pages, *((k_scales, v_scales) if quantized else ()))
    out = out.reshape(num_kv_heads, padded, groups, head_dim).transpose(1, 0, 2, 3)
    return out.reshape(padded, num_heads, head_dim)[:num_tokens]
