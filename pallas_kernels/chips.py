"""The chips the kernels are sized for: the on-chip memories and core counts that bound their blocks.

Kernels take a chip (or find the one they run on, `detect_chip`) and derive block sizes, pages per compute block
and split counts from these figures and the shapes, never from constants tuned for one chip. The same figures
describe compile-only targets (`jaxserve.aot`), so what compiles on CPU for a target is what runs on it.

TPU VMEM figures are what the TPU compiler itself reports as the physical VMEM of each generation (a scratch
buffer larger than it fails with `Ran out of memory in memory space vmem. Used X of Y vmem`); SMEM is 1 MiB on
every generation listed. The scoped-VMEM limits were found with the compiler (deviceless, jax 0.10.2 / libtpu
0.0.42.1): a pipelined 2 x 9 MiB block fails `CompileTimeScopedVmemOom ... limit 16.00M` on v5e and v5p and
compiles on v6e and tpu7x, where 2 x 17 MiB fails at `limit 32.00M`; v4 refuses 2 x 9 MiB against its whole
16 MiB. Scratch buffers are held to the physical VMEM only, but the kernels' plans keep everything under the scoped
limit. GPU figures are the cards' public CUDA properties.
"""

from __future__ import annotations

import dataclasses

import jax

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class TpuChip:
    """One TPU generation, as the Mosaic compiler sees it."""

    name: str  # the generation as `jax.experimental.topologies` names it: "v5e", "v6e", ...
    vmem_bytes: int  # physical VMEM per TensorCore
    scoped_vmem_bytes: int  # the compiler's default scoped-VMEM limit for one kernel
    smem_bytes: int = 1 * MIB  # scalar memory: scalar-prefetched operands and SMEM scratch live here
    lanes: int = 128  # lane width: the last axis of a VMEM tile
    mxu_rows: int = 128  # systolic array size: rows of a matmul operand that fill one MXU pass

    @property
    def platform(self) -> str:
        return "tpu"


@dataclasses.dataclass(frozen=True)
class GpuChip:
    """One NVIDIA GPU, by the CUDA device properties that bound a Triton kernel."""

    name: str
    compute_capability: tuple[int, int]
    num_sms: int
    shared_memory_per_block_optin: int  # the most shared memory one block may ask for
    shared_memory_per_sm: int
    registers_per_sm: int = 65536

    @property
    def platform(self) -> str:
        return "gpu"


Chip = TpuChip | GpuChip

TPU_CHIPS: dict[str, TpuChip] = {
    "v4": TpuChip("v4", vmem_bytes=16 * MIB, scoped_vmem_bytes=16 * MIB),
    "v5e": TpuChip("v5e", vmem_bytes=128 * MIB, scoped_vmem_bytes=16 * MIB),
    "v5p": TpuChip("v5p", vmem_bytes=64 * MIB, scoped_vmem_bytes=16 * MIB),
    "v6e": TpuChip("v6e", vmem_bytes=128 * MIB, scoped_vmem_bytes=32 * MIB, mxu_rows=256),
    "tpu7x": TpuChip("tpu7x", vmem_bytes=64 * MIB, scoped_vmem_bytes=32 * MIB, mxu_rows=256),
}

GPU_CHIPS: dict[str, GpuChip] = {
    # H100 SXM5 and H200 share the Hopper SM (sm_90): 132 SMs, 228 KiB of shared memory per SM.
    "h100": GpuChip("h100", (9, 0), num_sms=132, shared_memory_per_block_optin=232448, shared_memory_per_sm=233472),
    "h200": GpuChip("h200", (9, 0), num_sms=132, shared_memory_per_block_optin=232448, shared_memory_per_sm=233472),
    # A100 SXM4 (sm_80): 108 SMs, 164 KiB of shared memory per SM.
    "a100": GpuChip("a100", (8, 0), num_sms=108, shared_memory_per_block_optin=166912, shared_memory_per_sm=167936),
}

# The chip a kernel is sized for when it can neither be told nor find out (CPU interpret mode, an unknown card):
# limits no smaller than any chip of that kind it may meet. For GPUs that is the 99 KiB of opt-in shared memory per
# block of the sm_86 / sm_89 cards (A10, L4, RTX), well under the A100's and H100's.
DEFAULT_TPU = TPU_CHIPS["v5e"]
DEFAULT_GPU = GpuChip("generic-gpu", (8, 6), num_sms=46, shared_memory_per_block_optin=101376,
                      shared_memory_per_sm=102400)

# `device.device_kind` substrings -> chip (TPU kinds read like "TPU v5 lite", "TPU v6 lite", "TPU v5p", "TPU v4").
_TPU_KINDS = (("v5 lite", "v5e"), ("v5e", "v5e"), ("v6 lite", "v6e"), ("v6e", "v6e"), ("v5p", "v5p"), ("v5", "v5p"),
              ("v4", "v4"), ("7x", "tpu7x"), ("v7", "tpu7x"))
_GPU_KINDS = (("h200", "h200"), ("h100", "h100"), ("h800", "h100"), ("a100", "a100"), ("a800", "a100"))


def detect_chip(backend: str, device: jax.Device | None = None) -> Chip:
    """The chip `device` (default: the first JAX device) is, for kernel `backend` "tpu" or "gpu".

    A device of another platform (CPU: interpret mode) or of an unlisted kind gets the backend's default chip.
    """
    if device is None:
        device = jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    table, chips, default = ((_TPU_KINDS, TPU_CHIPS, DEFAULT_TPU) if backend == "tpu"
                             else (_GPU_KINDS, GPU_CHIPS, DEFAULT_GPU))
    if device.platform in ("tpu", "gpu", "cuda"):
        for needle, name in table:
            if needle in kind:
                return chips[name]
    return default


def get_chip(name: str) -> Chip:
    """A chip by name ("v5e", "h100", ...); a ValueError lists the known ones."""
    chip = TPU_CHIPS.get(name) or GPU_CHIPS.get(name)
    if chip is None:
        raise ValueError(f"unknown chip {name!r}; known: {', '.join([*TPU_CHIPS, *GPU_CHIPS])}")
    return chip
