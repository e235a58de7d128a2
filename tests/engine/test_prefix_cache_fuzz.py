"""Randomised add / step / abort / preempt over the scheduler with prefix caching, n > 1 forks and salts. No JAX.

Each step's attention metadata is built by the real `build_step_inputs` and run against a simulated KV pool whose
slots hold what a token's K/V depends on: (salt, every token up to it). So the test checks, step by step, that
  - a sequence reads only pages of its own block table, and each slot it reads holds exactly the K/V a fresh
    prefill of its own tokens (and salt) would have written there: cached pages are exact, salts never mix;
  - a step writes only pages that one sequence holds and that have no prefix-cache name (copy-on-write works);
  - the pool's books balance: reference counts equal users, free list = unheld pages, no leak, no double free.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxserve.config import SchedulerConfig
from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.buckets import pick_bucket, power_of_two_buckets
from jaxserve.engine.scheduler import ScheduledBatch, Scheduler
from jaxserve.engine.sequence import Sequence, SequenceStatus
from jaxserve.engine.step_inputs import build_step_inputs
from jaxserve.sampling_params import SamplingParams

MAX_LEN = 64
_ids = itertools.count()


class World:
    """A scheduler over a caching block manager, the live requests, and the simulated KV pool."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int, budget: int, seed: int) -> None:
        budget = max(budget, max_num_seqs)
        self.sched = Scheduler(SchedulerConfig(max_model_len=MAX_LEN, max_num_seqs=max_num_seqs,
                                               max_num_batched_tokens=budget),
                               BlockManager(num_blocks, block_size, enable_caching=True))
        self.bm = self.sched.block_manager
        self.kv: list[list[object]] = [[None] * block_size for _ in range(num_blocks)]
        self.requests: dict[str, list[Sequence]] = {}
        self.rng = random.Random(seed)
        self.bases = [[self.rng.randint(3, 6) for _ in range(MAX_LEN)] for _ in range(3)]
        self.token_buckets = power_of_two_buckets(8, budget)
        self.steps = 0

    # -- operations ----------------------------------------------------------------------------------------------

    def add(self, prefix_len: int, suffix_len: int, max_tokens: int, n: int, salt: str | None) -> None:
        base = self.bases[self.rng.randrange(len(self.bases))]
        prompt = base[:prefix_len] + [self.rng.randint(3, 6) for _ in range(suffix_len)]
        n = min(n, self.sched.config.max_num_seqs)
        if len(prompt) + max_tokens > MAX_LEN or -(-(len(prompt) + max_tokens) // self.bm.block_size) > \
                self.bm.num_usable_blocks:
            return  # the engine refuses a request that can never fit
        rid = f"r{next(_ids)}"
        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=1.0)
        seqs = [Sequence(rid, prompt, params, i, 0, 0.0) for i in range(n)]
        for seq in seqs:
            seq.cache_salt = salt
        seqs[0].forks = seqs[1:]
        self.requests[rid] = seqs
        self.sched.add(seqs[0])

    def abort(self, k: int) -> None:
        if self.requests:
            rid = sorted(self.requests)[k % len(self.requests)]
            for seq in self.requests.pop(rid):
                if not seq.is_finished:
                    self.sched.finish(seq)

    def preempt(self, k: int) -> None:
        if self.sched.running:
            self.sched.preempt(self.sched.running[k % len(self.sched.running)])

    def step(self) -> bool:
        batch = self.sched.schedule()
        if batch is None:
            return False
        self.steps += 1
        self._run(batch)
        self._complete(batch)
        return True

    # -- the simulated device ------------------------------------------------------------------------------------

    @staticmethod
    def expected(seq: Sequence, pos: int) -> tuple:
        return (seq.cache_salt, tuple(seq.token_ids[:pos + 1]))

    def _run(self, batch: ScheduledBatch) -> None:
        bm, bs = self.bm, self.bm.block_size
        num_rows = len(batch.seqs) + len(batch.forks)
        assert num_rows <= self.sched.config.max_num_seqs
        inputs = build_step_inputs(
            batch, num_token_slots=pick_bucket(self.token_buckets, batch.num_tokens), num_rows=num_rows,
            max_num_seqs=self.sched.config.max_num_seqs, table_width=MAX_LEN // bs, block_size=bs,
            full_sampler=False, max_model_len=MAX_LEN, eos_token_ids=())
        for src, dst in batch.copies:  # copy-on-write: all sources read before any destination is written
            assert bm.ref_counts[dst] == 1 and not bm.index.is_cached(dst) and src != dst
        snapshot = {src: list(self.kv[src]) for src, _ in batch.copies}
        for src, dst in batch.copies:
            self.kv[dst] = list(snapshot[src])
        qsl = inputs.query_start_loc
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            seq_len, start = int(inputs.seq_lens[row]), int(qsl[row])
            assert int(qsl[row + 1]) - start == n and seq_len == seq.num_computed_tokens + n
            pages = -(-seq_len // bs)
            table = [int(b) for b in inputs.block_tables[row]]
            assert table[:pages] == seq.block_table[:pages], "metadata table differs from the sequence's pages"
            assert not any(table[pages:]), "pages past the sequence's length are visible"
            assert all(bm.ref_counts[b] > 0 for b in table[:pages]), "reads a page it does not hold"
            for pos in range(seq.num_computed_tokens):  # context: what attention reads from pages
                assert self.kv[table[pos // bs]][pos % bs] == self.expected(seq, pos), \
                    f"row {row} reads wrong K/V at {pos} (page {table[pos // bs]})"
            for i in range(n):  # new tokens: where this step writes
                pos, slot = seq.num_computed_tokens + i, int(inputs.slot_mapping[start + i])
                page = slot // bs
                assert page == table[pos // bs] and slot % bs == pos % bs
                assert bm.ref_counts[page] == 1, f"writes page {page} shared by {bm.ref_counts[page]}"
                assert not bm.index.is_cached(page), f"writes cached page {page}"
                self.kv[page][pos % bs] = self.expected(seq, pos)
        assert all(s < bs for s in inputs.slot_mapping[batch.num_tokens:]), "padding writes a real page"
        for j, (parent_row, child) in enumerate(batch.forks):
            assert inputs.logits_indices[len(batch.seqs) + j] == inputs.logits_indices[parent_row]
            assert not child.block_table and inputs.sampled[len(batch.seqs) + j]

    def _complete(self, batch: ScheduledBatch) -> None:
        """What the engine does after a step: progress, name written pages, new tokens, finished samples."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.bm.cache_computed_pages(seq)
        self.sched.complete_forks(batch)
        for row, child in batch.forks:
            assert child.block_table == batch.seqs[row].block_table
        sampled = [s for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens == s.num_tokens]
        for seq in sampled + [child for _, child in batch.forks]:
            seq.token_ids.append(self.rng.randint(3, 6))
            if seq.num_output_tokens >= seq.params.max_tokens and not seq.is_finished:
                self.sched.finish(seq)
        for rid in [r for r, seqs in self.requests.items() if all(s.is_finished for s in seqs)]:
            del self.requests[rid]

    # -- invariants ----------------------------------------------------------------------------------------------

    def check(self) -> None:
        bm, sched = self.bm, self.sched
        live = [s for seqs in self.requests.values() for s in seqs if not s.is_finished]
        users: dict[int, int] = {}
        for seq in live:
            assert len(set(seq.block_table)) == len(seq.block_table), "a table holds a page twice"
            for i, page in enumerate(seq.block_table):
                users[page] = users.get(page, 0) + 1
                name = bm.index.hash_of[page]
                if name is not None:  # a named page holds exactly the tokens this sequence expects there
                    assert i < len(seq.page_hashes) and name == seq.page_hashes[i]
            assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens
            if seq.status is SequenceStatus.WAITING:
                assert seq.num_computed_tokens == 0 and not seq.block_table
        assert 0 not in users, "the reserved page was handed out"
        for page in range(bm.num_blocks):
            assert bm.ref_counts[page] == users.get(page, 0), f"page {page}: count != users"
        assert set(bm.free_blocks) == {p for p in range(1, bm.num_blocks) if not users.get(p)}, "leak or double free"
        assert all(bm.index.hash_of[b] == h for h, b in bm.index.block_of.items())
        assert sum(h is not None for h in bm.index.hash_of) == len(bm.index)
        queued = set(map(id, sched.running)) | set(map(id, sched.waiting))
        pending = {id(c) for s in sched.running + list(sched.waiting) for c in s.forks}
        assert queued | pending == set(map(id, live))
        assert len(sched.running) + sum(len(s.forks) for s in sched.running) <= sched.config.max_num_seqs

    def drain(self) -> None:
        for _ in range(5000):
            if not self.requests:
                break
            assert self.step(), f"stalled with {len(self.requests)} live requests"
            self.check()
        assert not self.requests and not self.sched.has_unfinished()
        assert self.bm.num_free_blocks == self.bm.num_usable_blocks and not any(self.bm.ref_counts)


def _run(ops, num_blocks, block_size, max_num_seqs, budget, seed=0) -> World:
    world = World(num_blocks, block_size, max_num_seqs, budget, seed)
    for op, a, b, c in ops:
        if op == "add":
            world.add(a, b, c, 1 + (a + b) % 3 if (a + c) % 2 else 1, [None, "x", ""][(a + b + c) % 3])
        elif op == "step":
            world.step()
        elif op == "abort":
            world.abort(a)
        else:
            world.preempt(a)
        world.check()
    world.drain()
    return world


_STEP = st.tuples(st.just("step"), st.just(0), st.just(0), st.just(0))
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 40), st.integers(1, 12), st.integers(1, 12)),
    _STEP, _STEP, _STEP, _STEP,
    st.tuples(st.sampled_from(["abort", "preempt"]), st.integers(0, 50), st.just(0), st.just(0)),
), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, num_blocks=st.integers(4, 24), block_size=st.sampled_from([2, 4, 8]),
       max_num_seqs=st.integers(1, 6), budget=st.sampled_from([8, 16, 32]))
def test_random_workloads_keep_the_pool_and_the_kv_exact(ops, num_blocks, block_size, max_num_seqs, budget):
    _run(ops, num_blocks, block_size, max_num_seqs, budget)


def test_seeded_random_workloads_hit_share_copy_and_evict():
    """Uniform random workloads that exercise every path (hypothesis favours small ones); counts prove it."""
    rng = random.Random(1)
    hits = copies = forks = evictions = preemptions = 0
    for trial in range(60):
        ops = []
        for _ in range(50):
            op = rng.choice(["add", "add", "step", "step", "step", "step", "abort", "preempt"])
            ops.append((op, rng.randint(0, 40), rng.randint(1, 12), rng.randint(1, 12)))
        world = _run(ops, rng.randint(6, 24), rng.choice([2, 4]), rng.randint(2, 6), rng.choice([8, 16, 32]), trial)
        hits += world.sched.prefix_cache_hits
        copies += world.bm.num_page_copies
        forks += world.bm.num_forks
        evictions += world.bm.num_evictions
        preemptions += world.sched.num_preemptions
    assert min(hits, copies, forks, evictions, preemptions) > 0, (hits, copies, forks, evictions, preemptions)
