"""ModelRunner: the one bridge between host scheduling state and the device.

Per step it sends one batch of padded int32/float32 arrays to the device, runs the jitted model step (K/V pages
donated and updated in place) and the jitted sampler, and brings the new tokens back in one transfer. Every shape
bucket is compiled at start-up; a compilation after warm-up is counted and logged as a warning.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxserve.config import EngineConfig, resolve_layer_loop
from jaxserve.engine.buckets import pick_bucket
from jaxserve.engine.scheduler import ScheduledBatch
from jaxserve.engine.step_functions import StepFunctions
from jaxserve.engine.step_inputs import StepInputs
from jaxserve.kv_cache import KVCache, allocate_kv_cache
from jaxserve.model.cpu_weights import pack_params, resolve_matmul_backend
from jaxserve.model.llama import unstack_layers
from jaxserve.parallel.mesh import device_groups, make_mesh, replicated
from jaxserve.parallel.multihost import StepChannel, follower_loop
from jaxserve.parallel.sharding import cache_sharding, shard_params

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
        self.params = place_params(params, config, self.mesh)
        self.num_blocks = num_blocks
        self.steps = StepFunctions(config, self.mesh)
        self.token_buckets, self.row_buckets = self.steps.token_buckets, self.steps.row_buckets
        self.cache: KVCache = allocate_kv_cache(config.model, num_blocks, self.block_size, config.kv_dtype,
                                                sharding=cache_sharding(self.mesh), **self.steps.page_geometry)
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
        """Compile every bucket of every jitted step (`StepFunctions.warmup_jobs`, which `jaxserve compile`
        compiles too); the first job also copies a page, so the copy-on-write step compiles."""
        start = time.perf_counter()
        self._warming_up = True  # every process warms up by itself, in the same order: nothing is broadcast
        jobs = self.steps.warmup_jobs()
        for i, job in enumerate(tqdm(jobs, desc="compiling buckets", disable=not progress)):
            inputs = self.steps.warmup_inputs(job, copy_pages=i == 0)
            self._fetch(self._launch(inputs, job.variant, job.prompt_logprobs))
        jax.block_until_ready(self.cache)
        self.warmed_up, self._warming_up = True, False
        return time.perf_counter() - start

    # -- execution -----------------------------------------------------------------------------------------------

    def execute(self, batch: ScheduledBatch, variant: str, want_prompt_logprobs: bool = False) -> dict[str, Any]:
        """Run one step; returns numpy `tokens`, `logprob` (and top logprobs / prompt logprobs when asked)."""
        sample_rows = len(batch.seqs) + len(batch.forks)
        # Forked samples add rows without tokens; a token bucket at least as large keeps to the warmed-up shapes.
        num_tokens = pick_bucket(self.token_buckets, max(batch.num_tokens, sample_rows))
        num_rows = pick_bucket(self.row_buckets, sample_rows)
        inputs = self.steps.inputs(batch, num_tokens, num_rows, variant)
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
        # The inputs go to the jitted steps as numpy: jit transfers them into the (replicated) layout each
        # computation takes, for a fraction of an explicit device_put per array (a decode step's 20 arrays: 0.09 vs
        # 0.66 ms on the 2-core VM); across processes it is the only way, as another process's devices cannot be
        # written from here.
        def call(key: tuple, fn, *args, **kwargs):
            self._note_shape(key)
            return fn(*args, **kwargs)

        outputs, self.cache = self.steps.step(call, self.params, self.cache, inputs, variant, want_prompt_logprobs)
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
