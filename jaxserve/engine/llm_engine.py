"""LLMEngine: requests in, RequestOutputs out, one `step()` at a time (the loop the server drives)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from jaxserve.config import EngineConfig
from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.request_state import RequestState
from jaxserve.engine.runner import ModelRunner
from jaxserve.engine.scheduler import ScheduledBatch, Scheduler
from jaxserve.engine.sequence import Sequence
from jaxserve.outputs import RequestOutput
from jaxserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

Prompt = str | list[int] | dict[str, Any]


class LLMEngine:
    """Continuous batching over a ModelRunner: add requests, call `step()`, read the outputs it returns."""

    def __init__(self, config: EngineConfig, params: dict[str, Any], tokenizer: Any | None, num_blocks: int,
                 progress: bool = True, devices: list[Any] | None = None) -> None:
        """`devices`: the `config.tensor_parallel_size` devices the model runs on (default: the first ones)."""
        self.config = config
        self.tokenizer = tokenizer
        self.runner = ModelRunner(config, params, num_blocks, devices)
        self.block_manager = BlockManager(num_blocks, config.cache.block_size,
                                          enable_caching=config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager)
        self.requests: dict[str, RequestState] = {}
        self._rng = np.random.default_rng(config.seed)
        eos = set(config.model.eos_token_ids)
        if tokenizer is not None:
            eos.update(tokenizer.eos_token_ids)  # EOS plus end-of-turn ids (e.g. Llama 3's <|eot_id|>)
        self.eos_token_ids = tuple(sorted(eos))
        self.runner.eos_token_ids = self.eos_token_ids
        self.num_steps = 0
        # Device time (dispatch to results on host) and tokens, per kind of step: for logs and benchmarks.
        self.step_time = {"prefill": 0.0, "decode": 0.0}
        self.step_tokens = {"prefill": 0, "decode": 0}
        self.step_count = {"prefill": 0, "decode": 0}
        if config.compile_all_buckets:
            seconds = self.runner.warmup(progress=progress)
            logger.info("compiled %d token buckets and %d row buckets in %.1f s", len(self.runner.token_buckets),
                        len(self.runner.row_buckets), seconds)

    # -- requests ------------------------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None,
                    arrival_time: float | None = None, cache_salt: str | None = None) -> None:
        """Validate and queue a request. Raises ValueError for a bad prompt or one that cannot fit.

        `cache_salt` keeps the request's KV apart: only requests with the same salt share prefix-cache pages.
        """
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params = params or SamplingParams()
        text, ids = self.validate_request(prompt, params, cache_salt)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        base_seed = params.seed if params.seed is not None else int(self._rng.integers(0, 2**63))
        seqs = [Sequence(request_id, ids, params, i, base_seed, arrival) for i in range(params.n)]
        for seq in seqs:
            seq.cache_salt = cache_salt
        seqs[0].forks = seqs[1:]  # one prefill; the other samples share its pages (Scheduler forks them)
        self.requests[request_id] = RequestState(request_id, text, ids, params, seqs, self.tokenizer, arrival)
        self.scheduler.add(seqs[0])

    def validate_request(self, prompt: Prompt, params: SamplingParams,
                         cache_salt: str | None = None) -> tuple[str | None, list[int]]:
        """Every check of `add_request` that does not change the engine: (prompt text or None, prompt ids), or a
        ValueError naming the problem. Read-only, so an engine wrapping this one may call it at any time."""
        if cache_salt is not None and not isinstance(cache_salt, str):
            raise ValueError(f"cache_salt must be a string, got {type(cache_salt).__name__}")
        if params.n > self.config.scheduler.max_num_seqs:
            raise ValueError(f"n={params.n} samples exceed max_num_seqs={self.config.scheduler.max_num_seqs}: the "
                             f"samples of a request run together")
        text, ids = self._prompt_ids(prompt)
        self._check_length(len(ids), params)
        vocab = self.config.model.vocab_size
        outside = sorted(t for t in params.logit_bias if t >= vocab)
        if outside:
            raise ValueError(f"logit_bias token ids must be in [0, {vocab}); got {outside[:5]}")
        return text, ids

    def _prompt_ids(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids, text = list(prompt["prompt_token_ids"]), prompt.get("prompt")
            elif "prompt" in prompt:
                return self._prompt_ids(prompt["prompt"])
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        elif isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine was started with skip_tokenizer_init=True: pass prompts as "
                                 "{'prompt_token_ids': [...]}")
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            text, ids = None, list(prompt)
        else:
            raise ValueError(f"a prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("the prompt is empty: at least one token is needed")
        vocab = self.config.model.vocab_size
        bad = [t for t in ids if not isinstance(t, (int, np.integer)) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}); got {bad[:5]}")
        return text, [int(t) for t in ids]

    def pages_needed(self, prompt_len: int, params: SamplingParams) -> int:
        """KV pages a request can grow to: its prompt plus max_tokens (or up to max_model_len)."""
        max_len = self.config.scheduler.max_model_len
        return -(-(prompt_len + (params.max_tokens or max_len - prompt_len)) // self.config.cache.block_size)

    def _check_length(self, prompt_len: int, params: SamplingParams) -> None:
        max_len = self.config.scheduler.max_model_len
        if prompt_len >= max_len:
            raise ValueError(f"the prompt has {prompt_len} tokens but max_model_len is {max_len}: it must be "
                             f"shorter than max_model_len to leave room for at least one generated token")
        if params.max_tokens is not None and prompt_len + params.max_tokens > max_len:
            total = prompt_len + params.max_tokens
            raise ValueError(f"this model's maximum context length is {max_len} tokens, but {total} were "
                             f"requested ({prompt_len} in the prompt, {params.max_tokens} in the completion)")
        needed = self.pages_needed(prompt_len, params)
        if needed > self.block_manager.num_usable_blocks:
            raise ValueError(f"the request needs up to {needed} KV pages but the whole pool holds "
                             f"{self.block_manager.num_usable_blocks}: raise kv_cache_memory or lower max_tokens")

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its pages; unknown ids are ignored."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return
        for seq in state.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)
                seq.finish_reason = "abort"

    def has_unfinished_requests(self) -> bool:
        """True while any request waits or runs."""
        return bool(self.requests)

    def get_tokenizer(self) -> Any:
        """The tokenizer (None with skip_tokenizer_init)."""
        return self.tokenizer

    # -- the step ------------------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run one device step, and return outputs of the requests that advanced."""
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        self.num_steps += 1
        for seq in batch.seqs:
            self.requests[seq.request_id].mark_scheduled()
        variant = self._sampler_variant(batch)
        want_prompt = batch.is_prefill and any(
            seq.params.prompt_logprobs is not None and seq.sample_index == 0 for seq in batch.seqs)
        start = time.perf_counter()
        result = self.runner.execute(batch, variant, want_prompt)
        kind = "prefill" if batch.is_prefill else "decode"
        self.step_time[kind] += time.perf_counter() - start
        self.step_tokens[kind] += batch.num_tokens
        self.step_count[kind] += 1
        return self._process(batch, result)

    @staticmethod
    def _sampler_variant(batch: ScheduledBatch) -> str:
        params = [seq.params for seq in batch.seqs]
        if any(p.needs_full_sampler for p in params):
            return "full"
        return "greedy" if all(p.greedy for p in params) else "sample"

    def _process(self, batch: ScheduledBatch, result: dict[str, Any]) -> list[RequestOutput]:
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        start = 0
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            state = self.requests[seq.request_id]
            touched[seq.request_id] = state
            if "prompt" in result and seq.sample_index == 0 and state.prompt_logprobs is not None:
                self._record_prompt_logprobs(state, seq, n, start, result["prompt"])
            start += n
            seq.num_computed_tokens += n
            self.block_manager.cache_computed_pages(seq)  # written now: other requests may take them
        self.scheduler.complete_forks(batch)  # before any parent can finish and free its pages
        for row, seq in enumerate(batch.seqs):
            if result["sampled"][row]:
                self._append_token(seq, self.requests[seq.request_id], row, result, now)
        for j, (_, child) in enumerate(batch.forks):  # siblings drew from their parent's logits
            self._append_token(child, self.requests[child.request_id], len(batch.seqs) + j, result, now)
        outputs = []
        for request_id, state in touched.items():
            outputs.append(state.to_output())
            if state.finished:
                state.metrics.finished_time = now
                outputs[-1].metrics = state.metrics
                del self.requests[request_id]
        return outputs

    def _append_token(self, seq: Sequence, state: RequestState, row: int, result: dict[str, Any],
                      now: float) -> None:
        token = int(result["tokens"][row])
        seq.token_ids.append(token)
        self._record_logprobs(seq, row, token, result)
        if state.metrics.first_token_time is None:
            state.metrics.first_token_time = now
        self._check_stop(seq, state, token)

    def _record_logprobs(self, seq: Sequence, row: int, token: int, result: dict[str, Any]) -> None:
        if seq.params.logprobs is None:
            return
        lp = float(result["logprob"][row])
        entry = {token: lp}
        for tid, tlp in zip(result["top_ids"][row][:seq.params.logprobs],
                            result["top_logprobs"][row][:seq.params.logprobs]):
            entry.setdefault(int(tid), float(tlp))
        seq.output_logprobs.append(entry)
        seq.cumulative_logprob += lp

    @staticmethod
    def _record_prompt_logprobs(state: RequestState, seq: Sequence, n: int, start: int,
                                prompt: dict[str, np.ndarray]) -> None:
        plp = state.prompt_logprobs
        k = seq.params.prompt_logprobs
        for i in range(n):
            pos = seq.num_computed_tokens + i  # this token's logits predict token pos + 1
            if pos + 1 >= seq.num_prompt_tokens or pos + 1 < len(plp):
                continue  # past the prompt, or already recorded before a preemption
            entry = {seq.token_ids[pos + 1]: float(prompt["target"][start + i])}
            for tid, tlp in zip(prompt["top_ids"][start + i][:k], prompt["top_logprobs"][start + i][:k]):
                entry.setdefault(int(tid), float(tlp))
            plp.append(entry)

    def _check_stop(self, seq: Sequence, state: RequestState, token: int) -> None:
        p = seq.params
        text = state.texts[seq.sample_index]
        past_min = seq.num_output_tokens >= p.min_tokens
        stop_str = text.add(token, check_stops=past_min)
        reason: tuple[str, int | str | None] | None = None
        if past_min and not p.ignore_eos and token in self.eos_token_ids:
            reason = ("stop", None)
        elif past_min and token in p.stop_token_ids:
            reason = ("stop", token)
        elif stop_str is not None:
            reason = ("stop", stop_str)
        elif p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
            reason = ("length", None)
        elif seq.num_tokens >= self.config.scheduler.max_model_len:
            reason = ("length", None)
        if reason is not None:
            text.flush()
            seq.finish_reason, seq.stop_reason = reason
            self.scheduler.finish(seq)

    # -- introspection -------------------------------------------------------------------------------------------

    def keepalive(self) -> None:
        """Called while idle: on a multi-host leader, a periodic no-op step keeps the followers' wait short."""
        self.runner.keepalive()

    def shutdown(self) -> None:
        """Release what outlives the engine's steps (on a multi-host leader: stop the followers)."""
        self.runner.close()

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix page (pages in use are unaffected)."""
        self.block_manager.reset_prefix_cache()

    def stats(self) -> dict[str, Any]:
        """Queue lengths, KV usage and counters (for logs and metrics)."""
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "kv_cache_usage": self.block_manager.usage,
            "num_free_blocks": self.block_manager.num_free_blocks,
            "num_preemptions": self.scheduler.num_preemptions,
            "prefix_cache_queries": self.scheduler.prefix_cache_queries,
            "prefix_cache_hits": self.scheduler.prefix_cache_hits,
            "num_cached_blocks": self.block_manager.num_cached_blocks,
            "num_compiles_after_warmup": self.runner.num_compiles_after_warmup,
            "num_steps": self.num_steps,
            "step_time_s": dict(self.step_time),
            "step_tokens": dict(self.step_tokens),
            "step_count": dict(self.step_count),
        }
