"""EngineArgs: the user-facing knobs (LLM keyword arguments and CLI flags, 1:1) and how they build an engine."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax

from jaxserve.config import CacheConfig, EngineConfig, SchedulerConfig, check_tensor_parallel_size
from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.parallel.mesh import device_groups, make_mesh
from jaxserve.planner.memory import DEFAULT_MEMORY_UTILIZATION, kv_pool_blocks, local_kv_budget, max_concurrency
from jaxserve.quant import QuantConfig, is_quantized, param_nbytes

logger = logging.getLogger(__name__)

DEFAULT_COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxserve", "xla")


@dataclasses.dataclass
class EngineArgs:
    """Arguments of `LLM(...)` and `jaxserve serve/generate`; `None` means "derive from the model or platform"."""

    model: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    block_size: int = 16
    kv_cache_memory: int | None = None
    num_kv_blocks: int | None = None
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = DEFAULT_MEMORY_UTILIZATION  # share of accelerator memory for weights + KV
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"  # "auto" | "xla" | "pallas" | "cpu"
    matmul_backend: str = "auto"  # "auto" | "xla" | "cpu": packed weights through the native CPU kernel
    quantization: str | None = None  # "int8" | "int4": quantize the weights at load (see jaxserve.quant)
    quantization_group_size: int | None = None  # int4: 32 (default), 64, 128; int8: None = per output channel
    quantize_embedding: bool = True  # False keeps the embedding (and a tied LM head) in float
    skip_tokenizer_init: bool = False
    seed: int = 0
    tensor_parallel_size: int = 1  # devices each model replica is split over (Megatron-style, by heads)
    data_parallel_size: int = 1  # replicas, each with its own scheduler and KV pool, behind one router
    layer_loop: str = "auto"  # "scan" | "unrolled" (per-layer weights, an unrolled loop) | "auto" (= scan)
    disaggregated: bool = False  # prefill and decode on two device groups of tensor_parallel_size each
    compile_all_buckets: bool = True
    compilation_cache_dir: str | None = DEFAULT_COMPILATION_CACHE
    progress: bool = True

    def resolved_dtype(self) -> str:
        """"auto" is float32 on CPU and bfloat16 on accelerators."""
        if self.dtype != "auto":
            return self.dtype
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def build_engine(args: EngineArgs):
    """Load the checkpoint and tokenizer, size the KV pool, compile the steps, and return an LLMEngine (or a
    DataParallelEngine over `data_parallel_size` replicas of `tensor_parallel_size` devices each)."""
    from jaxserve.engine.data_parallel import DataParallelEngine

    if args.disaggregated:  # a prefill engine and a decode engine: see engine/disaggregated.py
        from jaxserve.engine.disaggregated import build_disaggregated

        return build_disaggregated(args)
    loaded, tokenizer, config = load_model(args)
    if jax.process_count() > 1 and (args.tensor_parallel_size != jax.device_count() or args.data_parallel_size > 1):
        raise ValueError(f"a multi-process job runs one model over all {jax.device_count()} devices of its "
                         f"{jax.process_count()} processes: pass tensor_parallel_size={jax.device_count()} "
                         f"(data_parallel_size 1); got {args.tensor_parallel_size} x {args.data_parallel_size}")
    groups = device_groups(args.tensor_parallel_size, args.data_parallel_size)
    replicas = [build_replica(dataclasses.replace(config, seed=config.seed + i), loaded.params, tokenizer, devices,
                              args) for i, devices in enumerate(groups)]
    logger.info("%d data-parallel replica(s) of %d device(s) each: %s", len(groups), args.tensor_parallel_size,
                "; ".join(", ".join(str(d) for d in group) for group in groups))
    return replicas[0] if len(replicas) == 1 else DataParallelEngine(replicas)


def load_model(args: EngineArgs) -> tuple[Any, Any, EngineConfig]:
    """(the loaded checkpoint with host params, the tokenizer or None, the EngineConfig) for `args`."""
    from jaxserve.checkpoint import default_model_path, load_checkpoint

    if args.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
    if args.data_parallel_size < 1:
        raise ValueError(f"data_parallel_size must be >= 1, got {args.data_parallel_size}")
    dtype = args.resolved_dtype()
    path = args.model or default_model_path()
    start = time.perf_counter()
    loaded = load_checkpoint(path, dtype=dtype, progress=args.progress, quantization=quant_config(args))
    check_tensor_parallel_size(loaded.config, args.tensor_parallel_size)
    logger.info("loaded %s (%s, %s, %s) in %.1f s; weights: %.1f MiB", path, loaded.format, dtype,
                describe_quantization(loaded.params), time.perf_counter() - start,
                param_nbytes(loaded.params) / 2**20)
    tokenizer = None
    if not args.skip_tokenizer_init:
        if loaded.tokenizer_path is None:
            raise ValueError(f"no tokenizer files found for {path}; pass skip_tokenizer_init=True and token-id "
                             f"prompts, or add tokenizer.json / tokenizer.model")
        from jaxserve.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(loaded.tokenizer_path)
    config = EngineConfig(
        model=loaded.config,
        cache=CacheConfig(block_size=args.block_size, kv_cache_memory=args.kv_cache_memory,
                          num_kv_blocks=args.num_kv_blocks, kv_cache_dtype=args.kv_cache_dtype,
                          enable_prefix_caching=args.enable_prefix_caching),
        scheduler=SchedulerConfig(max_model_len=args.max_model_len or loaded.config.max_position_embeddings,
                                  max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens),
        dtype=dtype, seed=args.seed, attention_backend=args.attention_backend,
        matmul_backend=args.matmul_backend, quantization=args.quantization,
        quantization_group_size=args.quantization_group_size, quantize_embedding=args.quantize_embedding,
        tensor_parallel_size=args.tensor_parallel_size, layer_loop=args.layer_loop,
        compile_all_buckets=args.compile_all_buckets,
        compilation_cache_dir=args.compilation_cache_dir)
    return loaded, tokenizer, config


def build_replica(config: EngineConfig, host_params: dict, tokenizer: Any, devices: list, args: EngineArgs):
    """One LLMEngine on `devices`: its slices of the weights placed there, then its KV pool sized and allocated."""
    from jaxserve.engine.llm_engine import LLMEngine

    from jaxserve.engine.runner import place_params

    # Placed before the pool is sized, so an accelerator's free memory already accounts for the weights.
    params = place_params(host_params, config, make_mesh(devices))
    num_blocks = size_kv_pool(config, args.gpu_memory_utilization, devices)
    return LLMEngine(config, params, tokenizer, num_blocks, progress=args.progress, devices=devices)


def quant_config(args: EngineArgs) -> QuantConfig | None:
    """The QuantConfig the arguments ask for (None: keep the checkpoint's weights); bad settings are ValueErrors."""
    if args.quantization is None:
        if args.quantization_group_size is not None:
            raise ValueError("quantization_group_size is set but quantization is not; pass quantization='int8' or "
                             "'int4'")
        return None
    return QuantConfig(args.quantization, args.quantization_group_size, args.quantize_embedding)


def describe_quantization(params: dict) -> str:
    """"float" or the quantized formats present, e.g. "int4/g32 x 211, float x 62"."""
    counts: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(params, is_leaf=is_quantized):
        name = leaf.describe() if is_quantized(leaf) else "float"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} x {n}" for name, n in sorted(counts.items()))


def size_kv_pool(config: EngineConfig, memory_utilization: float = DEFAULT_MEMORY_UTILIZATION,
                 devices: list | None = None) -> int:
    """Pages in the pool (the reserved page included), from num_kv_blocks, kv_cache_memory or the platform.

    The arithmetic is the capacity planner's (`jaxserve.planner.memory`), so `jaxserve plan --device local` predicts
    exactly the pool and concurrency the engine gets.
    """
    cache = config.cache
    head_dim = pages_head_dim(config, devices)
    per_block = kv_bytes_per_token(config.model, config.kv_dtype, head_dim) * cache.block_size
    if cache.num_kv_blocks is not None:
        num_blocks = cache.num_kv_blocks
    else:
        budget = cache.kv_cache_memory or local_kv_budget(memory_utilization, devices)
        num_blocks = kv_pool_blocks(config.model, config.kv_dtype, cache.block_size, budget,
                                    config.max_blocks_per_seq, config.scheduler.max_num_seqs, head_dim=head_dim)
    if num_blocks < 2:
        raise ValueError(f"the KV budget holds {num_blocks} pages of {per_block} bytes; at least 2 are needed")
    tokens = (num_blocks - 1) * cache.block_size
    logger.info("KV cache: %d pages x %d tokens = %d tokens, %.1f MiB (%d bytes/token); max concurrency at "
                "max_model_len=%d: %d sequences", num_blocks - 1, cache.block_size, tokens,
                num_blocks * per_block / 2**20, per_block // cache.block_size, config.scheduler.max_model_len,
                max_concurrency(num_blocks, config.scheduler.max_model_len, cache.block_size))
    if head_dim != config.model.head_dim:
        logger.warning("KV pages are stored with head_dim padded %d -> %d for the attention kernels (counted above: "
                       "%.2fx the bytes of unpadded pages)",
                       config.model.head_dim, head_dim, head_dim / config.model.head_dim)
    return num_blocks


def pages_head_dim(config: EngineConfig, devices: list | None = None) -> int:
    """The head dim the KV pages are stored with on `devices` (padded for some Pallas kernels)."""
    from jaxserve.attention.dispatch import page_head_dim

    platform = (devices[0] if devices else jax.devices()[0]).platform
    sched = config.scheduler
    return page_head_dim(config.attention_backend, config.model, platform, block_size=config.cache.block_size,
                         kv_dtype=config.kv_dtype, max_model_len=sched.max_model_len, max_num_seqs=sched.max_num_seqs)
