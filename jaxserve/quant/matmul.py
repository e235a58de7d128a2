"""Quantized matmul and embedding lookup, written the way XLA:CPU runs them fast.

Measured on the 2-core CPU box (30 stacked 576x1536 weights under `lax.scan`, ms per scan; bench notes in
bench/RESULTS.md): float32 4.3 / 24 / 150 ms at 1 / 32 / 256 rows; bfloat16 weights 39 / 74 / 82 ms. An int8 weight
converted *inside* the dot's operand (`dot(x, w.astype(f32))`, scales applied to the output) runs 3.3 / 11 / 103 ms
in float32 and 4.2 / 7.4 / 36 ms with bfloat16 operands and float32 accumulation: XLA fuses the convert (and a
group-scale multiply, and the nibble shifts of packed int4) into the dot, so no dequantized copy of the weight is
ever written. Packed int4 with group scales and offsets: 3.1 / 12 / 55 ms (float32) and, scaled in float32 then
cast, 9.6 / 45 ms at 32 / 256 rows with bfloat16 operands.
Dequantizing the whole weight into a new array first (unpack by interleave, then dot) ran 42 / 60 / 116 ms.

So: float32 operands for few rows (decode: memory-bound, exact activations) and bfloat16 operands with float32
accumulation for many rows (prefill: compute-bound, where bf16 runs at ~2x the float32 rate).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .quantize import unpack_halves
from .tensor import QuantizedTensor

# Up to this many rows the float32 path is as fast or faster (memory-bound); above it bf16 operands win.
FLOAT32_MAX_ROWS = 16
# Wide weights (the LM head: 49152 outputs) are multiplied this many output channels at a time. In one piece XLA:CPU
# stops fusing the dequantization into the dot and the 576 x 49152 head took 70-180 ms at 8 rows (float32: 18 ms);
# looping over slices of 2048 outputs it took 12-20 ms.
OUT_CHUNK = 2048


def _compute_dtype(rows: int) -> jnp.dtype:
    return jnp.float32 if rows <= FLOAT32_MAX_ROWS else jnp.bfloat16


def _parts(qt: QuantizedTensor):
    """(values, scales, offsets) per output half for 4 bits, or the whole tensor for 8 bits."""
    if qt.bits == 8:
        return [(qt.values, qt.scales, qt.offsets)]
    halves = unpack_halves(qt.values)
    split = lambda a: (None, None) if a is None else jnp.split(a, 2, axis=qt.out_axis)  # noqa: E731
    scales, offsets = split(qt.scales), split(qt.offsets)
    return [(halves[i], scales[i], None if offsets[0] is None else offsets[i]) for i in range(2)]


def _scaled_weight(q: jax.Array, scales: jax.Array, offsets: jax.Array | None, out_first: bool,
                   dtype: jnp.dtype) -> jax.Array:
    """`q * s (+ o)` with group scales broadcast over their group, computed in float32 and cast to `dtype` once.

    An elementwise chain that XLA fuses into the dot's operand. Scaling in float32 before the one cast is both
    more accurate and faster than scaling in bfloat16 (packed int4 with offsets: 9.6 vs 22 ms at 32 rows, 45 vs
    53 ms at 256 on the scan above).
    """
    f32 = jnp.float32
    if not out_first:  # [K, N] -> [G, g, N] with scales [G, 1, N]
        k, n = q.shape
        g = scales.shape[0]
        w = q.astype(f32).reshape(g, k // g, n) * scales.astype(f32)[:, None, :]
        if offsets is not None:
            w = w + offsets.astype(f32)[:, None, :]
        return w.reshape(k, n).astype(dtype)
    n, k = q.shape  # [N, K] -> [N, G, g] with scales [N, G, 1]
    g = scales.shape[1]
    w = q.astype(f32).reshape(n, g, k // g) * scales.astype(f32)[:, :, None]
    if offsets is not None:
        w = w + offsets.astype(f32)[:, :, None]
    return w.reshape(n, k).astype(dtype)


def quantized_matmul(x: jax.Array, qt: QuantizedTensor) -> jax.Array:
    """`x @ W` (or `x @ W.T` for an out-first weight such as a tied embedding) as float32, `x` of shape `[..., K]`.

    Per-channel scales multiply the float32 output (exact); group scales and offsets are applied to the weight
    operand inside the fused dot. Wide weights run OUT_CHUNK (packed) output channels per loop iteration.
    """
    if qt.values.ndim != 2:
        raise ValueError(f"quantized_matmul takes one 2-D weight, got values of shape {qt.values.shape}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    width = qt.values.shape[qt.out_axis]
    if width <= OUT_CHUNK or width % OUT_CHUNK:
        y = _matmul_whole(x2, qt)
    else:
        # A loop (not static slices, which XLA merges back into one dot) keeps each dequantized slice fused.
        ys = jax.lax.map(lambda i: _matmul_whole(x2, _out_slice(qt, i * OUT_CHUNK, OUT_CHUNK)),
                         jnp.arange(width // OUT_CHUNK))  # [C, T, OUT_CHUNK * (2 for 4 bits)]
        flat = lambda a: a.transpose(1, 0, 2).reshape(x2.shape[0], -1)  # noqa: E731
        y = flat(ys) if qt.bits == 8 else jnp.concatenate([flat(ys[..., :OUT_CHUNK]), flat(ys[..., OUT_CHUNK:])], -1)
    return y.reshape(*lead, y.shape[-1])


def _out_slice(qt: QuantizedTensor, start: jax.Array, size: int) -> QuantizedTensor:
    """Packed output channels [start, start + size) as a QuantizedTensor (with 4 bits: both nibbles' channels)."""
    axis = qt.out_axis % qt.values.ndim
    take = lambda a, at: jax.lax.dynamic_slice_in_dim(a, at, size, axis=axis)  # noqa: E731

    def side(a: jax.Array | None) -> jax.Array | None:
        if a is None:
            return None
        if qt.bits == 8:
            return take(a, start)
        half = qt.values.shape[axis]  # scales of the high nibbles start half-way along the output axis
        return jnp.concatenate([take(a, start), take(a, start + half)], axis=axis)

    return dataclasses.replace(qt, values=take(qt.values, start), scales=side(qt.scales), offsets=side(qt.offsets))


def _matmul_whole(x2: jax.Array, qt: QuantizedTensor) -> jax.Array:
    dtype = _compute_dtype(x2.shape[0])
    xs = x2.astype(dtype)
    contract = 1 if qt.out_first else 0
    per_channel = qt.num_groups == 1 and qt.offsets is None
    outs = []
    for q, scales, offsets in _parts(qt):
        w = q.astype(dtype) if per_channel else _scaled_weight(q, scales, offsets, qt.out_first, dtype)
        y = jax.lax.dot_general(xs, w, (((1,), (contract,)), ((), ())), preferred_element_type=jnp.float32)
        if per_channel:
            y = y * scales.astype(jnp.float32).reshape(1, -1)
        outs.append(y)
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)


def quantized_lookup(qt: QuantizedTensor, ids: jax.Array) -> jax.Array:
    """Rows `ids` of an out-first quantized table (the embedding), dequantized to the table's float dtype."""
    if not qt.out_first:
        raise ValueError("quantized_lookup needs an out-first table ([vocab, hidden]), such as the embedding")
    n = qt.shape[0]
    if qt.bits == 4:
        half = n // 2
        lo, hi = unpack_halves(qt.values[ids % half])
        q = jnp.where((ids >= half)[:, None], hi, lo)
    else:
        q = qt.values[ids]
    offsets = None if qt.offsets is None else qt.offsets[ids]
    rows = _scaled_weight(q, qt.scales[ids], offsets, True, jnp.float32)
    return rows.astype(qt.dtype)
