"""DisaggregatedEngine: prefill on one device group, decode on another, behind LLMEngine's interface.

Two LLMEngines, each with its own scheduler, block manager and KV pool, on disjoint devices. Requests arrive at the
prefill engine, which computes their prompts (chunked, with prefix caching) and samples their first token. A
sequence that is then ready to decode (every token but the last computed) leaves the prefill scheduler: its pages
are copied to fresh pages of the decode pool (`kv_transfer`), its prefill pages are freed, and it joins the decode
scheduler's running set together with its request's state (detokenizer, stop checks, metrics), so streaming and
finish reasons continue unchanged. The decode engine only ever runs decode steps; the prefill engine only prefills.
A step runs one step of each engine at once, each from its own thread (JAX releases the GIL while a device
computes, so on separate devices they overlap): a long prefill no longer stalls the running decodes.

Back-pressure and preemption: a ready sequence waits on the prefill side, keeping its pages, while the decode pool
(or its max_num_seqs) has no room; hand-offs are first come, first served. A sequence the decode scheduler preempts
(its pool ran out while growing) is sent back to the front of the prefill queue and recomputed there, as the
interleaved engine would recompute it. Prefix caching works on the prefill side; the decode pool runs without it
(its pages are private copies that no later prompt looks up). `n > 1` samples share their prompt's pages on both
sides (the decode side forks them from one copied set of pages).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jaxserve.engine.kv_transfer import KVTransfer
from jaxserve.engine.llm_engine import LLMEngine, Prompt
from jaxserve.engine.request_state import RequestState
from jaxserve.engine.sequence import Sequence, SequenceStatus
from jaxserve.outputs import RequestOutput
from jaxserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_SUMMED = ("num_running", "num_waiting", "num_free_blocks", "num_preemptions", "prefix_cache_queries",
           "prefix_cache_hits", "num_cached_blocks", "num_compiles_after_warmup", "num_steps")


class DisaggregatedEngine:
    """A prefill LLMEngine and a decode LLMEngine on disjoint devices, driven like one engine."""

    def __init__(self, prefill: LLMEngine, decode: LLMEngine) -> None:
        shared = set(prefill.runner.mesh.devices.flat) & set(decode.runner.mesh.devices.flat)
        if shared:
            raise ValueError(f"the prefill and decode engines must use disjoint devices; both use "
                             f"{sorted(map(str, shared))}")
        self.prefill = prefill
        self.decode = decode
        self.config = prefill.config
        self.tokenizer = prefill.tokenizer
        self.transfer = KVTransfer(prefill.runner, decode.runner)
        self._states: dict[str, RequestState] = {}  # every unfinished request, wherever its samples are
        self._parked: list[list[Sequence]] = []  # ready groups waiting for room on the decode side (FIFO)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="jaxserve-disagg")
        self.num_handoffs = 0  # groups of sequences moved to the decode side
        self.num_returned = 0  # sequences the decode side preempted and sent back to be recomputed
        self.handoff_time = 0.0  # host time spent dispatching hand-offs

    @property
    def runner(self) -> Any:
        """The prefill engine's runner (for memory introspection; the decode one holds the same weights)."""
        return self.prefill.runner

    # -- requests ------------------------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None,
                    arrival_time: float | None = None, cache_salt: str | None = None) -> None:
        """Validate and queue a request on the prefill engine (ValueError as `LLMEngine.add_request`, and when it
        could not fit the decode pool)."""
        if request_id in self._states:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.prefill.add_request(request_id, prompt, params, arrival_time, cache_salt)
        state = self.prefill.requests[request_id]
        prompt_len, p = len(state.prompt_token_ids), state.params
        max_len, block_size = self.config.scheduler.max_model_len, self.config.cache.block_size
        needed = -(-(prompt_len + (p.max_tokens or max_len - prompt_len)) // block_size)
        usable = self.decode.block_manager.num_usable_blocks
        if needed > usable:
            self.prefill.abort_request(request_id)
            raise ValueError(f"the request needs up to {needed} KV pages but the decode pool holds {usable}: raise "
                             f"kv_cache_memory or lower max_tokens")
        self._states[request_id] = state

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its pages on both sides; unknown ids are ignored."""
        state = self._states.pop(request_id, None)
        if state is None:
            return
        self.prefill.requests.pop(request_id, None)
        self.decode.requests.pop(request_id, None)
        self._parked = [group for group in self._parked if group[0].request_id != request_id]
        for seq in state.seqs:
            if not seq.is_finished:
                engine = self.decode if self._on_decode(seq) else self.prefill
                engine.scheduler.finish(seq)  # parked sequences are in no queue: this frees their prefill pages
                seq.finish_reason = "abort"

    def has_unfinished_requests(self) -> bool:
        """True while any request waits, prefills, waits for a hand-off or decodes."""
        return bool(self._states)

    def get_tokenizer(self) -> Any:
        """The tokenizer."""
        return self.tokenizer

    # -- the step ------------------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One prefill step and one decode step, concurrently; then the hand-offs. Outputs of both engines."""
        busy = [engine for engine in (self.prefill, self.decode) if engine.scheduler.has_unfinished()]
        if len(busy) == 2:
            results = list(self._pool.map(LLMEngine.step, busy))
        else:
            results = [engine.step() for engine in busy]
        outputs = self._merge(results)
        self._take_back_preempted()
        self._hand_off()
        return outputs

    def _merge(self, results: list[list[RequestOutput]]) -> list[RequestOutput]:
        """One output per request. A request with samples on both sides (only after a decode-side preemption of
        one of several samples) may come from both engines: its output is then re-taken after both steps."""
        by_id: dict[str, RequestOutput] = {}
        for outs in results:
            for out in outs:
                if out.request_id in by_id:
                    state = self._states[out.request_id]
                    out = state.to_output()
                    if out.finished:
                        state.metrics.finished_time = time.monotonic()
                        out.metrics = state.metrics
                by_id[out.request_id] = out
        for out in by_id.values():
            if out.finished:
                self._states.pop(out.request_id, None)
                self.prefill.requests.pop(out.request_id, None)
                self.decode.requests.pop(out.request_id, None)
        return list(by_id.values())

    def _on_decode(self, seq: Sequence) -> bool:
        """Whether an unfinished sequence lives on the decode side (running there, or a sample still to be forked
        from a sequence running there)."""
        running = self.decode.scheduler.running
        return seq in running or any(seq in parent.forks for parent in running)

    def _take_back_preempted(self) -> None:
        """Send sequences the decode scheduler preempted to the front of the prefill queue (to be recomputed)."""
        waiting = self.decode.scheduler.waiting
        while waiting:
            seq = waiting.pop()  # the back first: appendleft keeps their order at the front of the prefill queue
            self.prefill.scheduler.waiting.appendleft(seq)
            state = self._states[seq.request_id]
            self.prefill.requests[seq.request_id] = state
            if not any(self._on_decode(s) for s in state.seqs if not s.is_finished):
                self.decode.requests.pop(seq.request_id, None)
            self.num_returned += 1

    def _hand_off(self) -> None:
        """Take the sequences ready to decode out of the prefill scheduler and move them over while room lasts."""
        running = self.prefill.scheduler.running
        # Ready = every token but the last computed: its first (or, after a recompute, next) token is sampled.
        # (A chunked prompt can also stop one token short; the decode step then computes that token, exactly as
        # the interleaved engine's decode step would.)
        ready = [seq for seq in running if seq.num_uncomputed_tokens == 1]
        groups: dict[tuple, list[Sequence]] = {}
        for seq in ready:
            running.remove(seq)  # the prefill engine never decodes: it only keeps the pages until the hand-off
            groups.setdefault((seq.request_id, tuple(seq.block_table)), []).append(seq)
        self._parked.extend(groups.values())  # samples sharing pages move together and share them again
        start = time.perf_counter()
        while self._parked and self._fits(self._parked[0]):
            self._move(self._parked.pop(0))
        self.handoff_time += time.perf_counter() - start

    def _fits(self, group: list[Sequence]) -> bool:
        """Room on the decode side for `group`: its pages (plus one page per sample of headroom for the next
        token while other sequences run there, so a hand-off does not force a preemption at once) and its slots."""
        sched = self.decode.scheduler
        slots = sum(1 + len(seq.forks) for seq in group)
        in_use = len(sched.running) + sum(len(seq.forks) for seq in sched.running)
        headroom = slots if sched.running else 0
        pages = len(group[0].block_table) + headroom
        return pages <= self.decode.block_manager.num_free_blocks and in_use + slots <= sched.config.max_num_seqs

    def _move(self, group: list[Sequence]) -> None:
        """Copy the group's pages to the decode pool, free them on the prefill side, and start it decoding."""
        leader = group[0]
        dst_bm = self.decode.block_manager
        src = list(leader.block_table)
        dst = dst_bm.take_free_pages(len(src))
        self.transfer.copy(src, dst)  # dispatched before the prefill pages can be reused by the next step
        for seq in group:
            self.prefill.block_manager.free(seq)
        leader.block_table = dst
        for child in group[1:]:
            hashes = child.page_hashes  # its own tokens' page names (fork would copy the leader's)
            dst_bm.fork(leader, child)
            child.page_hashes = hashes
        for seq in group:
            seq.status = SequenceStatus.RUNNING
            self.decode.scheduler.running.append(seq)
        state = self._states[leader.request_id]
        self.decode.requests[leader.request_id] = state
        if all(self._on_decode(s) for s in state.seqs if not s.is_finished) and not any(
                s.request_id == leader.request_id for g in self._parked for s in g):
            self.prefill.requests.pop(leader.request_id, None)
        self.num_handoffs += 1

    # -- introspection -------------------------------------------------------------------------------------------

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix page (on both sides)."""
        self.prefill.reset_prefix_cache()
        self.decode.reset_prefix_cache()

    def stats(self) -> dict[str, Any]:
        """Counters summed over both engines (parked hand-offs count as running), KV usage averaged, and each
        engine's own stats under "prefill" and "decode"."""
        p, d = self.prefill.stats(), self.decode.stats()
        stats: dict[str, Any] = {key: p[key] + d[key] for key in _SUMMED}
        stats["num_running"] += sum(len(group) for group in self._parked)
        stats["kv_cache_usage"] = (p["kv_cache_usage"] + d["kv_cache_usage"]) / 2
        for key in ("step_time_s", "step_tokens", "step_count"):
            stats[key] = {kind: p[key][kind] + d[key][kind] for kind in p[key]}
        stats.update(prefill=p, decode=d, num_parked=sum(len(group) for group in self._parked),
                     num_handoffs=self.num_handoffs, num_returned=self.num_returned,
                     pages_moved=self.transfer.num_pages_moved, handoff_time_s=self.handoff_time)
        return stats

    def shutdown(self) -> None:
        """Stop the stepping threads."""
        self._pool.shutdown(wait=False)


def build_disaggregated(args: Any) -> DisaggregatedEngine:
    """`EngineArgs(disaggregated=True)`: a prefill engine on devices [0, tp) and a decode engine on [tp, 2 tp)."""
    from jaxserve.engine.engine_args import build_replica, load_model
    from jaxserve.parallel.mesh import device_groups

    if args.data_parallel_size != 1:
        raise ValueError(f"disaggregated serving uses one prefill and one decode group; data_parallel_size must be "
                         f"1, got {args.data_parallel_size}")
    loaded, tokenizer, config = load_model(args)
    prefill_devices, decode_devices = device_groups(args.tensor_parallel_size, 2)
    # The decode pool gets no prefix cache: its pages are private copies no prompt ever looks up.
    decode_config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, enable_prefix_caching=False))
    prefill = build_replica(config, loaded.params, tokenizer, prefill_devices, args)
    decode = build_replica(decode_config, loaded.params, tokenizer, decode_devices, args)
    logger.info("disaggregated serving: prefill on %s; decode on %s", ", ".join(map(str, prefill_devices)),
                ", ".join(map(str, decode_devices)))
    return DisaggregatedEngine(prefill, decode)
