"""`matmul`: x @ W on the CPU for a PackedWeight (float32, int8 or 4-bit), and its reference.

The kernel (csrc/matmul.cc) dequantizes in registers, so a quantized weight is read once at its stored size, and it
takes the whole stacked weight with a layer index, so a layer scan does not copy each layer's slice out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .build import load
from .packing import PackedWeight, unpack


def matmul(x: jax.Array, w: PackedWeight, valid_rows: jax.Array | int | None = None) -> jax.Array:
    """float32 `x [M, K]` @ layer `w.layer` of `w`: float32 `[M, w.n]`.

    `valid_rows` (default M, may be traced): rows from it on are padding (a step bucket's unused slots); the kernel
    skips them and returns zeros there, so a step pays for its real tokens, not its bucket.
    """
    load()
    empty = jnp.zeros((1,), jnp.float32)
    layer = jnp.asarray(0 if w.layer is None else w.layer, jnp.int32)
    rows = jnp.asarray(x.shape[0] if valid_rows is None else valid_rows, jnp.int32)
    padded = w.values.shape[1] * 32
    call = jax.ffi.ffi_call("cpuk_matmul", jax.ShapeDtypeStruct((x.shape[0], padded), jnp.float32))
    y = call(x.astype(jnp.float32), w.values, empty if w.scales is None else w.scales,
             empty if w.offsets is None else w.offsets, layer, rows, bits=w.bits, has_scales=w.scales is not None,
             has_offsets=w.offsets is not None)
    return y if padded == w.n else y[:, :w.n]


def matmul_reference(x: jax.Array, w: PackedWeight, layer: int = 0) -> jax.Array:
    """`matmul` in plain jnp: unpack and dequantize layer `layer`, then a float32 dot at full precision."""
    return jnp.dot(x.astype(jnp.float32), unpack(w, layer), precision=jax.lax.Precision.HIGHEST)
