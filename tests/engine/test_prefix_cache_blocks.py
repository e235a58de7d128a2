"""Page names, lookup, LRU eviction, forks and copy-on-write in the BlockManager. No JAX."""

from __future__ import annotations

from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.prefix_cache import page_hash, root_hash, update_page_hashes
from jaxserve.engine.sequence import Sequence
from jaxserve.sampling_params import SamplingParams


def _seq(ids: list[int], salt: str | None = None, **params) -> Sequence:
    seq = Sequence("r", ids, SamplingParams(**params), 0, 0, 0.0)
    seq.cache_salt = salt
    return seq


def _prefill(bm: BlockManager, seq: Sequence) -> None:
    """Admit with whatever is cached, compute the rest, and name the written pages (what a step does)."""
    cached = bm.lookup(seq)
    bm.allocate(seq, seq.num_tokens - len(cached) * bm.block_size, cached)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_computed_pages(seq)


def test_page_names_chain_tokens_and_salt():
    a = update_page_hashes(_seq(list(range(12))), 4)
    assert len(a) == 3 and len(set(a)) == 3
    assert a == update_page_hashes(_seq(list(range(12)) + [99]), 4)  # a partial page has no name
    assert update_page_hashes(_seq([0, 1, 2, 9] + list(range(4, 12))), 4)[1:] != a[1:], "names chain"
    assert root_hash(None) != root_hash("") != root_hash("a")
    assert update_page_hashes(_seq(list(range(12)), salt="a"), 4)[0] != a[0]
    assert page_hash(root_hash(None), [1, 2]) != page_hash(root_hash(None), [2, 1])


def test_lookup_takes_the_longest_named_run_and_leaves_the_last_token():
    bm = BlockManager(16, 4, enable_caching=True)
    first = _seq(list(range(3, 13)))  # pages [3..6] [7..10] named, [11, 12] partial
    _prefill(bm, first)
    assert bm.num_cached_blocks == 2
    assert bm.lookup(_seq(list(range(3, 13)))) == first.block_table[:2]
    assert bm.lookup(_seq(list(range(3, 11)))) == first.block_table[:1], "8 tokens: the last page is recomputed"
    assert bm.lookup(_seq(list(range(3, 7)) + [50, 51, 52, 53, 54])) == first.block_table[:1]
    assert bm.lookup(_seq([99] + list(range(4, 13)))) == []
    assert bm.lookup(_seq(list(range(3, 13)), salt="other")) == []
    assert bm.lookup(_seq(list(range(3, 13)), prompt_logprobs=1)) == []
    assert BlockManager(16, 4).lookup(_seq(list(range(3, 13)))) == []


def test_a_hit_shares_pages_and_counts_them_computed():
    bm = BlockManager(16, 4, enable_caching=True)
    a, b = _seq(list(range(3, 13))), _seq(list(range(3, 11)) + [40, 41, 42])
    _prefill(bm, a)
    cached = bm.lookup(b)
    assert cached == a.block_table[:2] and bm.can_allocate(b, 3, cached)
    assert bm.allocate(b, 3, cached) == []
    assert b.num_computed_tokens == 8 and b.block_table[:2] == a.block_table[:2] and len(b.block_table) == 3
    assert [bm.ref_counts[p] for p in a.block_table] == [2, 2, 1]


def test_freed_named_pages_stay_cached_and_are_evicted_lru_tail_first():
    bm = BlockManager(7, 2, enable_caching=True)  # 6 usable pages
    a = _seq([3, 4, 5, 6, 7])  # pages: [3 4] [5 6] named, [7] partial
    _prefill(bm, a)
    pages = list(a.block_table)
    bm.free(a)
    assert bm.num_free_blocks == 6 and bm.num_cached_blocks == 2
    assert list(bm.free_blocks)[0] == pages[2], "a page with nothing to keep is reused first"
    assert list(bm.free_blocks)[-2:] == [pages[1], pages[0]], "the tail is evicted before the head"
    again = _seq([3, 4, 5, 6, 9])
    assert bm.lookup(again) == pages[:2]
    hog = _seq(list(range(10, 20)))  # 5 pages: the 4 unnamed ones, then the LRU named page (a's tail)
    bm.allocate(hog, 10)
    assert bm.num_evictions == 1 and pages[1] in hog.block_table and pages[0] not in hog.block_table
    assert bm.lookup(again) == pages[:1]


def test_taking_a_free_cached_page_counts_against_the_pool():
    bm = BlockManager(4, 2, enable_caching=True)  # 3 usable pages
    _prefill(bm, a := _seq([3, 4, 5]))
    bm.free(a)
    b = _seq([3, 4, 9, 9, 9, 9, 9])  # takes the cached page and needs 3 more: 4 > 3
    cached = bm.lookup(b)
    assert len(cached) == 1 and not bm.can_allocate(b, 5, cached)
    assert bm.can_allocate(b, 4, cached)


def test_fork_shares_every_page_and_the_partial_page_is_copied_on_write():
    bm = BlockManager(10, 4, enable_caching=True)
    parent = _seq(list(range(3, 13)))  # 10 tokens: 2 full pages and a partial one
    _prefill(bm, parent)
    children = [_seq(list(range(3, 13))) for _ in range(2)]
    for child in children:
        bm.fork(parent, child)
        child.num_computed_tokens = parent.num_computed_tokens
    assert [bm.ref_counts[p] for p in parent.block_table] == [3, 3, 3] and bm.num_free_blocks == 6
    tail = parent.block_table[2]
    for seq in [parent] + children:
        seq.token_ids.append(50)
    assert bm.blocks_needed(parent, 1) == 1
    assert bm.allocate(parent, 1) == [(tail, parent.block_table[2])] and parent.block_table[2] != tail
    assert bm.allocate(children[0], 1) == [(tail, children[0].block_table[2])]
    assert bm.blocks_needed(children[1], 1) == 0 and bm.allocate(children[1], 1) == [], "the last holder writes"
    assert children[1].block_table[2] == tail and bm.ref_counts[tail] == 1 and bm.num_page_copies == 2
    for seq in [parent] + children:
        bm.free(seq)
    assert bm.num_free_blocks == 9 and not any(bm.ref_counts)


def test_a_page_named_twice_keeps_the_first_and_frees_the_duplicate_first():
    bm = BlockManager(10, 4, enable_caching=True)
    a, b = _seq(list(range(3, 8))), _seq(list(range(3, 8)))
    for seq in (a, b):  # admitted in the same step: neither sees the other's page
        bm.allocate(seq, 5, bm.lookup(seq))
    for seq in (a, b):
        seq.num_computed_tokens = 5
        bm.cache_computed_pages(seq)
    assert bm.num_cached_blocks == 1 and bm.lookup(_seq(list(range(3, 9)))) == a.block_table[:1]
    pages_b = list(b.block_table)
    bm.free(b)
    assert set(list(bm.free_blocks)[:2]) == set(pages_b), "the unnamed duplicate is reused first"
    bm.free(a)
    assert not any(bm.ref_counts) and bm.num_cached_blocks == 1
