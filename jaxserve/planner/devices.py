"""Accelerator presets for the capacity planner: memory, bandwidth and peak dense matmul rate per dtype.

Numbers are the vendors' published dense (no structured sparsity) peaks; sparsity figures in datasheets are twice
these. Measured numbers are lower: `jaxserve plan --device local --measure` measures the machine it runs on, and
`bench/capacity.py` reports how far the roofline is from measurement.
"""

from __future__ import annotations

import dataclasses

GB = 10**9
TERA = 10**12


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """One device: usable memory (bytes), memory bandwidth (bytes/s), peak matmul rate (ops/s) per compute dtype."""

    name: str
    memory_bytes: float
    bandwidth: float
    peak_flops: dict[str, float]
    source: str = ""

    def flops_for(self, compute_dtype: str) -> float:
        """Peak rate for matmuls computed in `compute_dtype` (float32 falls back to bfloat16 if not listed)."""
        if compute_dtype in self.peak_flops:
            return self.peak_flops[compute_dtype]
        return self.peak_flops["bfloat16"]

    def with_overrides(self, memory_gb: float | None = None, bandwidth_gbs: float | None = None,
                       tflops: float | None = None) -> "DeviceSpec":
        """A copy with some numbers replaced (`--memory-gb`, `--bandwidth-gbs`, `--tflops` for every dtype)."""
        peak = dict(self.peak_flops)
        if tflops is not None:
            peak = {k: tflops * TERA for k in (peak or {"bfloat16": 0.0})}
        return dataclasses.replace(
            self, memory_bytes=memory_gb * GB if memory_gb is not None else self.memory_bytes,
            bandwidth=bandwidth_gbs * GB if bandwidth_gbs is not None else self.bandwidth, peak_flops=peak)


def _gpu(name: str, memory_gb: float, bandwidth_gbs: float, bf16_tflops: float, fp32_tflops: float,
         int8_tops: float, source: str) -> DeviceSpec:
    return DeviceSpec(name, memory_gb * GB, bandwidth_gbs * GB,
                      {"bfloat16": bf16_tflops * TERA, "float32": fp32_tflops * TERA, "int8": int8_tops * TERA},
                      source)


def _tpu(name: str, memory_gib: float, bandwidth_gbs: float, bf16_tflops: float, int8_tops: float,
         source: str) -> DeviceSpec:
    # XLA's default matmul precision on TPU runs float32 operands as single bf16 passes, hence the same peak.
    return DeviceSpec(name, memory_gib * 2**30, bandwidth_gbs * GB,
                      {"bfloat16": bf16_tflops * TERA, "float32": bf16_tflops * TERA, "int8": int8_tops * TERA},
                      source)


# float32 on GPUs is the TF32 tensor-core rate (what XLA uses for float32 dots by default on Ampere and later).
DEVICE_PRESETS: dict[str, DeviceSpec] = {
    "h100": _gpu("h100", 80, 3350, 989, 495, 1979,
                 "NVIDIA H100 Tensor Core GPU datasheet, SXM5 80GB column (nvidia.com/en-us/data-center/h100)"),
    "h200": _gpu("h200", 141, 4800, 989, 495, 1979,
                 "NVIDIA H200 Tensor Core GPU datasheet, SXM column (nvidia.com/en-us/data-center/h200)"),
    "a100-80gb": _gpu("a100-80gb", 80, 2039, 312, 156, 624,
                      "NVIDIA A100 Tensor Core GPU datasheet, 80GB SXM column (nvidia.com/en-us/data-center/a100)"),
    "l4": _gpu("l4", 24, 300, 121, 60, 242,
               "NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4)"),
    "tpu-v5e": _tpu("tpu-v5e", 16, 819, 197, 394, "Google Cloud TPU v5e docs (cloud.google.com/tpu/docs/v5e)"),
    "tpu-v5p": _tpu("tpu-v5p", 95, 2765, 459, 918, "Google Cloud TPU v5p docs (cloud.google.com/tpu/docs/v5p)"),
    "tpu-v6e": _tpu("tpu-v6e", 32, 1640, 918, 1836, "Google Cloud TPU v6e docs (cloud.google.com/tpu/docs/v6e)"),
}


def get_device(name: str) -> DeviceSpec:
    """A preset by name; a ValueError lists the known ones."""
    try:
        return DEVICE_PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; presets: {', '.join(DEVICE_PRESETS)}, or 'local' "
                         f"(with --measure), or custom numbers via --memory-gb --bandwidth-gbs --tflops") from None
