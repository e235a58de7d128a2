"""Reading the key-value metadata at the head of a GGUF file, and nothing else.

`gguf.GGUFReader` builds a numpy view for every string of every array and every tensor header, which takes
seconds for a 50k-entry vocabulary; a tokenizer only needs the metadata, which this reads in well under a second
by walking the key-value section directly (format: github.com/ggml-org/ggml/blob/master/docs/gguf.md).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

GGUF_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Cursor:
    """A read position in the mapped file."""

    def __init__(self, buf: mmap.mmap, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self, keep: bool = True) -> str | None:
        (length,) = self.unpack("Q")
        start, self.pos = self.pos, self.pos + length
        if self.pos > len(self.buf):
            raise ValueError("string runs past the end of the file")
        return self.buf[start:self.pos].decode("utf-8", errors="replace") if keep else None

    def value(self, value_type: int, keep: bool = True) -> Any:
        if value_type == _STRING:
            return self.string(keep)
        if value_type in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[value_type])[0]
        if value_type != _ARRAY:
            raise ValueError(f"unknown GGUF value type {value_type}")
        item_type, count = self.unpack("IQ")
        if item_type in _SCALAR_FORMATS:
            fmt = f"{count}{_SCALAR_FORMATS[item_type]}"
            if not keep:
                self.pos += struct.calcsize("<" + fmt)
                return None
            return list(self.unpack(fmt))
        items = [self.value(item_type, keep) for _ in range(count)]
        return items if keep else None


def read_gguf_metadata(path: str | os.PathLike[str], prefix: str = "") -> dict[str, Any]:
    """The metadata entries of the GGUF file at `path` whose keys start with `prefix`, as Python values.

    Raises ValueError naming the file when it is not a (little-endian, version >= 2) GGUF file or is truncated.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as e:  # an empty file cannot be mapped
            raise ValueError(f"{path} is not a GGUF file: {e}") from e
    with buf:
        if buf[:4] != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
        try:
            cursor = _Cursor(buf, 4)
            (version,) = cursor.unpack("I")
            if not 2 <= version <= 0xFFFF:
                raise ValueError(f"unsupported GGUF version {version} (big-endian or v1 files are not read)")
            _, n_kv = cursor.unpack("QQ")
            out: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cursor.string()
                (value_type,) = cursor.unpack("I")
                keep = key.startswith(prefix)
                value = cursor.value(value_type, keep)
                if keep:
                    out[key] = value
            return out
        except (struct.error, ValueError, OverflowError, MemoryError) as e:
            raise ValueError(f"Could not read the metadata of GGUF file {path}: {e}") from e
