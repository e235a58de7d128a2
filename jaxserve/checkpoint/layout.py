"""The parameter pytree's shapes for a config, and a builder that fills it tensor by tensor with checks.

Keys are flat paths: "embed", "final_norm", "lm_head", and "layers/<name>" for the stacked per-layer weights.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jaxserve.config import ModelConfig
from jaxserve.quant import QuantizedTensor, is_quantized

from .base import CheckpointError


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter in the pytree (per-layer weights without the leading layer axis)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embed": (v, h),
        "final_norm": (h,),
        "layers/attn_norm": (h,),
        "layers/wq": (h, q),
        "layers/wk": (h, kv),
        "layers/wv": (h, kv),
        "layers/wo": (q, h),
        "layers/mlp_norm": (h,),
        "layers/w_gate": (h, i),
        "layers/w_up": (h, i),
        "layers/w_down": (i, h),
    }
    if config.attention_bias:
        shapes.update({"layers/bq": (q,), "layers/bk": (kv,), "layers/bv": (kv,)})
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (h, v)
    return shapes


def is_layered(key: str) -> bool:
    """Whether `key` is a per-layer weight stacked on a leading layer axis."""
    return key.startswith("layers/")


def flatten_params(params: dict[str, Any]) -> dict[str, Any]:
    """Nested pytree -> flat {"layers/wq": array, ...}."""
    flat = {k: v for k, v in params.items() if k != "layers"}
    flat.update({f"layers/{k}": v for k, v in params.get("layers", {}).items()})
    return flat


class ParamBuilder:
    """Collects tensors into the stacked pytree, casting to `dtype` and checking every shape against the config.

    `source` prefixes error messages (a file name); `name_of(key, layer)` names a tensor as the checkpoint spells
    it, so that errors about missing tensors speak the checkpoint's language.
    """

    def __init__(self, config: ModelConfig, dtype: np.dtype, source: str,
                 name_of: Callable[[str, int | None], str]) -> None:
        self.config, self.dtype, self.source, self.name_of = config, np.dtype(dtype), source, name_of
        self.shapes = param_shapes(config)
        self.arrays: dict[str, np.ndarray] = {}
        self.filled: dict[str, np.ndarray] = {}
        self.parts: dict[str, list[QuantizedTensor | None]] = {}  # per-layer quantized tensors until finish()

    def expects(self, key: str) -> bool:
        """Whether the config has a parameter `key` (e.g. no "layers/bq" without attention bias)."""
        return key in self.shapes

    def put(self, key: str, value: np.ndarray, *, tensor: str, layer: int | None = None,
            transpose: bool = False) -> None:
        """Store `value` (a tensor named `tensor` in the checkpoint) at `key`, layer `layer` when stacked.

        With `transpose`, `value` is in PyTorch's [out, in] orientation and is stored as [in, out]; the shape check
        (and its message) uses the checkpoint's orientation.
        """
        if key not in self.shapes:
            raise CheckpointError(f"{self.source}: unexpected tensor {tensor!r} (the config has no {key!r})")
        shape = self.shapes[key]
        expected = tuple(reversed(shape)) if transpose else shape
        if tuple(value.shape) != expected:
            raise CheckpointError(f"{self.source}: tensor {tensor!r} has shape {tuple(value.shape)}, but the config "
                                  f"implies {expected}")
        if transpose:
            value = value.T
        layered = is_layered(key)
        if layered != (layer is not None):
            raise CheckpointError(f"{self.source}: tensor {tensor!r} maps to {key!r} with layer={layer}")
        if not layered:
            if key in self.arrays:
                raise CheckpointError(f"{self.source}: tensor {tensor!r} appears twice")
            self.arrays[key] = np.array(value, dtype=self.dtype, order="C")
            return
        if not 0 <= layer < self.config.num_layers:
            raise CheckpointError(f"{self.source}: tensor {tensor!r} is for layer {layer}, but the config has "
                                  f"{self.config.num_layers} layers")
        if key not in self.arrays:
            self.arrays[key] = np.empty((self.config.num_layers, *shape), dtype=self.dtype)
            self.filled[key] = np.zeros(self.config.num_layers, dtype=bool)
        if self.filled[key][layer]:
            raise CheckpointError(f"{self.source}: tensor {tensor!r} appears twice")
        self.arrays[key][layer] = value  # casts on assignment
        self.filled[key][layer] = True

    def put_quantized(self, key: str, value: QuantizedTensor, *, tensor: str, layer: int | None = None) -> None:
        """Store a QuantizedTensor (already in the pytree's orientation) at `key`, layer `layer` when stacked."""
        if key not in self.shapes:
            raise CheckpointError(f"{self.source}: unexpected tensor {tensor!r} (the config has no {key!r})")
        if tuple(value.shape) != self.shapes[key]:
            raise CheckpointError(f"{self.source}: tensor {tensor!r} has shape {value.shape}, but the config "
                                  f"implies {self.shapes[key]}")
        if layer is None:
            self.arrays[key] = value
            return
        parts = self.parts.setdefault(key, [None] * self.config.num_layers)
        if parts[layer] is not None:
            raise CheckpointError(f"{self.source}: tensor {tensor!r} appears twice")
        parts[layer] = value
        self.filled.setdefault(key, np.zeros(self.config.num_layers, dtype=bool))[layer] = True

    def _stack_parts(self) -> None:
        """Stack complete per-layer QuantizedTensors on the layer axis (all layers must share one format)."""
        for key, parts in self.parts.items():
            if any(p is None for p in parts):
                continue  # reported as missing by finish()
            formats = {(p.bits, p.group_size, p.out_first, p.values.dtype, p.offsets is None) for p in parts}
            if len(formats) != 1:
                raise CheckpointError(f"{self.source}: the layers of {key!r} are quantized in different formats")
            first = parts[0]
            offsets = None if first.offsets is None else np.stack([p.offsets for p in parts])
            self.arrays[key] = QuantizedTensor(np.stack([p.values for p in parts]), np.stack([p.scales for p in parts]),
                                               offsets, first.bits, first.group_size, first.out_first, first.dtype)

    def put_whole(self, key: str, value: np.ndarray, *, tensor: str) -> None:
        """Store a complete parameter as the pytree holds it ([L, ...] when stacked), without copying when the
        dtype already matches (native checkpoints)."""
        if key not in self.shapes:
            raise CheckpointError(f"{self.source}: unexpected parameter {tensor!r}")
        expected = (self.config.num_layers, *self.shapes[key]) if is_layered(key) else self.shapes[key]
        if tuple(value.shape) != expected:
            raise CheckpointError(f"{self.source}: parameter {tensor!r} has shape {tuple(value.shape)}, but the "
                                  f"config implies {expected}")
        self.arrays[key] = value if is_quantized(value) else np.ascontiguousarray(value, dtype=self.dtype)
        if is_layered(key):
            self.filled[key] = np.ones(self.config.num_layers, dtype=bool)

    def finish(self) -> dict[str, Any]:
        """The nested pytree; a CheckpointError naming up to ten missing tensors if any is absent."""
        self._stack_parts()
        missing = []
        for key in self.shapes:
            if key not in self.arrays and key not in self.filled:
                layers = range(self.config.num_layers) if is_layered(key) else [None]
            elif is_layered(key):
                layers = [int(i) for i in np.flatnonzero(~self.filled[key])]
            else:
                layers = []
            missing.extend(self.name_of(key, layer) for layer in layers)
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise CheckpointError(f"{self.source}: missing tensors: {', '.join(missing[:10])}{more}")
        params: dict[str, Any] = {"layers": {}}
        for key, array in self.arrays.items():
            if is_layered(key):
                params["layers"][key.split("/", 1)[1]] = array
            else:
                params[key] = array
        return params
