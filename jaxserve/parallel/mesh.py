"""Device meshes for tensor parallelism, and which tensor-parallel sizes a model admits.

A tensor-parallel group is a 1-D `jax.sharding.Mesh` with the axis `"tp"`. Parameters and KV pages are placed with
named shardings over it (`parallel.sharding`) and XLA inserts the collectives; attention runs per shard under
`shard_map`, since every head's attention is independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxserve.config import check_tensor_parallel_size, valid_tensor_parallel_sizes

TP_AXIS = "tp"

__all__ = ["TP_AXIS", "check_tensor_parallel_size", "device_groups", "make_mesh", "replicated",
           "valid_tensor_parallel_sizes"]


def device_groups(group_size: int, num_groups: int = 1,
                  devices: Sequence[jax.Device] | None = None) -> list[list[jax.Device]]:
    """`num_groups` disjoint groups of `group_size` devices, in device order (a ValueError when too few)."""
    devices = list(jax.devices() if devices is None else devices)
    needed = group_size * num_groups
    if needed > len(devices):
        raise ValueError(f"{num_groups} group(s) of {group_size} device(s) need {needed} devices, but only "
                         f"{len(devices)} are visible ({devices[0].platform}); on CPU, simulate more with "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={needed}")
    return [devices[i * group_size:(i + 1) * group_size] for i in range(num_groups)]


def make_mesh(devices: Sequence[jax.Device]) -> Mesh:
    """A 1-D tensor-parallel mesh over `devices`."""
    return Mesh(np.asarray(list(devices)), (TP_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of arrays every device of the mesh holds whole (step inputs, norms)."""
    return NamedSharding(mesh, PartitionSpec())
