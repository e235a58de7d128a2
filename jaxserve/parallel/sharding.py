"""Megatron-style shardings of the parameter pytree and the KV pages over a tensor-parallel mesh.

- Attention: Q/K/V projections split by output column (whole heads per shard, in KV-head order, so each shard
  keeps a KV head with its group of query heads), the output projection by input row.
- MLP: gate and up split by the intermediate dimension (columns), down by it too (rows).
- Embedding and LM head split by vocabulary; norms replicated.
- KV pages split by KV head (axis 1 of every cache array), so each device holds its heads' pages.

A column-split matmul needs no communication; a row-split one leaves partial sums that XLA all-reduces. A dimension
the mesh does not divide (a vocabulary of odd size, per-channel scales of a row-split weight) stays replicated.
Quantized weights (`QuantizedTensor`) are split along the same logical axis as their float counterparts, scales
and offsets with them.

Placement from host arrays sends each device only its slices (`jax.device_put` with these shardings), so the whole
model is never materialised on one device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxserve.parallel.mesh import TP_AXIS
from jaxserve.quant import is_quantized

# Which logical axis of a weight is split: "out" (columns of x @ w), "in" (rows) or "vocab".
_COLUMN = ("wq", "wk", "wv", "w_gate", "w_up", "bq", "bk", "bv")
_ROW = ("wo", "w_down")

HEADS = PartitionSpec(None, TP_AXIS, None)  # [tokens, heads, head_dim] activations
CACHE = PartitionSpec(None, TP_AXIS)  # [layers, kv_heads, pages, ...] for every cache array


def _split(shape: tuple[int, ...], axis: int, size: int) -> PartitionSpec:
    """Split `axis` of `shape` over the mesh when it divides evenly; replicate otherwise."""
    axis %= len(shape)
    if shape[axis] % size:
        return PartitionSpec()
    return PartitionSpec(*([None] * axis), TP_AXIS)


def _weight_axis(name: str, leaf: Any) -> int | None:
    """The axis of a (float or quantized-values) leaf to split, from its name; None keeps it whole."""
    out_first = is_quantized(leaf) and leaf.out_first
    if name in _COLUMN or name == "lm_head":
        return -1
    if name in _ROW:
        return -2
    if name == "embed":  # [vocab, hidden]: split by vocabulary (out_first when quantized)
        return -2 if (out_first or not is_quantized(leaf)) else -1
    return None


def param_specs(params: dict[str, Any], size: int) -> dict[str, Any]:
    """PartitionSpecs for every leaf of a params pytree (QuantizedTensors get one per array)."""

    def spec(name: str, leaf: Any) -> Any:
        axis = _weight_axis(name, leaf)
        if not is_quantized(leaf):
            return PartitionSpec() if axis is None else _split(leaf.shape, axis, size)
        parts = {"values": leaf.values, "scales": leaf.scales, "offsets": leaf.offsets}
        specs = {key: None if arr is None else (PartitionSpec() if axis is None else _split(arr.shape, axis, size))
                 for key, arr in parts.items()}
        return dataclasses.replace(leaf, **specs)

    def walk(tree: dict[str, Any]) -> dict[str, Any]:
        def node(name: str, value: Any) -> Any:
            if isinstance(value, dict):
                return walk(value)
            if isinstance(value, (list, tuple)):  # per-layer dicts (`model.llama.unstack_layers`)
                return type(value)(walk(item) for item in value)
            return spec(name, value)

        return {name: node(name, value) for name, value in tree.items()}

    return walk(params)


def param_shardings(params: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """NamedShardings for `params` on `mesh` (the tree of `param_specs`)."""
    specs = param_specs(params, mesh.size)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                  is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_params(params: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Place `params` (host or device arrays) on `mesh`, each device receiving only its slices.

    A mesh spanning several processes (multi-host) is filled by each process for its own devices, from its own
    host copy (`jax.make_array_from_callback`).
    """
    shardings = param_shardings(params, mesh)
    if all(device.process_index == jax.process_index() for device in mesh.devices.flat):
        return jax.device_put(params, shardings)

    def place(value: Any, sharding: NamedSharding) -> jax.Array:
        if isinstance(value, jax.Array):  # already on devices: XLA reshards (a no-op when already in place)
            return jax.device_put(value, sharding)
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(place, params, shardings)


def cache_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of every KV cache array: split by KV head."""
    return NamedSharding(mesh, CACHE)


def shard_by_heads(block: Callable, mesh: Mesh) -> Callable:
    """Run `block(q, k, v, cache, layer, meta, positions) -> (out, cache)` once per device on its heads.

    q `[T, Hq, D]`, k and v `[T, Hkv, D]` and `out` are split by head, every cache array by KV head; the layer
    index, the attention metadata and the positions are replicated. Each device sees an ordinary (smaller) model
    with `Hq / n` query heads and `Hkv / n` KV heads, so the XLA path and the Pallas kernels run unchanged.
    """

    def sharded(q, k, v, cache, layer, meta, positions):
        cache_specs = {name: CACHE for name in cache}
        run = jax.shard_map(block, mesh=mesh, in_specs=(HEADS, HEADS, HEADS, cache_specs, PartitionSpec(),
                                                        PartitionSpec(), PartitionSpec()),
                            out_specs=(HEADS, cache_specs), check_vma=False)
        return run(q, k, v, cache, layer, meta, positions)

    return sharded

