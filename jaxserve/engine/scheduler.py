"""Scheduler: which sequences run this step and how many tokens each, with chunked prefill and preemption.

Plain Python. A step is either a prefill step (prompt chunks, FCFS, long prompts chunked to the token budget) or a
decode step (every running sequence that is decoding gets one token). Prefill goes first, but never twice in a row
while sequences wait to decode: under a steady stream of arriving prompts, prefill-first alone starved decoding
sequences for as long as the queue stayed non-empty (a 21 s streaming stall in bench/serving.py), and alternating
bounds a stream's inter-token gap to one prefill step plus one decode step. Steps stay pure prefill or pure decode
because the attention paths are fast for one kind each (see jaxserve/attention/xla.py); a mixed step measured
slower on CPU (bench/RESULTS.md). When pages run out, the newest running sequence is preempted:
its pages are freed and it goes back to the front of the waiting queue, to be recomputed later. No request is lost.

A waiting sequence first takes the longest cached run of its prefix's pages (prefix caching) and prefills only the
rest; if the page after that run is being written by another sequence in this very step, it waits one step rather
than compute the same page again (pages become hits only once written). A request with n > 1 samples is admitted as one sequence (with room reserved for all samples); in the step
that completes its prompt the siblings are forked: they share its pages and sample from the same logits.
"""

from __future__ import annotations

import collections
import dataclasses

from jaxserve.config import SchedulerConfig
from jaxserve.engine.block_manager import BlockManager, CopyPair
from jaxserve.engine.sequence import Sequence, SequenceStatus


@dataclasses.dataclass
class ScheduledBatch:
    """One step's work: sequences, new tokens of each, and whether it is a prefill step.

    `forks` are (row of the parent in `seqs`, sibling) pairs: the sibling computes nothing this step and draws its
    first token from its parent's logits. `copies` are (source, destination) pages the device must copy before
    the step writes (copy-on-write of shared pages).
    """

    seqs: list[Sequence]
    num_new_tokens: list[int]
    is_prefill: bool
    forks: list[tuple[int, Sequence]] = dataclasses.field(default_factory=list)
    copies: list[CopyPair] = dataclasses.field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        """Tokens processed this step."""
        return sum(self.num_new_tokens)


class Scheduler:
    """Waiting and running queues over a BlockManager, bounded by max_num_seqs and max_num_batched_tokens."""

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_cache_queries = 0  # prompt tokens looked up in the prefix cache (first admissions)
        self.prefix_cache_hits = 0  # of those, tokens found cached
        self._preempted_this_step = False
        self._last_was_prefill = False
        self._forks: list[tuple[int, Sequence]] = []
        self._copies: list[CopyPair] = []
        self._names_written: set[bytes] = set()  # prefix-cache names of the pages this step fills

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (FCFS); its `forks` join the running set when its prompt is prefilled."""
        if 1 + len(seq.forks) > self.config.max_num_seqs:
            raise ValueError(f"{1 + len(seq.forks)} samples do not fit max_num_seqs={self.config.max_num_seqs}")
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        """True while anything waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        """The next step's batch, or None when there is nothing to do."""
        self._preempted_this_step = False
        self._forks, self._copies, self._names_written = [], [], set()
        decodes_waiting = any(seq.num_uncomputed_tokens == 1 for seq in self.running)
        if self._last_was_prefill and decodes_waiting:
            batch = self._schedule_decode() or self._schedule_prefill()
        else:
            batch = self._schedule_prefill() or self._schedule_decode()
        self._last_was_prefill = batch is not None and batch.is_prefill
        if batch is not None:
            batch.forks, batch.copies = self._forks, self._copies
        return batch

    def _num_seq_slots(self) -> int:
        """Running sequences plus the samples reserved for running parents not yet forked."""
        return len(self.running) + sum(len(seq.forks) for seq in self.running)

    def _scheduled(self, seqs: list[Sequence], counts: list[int], seq: Sequence, n: int,
                   copies: list[CopyPair]) -> None:
        """Record `seq` with `n` tokens in the step; fork its siblings if this step completes its prompt."""
        self._copies.extend(copies)
        self._names_written.update(self.block_manager.names_completed(seq, n))
        if seq.forks and seq.num_computed_tokens + n == seq.num_tokens:
            at = self.running.index(seq) + 1
            for child in seq.forks:  # they take their pages after the step (`complete_forks`)
                child.status = SequenceStatus.RUNNING
                self.running.insert(at, child)  # beside its parent: the same age for preemption
                at += 1
                self._forks.append((len(seqs), child))
            seq.forks = []
        seqs.append(seq)
        counts.append(n)

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget = self.config.max_num_batched_tokens
        seqs, counts = [], []
        for seq in list(self.running):  # chunked prefills already under way come first
            if seq.num_uncomputed_tokens <= 1 or budget == 0 or seq not in self.running:
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            copies = self._make_room(seq, n)
            if copies is None:
                continue
            self._scheduled(seqs, counts, seq, n, copies)
            budget -= n
        # After a preemption the pool is short: admitting new work now would only thrash (and a sequence that
        # just preempted itself would restart from scratch), so let the running ones finish first.
        while (self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs
               and not self._preempted_this_step):
            seq = self.waiting[0]
            if self._num_seq_slots() + 1 + len(seq.forks) > self.config.max_num_seqs:
                break
            cached = self.block_manager.lookup(seq)
            if self.block_manager.next_page_in(seq, cached, self._names_written):
                break  # its next page is being written in this step: wait one step and take it from the cache
            n = min(seq.num_tokens - len(cached) * self.block_manager.block_size, budget)
            if not self.block_manager.can_allocate(seq, n, cached):
                break
            self.waiting.popleft()
            copies = self.block_manager.allocate(seq, n, cached)
            if seq.num_preemptions == 0 and self.block_manager.uses_cache(seq):
                seq.num_cached_tokens = seq.num_computed_tokens
                self.prefix_cache_queries += seq.num_tokens
                self.prefix_cache_hits += seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self._scheduled(seqs, counts, seq, n, copies)
            budget -= n
        return ScheduledBatch(seqs, counts, is_prefill=True) if seqs else None

    def complete_forks(self, batch: ScheduledBatch) -> None:
        """After the step that completed their parents' prompts: siblings share their parents' pages.

        Not at scheduling time: the parent still writes its last page in that step, and a page is written only
        while one sequence holds it.
        """
        for row, child in batch.forks:
            parent = batch.seqs[row]
            self.block_manager.fork(parent, child)
            child.num_computed_tokens = parent.num_computed_tokens

    def _schedule_decode(self) -> ScheduledBatch | None:
        seqs, counts = [], []
        for seq in list(self.running):
            if seq not in self.running or seq.num_uncomputed_tokens != 1:
                continue
            copies = self._make_room(seq, 1)
            if copies is not None:
                self._scheduled(seqs, counts, seq, 1, copies)
        return ScheduledBatch(seqs, counts, is_prefill=False) if seqs else None

    def _make_room(self, seq: Sequence, num_new_tokens: int) -> list[CopyPair] | None:
        """Allocate pages for `seq`, preempting the newest other running sequences if needed; returns its copies.

        Returns None (after preempting `seq` itself) when no other sequence is left to preempt.
        """
        while not self.block_manager.can_allocate(seq, num_new_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return None
        return self.block_manager.allocate(seq, num_new_tokens)

    def preempt(self, seq: Sequence) -> None:
        """Free `seq`'s pages and put it back at the front of the waiting queue (recompute later)."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._preempted_this_step = True
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its pages."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.forks = []  # an aborted request's unforked samples are finished by the engine one by one
        seq.status = SequenceStatus.FINISHED
