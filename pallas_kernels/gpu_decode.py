"""Paged decode attention for GPU (Pallas Triton backend), split-K ("flash decoding").

Grid `(batch, kv_heads, splits)`. A program takes the G query heads sharing one KV head (padded to >= 16 rows for
the tensor cores) and one contiguous share of the sequence's pages (the pages up to its length cut into `splits`
shares of whole blocks, so short sequences in a wide table still spread over the splits), gathers
`pages_per_compute_block` pages per step straight from the page array, and keeps an online softmax. Splitting the
pages gives small batches enough programs to fill the GPU; the per-split partial results are merged in plain jnp
afterwards (a few KB). Blocks past the sequence's length are never visited and masked loads skip the tail pages of
the last block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import gpu_rules
from pallas_kernels.chips import detect_chip
from pallas_kernels.common import cdiv, check_pages, initial_state, with_layer_axis
from pallas_kernels.gpu_pages import attend_pages
from pallas_kernels.gpu_rules import MIN_DOT, padded_groups


def _kernel(lengths_ref, layer_ref, tables_ref, q_ref, k_ref, v_ref, *rest, scale, num_kv_heads, num_pages,
            num_splits, table_width, pages_per_block, quantized):
    if quantized:
        ks_ref, vs_ref, o_ref, m_ref, l_ref = rest
    else:
        (o_ref, m_ref, l_ref), ks_ref, vs_ref = rest, None, None
    b, h, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    length = lengths_ref[b]
    block_size = k_ref.shape[1]
    q = q_ref[...]
    rows, head_dim = q.shape
    used_pages = cdiv(length, block_size)
    pages_per_split = cdiv(cdiv(used_pages, num_splits), pages_per_block) * pages_per_block
    first_page = split * pages_per_split
    end_page = jnp.minimum(used_pages, first_page + pages_per_split)
    base = (layer_ref[0] * num_kv_heads + h) * num_pages
    row_pos = jnp.full((rows, 1), length - 1, jnp.int32)
    row_ok = jnp.ones((rows, 1), jnp.bool_)
    m, l, acc = attend_pages(initial_state(rows, head_dim), q, tables_ref, b * table_width, first_page, end_page,
                             row_pos, row_ok, (k_ref, v_ref, ks_ref, vs_ref), base=base, scale=scale,
                             pages_per_block=pages_per_block, table_width=table_width)
    o_ref[...] = acc
    m_ref[...] = m.reshape(rows)
    l_ref[...] = l.reshape(rows)


def paged_decode_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, lengths: jax.Array,
                           block_tables: jax.Array, *, scale: float, k_scales: jax.Array | None = None,
                           v_scales: jax.Array | None = None, pages_per_compute_block: int | None = None,
                           num_splits: int | None = None, layer: jax.Array | int | None = None,
                           num_warps: int | None = None, num_stages: int | None = None, chip=None,
                           interpret=False) -> jax.Array:
    """Decode attention `q [B, Hq, D]` over paged K/V `[Hkv, NB, BS, D]` -> `[B, Hq, D]` (Triton).

    Same contract as `tpu_decode.paged_decode_attention`; `num_splits` divides each sequence's pages among
    programs. Options not given follow `gpu_rules.plan_decode` for `chip` (a `chips.GpuChip`; default: the one
    found, or the smallest listed).
    """
    batch, num_heads, head_dim = q.shape
    check_pages(q.dtype, k_pages, v_pages, k_scales, v_scales, head_dim, num_heads)
    k_pages, v_pages, k_scales, v_scales, layer = with_layer_axis(k_pages, v_pages, k_scales, v_scales, layer)
    _, num_kv_heads, num_pages, block_size, _ = k_pages.shape
    groups = num_heads // num_kv_heads
    rows = padded_groups(groups, MIN_DOT)
    width = block_tables.shape[1]
    plan = gpu_rules.plan_decode(chip or detect_chip("gpu"), block_size=block_size, head_dim=head_dim,
                                 page_dtype=k_pages.dtype, q_dtype=q.dtype, groups=groups, num_kv_heads=num_kv_heads,
                                 batch=batch, table_width=width, pages_per_compute_block=pages_per_compute_block,
                                 num_splits=num_splits, num_stages=num_stages, num_warps=num_warps)
    gpu_rules.check_gpu_pages(block_size, head_dim, plan.pages_per_compute_block)
    splits = plan.num_splits
    qh = q.reshape(batch, num_kv_heads, groups, head_dim)
    qh = jnp.pad(qh, ((0, 0), (0, 0), (0, rows - groups), (0, 0)))
    flat = lambda x: None if x is None else x.reshape((-1,) + x.shape[3:])
    quantized = k_scales is not None
    page_inputs = [flat(k_pages), flat(v_pages)] + ([flat(k_scales), flat(v_scales)] if quantized else [])

    whole = lambda x: pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)
    q_spec = pl.BlockSpec((None, None, rows, head_dim), lambda b, h, s: (b, h, 0, 0))
    kernel = functools.partial(_kernel, scale=scale, num_kv_heads=num_kv_heads, num_pages=num_pages,
                               num_splits=splits, table_width=width, pages_per_block=plan.pages_per_compute_block,
                               quantized=quantized)
    scalars = [lengths.astype(jnp.int32), jnp.reshape(jnp.asarray(layer, jnp.int32), (1,)),
               block_tables.astype(jnp.int32).reshape(-1)]
    acc, m, l = pl.pallas_call(
        kernel,
        grid=(batch, num_kv_heads, splits),
        in_specs=[whole(x) for x in scalars] + [q_spec] + [whole(x) for x in page_inputs],
        out_specs=[pl.BlockSpec((None, None, None, rows, head_dim), lambda b, h, s: (b, h, s, 0, 0)),
                   pl.BlockSpec((None, None, None, rows), lambda b, h, s: (b, h, s, 0)),
                   pl.BlockSpec((None, None, None, rows), lambda b, h, s: (b, h, s, 0))],
        out_shape=[jax.ShapeDtypeStruct((batch, num_kv_heads, splits, rows, head_dim), jnp.float32),
                   jax.ShapeDtypeStruct((batch, num_kv_heads, splits, rows), jnp.float32),
                   jax.ShapeDtypeStruct((batch, num_kv_heads, splits, rows), jnp.float32)],
        compiler_params=pltriton.CompilerParams(num_warps=plan.num_warps, num_stages=plan.num_stages),
        interpret=interpret,
        name="jaxserve_paged_decode_gpu",
    )(*scalars, qh, *page_inputs)
    return merge_splits(acc, m, l)[:, :, :groups].reshape(batch, num_heads, head_dim).astype(q.dtype)


def merge_splits(acc: jax.Array, m: jax.Array, l: jax.Array) -> jax.Array:
    """Combine unnormalised per-split results `acc [..., S, R, D]`, `m, l [..., S, R]` into `[..., R, D]`."""
    m_all = jnp.max(m, axis=-2, keepdims=True)
    weight = jnp.where(l > 0, jnp.exp(m - m_all), 0.0)
    total = jnp.sum(l * weight, axis=-2)
    out = jnp.sum(acc * weight[..., None], axis=-3)
    return jnp.where(total[..., None] > 0, out / jnp.where(total > 0, total, 1.0)[..., None], 0.0)
