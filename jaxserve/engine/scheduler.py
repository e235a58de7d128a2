"""Scheduler: which sequences run this step and how many tokens each, with chunked prefill and preemption.

Plain Python. Prefill comes first (FCFS, long prompts chunked to the token budget); when nothing waits to be
prefilled, every running sequence decodes one token. When pages run out, the newest running sequence is preempted:
its pages are freed and it goes back to the front of the waiting queue, to be recomputed later. No request is lost.
"""

from __future__ import annotations

import collections
import dataclasses

from jaxserve.config import SchedulerConfig
from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.sequence import Sequence, SequenceStatus


@dataclasses.dataclass
class ScheduledBatch:
    """One step's work: sequences, new tokens of each, and whether it is a prefill step."""

    seqs: list[Sequence]
    num_new_tokens: list[int]
    is_prefill: bool

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
        self._preempted_this_step = False

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (FCFS)."""
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        """True while anything waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        """The next step's batch, or None when there is nothing to do."""
        self._preempted_this_step = False
        return self._schedule_prefill() or self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget = self.config.max_num_batched_tokens
        seqs, counts = [], []
        for seq in list(self.running):  # chunked prefills already under way come first
            if seq.num_uncomputed_tokens <= 1 or budget == 0 or seq not in self.running:
                continue
            n = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, n):
                continue
            seqs.append(seq)
            counts.append(n)
            budget -= n
        # After a preemption the pool is short: admitting new work now would only thrash (and a sequence that
        # just preempted itself would restart from scratch), so let the running ones finish first.
        while (self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs
               and not self._preempted_this_step):
            seq = self.waiting[0]
            n = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.can_allocate(seq, n):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        return ScheduledBatch(seqs, counts, is_prefill=True) if seqs else None

    def _schedule_decode(self) -> ScheduledBatch | None:
        seqs = []
        for seq in list(self.running):
            if seq not in self.running or seq.num_uncomputed_tokens != 1:
                continue
            if self._make_room(seq, 1):
                seqs.append(seq)
        return ScheduledBatch(seqs, [1] * len(seqs), is_prefill=False) if seqs else None

    def _make_room(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Allocate pages for `seq`, preempting the newest other running sequences if needed.

        Returns False (after preempting `seq` itself) when no other sequence is left to preempt.
        """
        while not self.block_manager.can_allocate(seq, num_new_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        self.block_manager.allocate(seq, num_new_tokens)
        return True

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
        seq.status = SequenceStatus.FINISHED
