"""QuantizedTensor: an integer weight matrix with its scales, as a pytree that fits the stacked-layer params.

Layout (every array may carry extra leading axes, e.g. the layer axis `L` that `lax.scan` slices off):

- A weight of logical shape `[K, N]` (`[in, out]`, the usual `x @ w` orientation) or, with `out_first`, `[N, K]`
  (the embedding `[vocab, hidden]`, which is both a lookup table and the tied LM head).
- `values`: int8 (8 bits, or 4 bits signed) or uint8 (4 bits unsigned, i.e. with `offsets`).
  With 4 bits two values share a byte *along the output axis*: the low nibble holds output channel `n`, the high
  nibble channel `n + N/2`. Splitting the output axis (not the contracted one) lets a matmul unpack each half with
  one shift, fused by XLA into the dot's operand, and keeps the group scales of a half contiguous.
- `scales`: `[G, N]` (`out_first`: `[N, G]`) for `G = K / group_size` groups along the contracted axis.
  Per-output-channel quantization is the case `G == 1` (group_size == K). float32 per channel, float16 per group
  (GGUF's scale type, so Q8_0 / Q4_x blocks load bit-exactly, and 2 bytes per 32 values instead of 4).
- `offsets`: None (symmetric: `w = q * s`) or like `scales` (asymmetric, GGUF Q4_1: `w = q * s + o`, q in 0..15).

`bits`, `group_size`, `out_first` and `dtype` (the float dtype the weight stands for) are static metadata, so a
jitted model specialises on them and the arrays alone travel as leaves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """An int8 / int4 weight with group-wise (or per-channel) scales; see the module docstring for the layout."""

    values: Any
    scales: Any
    offsets: Any = None
    bits: int = dataclasses.field(default=8, metadata=dict(static=True))
    group_size: int = dataclasses.field(default=0, metadata=dict(static=True))
    out_first: bool = dataclasses.field(default=False, metadata=dict(static=True))
    dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))

    @property
    def in_axis(self) -> int:
        """The contracted (input) axis of `values`."""
        return -1 if self.out_first else -2

    @property
    def out_axis(self) -> int:
        """The output-channel axis of `values` (the packed one for 4 bits)."""
        return -2 if self.out_first else -1

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical (unpacked) shape, leading axes included."""
        shape = list(self.values.shape)
        if self.bits == 4:
            shape[self.out_axis] *= 2
        return tuple(shape)

    @property
    def num_groups(self) -> int:
        """Groups along the contracted axis (1 = per output channel)."""
        return self.shape[self.in_axis] // self.group_size

    @property
    def nbytes(self) -> int:
        """Bytes held: values, scales and offsets."""
        arrays = [self.values, self.scales] + ([] if self.offsets is None else [self.offsets])
        return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in arrays))

    def describe(self) -> str:
        """A short name of the format, e.g. "int4/g32" or "int8/channel"."""
        group = "channel" if self.num_groups == 1 else f"g{self.group_size}"
        return f"int{self.bits}/{group}" + ("+offset" if self.offsets is not None else "")


def is_quantized(x: Any) -> bool:
    """Whether `x` is a QuantizedTensor."""
    return isinstance(x, QuantizedTensor)


def param_nbytes(params: Any) -> int:
    """Bytes of a params pytree, quantized leaves counted as stored (4-bit values at two per byte)."""
    leaves = jax.tree_util.tree_leaves(params)
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in leaves))
