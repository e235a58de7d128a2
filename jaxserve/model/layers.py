"""Building blocks of the Llama family: RMSNorm, rotary embeddings, linear projections, the gated MLP.

Every function is pure and computes exactly what Hugging Face transformers computes (same casts, same order), so
float32 logits match it to ~1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import cpu_kernels
from cpu_kernels import PackedWeight
from jaxserve.quant import QuantizedTensor, is_quantized, quantized_lookup, quantized_matmul


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm: normalise in float32, cast back, then scale (the order transformers uses)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def linear(x: jax.Array, w: jax.Array | QuantizedTensor | PackedWeight, b: jax.Array | None = None,
           valid_rows: jax.Array | None = None) -> jax.Array:
    """`x @ w (+ b)` with float32 accumulation; the result has x's dtype. `w` may be a QuantizedTensor, or a
    PackedWeight (run by the native CPU kernel; see `model/cpu_weights.py`), which skips the rows of a 2-D `x`
    from `valid_rows` on (bucket padding; their outputs are then zero, plus the bias).

    Accumulating in float32 is also the fast path on CPU: a bf16 x bf16 -> bf16 dot is lowered to float32 copies.
    """
    y = _matmul_f32(x, w, valid_rows)
    if b is not None:
        y = y + b.astype(jnp.float32)
    return y.astype(x.dtype)


def projections(x: jax.Array, lp: dict[str, Any], fused: str, parts: Sequence[str], widths: Sequence[int],
                biases: Sequence[str | None] | None = None, valid_rows: jax.Array | None = None) -> list[jax.Array]:
    """The projections `lp[part]` of `x` (each plus its bias `lp[bias]`, if present): one `linear` per part, or one
    matmul of `lp[fused]` split back into parts of `widths` channels when packing fused them
    (`model/cpu_weights.FUSED`). Both give the same values; the fused weight saves kernel calls."""
    bias = [None if name is None else lp.get(name) for name in (biases or [None] * len(parts))]
    if fused not in lp:
        return [linear(x, lp[name], b, valid_rows=valid_rows) for name, b in zip(parts, bias)]
    y = _matmul_f32(x, lp[fused], valid_rows)
    split = jnp.split(y, np.cumsum(widths)[:-1].tolist(), axis=-1)
    return [(p if b is None else p + b.astype(jnp.float32)).astype(x.dtype) for p, b in zip(split, bias)]


def _matmul_f32(x: jax.Array, w: jax.Array | QuantizedTensor | PackedWeight,
                valid_rows: jax.Array | None) -> jax.Array:
    if isinstance(w, PackedWeight):
        lead = x.shape[:-1]
        rows = valid_rows if x.ndim == 2 else None
        return cpu_kernels.matmul(x.reshape(-1, x.shape[-1]), w, rows).reshape(*lead, w.n)
    if is_quantized(w):
        return quantized_matmul(x, w)
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def embed_lookup(table: jax.Array | QuantizedTensor | PackedWeight, tokens: jax.Array) -> jax.Array:
    """Rows `tokens` of the embedding table (dequantized, in the model's float dtype, when it is quantized; a
    PackedWeight is a tied table stored as the LM head, whose columns are the rows)."""
    if isinstance(table, PackedWeight):
        return cpu_kernels.packed_rows(table, tokens).astype(table.dtype)
    return quantized_lookup(table, tokens) if is_quantized(table) else table[tokens]


def swiglu_mlp(x: jax.Array, lp: dict[str, Any], intermediate_size: int,
               valid_rows: jax.Array | None = None) -> jax.Array:
    """SwiGLU: down(silu(gate(x)) * up(x)) with a layer's `w_gate` / `w_up` (or fused `w_gate_up`) and `w_down`;
    `valid_rows` as in `linear`."""
    gate, up = projections(x, lp, "w_gate_up", ("w_gate", "w_up"), (intermediate_size,) * 2, valid_rows=valid_rows)
    return linear(jax.nn.silu(gate) * up, lp["w_down"], valid_rows=valid_rows)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> np.ndarray:
    """Inverse frequencies of the rotary embedding, float32, with `linear` or `llama3` scaling applied.

    Computed on the host at trace time: they are constants of the model.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32)
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate-half rotary embedding of x `[tokens, heads, head_dim]` at integer `positions` `[tokens]`."""
    freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos = jnp.cos(emb).astype(x.dtype)[:, None, :]
    sin = jnp.sin(emb).astype(x.dtype)[:, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
