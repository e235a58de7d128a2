"""Configuration: frozen dataclasses validated on construction.

`ModelConfig` describes the architecture (read from `config.json` or GGUF metadata); `CacheConfig`,
`SchedulerConfig` and `EngineConfig` describe how the engine runs it. CLI flags map 1:1 to their fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")
SUPPORTED_DTYPES = ("auto", "float32", "bfloat16")
SUPPORTED_KV_CACHE_DTYPES = SUPPORTED_DTYPES + ("int8",)  # int8: per-token, per-head scales (kv_cache.py)
SUPPORTED_QUANTIZATION = ("int8", "int4")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer of the Llama family (Llama 1/2/3, Mistral, Qwen2, SmolLM)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Hugging Face's `rope_scaling` dict, e.g. {"rope_type": "llama3", "factor": 8.0, ...}; None for plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, linear, llama3")

    @property
    def num_query_groups(self) -> int:
        """Query heads per KV head (1 = multi-head, num_heads = multi-query attention)."""
        return self.num_heads // self.num_kv_heads

    def num_parameters(self) -> int:
        """Parameter count, embeddings and LM head included."""
        h, i, l = self.hidden_size, self.intermediate_size, self.num_layers
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h
        if self.attention_bias:
            per_layer += q + 2 * kv
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return l * per_layer + embed + h

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face `config.json` dict; an unsupported `model_type` is a ValueError naming it."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            arch = cfg.get("architectures") or [model_type]
            raise ValueError(f"unsupported architecture {arch[0]!r} (model_type={model_type!r}); "
                             f"supported model types: {', '.join(SUPPORTED_ARCHITECTURES)}")
        num_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        sliding = cfg.get("sliding_window")
        if model_type == "qwen2" and not cfg.get("use_sliding_window", False):
            sliding = None
        return cls(
            architecture=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            rope_scaling=_hf_rope_scaling(cfg),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            sliding_window=sliding,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The inverse of `from_hf_config`, for writing native checkpoints."""
        return {
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "use_sliding_window": self.sliding_window is not None,
            "sliding_window": self.sliding_window,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
        }


def _hf_rope_scaling(cfg: dict[str, Any]) -> dict[str, Any] | None:
    # transformers 5 moved `rope_scaling` into `rope_parameters` (which also carries rope_theta).
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    return {k: v for k, v in scaling.items() if k != "rope_theta"}


LAYER_LOOPS = ("auto", "scan", "unrolled")
MATMUL_BACKENDS = ("auto", "xla", "cpu")  # see jaxserve/model/cpu_weights.py


def resolve_layer_loop(layer_loop: str, platform: str) -> str:
    """"auto" is "scan" everywhere for now. "unrolled" made a float32 decode step of the default model 20-30% faster
    on CPU in isolation (jaxserve/model/llama.py) but nothing end to end through the server, and it made int8 and
    int4 weights 2-4x slower (bench/RESULTS.md), so it stays an explicit choice until measured on accelerators."""
    del platform  # the choice is per platform once accelerators are measured
    return "scan" if layer_loop == "auto" else layer_loop


def valid_tensor_parallel_sizes(model: ModelConfig) -> list[int]:
    """The tensor-parallel sizes that divide the query heads, the KV heads and the MLP's intermediate dimension.

    Attention is split by KV head (each shard keeps whole groups of query heads with their KV head) and the MLP by
    its intermediate dimension; a size that splits a head cannot be served.
    """
    common = math.gcd(math.gcd(model.num_heads, model.num_kv_heads), model.intermediate_size)
    return [n for n in range(1, common + 1) if common % n == 0]


def check_tensor_parallel_size(model: ModelConfig, size: int) -> None:
    """A ValueError naming the valid sizes when `size` cannot split this model."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"tensor_parallel_size must be a positive integer, got {size!r}")
    valid = valid_tensor_parallel_sizes(model)
    if size not in valid:
        raise ValueError(f"tensor_parallel_size={size} does not divide this model's heads (num_heads="
                         f"{model.num_heads}, num_kv_heads={model.num_kv_heads}, intermediate_size="
                         f"{model.intermediate_size}); valid sizes: {', '.join(map(str, valid))}")


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: page (block) size and the memory budget that sizes the pool."""

    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes for K and V pages; None: a platform default
    num_kv_blocks: int | None = None  # overrides kv_cache_memory when set
    kv_cache_dtype: str = "auto"  # "auto" follows the model dtype
    enable_prefix_caching: bool = True  # reuse full pages whose tokens (and salt) match a cached prefix

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be positive, got {self.kv_cache_memory}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise ValueError(f"num_kv_blocks must be >= 2 (one is reserved for padding), got {self.num_kv_blocks}")
        if self.kv_cache_dtype not in SUPPORTED_KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {SUPPORTED_KV_CACHE_DTYPES}, got "
                             f"{self.kv_cache_dtype!r}")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits (vLLM's names)."""

    max_model_len: int = 2048
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                             f"max_num_seqs ({self.max_num_seqs}) so a full decode batch fits one step")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs: the model, its dtype, the cache and the scheduler."""

    model: ModelConfig
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    dtype: str = "float32"
    seed: int = 0
    compile_all_buckets: bool = True  # compile every shape bucket at start-up
    compilation_cache_dir: str | None = None  # persistent XLA cache; None disables it
    # Smallest token / sequence bucket. 1: a lone decoding sequence runs a 1-token step (default model on a 2-core
    # CPU: 30 ms per step against 61 ms padded to 8 tokens), for three more buckets to compile at start-up.
    min_bucket: int = 1
    attention_backend: str = "auto"  # "auto" | "xla" | "pallas" | "cpu" (native CPU kernel)
    matmul_backend: str = "auto"  # "auto" | "xla" | "cpu" (packed weights, native CPU kernel)
    quantization: str | None = None  # weight quantization scheme; None keeps the checkpoint's float weights
    quantization_group_size: int | None = None  # int4: 32 by default; int8: None = per output channel
    quantize_embedding: bool = True  # False keeps the embedding (and a tied LM head) in float
    tensor_parallel_size: int = 1  # devices one model is split over (by heads; see jaxserve.parallel)
    layer_loop: str = "auto"  # "scan" (stacked weights, fast compiles) | "unrolled" (per-layer weights) | "auto"

    def __post_init__(self) -> None:
        check_tensor_parallel_size(self.model, self.tensor_parallel_size)
        if self.layer_loop not in LAYER_LOOPS:
            raise ValueError(f"layer_loop must be one of {LAYER_LOOPS}, got {self.layer_loop!r}")
        if self.matmul_backend not in MATMUL_BACKENDS:
            raise ValueError(f"matmul_backend must be one of {MATMUL_BACKENDS}, got {self.matmul_backend!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.quantization is not None and self.quantization not in SUPPORTED_QUANTIZATION:
            raise ValueError(f"unknown quantization scheme {self.quantization!r}; supported: "
                             f"{', '.join(SUPPORTED_QUANTIZATION)} (or None)")
        if self.quantization_group_size is not None and self.quantization_group_size <= 0:
            raise ValueError(f"quantization_group_size must be positive, got {self.quantization_group_size}")

    @property
    def max_blocks_per_seq(self) -> int:
        """Columns of the block table: enough pages for a sequence of max_model_len tokens."""
        return math.ceil(self.scheduler.max_model_len / self.cache.block_size)

    @property
    def kv_dtype(self) -> str:
        """Storage dtype of the KV pages."""
        return self.dtype if self.cache.kv_cache_dtype == "auto" else self.cache.kv_cache_dtype
