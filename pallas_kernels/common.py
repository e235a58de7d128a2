"""Pieces shared by the TPU and GPU kernels: the online-softmax step and the start-up shape checks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# A large finite negative instead of -inf: a row whose keys are all masked in a block must not produce
# exp(-inf - -inf) = NaN; masked probabilities are zeroed explicitly instead.
MASK_VALUE = -1e30

State = tuple[jax.Array, jax.Array, jax.Array]  # running max [R, 1], normaliser [R, 1], accumulator [R, D]


def initial_state(rows: int, head_dim: int) -> State:
    """Empty online-softmax state for `rows` query rows."""
    return (jnp.full((rows, 1), MASK_VALUE, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
            jnp.zeros((rows, head_dim), jnp.float32))


def online_softmax_update(state: State, scores: jax.Array, mask: jax.Array,
                          weighted_values: Callable[[jax.Array], jax.Array]) -> State:
    """Fold one block of `scores [R, C]` (already scaled; `mask` marks the keys each row may see) into `state`.

    `weighted_values(p)` returns `p @ V_block` `[R, D]` in float32, so each backend picks its own dot and applies
    per-token value scales (int8 pages) to `p` before it.
    """
    m, l, acc = state
    scores = jnp.where(mask, scores, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(scores, axis=1, keepdims=True))
    correction = jnp.exp(m - m_new)
    p = jnp.where(mask, jnp.exp(scores - m_new), 0.0)
    l_new = correction * l + jnp.sum(p, axis=1, keepdims=True)
    return m_new, l_new, correction * acc + weighted_values(p)


def finalize(state: State) -> jax.Array:
    """Normalised output `[R, D]`; rows that saw no key (padding) are zeros, never NaN."""
    _, l, acc = state
    return jnp.where(l > 0, acc / jnp.where(l > 0, l, 1.0), 0.0)


def div(a, b):
    """Integer division of non-negative values. `lax.div` (truncating) on traced values, because jnp's floor
    division lowers through `sign`, which the Mosaic TPU lowering cannot lower without a TPU attached."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return jax.lax.div(a, jnp.asarray(b, jnp.result_type(a)))


def cdiv(a, b):
    """Ceiling division of non-negative Python ints and traced scalars alike."""
    return div(a + b - 1, b)


def next_power_of_two(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(0, (n - 1).bit_length())


def check_pages(q_dtype, k_pages: jax.Array, v_pages: jax.Array, k_scales, v_scales, head_dim: int,
                num_q_heads: int) -> None:
    """Shape and dtype agreement between queries, pages and scales (both backends)."""
    if k_pages.shape != v_pages.shape or k_pages.dtype != v_pages.dtype:
        raise ValueError(f"k_pages {k_pages.shape} {k_pages.dtype} and v_pages {v_pages.shape} {v_pages.dtype} "
                         "must match")
    if k_pages.ndim not in (4, 5) or k_pages.shape[-1] != head_dim:
        raise ValueError(f"pages must be [(L,) Hkv, NB, BS, D={head_dim}], got {k_pages.shape}")
    if num_q_heads % k_pages.shape[-4]:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {k_pages.shape[-4]} KV heads")
    quantized = k_pages.dtype == jnp.int8
    if quantized != (k_scales is not None) or (k_scales is None) != (v_scales is None):
        raise ValueError("int8 pages need k_scales and v_scales (and other dtypes take none)")
    if quantized and (k_scales.shape != k_pages.shape[:-1] or v_scales.shape != k_pages.shape[:-1]):
        raise ValueError(f"scales must be {k_pages.shape[:-1]}, got {k_scales.shape} and {v_scales.shape}")
    if not quantized and k_pages.dtype != jnp.dtype(q_dtype):
        raise ValueError(f"pages ({k_pages.dtype}) and queries ({q_dtype}) must share a dtype")


def with_layer_axis(k_pages, v_pages, k_scales, v_scales, layer):
    """Pages and scales with a leading layer axis, and the layer to read: kernels always index `[L, ...]`, so a
    caller's per-layer pages (`layer=None`) become a one-layer stack read at layer 0."""
    if layer is not None:
        return k_pages, v_pages, k_scales, v_scales, layer
    if k_scales is not None:
        k_scales, v_scales = k_scales[None], v_scales[None]
    return k_pages[None], v_pages[None], k_scales, v_scales, 0


def fold_overlapping_sequences(qsl_ref, seq_lens_ref, num_seqs, q_lo, q_hi, tok, state,
                               attend_sequence: Callable) -> State:
    """Fold `attend_sequence` over the sequences whose query chunks overlap the block's tokens [q_lo, q_hi).

    For each such sequence `s` it is called as `attend_sequence(state, s, row_pos, row_ok, kv_len)`: the position of
    each row's token in `s` (`row_pos`), whether the row belongs to `s` (`row_ok`), and how many of `s`'s keys the
    block may see (up to its last token inside the block). Scalar loops over the (prefetched) `query_start_loc`.
    """
    last_row = qsl_ref.shape[0] - 1
    # Skip the sequences whose chunks end before this block.
    first = jax.lax.while_loop(
        lambda s: (s < num_seqs) & (qsl_ref[jnp.minimum(s + 1, last_row)] <= q_lo), lambda s: s + 1, 0)

    def overlaps(carry):
        s, _ = carry
        return (s < num_seqs) & (qsl_ref[jnp.minimum(s, last_row)] < q_hi)

    def attend(carry):
        s, state = carry
        start, end = qsl_ref[s], qsl_ref[s + 1]
        context = seq_lens_ref[s] - (end - start)
        row_ok = (tok >= start) & (tok < end)
        row_pos = context + tok - start
        kv_len = jnp.where(end > jnp.maximum(start, q_lo), context + jnp.minimum(end, q_hi) - start, 0)
        return s + 1, attend_sequence(state, s, row_pos, row_ok, kv_len)

    return jax.lax.while_loop(overlaps, attend, (first, state))[1]
