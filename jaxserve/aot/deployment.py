"""A deployment without weights: the engine configuration for a model on a target, its KV pool as the planner
sizes it, and abstract parameters and pages carrying the shardings the runner would give the real ones."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxserve.aot.targets import Target
from jaxserve.attention.dispatch import page_head_dim
from jaxserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, resolve_layer_loop
from jaxserve.engine.engine_args import EngineArgs, quant_config
from jaxserve.kv_cache import allocate_kv_cache
from jaxserve.model.llama import init_params, unstack_layers
from jaxserve.parallel.sharding import cache_sharding, param_shardings
from jaxserve.planner.model_presets import resolve_model
from jaxserve.planner.plan import PlanRequest, plan
from jaxserve.quant import QuantConfig, is_quantized


@dataclasses.dataclass(frozen=True)
class Deployment:
    """`config` of model `name` on `target`; `plan` is the capacity planner's view of it (`planner.plan`)."""

    name: str
    target: Target
    config: EngineConfig
    plan: dict[str, Any]
    quantization: QuantConfig | None


def plan_deployment(model: str, target: Target, args: EngineArgs) -> Deployment:
    """The engine configuration `jaxserve serve` would build from `args` for `model` (a preset, `config.json` or
    checkpoint; only its configuration is read) on `target`, with the KV pool the planner fits in its memory."""
    name, model_config = resolve_model(model)
    dtype = "bfloat16" if args.dtype == "auto" else args.dtype  # "auto" on an accelerator
    tp = args.tensor_parallel_size
    if tp > target.num_devices:
        raise ValueError(f"--tensor-parallel-size {tp} needs {tp} devices; target {target.name} has "
                         f"{target.num_devices} (give a larger topology, e.g. {target.name.split(':')[0]}:2x2)")
    max_model_len = args.max_model_len or model_config.max_position_embeddings
    kv_dtype = dtype if args.kv_cache_dtype == "auto" else args.kv_cache_dtype
    head_dim = page_head_dim(args.attention_backend, model_config, target.platform, block_size=args.block_size,
                             kv_dtype=kv_dtype, max_model_len=max_model_len, max_num_seqs=args.max_num_seqs,
                             chip=target.chip)
    request = PlanRequest(model=model_config, device=target.device, model_name=name,
                          weight_format=args.quantization or dtype, kv_cache_dtype=args.kv_cache_dtype,
                          max_model_len=max_model_len, memory_utilization=args.gpu_memory_utilization,
                          num_devices=tp, block_size=args.block_size, kv_cache_memory=args.kv_cache_memory,
                          max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                          group_size=args.quantization_group_size, page_head_dim=head_dim)
    planned = plan(request)
    num_blocks = args.num_kv_blocks or planned["num_kv_blocks"]
    if num_blocks < 2:
        raise ValueError(f"{name} does not fit {tp} x {target.device.name}: the weights take "
                         f"{planned['model_bytes'] / 2**30:.1f} GiB of {planned['device_memory_bytes'] / 2**30:.1f} "
                         f"GiB, leaving no room for KV pages (use more devices or quantized weights)")
    config = EngineConfig(
        model=model_config,
        cache=CacheConfig(block_size=args.block_size, num_kv_blocks=num_blocks, kv_cache_dtype=args.kv_cache_dtype,
                          enable_prefix_caching=args.enable_prefix_caching),
        scheduler=SchedulerConfig(max_model_len=max_model_len, max_num_seqs=args.max_num_seqs,
                                  max_num_batched_tokens=args.max_num_batched_tokens),
        dtype=dtype, attention_backend=args.attention_backend, matmul_backend="xla",
        quantization=args.quantization, quantization_group_size=args.quantization_group_size,
        quantize_embedding=args.quantize_embedding, tensor_parallel_size=tp, layer_loop=args.layer_loop)
    return Deployment(name, target, config, planned, quant_config(args))


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_params(model: ModelConfig, dtype: str, quantization: QuantConfig | None,
                    mesh: jax.sharding.Mesh, layer_loop: str = "auto") -> dict[str, Any]:
    """The parameter pytree a checkpoint of `model` loads as (`dtype`, quantized by `quantization`), as
    ShapeDtypeStructs with the shardings `parallel.sharding` gives them on `mesh`."""
    params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0), dtype))
    if quantization is not None:
        def quantize(key: str, leaf: Any) -> Any:
            if is_quantized(leaf) or not quantization.applies_to(key):
                return leaf
            return quantization.quantize_struct(key, tuple(leaf.shape), dtype)

        params = {key: ({name: quantize(f"layers/{name}", w) for name, w in value.items()} if key == "layers"
                        else quantize(key, value)) for key, value in params.items()}
    if resolve_layer_loop(layer_loop, mesh.devices.flat[0].platform) == "unrolled":  # as `runner.place_params`
        params = jax.eval_shape(unstack_layers, params)
    return _with_shardings(params, param_shardings(params, mesh))


def abstract_cache(config: EngineConfig, mesh: jax.sharding.Mesh, **page_geometry: Any) -> dict[str, Any]:
    """The KV page arrays of `config`'s pool on `mesh`, as ShapeDtypeStructs split by KV head."""
    sharding = cache_sharding(mesh)
    cache = jax.eval_shape(lambda: allocate_kv_cache(config.model, config.cache.num_kv_blocks,
                                                     config.cache.block_size, config.kv_dtype, sharding=sharding,
                                                     **page_geometry))
    return {name: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for name, a in cache.items()}
