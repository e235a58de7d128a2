"""GGUF Q8_0 / Q4_0 / Q4_1 blocks straight into QuantizedTensors, without a float copy.

llama.cpp's blocks quantize 32 consecutive values of a row (the contracted axis): Q8_0 is `d * q` (q int8), Q4_0 is
`d * (q - 8)` and Q4_1 is `d * q + m` (q in 0..15), with `d` and `m` float16. These are exactly jaxserve's group-32
formats (int8/g32, int4/g32 signed, int4/g32 unsigned with offsets), so the integers and float16 scales are kept
bit for bit, and dequantizing gives the same float32 values gguf-py's `dequantize` gives.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, ReaderTensor

from jaxserve.quant import QuantConfig, QuantizedTensor, pack_nibbles

_Q = GGMLQuantizationType
GGUF_BLOCK = 32
# GGUF type -> the scheme it loads into directly
DIRECT_TYPES = {_Q.Q8_0: "int8", _Q.Q4_0: "int4", _Q.Q4_1: "int4"}


def loads_directly(types: set[GGMLQuantizationType], config: QuantConfig) -> bool:
    """Whether tensors of `types` (all layers of one parameter) load into `config`'s format without requantizing.

    int8 takes Q8_0 (its 32-value blocks become int8 groups of 32, even when per-channel int8 was asked for:
    keeping the file's scales is lossless); int4 with group size 32 takes Q4_0 or Q4_1.
    """
    if len(types) != 1:
        return False
    (kind,) = types
    if DIRECT_TYPES.get(kind) != config.scheme:
        return False
    return config.group_size in (None, GGUF_BLOCK) if config.scheme == "int8" else config.group_size == GGUF_BLOCK


def unpack_blocks(t: ReaderTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(q [rows, cols] int8 or uint8, d [rows, cols/32] float16, m like d or None) of a Q8_0/Q4_0/Q4_1 tensor."""
    rows = int(t.data.shape[0])
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(rows, -1, _block_bytes(t.tensor_type))
    d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]
    if t.tensor_type == _Q.Q8_0:
        return np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, -1), d, None
    start = 4 if t.tensor_type == _Q.Q4_1 else 2
    qs = blocks[..., start:]  # 16 bytes: value j in the low nibble, value j + 16 in the high nibble
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)
    if t.tensor_type == _Q.Q4_0:
        return (q.astype(np.int8) - 8), d, None
    m = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
    return q, d, m


def _block_bytes(kind: GGMLQuantizationType) -> int:
    return {_Q.Q8_0: 34, _Q.Q4_0: 18, _Q.Q4_1: 20}[kind]


def to_quantized(t: ReaderTensor, *, out_first: bool, dtype: str,
                 fix_rows=lambda a: a) -> QuantizedTensor:
    """A QuantizedTensor from a Q8_0/Q4_0/Q4_1 GGUF tensor (stored `[out, in]`, PyTorch's orientation).

    `out_first` keeps that orientation (the embedding); otherwise the weight is stored `[in, out]`. `fix_rows` is
    applied to q, d and m alike in PyTorch orientation (e.g. undoing llama.cpp's Q/K row permutation).
    """
    bits = 8 if t.tensor_type == _Q.Q8_0 else 4
    q, d, m = (None if a is None else fix_rows(a) for a in unpack_blocks(t))
    if not out_first:
        q, d = q.T, d.T
        m = None if m is None else m.T
    out_axis = -2 if out_first else -1
    values = pack_nibbles(q, out_axis) if bits == 4 else q
    return QuantizedTensor(np.ascontiguousarray(values), np.ascontiguousarray(d),
                           None if m is None else np.ascontiguousarray(m), bits, GGUF_BLOCK, out_first, dtype)
