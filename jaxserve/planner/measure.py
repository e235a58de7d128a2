"""Measures the local device for the planner: usable memory, read bandwidth and matmul rate.

Peaks are the best of several runs, not their median: a shared machine's noise only ever slows a run down, and a
median taken while a neighbour is busy understates what the hardware does (one such run on the 2-core VM measured
9.1 GB/s and 96 GFLOP/s against its usual 17-20 GB/s and 145-200 GFLOP/s)."""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp

from jaxserve.planner.devices import DeviceSpec


def run_times(fn, *args, repeats: int = 7) -> list[float]:
    """Wall times of `fn(*args)` over `repeats` runs, after one untimed run (compilation, warm-up)."""
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, *args, repeats: int = 7) -> float:
    """Median wall time of `fn(*args)` (what a step of this work typically costs)."""
    return statistics.median(run_times(fn, *args, repeats=repeats))


def best_seconds(fn, *args, repeats: int = 11) -> float:
    """Shortest wall time of `fn(*args)` (what the hardware can do: noise only adds time)."""
    return min(run_times(fn, *args, repeats=repeats))


def measure_bandwidth(num_bytes: int | None = None, repeats: int = 11) -> float:
    """Bytes/s of a full read of a large float32 array (a reduction: the access pattern of decode)."""
    accelerator = jax.default_backend() != "cpu"
    num_bytes = num_bytes or (2 << 30 if accelerator else 256 << 20)
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    return num_bytes / best_seconds(jax.jit(jnp.sum), x, repeats=repeats)


def measure_copy_bandwidth(num_bytes: int, repeats: int = 11) -> float:
    """Bytes/s (read + write) of an elementwise pass over a float32 array into a fresh buffer."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    return 2 * num_bytes / best_seconds(jax.jit(lambda a: a * 1.0001), x, repeats=repeats)


def measure_matmul(dtype: str, size: int | None = None, repeats: int = 11) -> float:
    """FLOP/s of a square matmul with `dtype` operands and float32 accumulation."""
    size = size or (8192 if jax.default_backend() != "cpu" else 1024)
    a = jnp.ones((size, size), dtype)
    b = jnp.ones((size, size), dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return 2 * size**3 / best_seconds(dot, a, b, repeats=repeats)


def device_memory_bytes() -> float:
    """Total memory of the local device (host RAM on CPU)."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def measure_local_device() -> DeviceSpec:
    """A DeviceSpec of this machine's first jax device, measured now (takes a few seconds)."""
    device = jax.devices()[0]
    peak = {dtype: measure_matmul(dtype) for dtype in ("float32", "bfloat16")}
    return DeviceSpec(f"local ({device.platform}: {device.device_kind})", device_memory_bytes(),
                      measure_bandwidth(), peak, source="measured by jaxserve.planner.measure")
