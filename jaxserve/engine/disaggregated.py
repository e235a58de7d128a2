"""DisaggregatedEngine: prefill on one device group, decode on another, behind LLMEngine's interface.

Two LLMEngines, each with its own scheduler, block manager and KV pool, on disjoint devices. Requests arrive at the
prefill engine, which computes their prompts (chunked, with prefix caching) and samples their first token. A
sequence then ready to decode (every token but the last computed) leaves the prefill scheduler: its pages are
copied to fresh pages of the decode pool (`kv_transfer`), its prefill pages are freed, and it joins the decode
scheduler's running set with its request's state (detokenizer, stop checks, metrics), so streaming and finish
reasons carry on unchanged. The decode engine only ever runs decode steps; the prefill engine only prefills.

Prefill steps run in a background thread (JAX releases the GIL while a device computes, so on separate devices the
two overlap): `step()` runs one decode step and collects the prefill step whenever it is done, so a long prefill no
longer stalls the running decodes. While a prefill step runs only its thread touches the prefill engine; adds,
aborts and hand-offs on that side wait for it (adds are validated at once: a bad request still raises).

A ready sequence waits on the prefill side, keeping its pages, while the decode pool (or max_num_seqs) has no room;
hand-offs are first come, first served. A sequence the decode scheduler preempts goes back to the front of the
prefill queue and is recomputed there, as the interleaved engine would. The decode pool has no prefix cache (its
pages are private copies). `n > 1` samples share their prompt's pages on both sides (forked on the decode side).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax

from jaxserve.engine.data_parallel import combine_stats
from jaxserve.engine.kv_transfer import KVTransfer, move_pages
from jaxserve.engine.llm_engine import LLMEngine, Prompt
from jaxserve.engine.request_state import RequestState
from jaxserve.engine.sequence import Sequence, SequenceStatus
from jaxserve.outputs import RequestOutput
from jaxserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)



class DisaggregatedEngine:
    """A prefill LLMEngine and a decode LLMEngine on disjoint devices, driven like one engine.

    `overlap=True` (the default) lets decode steps go on while a prefill step is still computing: `step()` returns
    after one decode step and collects the prefill step when it is done. `overlap=False` runs the two in lockstep
    (each `step()` waits for both). Outputs are the same either way.
    """

    def __init__(self, prefill: LLMEngine, decode: LLMEngine, overlap: bool = True) -> None:
        shared = set(prefill.runner.mesh.devices.flat) & set(decode.runner.mesh.devices.flat)
        if shared:
            raise ValueError(f"prefill and decode need disjoint devices; both use {sorted(map(str, shared))}")
        self.prefill, self.decode, self.overlap = prefill, decode, overlap
        self.config, self.tokenizer = prefill.config, prefill.tokenizer
        self.transfer = KVTransfer(prefill.runner, decode.runner)
        if prefill.runner.warmed_up:
            self.transfer.warmup()  # compiled like the steps, so a first hand-off does not compile
        self._states: dict[str, RequestState] = {}  # every unfinished request, wherever its samples are
        self._parked: list[list[Sequence]] = []  # ready groups waiting for room on the decode side (FIFO)
        self._returning: list[Sequence] = []  # decode-side preemptions, to rejoin the prefill queue
        # The prefill step running in a background thread. While it runs, only that thread touches the prefill
        # engine (scheduler, block manager, requests): changes to that side wait in `_pending` until it is done.
        self._inflight: Future[list[RequestOutput]] | None = None
        self._pending: list[tuple[str, Any]] = []  # ("add", arguments), ("abort", state), ("reset", None)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jaxserve-prefill")
        self.num_handoffs, self.num_returned, self.handoff_time = 0, 0, 0.0  # groups moved, seqs sent back

    @property
    def runner(self) -> Any:
        """The prefill engine's runner (for memory introspection; the decode one holds the same weights)."""
        return self.prefill.runner

    # -- requests ------------------------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None,
                    arrival_time: float | None = None, cache_salt: str | None = None) -> None:
        """Queue a request for prefill (ValueError as `LLMEngine.add_request`, or if the decode pool is too small)."""
        if request_id in self._states or any(op == "add" and args[0] == request_id for op, args in self._pending):
            raise ValueError(f"request id {request_id!r} is already in use")
        params = params or SamplingParams()
        self._validate(prompt, params, cache_salt)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        self._pending.append(("add", (request_id, prompt, params, arrival, cache_salt)))
        if self._inflight is None:
            self._sync_prefill()

    def _validate(self, prompt: Prompt, params: SamplingParams, cache_salt: str | None) -> None:
        """LLMEngine.add_request's checks, read-only (safe while a prefill step runs), plus the decode pool's."""
        _, ids = self.prefill.validate_request(prompt, params, cache_salt)
        needed = self.prefill.pages_needed(len(ids), params)
        usable = self.decode.block_manager.num_usable_blocks
        if needed > usable:
            raise ValueError(f"the request needs up to {needed} KV pages but the decode pool holds {usable}: raise "
                             f"kv_cache_memory or lower max_tokens")

    def abort_request(self, request_id: str) -> None:
        """Stop a request now (no more outputs) and free its pages on both sides; unknown ids are ignored."""
        self._pending = [(op, args) for op, args in self._pending if not (op == "add" and args[0] == request_id)]
        state = self._states.pop(request_id, None)
        if state is None:  # unknown, finished, or not yet added (its deferred add was just dropped)
            return
        self.decode.requests.pop(request_id, None)
        for seq in state.seqs:
            if not seq.is_finished and self._on_decode(seq):
                self.decode.scheduler.finish(seq)
                seq.finish_reason = "abort"
        for seq in [s for s in self._returning if s.request_id == request_id]:  # preempted: they hold no pages
            self._returning.remove(seq)
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
        self._pending.append(("abort", state))  # the prefill side's part (its parked groups included)
        if self._inflight is None:
            self._sync_prefill()

    def _abort_prefill_side(self, state: RequestState) -> None:
        self.prefill.requests.pop(state.request_id, None)
        self._parked = [group for group in self._parked if group[0].request_id != state.request_id]
        for seq in state.seqs:
            if not seq.is_finished:
                self.prefill.scheduler.finish(seq)  # parked sequences are in no queue: this frees their pages
                seq.finish_reason = "abort"

    def has_unfinished_requests(self) -> bool:
        """True while any request waits, prefills, waits for a hand-off or decodes, and until a prefill step still
        running is collected (so the caller's next `step()` applies aborts made meanwhile and frees their pages)."""
        return bool(self._states or self._pending or self._inflight is not None)

    def get_tokenizer(self) -> Any:
        """The tokenizer."""
        return self.tokenizer

    # -- the step ------------------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """A decode step, with a prefill step running beside it on the other devices (started now if none runs);
        the prefill step's outputs and hand-offs once it is done. Outputs of both engines."""
        if self._inflight is None:
            self._sync_prefill()
            self._hand_off()  # parked groups may fit now
            if self.prefill.scheduler.has_unfinished():
                self._inflight = self._pool.submit(self.prefill.step)
        results = []
        if self.decode.scheduler.has_unfinished():
            results.append(self.decode.step())
            self._take_back_preempted()
        decoding = self.decode.scheduler.has_unfinished()
        if self._inflight is not None and (self._inflight.done() or not self.overlap or not decoding):
            future, self._inflight = self._inflight, None
            results.append(future.result())
            self._sync_prefill()
            self._hand_off()
        return self._merge(results)

    def _sync_prefill(self) -> None:
        """With no prefill step running: apply the deferred adds and aborts, and requeue decode preemptions."""
        assert self._inflight is None
        pending, self._pending = self._pending, []
        for op, args in pending:
            if op == "add":
                self.prefill.add_request(*args)
                self._states[args[0]] = self.prefill.requests[args[0]]
            elif op == "abort":
                self._abort_prefill_side(args)
            else:
                self.prefill.reset_prefix_cache()
        while self._returning:
            seq = self._returning.pop()  # from the back: appendleft then keeps their order at the queue's front
            self.prefill.scheduler.waiting.appendleft(seq)
            self.prefill.requests[seq.request_id] = self._states[seq.request_id]

    def _merge(self, results: list[list[RequestOutput]]) -> list[RequestOutput]:
        """One output per live request. A request with samples on both sides (only after a decode-side preemption
        of one of several samples) may come from both engines: its output is then re-taken after both steps."""
        by_id: dict[str, RequestOutput] = {}
        for outs in results:
            for out in outs:
                state = self._states.get(out.request_id)
                if state is None:
                    continue  # aborted while its prefill step ran
                if out.request_id in by_id:
                    out = state.to_output()
                    if out.finished:
                        state.metrics.finished_time = time.monotonic()
                        out.metrics = state.metrics
                by_id[out.request_id] = out
        for out in by_id.values():
            if out.finished:
                for table in (self._states, self.prefill.requests, self.decode.requests):  # a split one: both
                    table.pop(out.request_id, None)
        return list(by_id.values())

    def _on_decode(self, seq: Sequence) -> bool:
        """Whether an unfinished sequence lives on the decode side (running there, or a sample still to be forked
        from a sequence running there)."""
        running = self.decode.scheduler.running
        return seq in running or any(seq in parent.forks for parent in running)

    def _take_back_preempted(self) -> None:
        """Take the sequences the decode scheduler preempted out of its queue (it must not prefill them): they are
        recomputed on the prefill side, ahead of new requests."""
        waiting = self.decode.scheduler.waiting
        while waiting:
            seq = waiting.popleft()
            self._returning.append(seq)
            state = self._states[seq.request_id]
            if not any(self._on_decode(s) for s in state.seqs if not s.is_finished):
                self.decode.requests.pop(seq.request_id, None)
            self.num_returned += 1

    def _hand_off(self) -> None:
        """Take the sequences ready to decode out of the prefill scheduler and move them over while room lasts."""
        running = self.prefill.scheduler.running
        # Ready = all but the last token computed: its first (after a recompute: next) token is sampled. A chunked
        # prompt can also stop one token short; the decode step computes it, as the interleaved engine's would.
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
        sched, slots = self.decode.scheduler, sum(1 + len(seq.forks) for seq in group)
        in_use = len(sched.running) + sum(len(seq.forks) for seq in sched.running)
        pages = len(group[0].block_table) + (slots if sched.running else 0)
        return pages <= self.decode.block_manager.num_free_blocks and in_use + slots <= sched.config.max_num_seqs

    def _move(self, group: list[Sequence]) -> None:
        """Copy the group's pages to the decode pool, free them on the prefill side, and start it decoding."""
        move_pages(group, self.prefill.block_manager, self.decode.block_manager, self.transfer)
        for seq in group:
            seq.status = SequenceStatus.RUNNING
        self.decode.scheduler.running.extend(group)
        rid = group[0].request_id
        state = self.decode.requests[rid] = self._states[rid]
        if all(self._on_decode(s) for s in state.seqs if not s.is_finished) and not any(
                g[0].request_id == rid for g in self._parked):
            self.prefill.requests.pop(rid, None)
        self.num_handoffs += 1

    # -- introspection -------------------------------------------------------------------------------------------

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix page (on both sides; the prefill side's once its running step is done)."""
        self._pending.append(("reset", None))
        if self._inflight is None:
            self._sync_prefill()
        self.decode.reset_prefix_cache()

    def stats(self) -> dict[str, Any]:
        """Counters summed over both engines, KV usage averaged, each engine's own under "prefill" and "decode"."""
        p, d = self.prefill.stats(), self.decode.stats()
        stats = combine_stats([p, d])
        stats["num_running"] += sum(len(group) for group in self._parked)
        stats["num_waiting"] += len(self._returning) + sum(op == "add" for op, _ in self._pending)
        stats.update(prefill=p, decode=d, num_parked=sum(len(group) for group in self._parked),
                     num_handoffs=self.num_handoffs, num_returned=self.num_returned,
                     pages_moved=self.transfer.num_pages_moved, handoff_time_s=self.handoff_time)
        return stats

    def shutdown(self) -> None:
        """Stop the stepping threads and shut both engines down."""
        self._pool.shutdown(wait=False)
        self.prefill.shutdown()
        self.decode.shutdown()


def build_disaggregated(args: Any) -> DisaggregatedEngine:
    """`EngineArgs(disaggregated=True)`: a prefill engine on devices [0, tp) and a decode engine on [tp, 2 tp)."""
    from jaxserve.engine.engine_args import build_replica, load_model
    from jaxserve.parallel.mesh import device_groups

    if jax.process_count() > 1:  # the runners' multi-host step channel drives one model over every process
        raise ValueError("disaggregated serving runs in a single process; a multi-process job is not supported")
    if args.data_parallel_size != 1:
        raise ValueError(f"data_parallel_size must be 1 with disaggregated serving, got {args.data_parallel_size}")
    loaded, tokenizer, config = load_model(args)
    prefill_devices, decode_devices = device_groups(args.tensor_parallel_size, 2)
    decode_config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, enable_prefix_caching=False))
    prefill = build_replica(config, loaded.params, tokenizer, prefill_devices, args)
    decode = build_replica(decode_config, loaded.params, tokenizer, decode_devices, args)
    logger.info("disaggregated serving: prefill on %s; decode on %s", ", ".join(map(str, prefill_devices)),
                ", ".join(map(str, decode_devices)))
    return DisaggregatedEngine(prefill, decode)
