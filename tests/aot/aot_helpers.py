"""Compile-only devices shared by the compile checks (topologies are cheap, but built once per session)."""

from __future__ import annotations

import functools

import jax

from jaxserve.aot.targets import compile_only_devices, parse_target

CHECK_TARGETS = ("tpu-v5e", "tpu-v6e", "h100", "a100-80gb")


@functools.cache
def device(target: str) -> jax.Device:
    """The first compile-only device of `target`."""
    return compile_only_devices(parse_target(target))[0]


def sharding(target: str) -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(device(target))
