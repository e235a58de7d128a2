"""Ragged paged attention for GPU (Pallas Triton backend): causal attention for packed chunks of several sequences.

Same plan as the TPU version (`tpu_ragged`): the packed tokens are cut into blocks of `queries_per_block` tokens,
grid `(query_blocks, kv_heads)`; a program holds one block's tokens x the (power-of-two padded) query heads of one
KV head and walks the sequences overlapping the block, gathering each one's pages up to the block's last position
of that sequence (`gpu_pages.attend_pages`) under a per-row causal mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import gpu_rules
from pallas_kernels.chips import detect_chip
from pallas_kernels.common import (
    cdiv,
    check_pages,
    div,
    finalize,
    fold_overlapping_sequences,
    initial_state,
    with_layer_axis,
)
from pallas_kernels.gpu_pages import attend_pages
from pallas_kernels.gpu_rules import MIN_DOT, is_power_of_two, padded_groups


def _kernel(seq_lens_ref, qsl_ref, num_seqs_ref, layer_ref, tables_ref, q_ref, k_ref, v_ref, *rest, scale,
            groups, table_width, num_kv_heads, num_pages, pages_per_block, quantized):
    if quantized:
        ks_ref, vs_ref, o_ref = rest
    else:
        (o_ref,), ks_ref, vs_ref = rest, None, None
    i, h = pl.program_id(0), pl.program_id(1)
    q = q_ref[...]
    rows, head_dim = q.shape
    block_size = k_ref.shape[1]
    q_lo = i * (rows // groups)
    q_hi = q_lo + rows // groups
    tok = q_lo + div(jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0), groups)
    num_seqs = num_seqs_ref[0]
    base = (layer_ref[0] * num_kv_heads + h) * num_pages
    page_refs = (k_ref, v_ref, ks_ref, vs_ref)

    def attend(state, s, row_pos, row_ok, kv_len):
        return attend_pages(state, q, tables_ref, s * table_width, 0, cdiv(kv_len, block_size), row_pos, row_ok,
                            page_refs, base=base, scale=scale, pages_per_block=pages_per_block,
                            table_width=table_width)

    state = fold_overlapping_sequences(qsl_ref, seq_lens_ref, num_seqs, q_lo, q_hi, tok,
                                       initial_state(rows, head_dim), attend)
    o_ref[...] = finalize(state).astype(o_ref.dtype)


def ragged_paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, block_tables: jax.Array,
                           seq_lens: jax.Array, query_start_loc: jax.Array, num_seqs: jax.Array | int, *,
                           scale: float, k_scales: jax.Array | None = None, v_scales: jax.Array | None = None,
                           pages_per_compute_block: int | None = None, queries_per_block: int | None = None,
                           layer: jax.Array | int | None = None, num_warps: int | None = None,
                           num_stages: int | None = None, chip=None, interpret=False) -> jax.Array:
    """Causal attention of packed chunks `q [T, Hq, D]` over paged K/V -> `[T, Hq, D]` (Triton).

    Same contract as `tpu_ragged.ragged_paged_attention`; options not given follow `gpu_rules.plan_ragged` for
    `chip`.
    """
    num_tokens, num_heads, head_dim = q.shape
    check_pages(q.dtype, k_pages, v_pages, k_scales, v_scales, head_dim, num_heads)
    k_pages, v_pages, k_scales, v_scales, layer = with_layer_axis(k_pages, v_pages, k_scales, v_scales, layer)
    _, num_kv_heads, num_pages, block_size, _ = k_pages.shape
    groups = num_heads // num_kv_heads
    padded_g = padded_groups(groups)
    width = block_tables.shape[1]
    plan = gpu_rules.plan_ragged(chip or detect_chip("gpu"), block_size=block_size, head_dim=head_dim,
                                 page_dtype=k_pages.dtype, q_dtype=q.dtype, groups=groups, table_width=width,
                                 num_tokens=num_tokens, pages_per_compute_block=pages_per_compute_block,
                                 queries_per_block=queries_per_block, num_stages=num_stages, num_warps=num_warps)
    pages_per_compute_block, block_q = plan.pages_per_compute_block, plan.queries_per_block
    gpu_rules.check_gpu_pages(block_size, head_dim, pages_per_compute_block)
    if not is_power_of_two(block_q) or block_q * padded_g < MIN_DOT:
        raise ValueError(f"queries_per_block must be a power of two with queries_per_block x {padded_g} padded "
                         f"query heads >= {MIN_DOT}, got {block_q}")
    padded_t = -(-num_tokens // block_q) * block_q
    qh = q.reshape(num_tokens, num_kv_heads, groups, head_dim)
    qh = jnp.pad(qh, ((0, padded_t - num_tokens), (0, 0), (0, padded_g - groups), (0, 0)))
    qh = qh.transpose(1, 0, 2, 3).reshape(num_kv_heads, padded_t * padded_g, head_dim)
    flat = lambda x: x.reshape((-1,) + x.shape[3:])
    quantized = k_scales is not None
    page_inputs = [flat(k_pages), flat(v_pages)] + ([flat(k_scales), flat(v_scales)] if quantized else [])
    scalars = [seq_lens.astype(jnp.int32), query_start_loc.astype(jnp.int32),
               jnp.reshape(jnp.asarray(num_seqs, jnp.int32), (1,)), jnp.reshape(jnp.asarray(layer, jnp.int32), (1,)),
               block_tables.astype(jnp.int32).reshape(-1)]

    whole = lambda x: pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)
    q_spec = pl.BlockSpec((None, block_q * padded_g, head_dim), lambda i, h: (h, i, 0))
    kernel = functools.partial(_kernel, scale=scale, groups=padded_g, table_width=width,
                               num_kv_heads=num_kv_heads, num_pages=num_pages,
                               pages_per_block=pages_per_compute_block, quantized=quantized)
    out = pl.pallas_call(
        kernel,
        grid=(padded_t // block_q, num_kv_heads),
        in_specs=[whole(x) for x in scalars] + [q_spec] + [whole(x) for x in page_inputs],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
        compiler_params=pltriton.CompilerParams(num_warps=plan.num_warps, num_stages=plan.num_stages),
        interpret=interpret,
        name="jaxserve_ragged_paged_gpu",
    )(*scalars, qh, *page_inputs)
    out = out.reshape(num_kv_heads, padded_t, padded_g, head_dim)[:, :num_tokens, :groups]
    return out.transpose(1, 0, 2, 3).reshape(num_tokens, num_heads, head_dim)
