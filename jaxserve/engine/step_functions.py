"""The jitted functions of one deployment, the order a step calls them in, and the shapes warm-up compiles.

Built from the configuration and a device mesh alone (no weights, no KV pages), so the runner calls them on its
arrays and `jaxserve compile` (`jaxserve.aot`) lowers the very same functions, in the very same sequence, from
abstract shapes for a target this machine does not have: a bucket or a step added here is compiled by both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxserve.attention.dispatch import get_attention_fn, page_head_dim, table_width_multiple
from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.config import EngineConfig
from jaxserve.attention.xla import context_chunk_blocks
from jaxserve.engine.buckets import pick_bucket, power_of_two_buckets
from jaxserve.engine.page_copy import copy_pages
from jaxserve.engine.sampler import VARIANTS, SamplingTensors, sample
from jaxserve.engine.scheduler import ScheduledBatch
from jaxserve.engine.step_inputs import StepInputs, build_step_inputs
from jaxserve.model.cpu_weights import resolve_matmul_backend
from jaxserve.model.llama import compute_logits, forward
from jaxserve.parallel.mesh import replicated
from jaxserve.parallel.sharding import cache_sharding, shard_by_heads
from jaxserve.sampling_params import MAX_LOGPROBS

# `call(key, fn, *args, **kwargs)`: runs (or lowers) one jitted function; `key` names it and its shape bucket.
Call = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class WarmupJob:
    """One step warm-up runs: `num_tokens` token slots, `num_rows` sampling rows, a sampler variant."""

    num_tokens: int
    num_rows: int
    variant: str
    prompt_logprobs: bool = False


def warmup_jobs(token_buckets: list[int], row_buckets: list[int]) -> list[WarmupJob]:
    """Every step shape the engine can run: each token bucket of the model step (with and without prompt
    logprobs), each row bucket of every sampler variant, and the row selection of every (tokens, rows) pair."""
    smallest_rows = row_buckets[0]
    jobs = [WarmupJob(t, smallest_rows, "greedy") for t in token_buckets]
    jobs += [WarmupJob(pick_bucket(token_buckets, r), r, v) for r in row_buckets for v in VARIANTS if v != "greedy"]
    jobs += [WarmupJob(t, r, "greedy") for t in token_buckets for r in row_buckets if smallest_rows < r <= t]
    jobs += [WarmupJob(t, smallest_rows, "greedy", True) for t in token_buckets]
    return jobs


class StepFunctions:
    """The jitted model step, row selection, sampler, prompt logprobs and page copy of a deployment on `mesh`.

    Outputs are pinned to fixed shardings (hidden states and sampled tokens replicated, pages split by KV head):
    the donated pages keep their layout from step to step and every step presents the same input shardings, so
    each bucket compiles once.
    """

    def __init__(self, config: EngineConfig, mesh: jax.sharding.Mesh, chip: Any = None) -> None:
        """`chip` sizes the Pallas kernels for a compile-only target (default: the chip the mesh runs on)."""
        platform = mesh.devices.flat[0].platform
        self.config, self.mesh = config, mesh
        sched = config.scheduler
        kernel = dict(model=config.model, block_size=config.cache.block_size, kv_dtype=config.kv_dtype,
                      platform=platform, max_model_len=sched.max_model_len, max_num_seqs=sched.max_num_seqs,
                      chip=chip)
        attention_fn = get_attention_fn(config.attention_backend, **kernel)
        # How the pages are stored for this backend (keyword arguments of `kv_cache.allocate_kv_cache`), and the
        # block tables' width: a multiple of the XLA path's context chunk and of what the kernels copy at once.
        self.page_geometry: dict[str, Any] = {"head_dim": page_head_dim(config.attention_backend, **kernel)}
        multiple = math.lcm(context_chunk_blocks(config.cache.block_size),
                            table_width_multiple(config.attention_backend, **kernel))
        self.table_width = -(-config.max_blocks_per_seq // multiple) * multiple
        self.token_buckets = power_of_two_buckets(config.min_bucket, sched.max_num_batched_tokens)
        self.row_buckets = power_of_two_buckets(config.min_bucket, sched.max_num_seqs)
        tp = config.tensor_parallel_size
        shard_attention = functools.partial(shard_by_heads, mesh=mesh) if tp > 1 else None
        pages, rep = cache_sharding(mesh), replicated(mesh)
        self.model_step = jax.jit(
            functools.partial(forward, config=config.model, attention_fn=attention_fn,
                              shard_attention=shard_attention), donate_argnames=("cache",), out_shardings=(rep, pages))
        self.select_rows = jax.jit(lambda hidden, indices: hidden[indices], out_shardings=rep)
        # Where the native CPU kernels serve the matmuls, they also reduce greedy / sampled rows over the vocabulary.
        native = resolve_matmul_backend(config.matmul_backend, platform, mesh.size, jax.process_count()) == "cpu"
        self.sample_step = jax.jit(functools.partial(_logits_and_sample, native=native), static_argnames=("variant",),
                                   out_shardings=rep)
        self.prompt_logprobs_step = jax.jit(_prompt_logprobs, out_shardings=rep)
        self.copy_pages = jax.jit(copy_pages, donate_argnames=("cache",), out_shardings=pages)

    def inputs(self, batch: ScheduledBatch, num_tokens: int, num_rows: int, variant: str) -> StepInputs:
        """The host arrays of `batch` padded to `num_tokens` token slots and `num_rows` sampling rows."""
        config = self.config
        return build_step_inputs(
            batch, num_token_slots=num_tokens, num_rows=num_rows, max_num_seqs=config.scheduler.max_num_seqs,
            table_width=self.table_width, block_size=config.cache.block_size, full_sampler=variant == "full",
            max_model_len=config.scheduler.max_model_len, eos_token_ids=config.model.eos_token_ids)

    def warmup_inputs(self, job: WarmupJob, copy_pages: bool = False) -> StepInputs:
        """The (empty) step inputs of warm-up `job`; with `copy_pages`, a no-op copy of the reserved page, so the
        copy-on-write step compiles too."""
        inputs = self.inputs(ScheduledBatch([], [], is_prefill=False), job.num_tokens, job.num_rows, job.variant)
        inputs.prompt_targets = np.zeros(job.num_tokens, np.int32)
        if copy_pages:
            inputs.page_copies = np.zeros((self.config.scheduler.max_num_seqs, 2), np.int32)
        return inputs

    def warmup_jobs(self) -> list[WarmupJob]:
        """`warmup_jobs` over this deployment's buckets."""
        return warmup_jobs(self.token_buckets, self.row_buckets)

    def step(self, call: Call, params: Any, cache: Any, inputs: StepInputs, variant: str,
             want_prompt_logprobs: bool) -> tuple[dict[str, Any], Any]:
        """One engine step through `call`: copy-on-write pages, the model, row selection, the sampler and (when
        asked) prompt logprobs. Returns (outputs, cache)."""
        num_tokens, num_rows = len(inputs.tokens), len(inputs.logits_indices)
        if inputs.page_copies is not None:  # copy-on-write: shared pages this step writes are copied first
            cache = call(("copy",), self.copy_pages, cache, inputs.page_copies)
        meta = AttentionMetadata(inputs.slot_mapping, inputs.block_tables, inputs.seq_lens, inputs.query_start_loc)
        hidden, cache = call(("model", num_tokens), self.model_step, params, tokens=inputs.tokens,
                             positions=inputs.positions, cache=cache, meta=meta)
        # Select the sampling rows first, so the sampler compiles per row bucket only.
        rows = call(("select", num_tokens, num_rows), self.select_rows, hidden, inputs.logits_indices)
        outputs = call(("sample", num_rows, variant), self.sample_step, params, rows,
                       SamplingTensors(**inputs.sampling), inputs.num_rows_used, variant=variant)
        if want_prompt_logprobs:
            outputs = dict(outputs, prompt=call(("prompt_logprobs", num_tokens), self.prompt_logprobs_step, params,
                                                hidden, inputs.prompt_targets))
        return outputs, cache


def _logits_and_sample(params: dict[str, Any], rows: jax.Array, tensors: SamplingTensors, num_rows_used: jax.Array,
                       variant: str, native: bool = False) -> dict[str, jax.Array]:
    logits = compute_logits(params, rows, valid_rows=num_rows_used[0])
    return sample(logits, tensors, variant, native=native, valid_rows=num_rows_used[0])


def _prompt_logprobs(params: dict[str, Any], hidden: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    logprobs = jax.nn.log_softmax(compute_logits(params, hidden), axis=-1)
    top_logprobs, top_ids = jax.lax.top_k(logprobs, MAX_LOGPROBS)
    target = jnp.take_along_axis(logprobs, jnp.maximum(targets, 0)[:, None], axis=-1)[:, 0]
    return {"target": target, "top_logprobs": top_logprobs, "top_ids": top_ids}
