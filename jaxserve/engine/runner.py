"""ModelRunner: the one bridge between host scheduling state and the device.

Per step it sends one batch of padded int32/float32 arrays to the device, runs the jitted model step (K/V pages
donated and updated in place) and the jitted sampler, and brings the new tokens back in one transfer. Every shape
bucket is compiled at start-up; a compilation after warm-up is counted and logged as a warning.
"""

from __future__ import annotations

import atexit
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxserve.attention.dispatch import get_attention_fn
from jaxserve.attention.metadata import AttentionMetadata
from jaxserve.attention.xla import context_chunk_blocks
from jaxserve.config import EngineConfig, resolve_layer_loop
from jaxserve.engine.buckets import pick_bucket, power_of_two_buckets
from jaxserve.engine.page_copy import copy_pages
from jaxserve.engine.sampler import VARIANTS, SamplingTensors, sample
from jaxserve.engine.scheduler import ScheduledBatch
from jaxserve.engine.step_inputs import StepInputs, build_step_inputs
from jaxserve.kv_cache import KVCache, allocate_kv_cache
from jaxserve.model.cpu_weights import pack_params, resolve_matmul_backend
from jaxserve.model.llama import compute_logits, forward, unstack_layers
from jaxserve.parallel.mesh import device_groups, make_mesh, replicated
from jaxserve.parallel.multihost import StepChannel, follower_loop
from jaxserve.parallel.sharding import cache_sharding, shard_by_heads, shard_params
from jaxserve.sampling_params import MAX_LOGPROBS

logger = logging.getLogger(__name__)

KEEPALIVE_S = 30.0  # multi-host: longest a follower waits for a message while the leader is idle


class ModelRunner:
    """Owns the device state (parameters, KV pages) and the compiled steps."""

    def __init__(self, config: EngineConfig, params: dict[str, Any], num_blocks: int,
                 devices: Sequence[jax.Device] | None = None) -> None:
        """`params` (host or device arrays) are placed on `devices` (default: the first
        `config.tensor_parallel_size` devices), split by heads when there are several."""
        self.config = config
        self.model_config = config.model
        self.block_size = config.cache.block_size
        tp = config.tensor_parallel_size
        devices = list(devices) if devices is not None else device_groups(tp)[0]
        if len(devices) != tp:
            raise ValueError(f"tensor_parallel_size={tp} needs {tp} devices, got {len(devices)}")
        self.mesh = make_mesh(devices)
        self._replicated = replicated(self.mesh)
        self.params = place_params(params, config, self.mesh)
        self.num_blocks = num_blocks
        self.cache: KVCache = allocate_kv_cache(config.model, num_blocks, self.block_size, config.kv_dtype,
                                                sharding=cache_sharding(self.mesh))
        sched = config.scheduler
        chunk = context_chunk_blocks(self.block_size)
        self.table_width = -(-config.max_blocks_per_seq // chunk) * chunk
        self.token_buckets = power_of_two_buckets(config.min_bucket, sched.max_num_batched_tokens)
        self.row_buckets = power_of_two_buckets(config.min_bucket, sched.max_num_seqs)
        self.eos_token_ids: tuple[int, ...] = config.model.eos_token_ids
        self._seen_shapes: set[tuple] = set()
        self.warmed_up = self._warming_up = False
        self.num_compiles_after_warmup = 0
        # Multi-host: the leader (process 0) broadcasts every step's inputs after warm-up; followers replay them.
        self.channel = StepChannel() if jax.process_count() > 1 else None
        self._last_send = 0.0  # when the leader last sent (keep-alives fill long idle gaps)
        self._closed = False  # the followers were told to stop
        if self.channel is not None and self.channel.is_leader:
            atexit.register(self.close)

        attention_fn = get_attention_fn(config.attention_backend, model=config.model, block_size=self.block_size,
                                        kv_dtype=config.kv_dtype)
        shard_attention = functools.partial(shard_by_heads, mesh=self.mesh) if tp > 1 else None
        # Outputs pinned to the inputs' shardings: the donated pages keep their layout, and every step (and the
        # next compilation-cache lookup) sees the same input shardings.
        pages = cache_sharding(self.mesh)
        self._model_step = jax.jit(
            functools.partial(forward, config=config.model, attention_fn=attention_fn,
                              shard_attention=shard_attention), donate_argnames=("cache",),
            out_shardings=(self._replicated, pages))
        self._select_rows = jax.jit(lambda hidden, indices: hidden[indices])
        # Replicated results: the host reads them whole (on a multi-host leader, from its own devices).
        # Where the native CPU kernels serve the matmuls, they also reduce greedy / sampled rows over the vocabulary.
        native = resolve_matmul_backend(config.matmul_backend, self.mesh.devices.flat[0].platform, self.mesh.size,
                                        jax.process_count()) == "cpu"
        self._sample_step = jax.jit(functools.partial(_logits_and_sample, native=native), static_argnames=("variant",),
                                    out_shardings=self._replicated)
        self._prompt_logprobs_step = jax.jit(_prompt_logprobs, out_shardings=self._replicated)
        self._copy_pages = jax.jit(copy_pages, donate_argnames=("cache",), out_shardings=pages)

    # -- compilation bookkeeping ---------------------------------------------------------------------------------

    def _note_shape(self, key: tuple) -> None:
        if key in self._seen_shapes:
            return
        self._seen_shapes.add(key)
        if self.warmed_up:
            self.num_compiles_after_warmup += 1
            logger.warning("compiling %s after warm-up (compilation #%d after warm-up): a missing bucket",
                           key, self.num_compiles_after_warmup)

    def warmup(self, progress: bool = True) -> float:
        """Compile every bucket of every jitted step (model, row selection, sampler, prompt logprobs)."""
        start = time.perf_counter()
        self._warming_up = True  # every process warms up by itself, in the same order: nothing is broadcast
        smallest_rows = self.row_buckets[0]
        jobs = [(t, smallest_rows, "greedy", False) for t in self.token_buckets]
        jobs += [(pick_bucket(self.token_buckets, r), r, v, False) for r in self.row_buckets for v in VARIANTS
                 if v != "greedy"]
        jobs += [(t, r, "greedy", False) for t in self.token_buckets for r in self.row_buckets
                 if smallest_rows < r <= t]
        jobs += [(t, smallest_rows, "greedy", True) for t in self.token_buckets]
        for num_tokens, num_rows, variant, prompt_logprobs in tqdm(jobs, desc="compiling buckets",
                                                                   disable=not progress):
            inputs = self._inputs(ScheduledBatch([], [], is_prefill=False), num_tokens, num_rows, variant)
            inputs.prompt_targets = np.zeros(num_tokens, np.int32)
            self._fetch(self._launch(inputs, variant, prompt_logprobs))
        self._note_shape(("copy",))
        self.cache = self._copy_pages(self.cache, np.zeros((self.config.scheduler.max_num_seqs, 2), np.int32))
        jax.block_until_ready(self.cache)
        self.warmed_up, self._warming_up = True, False
        return time.perf_counter() - start

    def _inputs(self, batch: ScheduledBatch, num_tokens: int, num_rows: int, variant: str) -> StepInputs:
        return build_step_inputs(
            batch, num_token_slots=num_tokens, num_rows=num_rows, max_num_seqs=self.config.scheduler.max_num_seqs,
            table_width=self.table_width, block_size=self.block_size, full_sampler=variant == "full",
            max_model_len=self.config.scheduler.max_model_len, eos_token_ids=self.eos_token_ids)

    # -- execution -----------------------------------------------------------------------------------------------

    def execute(self, batch: ScheduledBatch, variant: str, want_prompt_logprobs: bool = False) -> dict[str, Any]:
        """Run one step; returns numpy `tokens`, `logprob` (and top logprobs / prompt logprobs when asked)."""
        sample_rows = len(batch.seqs) + len(batch.forks)
        # Forked samples add rows without tokens; a token bucket at least as large keeps to the warmed-up shapes.
        num_tokens = pick_bucket(self.token_buckets, max(batch.num_tokens, sample_rows))
        num_rows = pick_bucket(self.row_buckets, sample_rows)
        inputs = self._inputs(batch, num_tokens, num_rows, variant)
        if want_prompt_logprobs:
            inputs.prompt_targets = _next_tokens(batch, num_tokens)
        result = self._fetch(self._launch(inputs, variant, want_prompt_logprobs))
        result["sampled"] = inputs.sampled
        return result

    def _launch(self, inputs: StepInputs, variant: str, want_prompt_logprobs: bool) -> dict[str, jax.Array]:
        """Dispatch one step: the jitted calls (asynchronous), which take the host arrays as they are."""
        if self.channel is not None and self.channel.is_leader and not self._warming_up:
            self.channel.send({"variant": variant, "prompt_logprobs": want_prompt_logprobs}, inputs.to_arrays())
            self._last_send = time.monotonic()
        num_tokens, num_rows = len(inputs.tokens), len(inputs.logits_indices)
        for key in (("model", num_tokens), ("select", num_tokens, num_rows), ("sample", num_rows, variant)):
            self._note_shape(key)
        meta = AttentionMetadata(inputs.slot_mapping, inputs.block_tables, inputs.seq_lens, inputs.query_start_loc)
        targets = inputs.prompt_targets if want_prompt_logprobs else None
        # The inputs go to the jitted steps as numpy: jit transfers them into the (replicated) layout each
        # computation takes, for a fraction of an explicit device_put per array (a decode step's 20 arrays: 0.09 vs
        # 0.66 ms on the 2-core VM); across processes it is the only way, as another process's devices cannot be
        # written from here.
        tensors = SamplingTensors(**inputs.sampling)
        if inputs.page_copies is not None:  # copy-on-write: shared pages this step writes are copied first
            self._note_shape(("copy",))
            self.cache = self._copy_pages(self.cache, inputs.page_copies)
        hidden, self.cache = self._model_step(self.params, tokens=inputs.tokens, positions=inputs.positions,
                                              cache=self.cache, meta=meta)
        # Select the sampling rows first, so the sampler compiles per row bucket only.
        rows = self._select_rows(hidden, inputs.logits_indices)
        outputs = self._sample_step(self.params, rows, tensors, inputs.num_rows_used, variant=variant)
        if want_prompt_logprobs:
            self._note_shape(("prompt_logprobs", num_tokens))
            outputs["prompt"] = self._prompt_logprobs_step(self.params, hidden, targets)
        return outputs

    # -- placement, results and multi-host ---------------------------------------------------------------------

    def _fetch(self, outputs: dict[str, jax.Array]) -> dict[str, Any]:
        """Replicated results as numpy (across processes, from this process's own copy)."""
        if self.channel is None:
            return jax.device_get(outputs)
        return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), outputs)

    def follow(self) -> int:
        """Multi-host follower: replay the leader's steps until it stops; returns the number of steps."""
        if self.channel is None or self.channel.is_leader:
            raise RuntimeError("follow() runs on the followers (process_index > 0) of a multi-process job")

        steps = 0

        def replay(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
            nonlocal steps
            if meta.get("keepalive"):
                return
            jax.block_until_ready(self._launch(StepInputs.from_arrays(arrays), meta["variant"],
                                               meta["prompt_logprobs"]))
            steps += 1

        follower_loop(self.channel, replay)
        return steps

    def keepalive(self) -> None:
        """On a multi-host leader that has been idle for KEEPALIVE_S: a no-op message, so followers never wait in
        one collective for longer than that (collective back-ends may time out on very long waits)."""
        leading = self.channel is not None and self.channel.is_leader and not self._closed
        if leading and time.monotonic() - self._last_send > KEEPALIVE_S:
            self.channel.send({"keepalive": True})
            self._last_send = time.monotonic()

    def close(self) -> None:
        """On a multi-host leader: tell the followers to stop (once)."""
        if self.channel is not None and self.channel.is_leader and not self._closed:
            self._closed = True
            self.channel.send_stop()


def place_params(params: dict[str, Any], config: EngineConfig, mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """`params` on `mesh`, each device receiving its slices; split per layer first when the layers run unrolled
    (host params are split into views, so no device ever holds the stacked and the split copy), and with the
    matmul weights repacked for the native CPU kernels when `matmul_backend` resolves to "cpu". Idempotent."""
    platform = mesh.devices.flat[0].platform
    if resolve_layer_loop(config.layer_loop, platform) == "unrolled":
        params = unstack_layers(params)
    if resolve_matmul_backend(config.matmul_backend, platform, mesh.size, jax.process_count()) == "cpu":
        return jax.device_put(pack_params(params), replicated(mesh))
    return shard_params(params, mesh)


def _next_tokens(batch: ScheduledBatch, num_slots: int) -> np.ndarray:
    """For each packed prompt token, the prompt token that follows it (-1 where none does)."""
    targets = np.full(num_slots, -1, np.int32)
    start = 0
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        first = seq.num_computed_tokens
        nxt = np.asarray(seq.token_ids[first + 1:min(first + n + 1, seq.num_prompt_tokens)], np.int32)
        targets[start:start + len(nxt)] = nxt
        start += n
    return targets


def _logits_and_sample(params: dict[str, Any], rows: jax.Array, tensors: SamplingTensors, num_rows_used: jax.Array,
                       variant: str, native: bool = False) -> dict[str, jax.Array]:
    logits = compute_logits(params, rows, valid_rows=num_rows_used[0])
    return sample(logits, tensors, variant, native=native, valid_rows=num_rows_used[0])


def _prompt_logprobs(params: dict[str, Any], hidden: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    logprobs = jax.nn.log_softmax(compute_logits(params, hidden), axis=-1)
    top_logprobs, top_ids = jax.lax.top_k(logprobs, MAX_LOGPROBS)
    target = jnp.take_along_axis(logprobs, jnp.maximum(targets, 0)[:, None], axis=-1)[:, 0]
    return {"target": target, "top_logprobs": top_logprobs, "top_ids": top_ids}
