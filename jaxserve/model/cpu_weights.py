"""Parameters in the native CPU kernels' weight layout (`cpu_kernels.PackedWeight`), and when to use it.

`matmul_backend`: "xla" runs every matmul as an XLA dot (quantized weights dequantized inside it); "cpu" repacks the
matmul weights once, at placement, into the tile layout of `cpu_kernels` and runs them through its kernel, which
reads each weight once at its stored size and takes the stacked layers in place; "auto" is "cpu" on XLA:CPU when
the kernels build here with SIMD, on one device of one process, and "xla" everywhere else. Packed weights are not
split over devices, so tensor parallelism keeps the XLA path.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

import cpu_kernels
from cpu_kernels import PackedWeight
from jaxserve.config import MATMUL_BACKENDS
from jaxserve.quant import QuantizedTensor, is_quantized

logger = logging.getLogger(__name__)


def resolve_matmul_backend(backend: str, platform: str, tensor_parallel_size: int = 1,
                           num_processes: int = 1) -> str:
    """"xla" or "cpu" for `backend` here; an explicit "cpu" that cannot run is a ValueError saying why."""
    if backend not in MATMUL_BACKENDS:
        raise ValueError(f"matmul_backend must be one of {MATMUL_BACKENDS}, got {backend!r}")
    if backend == "xla":
        return "xla"
    reason = cpu_kernels.unusable_reason(platform, require_simd=backend == "auto")
    if reason is None and (tensor_parallel_size > 1 or num_processes > 1):
        reason = "packed weights are not split over devices (tensor parallelism and multi-host use XLA)"
    if reason is None:
        return "cpu"
    if backend == "cpu":
        raise ValueError(f"matmul_backend='cpu': {reason}")
    logger.info("matmul_backend='auto': %s; using XLA matmuls", reason)
    return "xla"


def _pack_leaf(value: Any, out_first: bool = False) -> Any:
    """A matmul weight as a PackedWeight; anything the kernel does not take (bfloat16 floats) is left as it is."""
    if isinstance(value, PackedWeight):
        return value
    if is_quantized(value):
        qt: QuantizedTensor = value
        return cpu_kernels.pack(qt.values, qt.scales, qt.offsets, bits=qt.bits, out_first=qt.out_first,
                                dtype=qt.dtype)
    array = np.asarray(value)
    if array.dtype != np.float32:
        return value
    return cpu_kernels.pack(array, bits=32, out_first=out_first, dtype="float32")


def _is_weight(name: str) -> bool:
    return name.startswith("w")


# Projections that read the same input, fused into one packed weight (one kernel call and one weight stream per
# group: a decode step of the default model makes 90 fewer calls; int8, one sequence: see bench/RESULTS.md).
FUSED = {"wqkv": ("wq", "wk", "wv"), "w_gate_up": ("w_gate", "w_up")}


def _fuse(layer: dict[str, Any]) -> dict[str, Any]:
    for fused, parts in FUSED.items():
        if all(isinstance(layer.get(p), PackedWeight) for p in parts):
            combined = cpu_kernels.concat_outputs([layer[p] for p in parts])
            if combined is not None:
                layer = {k: v for k, v in layer.items() if k not in parts}
                layer[fused] = combined
    return layer


def pack_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` (host arrays) with every matmul weight packed: the layers' `w*` weights, the LM head, and a tied
    embedding (then both the LM head and the lookup table: `model.layers.embed_lookup` reads packed tables).
    Q/K/V and gate/up become `wqkv` / `w_gate_up` where their formats allow (see FUSED). Idempotent."""
    def pack_layer(layer: dict[str, Any]) -> dict[str, Any]:
        return _fuse({name: _pack_leaf(v) if _is_weight(name) else v for name, v in layer.items()})

    out = dict(params)
    layers = params.get("layers")
    if isinstance(layers, (list, tuple)):
        out["layers"] = [pack_layer(lp) for lp in layers]
    elif isinstance(layers, dict):
        out["layers"] = pack_layer(layers)
    if "lm_head" in params:
        out["lm_head"] = _pack_leaf(params["lm_head"])
    elif "embed" in params:  # tied: the embedding [vocab, hidden] is the head's transpose
        out["embed"] = _pack_leaf(params["embed"], out_first=True)
    return out
