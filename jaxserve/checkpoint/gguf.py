"""GGUF files (llama.cpp): metadata -> ModelConfig, tensors dequantized into the jaxserve pytree."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize

from jaxserve.config import ModelConfig
from jaxserve.quant import QuantConfig

from .base import CheckpointError, LoadedCheckpoint, progress_bar, resolve_dtype
from .gguf_config import config_from_gguf
from .gguf_quant import loads_directly, to_quantized
from .layout import ParamBuilder

_Q = GGMLQuantizationType
# Types `gguf.quants.dequantize` handles with numpy. The tests check all but the K-quants against quantize() round
# trips (gguf-py cannot quantize K-quants).
SUPPORTED_TYPES = frozenset({_Q.F32, _Q.F16, _Q.BF16, _Q.Q8_0, _Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1,
                             _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K})

# GGUF name -> (pytree key, stored [out, in] and so transposed)
_GLOBAL_TENSORS: dict[str, tuple[str, bool]] = {
    "token_embd.weight": ("embed", False),
    "output_norm.weight": ("final_norm", False),
    "output.weight": ("lm_head", True),
}
_LAYER_TENSORS: dict[str, tuple[str, bool]] = {
    "attn_norm.weight": ("layers/attn_norm", False),
    "attn_q.weight": ("layers/wq", True),
    "attn_k.weight": ("layers/wk", True),
    "attn_v.weight": ("layers/wv", True),
    "attn_output.weight": ("layers/wo", True),
    "attn_q.bias": ("layers/bq", False),
    "attn_k.bias": ("layers/bk", False),
    "attn_v.bias": ("layers/bv", False),
    "ffn_norm.weight": ("layers/mlp_norm", False),
    "ffn_gate.weight": ("layers/w_gate", True),
    "ffn_up.weight": ("layers/w_up", True),
    "ffn_down.weight": ("layers/w_down", True),
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_CONSUMED = {"rope_freqs.weight"}  # read into the config, not a parameter


def gguf_tensor_name(key: str, layer: int | None) -> str:
    """The GGUF name of pytree parameter `key` (at `layer` for stacked weights)."""
    for name, (k, _) in _GLOBAL_TENSORS.items():
        if k == key:
            return name
    suffix = next(s for s, (k, _) in _LAYER_TENSORS.items() if k == key)
    return f"blk.{layer}.{suffix}"


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> Hugging Face's rotate-half halves).

    `w` is [n_heads * head_dim, ...] in PyTorch orientation (a weight or a bias).
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class _PlainArrayReader(GGUFReader):
    """GGUFReader parsing through a plain ndarray view of its memory map.

    Slicing an `np.memmap` runs `memmap.__array_finalize__` per slice, and a 49k-token vocabulary plus its merges
    is over a million slices: this parses the default model's header several times faster. Semantics unchanged.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        count = int(count)
        arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


# Only where gguf's private `_get` still has the signature it had when this was written (gguf 0.19).
_Reader = _PlainArrayReader if list(inspect.signature(GGUFReader._get).parameters) == [
    "self", "offset", "dtype", "count", "override_order"] else GGUFReader


def open_gguf(path: Path) -> tuple[GGUFReader, dict[str, ReaderTensor]]:
    """Parse a GGUF file's header; damage (truncation, bad magic) becomes a CheckpointError."""
    try:
        size = path.stat().st_size
        reader = _Reader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({size} bytes); the reader said: {e}") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise CheckpointError(f"{path}: truncated GGUF file: tensor {t.name!r} extends past the end of the file")
    return reader, {t.name: t for t in reader.tensors}


def dequantize_tensor(t: ReaderTensor, source: str) -> np.ndarray:
    """A GGUF tensor as float32 in numpy (PyTorch) orientation."""
    if t.tensor_type not in SUPPORTED_TYPES:
        raise CheckpointError(f"{source}: tensor {t.name!r} has unsupported type {t.tensor_type.name}; supported: "
                              f"{', '.join(sorted(q.name for q in SUPPORTED_TYPES))}")
    array = dequantize(t.data, t.tensor_type)
    shape = tuple(int(d) for d in reversed(t.shape))
    if array.shape != shape:
        raise CheckpointError(f"{source}: tensor {t.name!r} dequantized to {array.shape}, expected {shape}")
    return array


def load_gguf(path: str | Path, dtype: str | None = "float32", progress: bool = True,
              quantization: QuantConfig | None = None) -> LoadedCheckpoint:
    """Load a llama or qwen2 GGUF file, dequantizing to `dtype` ("auto" means float32).

    With `quantization`, the weights its rule selects become QuantizedTensors tensor by tensor: Q8_0 / Q4_0 / Q4_1
    blocks that match the requested format are kept as they are (gguf_quant), others are dequantized one tensor
    at a time and quantized, so no float copy of the whole model is made.
    """
    path = Path(path)
    reader, tensors = open_gguf(path)
    config = config_from_gguf(reader, tensors, str(path))
    builder = ParamBuilder(config, resolve_dtype(dtype), str(path), gguf_tensor_name)
    direct = _direct_keys(tensors, quantization)
    for name, t in progress_bar(tensors.items(), enabled=progress, desc=f"loading {path.name}",
                                total=len(tensors)):
        _put(builder, config, name, t, str(path), quantization, direct)
    return LoadedCheckpoint(config, builder.finish(), str(path), "gguf")


def _key_of(name: str) -> tuple[str, bool, int | None] | None:
    """(pytree key, transposed, layer) of a GGUF tensor name, or None when it is not a parameter we know."""
    if name in _GLOBAL_TENSORS:
        return (*_GLOBAL_TENSORS[name], None)
    match = _LAYER_RE.fullmatch(name)
    if match and match.group(2) in _LAYER_TENSORS:
        return (*_LAYER_TENSORS[match.group(2)], int(match.group(1)))
    return None


def _direct_keys(tensors: dict[str, ReaderTensor], quantization: QuantConfig | None) -> set[str]:
    """Keys whose tensors (in every layer) load straight into the requested quantized format."""
    if quantization is None:
        return set()
    types: dict[str, set] = {}
    for name, t in tensors.items():
        found = _key_of(name)
        if found is not None:
            types.setdefault(found[0], set()).add(t.tensor_type)
    return {key for key, kinds in types.items() if quantization.applies_to(key) and loads_directly(kinds, quantization)}


def _put(builder: ParamBuilder, config: ModelConfig, name: str, t: ReaderTensor, source: str,
         quantization: QuantConfig | None = None, direct: frozenset[str] | set[str] = frozenset()) -> None:
    if name in _CONSUMED:
        return
    found = _key_of(name)
    if found is None:
        raise CheckpointError(f"{source}: unknown tensor {name!r}: not part of a {config.architecture} model that "
                              f"jaxserve supports")
    key, transpose, layer = found
    if layer is not None and not builder.expects(key):
        raise CheckpointError(f"{source}: unexpected tensor {name!r}: blk.0 has no attention bias")
    fix_rows = lambda a: a  # noqa: E731
    # llama.cpp permutes Q/K rows for its interleaved RoPE in the llama architecture only (not qwen2).
    if config.architecture == "llama" and key in ("layers/wq", "layers/bq", "layers/wk", "layers/bk"):
        n_heads = config.num_heads if key in ("layers/wq", "layers/bq") else config.num_kv_heads
        rows = int(t.shape[-1]) if len(t.shape) > 1 else int(t.shape[0])
        if rows != n_heads * config.head_dim:
            raise CheckpointError(f"{source}: tensor {name!r} has {rows} rows, but the config implies "
                                  f"{n_heads * config.head_dim}")
        fix_rows = lambda a: unpermute_rope_rows(a, n_heads)  # noqa: E731
    dtype_name = builder.dtype.name
    if key in direct:
        builder.put_quantized(key, to_quantized(t, out_first=not transpose, dtype=dtype_name, fix_rows=fix_rows),
                              tensor=name, layer=layer)
        return
    array = fix_rows(dequantize_tensor(t, source))
    if quantization is not None and quantization.applies_to(key):
        array = array.T if transpose else array
        builder.put_quantized(key, quantization.quantize(key, array, dtype_name), tensor=name, layer=layer)
        return
    builder.put(key, array, tensor=name, layer=layer, transpose=transpose)
