"""Compile targets: the planner's device names (`h100`, `a100-80gb`, `tpu-v5e`, ...) with a topology, turned into
compile-only devices and the chip figures the kernels are sized for.

`tpu-v5e` is one chip, `tpu-v5e:2x2` four (the topology as `jax.experimental.topologies` names it), `h100` one GPU
and `h100:8` eight on one host. The GPU target configuration handed to XLA is written here from the card's
public figures (`pallas_kernels.chips` and the planner's datasheet numbers); capture the exact one from a real
device when one is available (`bench/aot_compile.py --print-gpu-config` on that machine).
"""

from __future__ import annotations

import dataclasses
import math

from pallas_kernels.chips import GPU_CHIPS, TPU_CHIPS, Chip, GpuChip
from jaxserve.planner.devices import DEVICE_PRESETS, DeviceSpec

# planner device name -> (kernel platform, chip name)
TARGET_CHIPS = {"tpu-v5e": ("tpu", "v5e"), "tpu-v6e": ("tpu", "v6e"), "tpu-v5p": ("tpu", "v5p"),
                "h100": ("gpu", "h100"), "h200": ("gpu", "h200"), "a100-80gb": ("gpu", "a100")}
_GPU_DESCRIPTION = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200", "a100": "NVIDIA A100-SXM4-80GB"}
_GPU_L2_BYTES = {"h100": 50 * 2**20, "h200": 50 * 2**20, "a100": 40 * 2**20}
_GPU_CLOCK_GHZ = {"h100": 1.98, "h200": 1.98, "a100": 1.41}
# The CUDA runtime and cuDNN the compile-only GPU plugin is built for (jax-cuda13-plugin).
CUDA_RUNTIME = (13, 0)
CUDNN = (9, 8)


@dataclasses.dataclass(frozen=True)
class Target:
    """A deployment target: `device` (planner preset), its kernel `platform` and `chip`, and a topology."""

    name: str
    device: DeviceSpec
    platform: str  # "tpu" | "gpu"
    chip: Chip
    topology: str  # TPU: "v5e:2x2"; GPU: "1x1x8" (slices x hosts x devices per host)

    @property
    def num_devices(self) -> int:
        dims = self.topology.split(":")[-1].split("x")
        return math.prod(int(d) for d in dims)

    @property
    def single_chip(self) -> bool:
        return self.num_devices == 1


def parse_target(spec: str) -> Target:
    """`tpu-v5e`, `tpu-v5e:2x2`, `tpu-v5p:2x2x1`, `h100`, `h100:8` -> Target; a ValueError names what is wrong."""
    device_name, _, shape = spec.strip().lower().partition(":")
    if device_name not in TARGET_CHIPS:
        raise ValueError(f"unknown compile target {spec!r}; targets: {', '.join(TARGET_CHIPS)} (TPUs take a "
                         f"topology, e.g. tpu-v5e:2x2; GPUs a count, e.g. h100:8)")
    platform, chip_name = TARGET_CHIPS[device_name]
    device = DEVICE_PRESETS[device_name]
    if platform == "tpu":
        dims = shape or ("1x1x1" if chip_name == "v5p" else "1x1")
        parts = dims.split("x")
        if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"bad TPU topology {shape!r} in {spec!r}: give chips per axis, e.g. 2x2 or 2x2x1")
        return Target(spec, device, platform, TPU_CHIPS[chip_name], f"{chip_name}:{dims}")
    if shape and not (shape.isdigit() and int(shape) > 0):
        raise ValueError(f"bad GPU count {shape!r} in {spec!r}: give a number of GPUs, e.g. h100:8")
    return Target(spec, device, platform, GPU_CHIPS[chip_name], f"1x1x{int(shape or 1)}")


def gpu_target_config(chip: GpuChip, device: DeviceSpec) -> str:
    """XLA's `GpuTargetConfigProto` (text format) for `chip`, from its public figures."""
    major, minor = chip.compute_capability
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
        f"  shared_memory_per_core: {chip.shared_memory_per_sm}", "  threads_per_core_limit: 2048",
        f"  core_count: {chip.num_sms}", "  fpus_per_core: 128", "  block_dim_limit_x: 2147483647",
        "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535", f"  memory_bandwidth: {int(device.bandwidth)}",
        f"  l2_cache_size: {_GPU_L2_BYTES[chip.name]}", f"  clock_rate_ghz: {_GPU_CLOCK_GHZ[chip.name]}",
        f"  device_memory_size: {int(device.memory_bytes)}",
        f"  shared_memory_per_block_optin: {chip.shared_memory_per_block_optin}",
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
        f"  registers_per_core_limit: {chip.registers_per_sm}", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        f"dnn_version_info {{ major: {CUDNN[0]} minor: {CUDNN[1]} }}",
        f"runtime_version {{ major: {CUDA_RUNTIME[0]} minor: {CUDA_RUNTIME[1]} }}",
        f'device_description_str: "{_GPU_DESCRIPTION[chip.name]}"',
    ]) + "\n"


def compile_only_devices(target: Target) -> list:
    """The target's devices, compile-only (nothing can run on them); needs the toolchain (`toolchain.require`)."""
    from jaxserve.aot import toolchain

    toolchain.require(target.platform)
    from jax.experimental import topologies

    if target.platform == "tpu":
        bounds = {"chips_per_host_bounds": (1, 1, 1)} if target.single_chip else {}
        topology = topologies.get_topology_desc(target.topology, "tpu", **bounds)
    else:
        topology = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                                target_config=gpu_target_config(target.chip, target.device))
    return list(topology.devices)
