"""Paged decode attention for TPU (Mosaic): one query token per sequence over its pages.

Grid `(batch, kv_heads)`, both parallel. Each program takes the G query heads that share one KV head (grouped-query
attention: the pages are read once for all of them) and streams that head's pages of one sequence through VMEM with
an online softmax (`tpu_pages.attend_sequence`). Sequence lengths and the layer index travel in scalar prefetch
(SMEM); the block tables stay in HBM and each program copies the chunks of its sequence's row it walks into SMEM
(`tpu_pages`), so the tables may be any size. Block sizes follow `tpu_rules.plan_decode` for the chip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import tpu_rules
from pallas_kernels.chips import detect_chip
from pallas_kernels.common import check_pages, finalize, initial_state, with_layer_axis
from pallas_kernels.tpu_pages import attend_sequence, page_refs, scratch_shapes


def _kernel(lengths_ref, layer_ref, q_ref, tables_hbm, k_hbm, v_hbm, *rest, scale: float, table_width: int,
            quantized: bool):
    refs, o_ref = page_refs(tables_hbm, k_hbm, v_hbm, rest, quantized)
    b, h = pl.program_id(0), pl.program_id(1)
    q = q_ref[...]  # [G, D]
    length = lengths_ref[b]
    rows = q.shape[0]
    # The single query token sits at position length - 1 and sees every cached key.
    row_pos = jnp.full((rows, 1), length - 1, jnp.int32)
    row_ok = jnp.ones((rows, 1), jnp.bool_)
    state = attend_sequence(initial_state(rows, q.shape[1]), q, row_pos, row_ok, length, refs,
                            layer=layer_ref[0], head=h, row=b, table_width=table_width, scale=scale)
    o_ref[...] = finalize(state).astype(o_ref.dtype)


def paged_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                           block_tables: jax.Array, *, scale: float, k_scales: jax.Array | None = None,
                           v_scales: jax.Array | None = None, pages_per_compute_block: int | None = None,
                           table_chunk: int | None = None, layer: jax.Array | int | None = None, chip=None,
                           interpret=False) -> jax.Array:
    """Decode attention `q [B, Hq, D]` over paged K/V `[Hkv, NB, BS, D]` -> `[B, Hq, D]`.

    `lengths [B]` counts each sequence's cached tokens (the current one included; 0 gives zeros);
    `block_tables [B, M]` lists its pages. int8 pages take per-token `k_scales`/`v_scales` `[Hkv, NB, BS]`.
    With `layer`, the pages (and scales) carry a leading layer axis and the kernel reads that layer in place,
    which saves slicing one layer out of the whole cache on every call. `interpret` is True or a
    `pltpu.InterpretParams` (the checked interpreter) to run without a TPU. `pages_per_compute_block` and
    `table_chunk` (block-table entries per SMEM chunk) default to `tpu_rules.plan_decode` for `chip` (a
    `chips.TpuChip`; default: the one found, or the smallest listed).
    """
    batch, num_heads, head_dim = q.shape
    check_pages(q.dtype, k_pages, v_pages, k_scales, v_scales, head_dim, num_heads)
    k_pages, v_pages, k_scales, v_scales, layer = with_layer_axis(k_pages, v_pages, k_scales, v_scales, layer)
    _, num_kv_heads, _, block_size, _ = k_pages.shape
    groups = num_heads // num_kv_heads
    quantized = k_scales is not None
    table_width = block_tables.shape[1]
    chip = chip or detect_chip("tpu")
    plan = tpu_rules.plan_decode(chip, block_size=block_size, head_dim=head_dim, page_dtype=k_pages.dtype,
                                 q_dtype=q.dtype, groups=groups, table_width=table_width,
                                 pages_per_compute_block=pages_per_compute_block, table_chunk=table_chunk)
    pages_per_compute_block = plan.pages_per_compute_block
    tpu_rules.check_tpu_pages(block_size, head_dim, k_pages.dtype, pages_per_compute_block)

    q_spec = pl.BlockSpec((None, None, groups, head_dim), lambda b, h, *_: (b, h, 0, 0))
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    kernel = functools.partial(_kernel, scale=scale, table_width=table_width, quantized=quantized)
    out = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(batch, num_kv_heads),
            in_specs=[q_spec] + [any_spec] * (5 if quantized else 3),
            out_specs=q_spec,
            scratch_shapes=scratch_shapes(pages_per_compute_block, block_size, head_dim, k_pages.dtype, quantized,
                                          plan.table_chunk),
        ),
        out_shape=jax.ShapeDtypeStruct((batch, num_kv_heads, groups, head_dim), q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name="jaxserve_paged_decode_tpu",
    )(lengths.astype(jnp.int32), jnp.reshape(jnp.asarray(layer, jnp.int32), (1,)),
      q.reshape(batch, num_kv_heads, groups, head_dim), block_tables.astype(jnp.int32),
      k_pages, v_pages, *((k_scales, v_scales) if quantized else ()))
    return out.reshape(batch, num_heads, head_dim)
