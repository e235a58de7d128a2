"""Memory arithmetic of serving: weight bytes by format, KV bytes per token, the KV pool and max concurrency.

The engine sizes its KV pool with `kv_pool_blocks` and `local_kv_budget` from this module, so the planner's
`max_concurrency` for the local device is what the engine admits.
"""

from __future__ import annotations

import dataclasses
import math

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import kv_bytes_per_token

WEIGHT_FORMATS = ("float32", "bfloat16", "int8", "int4")
FLOAT_BYTES = {"float32": 4, "bfloat16": 2}
DEFAULT_INT4_GROUP = 32
CPU_DEFAULT_KV_CACHE_MEMORY = 1 << 30  # 1 GiB on CPU: modest, so several engines fit in one test process
DEFAULT_MEMORY_UTILIZATION = 0.9


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One parameter: its per-layer shape, how many layers stack it, and whether it is a matmul weight
    (quantizable) or a norm / bias (kept float)."""

    name: str
    shape: tuple[int, ...]
    matmul: bool
    layers: int = 1

    @property
    def size(self) -> int:
        return self.layers * math.prod(self.shape)


def parameter_inventory(model: ModelConfig) -> list[Tensor]:
    """Every parameter tensor of a Llama-family model (per-layer shapes, stacked `layers` times).

    Matmul weights are `[in, out]` (embedding `[vocab, hidden]`, quantized per row like an output channel).
    """
    h, i, L = model.hidden_size, model.intermediate_size, model.num_layers
    q, kv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    tensors = [Tensor("embed", (model.vocab_size, h), True)]
    for name, shape in (("wq", (h, q)), ("wk", (h, kv)), ("wv", (h, kv)), ("wo", (q, h)),
                        ("w_gate", (h, i)), ("w_up", (h, i)), ("w_down", (i, h))):
        tensors.append(Tensor(name, shape, True, L))
    tensors += [Tensor("attn_norm", (h,), False, L), Tensor("mlp_norm", (h,), False, L),
                Tensor("final_norm", (h,), False)]
    if model.attention_bias:
        tensors += [Tensor("bq", (q,), False, L), Tensor("bk", (kv,), False, L), Tensor("bv", (kv,), False, L)]
    if not model.tie_word_embeddings:
        tensors.append(Tensor("lm_head", (h, model.vocab_size), True))
    return tensors


def tensor_bytes(t: Tensor, weight_format: str, float_dtype: str = "bfloat16",
                 group_size: int | None = None) -> int:
    """Bytes of one tensor in `weight_format` as `jaxserve.quant` stores it; norms and biases stay `float_dtype`.

    int8 is per output channel unless `group_size` is given; int4 is asymmetric in groups (`group_size`, default
    32) with a scale and an offset per group. A group spanning the whole input axis keeps float32 scales (and
    offsets); smaller groups keep float16 ones. Values of int4 weights are packed two per byte.
    """
    if weight_format in FLOAT_BYTES:
        return t.size * FLOAT_BYTES[weight_format]
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {weight_format!r}; choose one of {WEIGHT_FORMATS}")
    if not t.matmul:
        return t.size * FLOAT_BYTES[float_dtype]
    rows, cols = t.shape
    if t.name == "embed":  # quantized along the hidden axis of each vocabulary row
        rows, cols = cols, rows
    if weight_format == "int4" and group_size is None:
        group_size = DEFAULT_INT4_GROUP
    groups = math.ceil(rows / group_size) if group_size else 1
    scale_bytes = 4 if groups == 1 else 2
    per_group = scale_bytes * (2 if weight_format == "int4" else 1)  # int4 adds an offset per group
    values = t.size if weight_format == "int8" else math.ceil(t.size / 2)
    return values + t.layers * groups * cols * per_group


def model_bytes(model: ModelConfig, weight_format: str, float_dtype: str = "bfloat16",
                group_size: int | None = None) -> int:
    """Bytes of all weights in `weight_format` (parameter count x bytes per parameter, scales included)."""
    return sum(tensor_bytes(t, weight_format, float_dtype, group_size) for t in parameter_inventory(model))


def workspace_bytes(model: ModelConfig, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """A bound on the step's transient activations: float32 hidden/MLP/QKV buffers per token and the logits."""
    per_token = 4 * (4 * model.hidden_size + 2 * model.intermediate_size
                     + (model.num_heads + 2 * model.num_kv_heads) * model.head_dim)
    return max_num_batched_tokens * per_token + max_num_seqs * model.vocab_size * 4 * 2


def kv_pool_blocks(model: ModelConfig, kv_dtype: str, block_size: int, budget_bytes: float,
                   max_blocks_per_seq: int | None = None, max_num_seqs: int | None = None,
                   head_dim: int | None = None) -> int:
    """Pages (the reserved padding page included) that fit in `budget_bytes`.

    With `max_num_seqs`, the pool is capped at what that many full-length sequences can use, since more pages
    would only waste memory. `head_dim` is the pages' (padded for some kernels; default the model's).
    """
    per_block = kv_bytes_per_token(model, kv_dtype, head_dim) * block_size
    blocks = int(budget_bytes // per_block)
    if max_num_seqs is not None and max_blocks_per_seq is not None:
        blocks = min(blocks, max_num_seqs * max_blocks_per_seq + 1)
    return max(blocks, 0)


def max_concurrency(num_blocks: int, max_model_len: int, block_size: int) -> int:
    """Full-length sequences a pool holds at once: usable pages over pages per sequence."""
    return max(num_blocks - 1, 0) // math.ceil(max_model_len / block_size)


def local_kv_budget(memory_utilization: float = DEFAULT_MEMORY_UTILIZATION, devices: list | None = None) -> int:
    """KV bytes the engine may use on the local devices: a fixed default on CPU; on accelerators the fraction
    `memory_utilization` of each device's memory minus what is already in use (the weights, once loaded), times the
    number of devices (KV pages are split evenly over a tensor-parallel group, so the fullest device decides)."""
    import jax

    devices = devices or jax.devices()[:1]
    if devices[0].platform == "cpu":
        return CPU_DEFAULT_KV_CACHE_MEMORY
    budgets = []
    for device in devices:
        stats = device.memory_stats() or {}
        limit, used = stats.get("bytes_limit"), stats.get("bytes_in_use", 0)
        if not limit:
            return CPU_DEFAULT_KV_CACHE_MEMORY
        budgets.append(max(0, math.floor(limit * memory_utilization) - used))
    return min(budgets) * len(devices)
