"""A strict reader for the safetensors format: an 8-byte little-endian header length, a JSON header, raw data.

Reading the format directly (rather than through the `safetensors` library) gives bfloat16 as `ml_dtypes.bfloat16`
without torch, memory-maps the data, and turns every kind of damage into a CheckpointError that names the file.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import ml_dtypes
import numpy as np

from .base import CheckpointError

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    """The tensors of one `.safetensors` file, validated on open and read lazily through a memory map."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        name = self.path
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{name}: not a safetensors file (only {size} bytes; truncated?)")
                header_len = int.from_bytes(prefix, "little")
                if header_len > min(_MAX_HEADER, size - 8):
                    raise CheckpointError(f"{name}: corrupt or truncated safetensors file (header of {header_len} "
                                          f"bytes, file of {size} bytes)")
                raw = f.read(header_len)
        except OSError as e:
            raise CheckpointError(f"cannot read {self.path}: {e}") from e
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{name}: corrupt safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{name}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        data_size = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for tensor, info in header.items():
            try:
                dtype_code, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), \
                    info["data_offsets"]
            except (TypeError, KeyError, ValueError) as e:
                raise CheckpointError(f"{name}: corrupt safetensors header entry for {tensor!r}") from e
            if dtype_code not in _DTYPES:
                raise CheckpointError(f"{name}: tensor {tensor!r} has unsupported dtype {dtype_code}")
            dtype = _DTYPES[dtype_code]
            if end > data_size:
                raise CheckpointError(f"{name}: truncated safetensors file: tensor {tensor!r} ends at byte {end} "
                                      f"of the data section, which has only {data_size} bytes")
            if not 0 <= begin <= end or end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise CheckpointError(f"{name}: corrupt safetensors header: tensor {tensor!r} has offsets "
                                      f"{begin}..{end} for shape {shape} of {dtype_code}")
            self._entries[tensor] = (dtype, shape, int(begin), int(end))
        self._map: np.memmap | None = None

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tensor: str) -> bool:
        return tensor in self._entries

    def get(self, tensor: str) -> np.ndarray:
        """A read-only view of `tensor` (copy it before the file goes away)."""
        dtype, shape, begin, end = self._entries[tensor]
        if begin == end:
            return np.zeros(shape, dtype=dtype)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._map[self._data_start + begin:self._data_start + end]
        return raw.view(dtype).reshape(shape)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) pairs in file order."""
        for tensor in self._entries:
            yield tensor, self.get(tensor)

    def close(self) -> None:
        """Drop the memory map."""
        self._map = None
