"""Scheduler: FCFS, limits, chunked prefill, preemption, and invariants under random workloads. No JAX."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxserve.config import SchedulerConfig
from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.scheduler import Scheduler
from jaxserve.engine.sequence import Sequence, SequenceStatus
from jaxserve.sampling_params import SamplingParams

_ids = itertools.count()


def _seq(prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(f"r{next(_ids)}", [5] * prompt_len, SamplingParams(max_tokens=max_tokens), 0, 0, 0.0)


def _sched(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, max_len=256) -> Scheduler:
    return Scheduler(SchedulerConfig(max_model_len=max_len, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget),
                     BlockManager(num_blocks, block_size))


def _complete(sched: Scheduler, batch) -> list[Sequence]:
    """What the engine does after a step: advance progress, append a token when a prompt is done, finish."""
    done = []
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(7)
            if seq.num_output_tokens >= seq.params.max_tokens:
                sched.finish(seq)
                done.append(seq)
    return done


def test_fcfs_and_max_num_seqs():
    sched = _sched(max_num_seqs=4, budget=64)
    seqs = [_seq(3) for _ in range(6)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert batch.is_prefill
    assert batch.seqs == seqs[:4] and batch.num_new_tokens == [3] * 4
    assert list(sched.waiting) == seqs[4:]
    assert all(s.status is SequenceStatus.RUNNING for s in seqs[:4])


def test_token_budget_is_respected_and_the_last_prompt_is_chunked():
    sched = _sched(budget=16)
    seqs = [_seq(6) for _ in range(4)]
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert batch.num_tokens == 16
    assert batch.seqs == seqs[:3] and batch.num_new_tokens == [6, 6, 4]


def test_long_prompt_is_prefilled_in_budget_sized_chunks_then_decodes():
    sched = _sched(budget=32)
    seq = _seq(100)
    sched.add(seq)
    chunks = []
    while seq.num_output_tokens == 0:
        batch = sched.schedule()
        assert batch.is_prefill and batch.seqs == [seq]
        chunks.append(batch.num_new_tokens[0])
        _complete(sched, batch)
    assert chunks == [32, 32, 32, 4]
    assert len(seq.block_table) * 4 >= seq.num_computed_tokens
    batch = sched.schedule()
    assert not batch.is_prefill and batch.seqs == [seq] and batch.num_new_tokens == [1]


def test_decode_batch_holds_every_running_sequence():
    sched = _sched(budget=64)
    seqs = [_seq(5) for _ in range(5)]
    for s in seqs:
        sched.add(s)
    _complete(sched, sched.schedule())
    batch = sched.schedule()
    assert not batch.is_prefill and batch.seqs == seqs and batch.num_new_tokens == [1] * 5


def test_prefill_goes_first_but_alternates_with_waiting_decodes():
    sched = _sched(budget=64)
    a = _seq(5)
    sched.add(a)
    _complete(sched, sched.schedule())
    b = _seq(5)
    sched.add(b)
    batch = sched.schedule()  # a waits to decode after a prefill step: it goes first
    assert not batch.is_prefill and batch.seqs == [a]
    _complete(sched, batch)
    batch = sched.schedule()
    assert batch.is_prefill and batch.seqs == [b]
    _complete(sched, batch)
    assert sched.schedule().seqs == [a, b]


def test_a_long_prompt_never_stalls_decoding_sequences():
    """Three sequences decode while a 40-token prompt is prefilled in 16-token chunks: decode steps alternate with
    its chunks, so no stream waits more than one prefill step (the random workloads below check this bound)."""
    sched = _sched(budget=16, max_len=512)
    decoders = [_seq(4, max_tokens=100) for _ in range(3)]
    for seq in decoders:
        sched.add(seq)
    _complete(sched, sched.schedule())
    long = _seq(40)
    sched.add(long)
    kinds, chunks = [], []
    while long.num_output_tokens == 0:  # until its prompt is done
        batch = sched.schedule()
        kinds.append("P" if batch.is_prefill else "D")
        if batch.is_prefill:
            assert batch.seqs == [long]
            chunks.append(batch.num_new_tokens[0])
        else:
            assert batch.seqs == decoders
        _complete(sched, batch)
    assert "".join(kinds) == "DPDPDP" and chunks == [16, 16, 8]


def test_preemption_frees_the_newest_and_requeues_it_first():
    # 2 usable pages of 4 tokens: a (4-token prompt) and b (2-token prompt) own one each after prefill.
    sched = _sched(num_blocks=3, block_size=4, budget=16)
    a, b, c = _seq(4), _seq(2), _seq(3)
    sched.add(a)
    sched.add(b)
    _complete(sched, sched.schedule())
    sched.add(c)  # no free page: c waits behind the running pair
    b_pages = list(b.block_table)
    batch = sched.schedule()  # a's 5th token needs a second page: b, the newest, gives its page up
    assert not batch.is_prefill and batch.seqs == [a]
    assert sched.num_preemptions == 1 and b.num_preemptions == 1 and a.num_preemptions == 0
    assert list(sched.waiting) == [b, c] and sched.running == [a]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.block_table == []
    assert b.token_ids == [5, 5, 7], "the generated token must survive preemption (it is recomputed)"
    assert a.block_table[1] in b_pages and sched.block_manager.num_free_blocks == 0


def test_a_sequence_that_cannot_grow_preempts_itself_when_it_is_the_newest():
    sched = _sched(num_blocks=3, block_size=4, budget=16)
    a, b = _seq(4), _seq(4)
    sched.add(a)
    sched.add(b)
    _complete(sched, sched.schedule())
    sched.add(_seq(1))
    batch = sched.schedule()  # both need a second page; only one exists after preempting b
    assert batch.seqs == [a] and sched.waiting[0] is b and b.num_computed_tokens == 0 and not b.block_table
    _complete(sched, batch)
    # b (2 pages for 5 tokens) cannot come back while a holds the whole pool.
    assert sched.schedule().seqs == [a]


def test_finish_frees_pages_of_running_and_waiting_sequences():
    sched = _sched(num_blocks=8, max_num_seqs=1)
    a, b = _seq(6), _seq(6)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert a.block_table and not b.block_table
    sched.finish(b)  # an abort while waiting
    sched.finish(a)
    assert not sched.has_unfinished() and sched.block_manager.num_free_blocks == 7
    assert a.status is SequenceStatus.FINISHED and b.status is SequenceStatus.FINISHED
    assert sched.schedule() is None


def _check_invariants(sched: Scheduler, live: list[Sequence]) -> None:
    bm = sched.block_manager
    owners: dict[int, int] = {}
    for seq in live:
        for page in seq.block_table:
            owners[page] = owners.get(page, 0) + 1
        assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens
        if seq.status is SequenceStatus.WAITING:
            assert seq.num_computed_tokens == 0 and not seq.block_table
    assert 0 not in owners, "the reserved page was handed out"
    assert all(n == 1 for n in owners.values()), "a page is owned by two sequences"
    assert len(set(bm.free_blocks)) == len(bm.free_blocks) and 0 not in bm.free_blocks
    assert not set(bm.free_blocks) & set(owners)
    assert bm.num_free_blocks + len(owners) == bm.num_usable_blocks, "pages leaked"
    for page in range(bm.num_blocks):
        assert bm.ref_counts[page] == owners.get(page, 0)
    assert len(sched.running) <= sched.config.max_num_seqs
    assert set(map(id, sched.running)) | set(map(id, sched.waiting)) == set(map(id, live))


def _run_workload(ops, num_blocks: int, block_size: int, max_num_seqs: int, budget: int) -> int:
    """Apply add / step / abort operations, checking invariants after each and draining at the end."""
    budget = max(budget, max_num_seqs)
    sched = _sched(num_blocks, block_size, max_num_seqs, budget)
    live: list[Sequence] = []
    skipped: dict[int, int] = {}  # consecutive steps each decoding sequence sat out
    for op, x, y in ops:
        if op == "add":
            if -(-(x + y) // block_size) > num_blocks - 1:
                continue  # the engine refuses a request that can never fit
            seq = _seq(x, y)
            sched.add(seq)
            live.append(seq)
        elif op == "step":
            decoding = [s for s in sched.running if s.num_uncomputed_tokens == 1]
            batch = sched.schedule()
            if batch is not None:
                # No decode starves: a decoding sequence sits out at most one step (unless preempted for pages).
                for s in decoding:
                    skipped[id(s)] = 0 if s in batch.seqs or s.status is SequenceStatus.WAITING else (
                        skipped.get(id(s), 0) + 1)
                    assert skipped[id(s)] <= 1, "a decoding sequence waited two steps in a row"
                assert batch.num_tokens <= budget and len(batch.seqs) <= max_num_seqs
                assert len({id(s) for s in batch.seqs}) == len(batch.seqs)
                assert all(n >= 1 for n in batch.num_new_tokens)
                if not batch.is_prefill:
                    assert batch.num_new_tokens == [1] * len(batch.seqs)
                for s in _complete(sched, batch):
                    live.remove(s)
        elif live:
            sched.finish(live.pop(x % len(live)))
        _check_invariants(sched, live)
    for _ in range(5000):  # liveness: everything admitted finishes
        if not live:
            break
        batch = sched.schedule()
        assert batch is not None, f"stalled with {len(live)} live sequences"
        for s in _complete(sched, batch):
            live.remove(s)
        _check_invariants(sched, live)
    assert not live and not sched.has_unfinished()
    assert sched.block_manager.num_free_blocks == num_blocks - 1
    return sched.num_preemptions


_STEP = st.tuples(st.just("step"), st.just(0), st.just(0))
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 24), st.integers(1, 24)),
    _STEP, _STEP, _STEP,
    st.tuples(st.just("abort"), st.integers(0, 50), st.just(0)),
), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, num_blocks=st.integers(4, 20), block_size=st.sampled_from([2, 4]),
       max_num_seqs=st.integers(1, 6), budget=st.sampled_from([8, 16, 24]))
def test_random_workloads_keep_invariants_and_drain(ops, num_blocks, block_size, max_num_seqs, budget):
    preemptions = _run_workload(ops, num_blocks, block_size, max_num_seqs, budget)
    event(f"preempted: {preemptions > 0}")


def test_seeded_random_workloads_with_preemption():
    """Uniformly random workloads (hypothesis favours small ones): invariants hold and preemption is exercised."""
    rng = random.Random(0)
    preempted = 0
    for _ in range(200):
        ops = [(rng.choice(["add", "step", "step", "step", "abort"]), rng.randint(1, 24), rng.randint(1, 24))
               for _ in range(40)]
        preempted += _run_workload(ops, rng.randint(4, 20), rng.choice([2, 4]), rng.randint(1, 6),
                                   rng.choice([8, 16, 24])) > 0
    assert preempted >= 10
