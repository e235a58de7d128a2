"""`plan()`: what a deployment of a model on a device needs and what it can deliver, computed, not measured."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxserve.config import ModelConfig, check_tensor_parallel_size
from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.planner import memory, roofline
from jaxserve.planner.calibration import DecodeProfile, calibrated_decode_seconds
from jaxserve.planner.devices import DeviceSpec


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """The deployment to plan. `kv_cache_memory` fixes the KV budget (as the engine's flag does); otherwise it is
    the device memory x utilization, minus the weights and the step workspace."""

    model: ModelConfig
    device: DeviceSpec
    model_name: str = "model"
    weight_format: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = None
    memory_utilization: float = memory.DEFAULT_MEMORY_UTILIZATION
    num_devices: int = 1
    block_size: int = 16
    kv_cache_memory: float | None = None
    max_num_batched_tokens: int = 512
    max_num_seqs: int | None = None
    prompt_len: int = 512
    output_len: int = 128
    group_size: int | None = None  # None: int4 groups of 32, int8 per output channel
    # Measured matmul times of this model on the device (calibration.profile_decode_matmuls): adds a calibrated TPOT
    profile: DecodeProfile | None = None
    # The step workspace (all devices) as the compiler reports it (`jaxserve compile --json`), in place of the
    # planner's estimate, so the KV pool planned is the largest that really fits.
    workspace_bytes: float | None = None
    # The head dim the KV pages are stored with (padded for some attention kernels); None: the model's.
    page_head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.weight_format not in memory.WEIGHT_FORMATS:
            raise ValueError(f"dtype must be one of {memory.WEIGHT_FORMATS}, got {self.weight_format!r}")
        if not 0 < self.memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.memory_utilization}")
        for name in ("num_devices", "block_size", "prompt_len", "output_len", "max_num_batched_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        # The devices split the model as the engine's tensor parallelism would: by heads.
        check_tensor_parallel_size(self.model, self.num_devices)
        if self.profile is not None and self.profile.weight_format != self.weight_format:
            raise ValueError(f"the decode profile was measured for {self.profile.weight_format} weights, not "
                             f"{self.weight_format}")
        if self.profile is not None and self.num_devices != 1:
            raise ValueError("a decode profile is measured on one device; plan num_devices=1 with it")

    @property
    def compute_dtype(self) -> str:
        """Activations and float weights: float32 stays float32, everything else computes in bfloat16."""
        return "float32" if self.weight_format == "float32" else "bfloat16"

    @property
    def kv_dtype(self) -> str:
        return self.compute_dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype

    @property
    def context_len(self) -> int:
        return self.max_model_len or self.model.max_position_embeddings


def _decode_batches(limit: int) -> list[int]:
    batches = [1]
    while batches[-1] * 2 <= limit:
        batches.append(batches[-1] * 2)
    if limit > batches[-1]:
        batches.append(limit)
    return batches


def plan(req: PlanRequest) -> dict[str, Any]:
    """The plan as a JSON-able dict: memory, max concurrency, predicted TTFT, TPOT and tokens/s by batch size."""
    model, n = req.model, req.num_devices
    # Tensor parallelism splits weights, KV and work evenly; the aggregate device is n times one device.
    device = dataclasses.replace(req.device, memory_bytes=req.device.memory_bytes * n,
                                 bandwidth=req.device.bandwidth * n,
                                 peak_flops={k: v * n for k, v in req.device.peak_flops.items()})
    weights = memory.model_bytes(model, req.weight_format, req.compute_dtype, req.group_size)
    kv_token = kv_bytes_per_token(model, req.kv_dtype, req.page_head_dim)
    blocks_per_seq = math.ceil(req.context_len / req.block_size)
    kv_sequence = blocks_per_seq * req.block_size * kv_token
    workspace = req.workspace_bytes
    if workspace is None:
        workspace = memory.workspace_bytes(model, req.max_num_batched_tokens, req.max_num_seqs or 256)
    if req.kv_cache_memory is not None:
        budget = req.kv_cache_memory
    else:
        budget = device.memory_bytes * req.memory_utilization - weights - workspace
    num_blocks = memory.kv_pool_blocks(model, req.kv_dtype, req.block_size, max(budget, 0),
                                       blocks_per_seq, req.max_num_seqs, head_dim=req.page_head_dim)
    concurrency = memory.max_concurrency(num_blocks, req.context_len, req.block_size)
    fits = concurrency >= 1  # the weights fit and so does at least one sequence of max_model_len
    context = min(req.prompt_len + req.output_len // 2, req.context_len)
    args = (weights, req.kv_dtype, req.compute_dtype)
    ttft = roofline.prefill(model, device, req.prompt_len, *args)
    decode = []
    for batch in _decode_batches(max(concurrency, 1)):
        step = roofline.decode_step(model, device, batch, context, *args)
        row = {"batch": batch, "tpot_s": step.seconds, "tokens_per_s": batch / step.seconds,
               "compute_bound": step.compute_bound, "flops": step.flops, "bytes": step.bytes}
        if req.profile is not None:
            row["calibrated_tpot_s"] = calibrated_decode_seconds(model, device, req.profile, batch, context,
                                                                 req.kv_dtype, req.compute_dtype)
            row["calibrated_tokens_per_s"] = batch / row["calibrated_tpot_s"]
        decode.append(row)
    return {
        "model": req.model_name, "device": device.name, "device_source": device.source, "num_devices": n,
        "weight_format": req.weight_format, "kv_cache_dtype": req.kv_dtype, "max_model_len": req.context_len,
        "block_size": req.block_size, "parameters": model.num_parameters(), "model_bytes": weights,
        "kv_bytes_per_token": kv_token, "page_head_dim": req.page_head_dim or model.head_dim,
        "kv_bytes_per_sequence": kv_sequence, "workspace_bytes": workspace,
        "workspace_source": "estimate" if req.workspace_bytes is None else "compiler",
        "kv_budget_bytes": max(budget, 0), "num_kv_blocks": num_blocks, "fits": fits,
        "memory_utilization": req.memory_utilization,
        "max_concurrency": concurrency, "prompt_len": req.prompt_len, "decode_context": context,
        "ttft_s": ttft.seconds, "prefill_compute_bound": ttft.compute_bound, "decode": decode,
        "compute_bound_batch": roofline.compute_bound_batch(model, device, context, *args),
        "device_memory_bytes": device.memory_bytes, "bandwidth_bytes_per_s": device.bandwidth,
        "peak_flops": device.flops_for(req.compute_dtype),
    }
