"""QuantConfig (which scheme, which group size, whether embeddings are kept float) and the rule by parameter name."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .quantize import SCHEMES, quantize, quantized_struct
from .tensor import QuantizedTensor, is_quantized

DEFAULT_INT4_GROUP_SIZE = 32
EMBEDDING_KEYS = ("embed",)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Weight quantization: `scheme` "int8" (per output channel unless `group_size`) or "int4" (group-wise,
    `group_size` 32 by default); `quantize_embedding=False` keeps the embedding (and so a tied LM head) in float."""

    scheme: str
    group_size: int | None = None
    quantize_embedding: bool = True

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {self.scheme!r}; supported: {', '.join(SCHEMES)}")
        if self.group_size is not None and (not isinstance(self.group_size, (int, np.integer))
                                            or self.group_size <= 0):
            raise ValueError(f"quantization group size must be a positive integer, got {self.group_size!r}")
        if self.scheme == "int4" and self.group_size is None:
            object.__setattr__(self, "group_size", DEFAULT_INT4_GROUP_SIZE)

    @property
    def bits(self) -> int:
        """8 or 4."""
        return 8 if self.scheme == "int8" else 4

    def applies_to(self, key: str) -> bool:
        """Whether the parameter at flat path `key` ("embed", "lm_head", "layers/wq", ...) is quantized.

        Every matmul weight is; norms and biases never are; the embedding unless `quantize_embedding` is off.
        """
        if key in EMBEDDING_KEYS:
            return self.quantize_embedding
        name = key.rsplit("/", 1)[-1]
        return key == "lm_head" or name.startswith("w")

    def quantize(self, key: str, w: np.ndarray, dtype: str) -> QuantizedTensor:
        """Quantize float parameter `key` (the embedding out-first, others `[.., in, out]`)."""
        return quantize(w, self.bits, self.group_size, out_first=key in EMBEDDING_KEYS, dtype=dtype, name=key)

    def quantize_struct(self, key: str, shape: tuple[int, ...], dtype: str) -> QuantizedTensor:
        """The abstract (shape-only) QuantizedTensor `quantize` would make of parameter `key` of `shape`."""
        return quantized_struct(shape, self.bits, self.group_size, out_first=key in EMBEDDING_KEYS, dtype=dtype,
                                name=key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for native checkpoint metadata)."""
        return dataclasses.asdict(self)


def quantize_params(params: dict[str, Any], config: QuantConfig, dtype: str = "float32") -> dict[str, Any]:
    """Host params with every weight the rule selects replaced by a QuantizedTensor (already quantized ones kept).

    `dtype` is the model's float dtype, which dequantized rows (the embedding lookup) come back in.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "layers":
            out[key] = {name: _maybe(f"layers/{name}", w, config, dtype) for name, w in value.items()}
        else:
            out[key] = _maybe(key, value, config, dtype)
    return out


def _maybe(key: str, value: Any, config: QuantConfig, dtype: str) -> Any:
    if is_quantized(value) or not config.applies_to(key):
        return value
    return config.quantize(key, np.asarray(value), dtype)
