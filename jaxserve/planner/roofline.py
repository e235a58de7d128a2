"""Roofline timing of prefill and decode: a step takes max(FLOPs / peak rate, bytes moved / bandwidth).

Decode reads every weight once per step whatever the batch, plus each sequence's KV, so small batches are
bandwidth-bound and tokens/s grows almost linearly with batch until the FLOPs catch up with the bytes; prefill of a
long prompt is compute-bound. Real steps add kernel launch, host and attention inefficiencies on top: the bench
(`bench/capacity.py`) reports the gap.
"""

from __future__ import annotations

import dataclasses

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.planner.devices import DeviceSpec
from jaxserve.planner.memory import parameter_inventory


@dataclasses.dataclass(frozen=True)
class StepCost:
    """FLOPs and bytes of one step, and its roofline time on a device."""

    flops: float
    bytes: float
    seconds: float
    compute_bound: bool


def matmul_parameters(model: ModelConfig, with_lm_head: bool = True) -> int:
    """Parameters multiplied per token: the layers' matmul weights, plus the LM head (tied or not) when sampled."""
    total = sum(t.size for t in parameter_inventory(model) if t.matmul and t.name not in ("embed", "lm_head"))
    return total + (model.vocab_size * model.hidden_size if with_lm_head else 0)


def streamed_weight_bytes(model: ModelConfig, weights_bytes: float) -> float:
    """Weight bytes read per step: all of them except the embedding table, of which only the looked-up rows are
    read (unless it doubles as the LM head)."""
    if model.tie_word_embeddings:
        return weights_bytes
    embed_share = model.vocab_size * model.hidden_size / sum(t.size for t in parameter_inventory(model))
    return weights_bytes * (1 - embed_share)


def _cost(flops: float, moved: float, device: DeviceSpec, compute_dtype: str, efficiency: float) -> StepCost:
    t_compute = flops / (device.flops_for(compute_dtype) * efficiency)
    t_memory = moved / (device.bandwidth * efficiency)
    return StepCost(flops, moved, max(t_compute, t_memory), t_compute >= t_memory)


def decode_step(model: ModelConfig, device: DeviceSpec, batch: int, context: int, weights_bytes: float,
                kv_dtype: str, compute_dtype: str = "bfloat16", efficiency: float = 1.0) -> StepCost:
    """One decode step of `batch` sequences, each with `context` tokens already cached."""
    attn_flops = 4 * model.num_layers * model.num_heads * model.head_dim * context  # q.k and p.v per token
    flops = batch * (2 * matmul_parameters(model) + attn_flops)
    kv_token = kv_bytes_per_token(model, kv_dtype)
    moved = streamed_weight_bytes(model, weights_bytes) + batch * (context + 1) * kv_token
    return _cost(flops, moved, device, compute_dtype, efficiency)


def prefill(model: ModelConfig, device: DeviceSpec, prompt_len: int, weights_bytes: float, kv_dtype: str,
            compute_dtype: str = "bfloat16", efficiency: float = 1.0) -> StepCost:
    """Prefill of one prompt in one step (time to first token, queueing excluded)."""
    linear = 2 * prompt_len * matmul_parameters(model, with_lm_head=False) + 2 * model.vocab_size * model.hidden_size
    causal_attn = 2 * model.num_layers * model.num_heads * model.head_dim * prompt_len * prompt_len
    moved = streamed_weight_bytes(model, weights_bytes) + prompt_len * kv_bytes_per_token(model, kv_dtype)
    return _cost(linear + causal_attn, moved, device, compute_dtype, efficiency)


def compute_bound_batch(model: ModelConfig, device: DeviceSpec, context: int, weights_bytes: float, kv_dtype: str,
                        compute_dtype: str = "bfloat16", limit: int = 1 << 16) -> int | None:
    """The smallest decode batch whose step is compute-bound at `context`, or None if none up to `limit` is."""
    lo, hi = 1, limit
    if not decode_step(model, device, hi, context, weights_bytes, kv_dtype, compute_dtype).compute_bound:
        return None
    while lo < hi:  # compute-boundness is monotone in batch: FLOPs and KV bytes grow with it, weight bytes do not
        mid = (lo + hi) // 2
        if decode_step(model, device, mid, context, weights_bytes, kv_dtype, compute_dtype).compute_bound:
            hi = mid
        else:
            lo = mid + 1
    return lo
