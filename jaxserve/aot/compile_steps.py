"""Compile every jitted function a deployment runs, for a target, from abstract shapes.

The functions and their order come from `engine.step_functions` (the runner's own warm-up list and step sequence),
so a new bucket, sampler variant or step is covered here without a change. Each unique (function, shape) is
lowered and compiled once by the target's real compiler; what it reports is kept per function.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxserve.aot.deployment import Deployment, abstract_cache, abstract_params
from jaxserve.engine.step_functions import StepFunctions
from jaxserve.parallel.mesh import make_mesh, replicated
from pallas_kernels.production import target_context

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                 "generated_code_size_in_bytes")


@dataclasses.dataclass
class CompiledStep:
    """What the compiler said of one step function at one shape (per chip); `error` when it refused it."""

    key: tuple  # ("model", tokens) | ("select", tokens, rows) | ("sample", rows, variant) | ...
    seconds: float
    memory: dict[str, int] | None = None
    flops: float | None = None
    bytes_accessed: float | None = None
    error: str | None = None
    shapes: str = ""  # the argument shapes, for error messages

    @property
    def name(self) -> str:
        return "/".join(str(part) for part in self.key)


class CompileFailed(Exception):
    """A step function the compiler refused; the rest of its warm-up job cannot be lowered."""


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Host arrays (the step inputs) as ShapeDtypeStructs placed as jit places numpy inputs: replicated."""
    def leaf(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x

    return jax.tree_util.tree_map(leaf, tree)


def _describe(args: Any) -> str:
    """The step's own inputs (tokens, metadata, sampling rows): what names the shape bucket, not the weights."""
    def is_state(x: Any) -> bool:  # the parameters or the KV pages
        return isinstance(x, dict) and ("embed" in x or "k" in x)

    leaves = jax.tree_util.tree_leaves(args, is_leaf=is_state)
    shown = [f"{np.dtype(x.dtype).name}{list(x.shape)}" for x in leaves if hasattr(x, "shape")]
    return ", ".join(shown[:8])


def _cost(compiled: Any) -> tuple[float | None, float | None]:
    """FLOPs and bytes accessed per chip from XLA's cost analysis: the compiled module's own where the backend
    reports one (TPU), else XLA's HLO cost analysis of the compiled (optimised) module (GPU, compile-only)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends have none
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost:
        try:
            from jax._src import xla_bridge
            from jax._src.lib import xla_client

            module = compiled.runtime_executable().hlo_modules()[0]
            cost = xla_client._xla.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
        except Exception:  # noqa: BLE001 - the figures are optional; an older jaxlib may lack this entry point
            return None, None
    flops, nbytes = cost.get("flops"), cost.get("bytes accessed")
    return (flops if flops and flops > 0 else None), (nbytes if nbytes and nbytes > 0 else None)


def compile_deployment(deployment: Deployment, devices: list, progress: Callable[[CompiledStep], None] | None = None
                       ) -> list[CompiledStep]:
    """Compile every step function of `deployment` on the compile-only `devices` (its first tensor-parallel
    group); one CompiledStep per unique function and shape, in warm-up order."""
    config = deployment.config
    mesh = make_mesh(devices[:config.tensor_parallel_size])
    steps = StepFunctions(config, mesh, chip=deployment.target.chip)
    params = abstract_params(config.model, config.dtype, deployment.quantization, mesh, config.layer_loop)
    cache = abstract_cache(config, mesh, **steps.page_geometry)
    rep = replicated(mesh)
    done: dict[tuple, CompiledStep] = {}

    outputs: dict[tuple, Any] = {}  # key -> abstract outputs, so each (function, shape) is lowered once

    def call(key: tuple, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if key in outputs:
            return outputs[key]
        if key in done:  # its lowering was refused before: the rest of this job cannot be lowered either
            raise CompileFailed(done[key].error)
        args, kwargs = _abstract((args, kwargs), rep)
        start = time.perf_counter()
        try:
            lowered = fn.lower(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - reported with the step and its shapes
            raise _failed(done, key, start, err, (args, kwargs), progress) from err
        outputs[key] = lowered.out_info  # lowered: the job's later functions can go on even if this one is refused
        try:
            compiled = lowered.compile()
        except Exception as err:  # noqa: BLE001
            _failed(done, key, start, err, (args, kwargs), progress)
            return outputs[key]
        analysis = compiled.memory_analysis()
        memory = None if analysis is None else {f: int(getattr(analysis, f)) for f in MEMORY_FIELDS}
        flops, nbytes = _cost(compiled)
        done[key] = CompiledStep(key, time.perf_counter() - start, memory, flops, nbytes,
                                 shapes=_describe((args, kwargs)))
        if progress is not None:
            progress(done[key])
        return outputs[key]

    with target_context(mesh):
        for i, job in enumerate(steps.warmup_jobs()):
            inputs = steps.warmup_inputs(job, copy_pages=i == 0)
            try:
                _, cache = steps.step(call, params, cache, inputs, job.variant, job.prompt_logprobs)
            except CompileFailed:
                continue
    return list(done.values())


def _failed(done: dict, key: tuple, start: float, err: Exception, args: Any, progress) -> CompileFailed:
    if key not in done:
        message = " ".join(str(err).split())[:600]
        done[key] = CompiledStep(key, time.perf_counter() - start, error=f"{type(err).__name__}: {message}",
                                 shapes=_describe(args))
        if progress is not None:
            progress(done[key])
    return CompileFailed(done[key].error)
