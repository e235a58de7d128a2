"""PackedWeight: a weight matrix in the kernel's tile layout, and the conversion from jaxserve.quant's layouts.

Why a layout of its own: the matmul kernel streams one tile (32 output channels x all of K) at a time. In the
usual `[K, N]` row-major layout a tile's rows lie N bytes apart, and on the 2-core development VM that strided read
ran at 7 GB/s however many threads read it; the same bytes stored tile after tile read at 19-20 GB/s with two
threads (the machine's whole bandwidth). So weights are repacked once, when they are placed:

    values  [L, T, K, C]   T = ceil(N / 32) tiles; C = 32 values per row (float32 or int8), or 16 bytes for 4 bits
                           with byte b holding tile channel b (low nibble) and b + 16 (high nibble)
    scales  [L, G, 32 T]   float32 or float16 (None for float weights), padded channels zero
    offsets [L, G, 32 T]   like scales, or None (symmetric)

The layer axis L is kept so a layer scan hands the kernel the whole stack plus an index (no per-layer copy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TILE = 32


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A `[K, N]` weight (stacked over L layers) in the kernel's tile layout; see the module docstring.

    `layer` selects the layer a matmul uses (a traced index inside a layer scan; None: layer 0). `bits` is 32, 8
    or 4; `n` the logical output channels; `dtype` the float dtype results are cast to.
    """

    values: Any
    scales: Any = None
    offsets: Any = None
    layer: Any = None
    bits: int = dataclasses.field(default=32, metadata=dict(static=True))
    n: int = dataclasses.field(default=0, metadata=dict(static=True))
    dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))

    @property
    def k(self) -> int:
        """The contracted (input) size."""
        return self.values.shape[2]

    @property
    def num_layers(self) -> int:
        """Layers stacked on the leading axis."""
        return self.values.shape[0]

    def at_layer(self, layer: Any) -> "PackedWeight":
        """The same stack, with matmuls reading layer `layer`."""
        return dataclasses.replace(self, layer=layer)

    def describe(self) -> str:
        """A short name of the format, e.g. "packed int4/g32+offset"."""
        if self.bits == 32:
            return "packed float32"
        groups = self.scales.shape[1]
        group = "channel" if groups == 1 else f"g{self.k // groups}"
        return f"packed int{self.bits}/{group}" + ("+offset" if self.offsets is not None else "")


def _unpack_nibbles(values: np.ndarray, axis: int) -> np.ndarray:
    """jaxserve.quant's packing (low nibbles = first half of `axis`) back to one value per element."""
    if values.dtype == np.int8:
        lo, hi = (values << 4) >> 4, values >> 4
    else:
        lo, hi = values & 0x0F, values >> 4
    return np.concatenate([lo, hi], axis=axis)


def pack(values: Any, scales: Any = None, offsets: Any = None, *, bits: int, out_first: bool = False,
         dtype: str = "float32") -> PackedWeight:
    """Repack a weight from jaxserve.quant's layout (numpy or jax arrays, on the host).

    `values`: float32 `[L, K, N]` (bits 32), int8 `[L, K, N]` (bits 8), or 4-bit packed along the output axis
    `[L, K, N/2]` (uint8 unsigned, int8 signed); with `out_first` the last two axes are swapped (`[L, N, K]`, a tied
    embedding). `scales` / `offsets` `[L, G, N]` (out-first `[L, N, G]`). The leading L may be left out.
    """
    values = np.asarray(values)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[None]
        scales = None if scales is None else np.asarray(scales)[None]
        offsets = None if offsets is None else np.asarray(offsets)[None]
    if bits == 4:
        values = _unpack_nibbles(values, axis=1 if out_first else 2)
    if out_first:
        values = np.swapaxes(values, 1, 2)
        scales = None if scales is None else np.swapaxes(np.asarray(scales), 1, 2)
        offsets = None if offsets is None else np.swapaxes(np.asarray(offsets), 1, 2)
    num_layers, k, n = values.shape
    tiles = -(-n // TILE)
    pad = tiles * TILE - n
    if pad:
        values = np.pad(values, ((0, 0), (0, 0), (0, pad)))
    tiled = np.ascontiguousarray(values.reshape(num_layers, k, tiles, TILE).transpose(0, 2, 1, 3))
    if bits == 4:
        lo, hi = tiled[..., :TILE // 2], tiled[..., TILE // 2:]
        packed = (lo.astype(np.uint8) & 0x0F) | (hi.astype(np.uint8) << 4)
        tiled = packed.view(np.int8) if values.dtype == np.int8 else packed
    elif bits == 32:
        tiled = tiled.astype(np.float32)

    def padded(a: Any) -> Any:
        if a is None:
            return None
        a = np.asarray(a)
        return np.ascontiguousarray(np.pad(a, ((0, 0), (0, 0), (0, pad))) if pad else a)

    return PackedWeight(np.ascontiguousarray(tiled), padded(scales), padded(offsets), None, bits, n, dtype)


def concat_outputs(weights: list[PackedWeight]) -> PackedWeight | None:
    """One PackedWeight whose output channels are those of `weights` in order (x @ [W1 | W2 | ...]), or None when
    they cannot share one: another format, K, layer count or scale grid, or a padded tile before the last. Tiles
    are independent, so the result is the tiles (and scale columns) laid one after another: one kernel call, one
    sequential stream, instead of one call per projection."""
    first = weights[0]
    def grid(w: PackedWeight) -> tuple:
        return (w.bits, w.dtype, w.values.shape[0], w.values.shape[2:], w.values.dtype,
                None if w.scales is None else (w.scales.shape[:2], w.scales.dtype), w.offsets is None)
    if any(grid(w) != grid(first) for w in weights) or any(w.n % TILE for w in weights[:-1]):
        return None
    def cat(parts: list, axis: int) -> Any:
        return None if parts[0] is None else np.ascontiguousarray(np.concatenate([np.asarray(p) for p in parts], axis))
    return PackedWeight(cat([w.values for w in weights], 1), cat([w.scales for w in weights], 2),
                        cat([w.offsets for w in weights], 2), None, first.bits, sum(w.n for w in weights), first.dtype)


def unpack(pw: PackedWeight, layer: int = 0) -> jax.Array:
    """The float32 `[K, N]` weight that layer `layer` of `pw` stands for (the reference for tests)."""
    tiles = jnp.asarray(pw.values[layer])  # [T, K, C]
    if pw.bits == 4:
        if tiles.dtype == jnp.int8:
            lo, hi = (tiles << 4) >> 4, tiles >> 4
        else:
            lo, hi = tiles & 0x0F, tiles >> 4
        tiles = jnp.concatenate([lo, hi], axis=-1)
    t, k, _ = tiles.shape
    w = tiles.astype(jnp.float32).transpose(1, 0, 2).reshape(k, t * TILE)
    if pw.scales is not None:
        groups = pw.scales.shape[1]
        w = w.reshape(groups, k // groups, -1) * jnp.asarray(pw.scales[layer], jnp.float32)[:, None, :]
        if pw.offsets is not None:
            w = w + jnp.asarray(pw.offsets[layer], jnp.float32)[:, None, :]
        w = w.reshape(k, -1)
    return w[:, :pw.n]


def packed_rows(pw: PackedWeight, ids: jax.Array) -> jax.Array:
    """Rows `ids` of the `[N, K]` table that `pw` (one layer, e.g. a tied embedding) is the transpose of:
    columns `ids` of W, dequantized, as `[len(ids), K]` float32. An embedding lookup from the packed table."""
    values = pw.values[0]  # [T, K, C]
    k = values.shape[1]
    lane = ids % TILE
    byte = lane % (TILE // 2) if pw.bits == 4 else lane
    q = values[(ids // TILE)[:, None], jnp.arange(k)[None, :], byte[:, None]]  # [n, K]
    if pw.bits == 4:
        high = (lane >= TILE // 2)[:, None]
        if q.dtype == jnp.int8:
            q = jnp.where(high, q >> 4, (q << 4) >> 4)
        else:
            q = jnp.where(high, q >> 4, q & 0x0F)
    w = q.astype(jnp.float32)
    if pw.scales is None:
        return w
    groups = pw.scales.shape[1]
    s = pw.scales[0][:, ids].astype(jnp.float32).T  # [n, G]
    w = w.reshape(ids.shape[0], groups, k // groups) * s[:, :, None]
    if pw.offsets is not None:
        w = w + pw.offsets[0][:, ids].astype(jnp.float32).T[:, :, None]
    return w.reshape(ids.shape[0], k)
