"""BlockManager: the host-side page pool (free list, reserved page 0, reference counts). No JAX."""

from __future__ import annotations

import pytest

from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.sequence import Sequence
from jaxserve.sampling_params import SamplingParams


def _seq(prompt_len: int = 10) -> Sequence:
    return Sequence("r", list(range(3, 3 + prompt_len)), SamplingParams(), 0, 0, 0.0)


def test_new_pool_reserves_page_zero():
    bm = BlockManager(8, 16)
    assert bm.num_usable_blocks == 7
    assert bm.num_free_blocks == 7
    assert 0 not in bm.free_blocks
    assert sorted(bm.free_blocks) == list(range(1, 8))
    assert bm.usage == 0.0


def test_too_small_pool_is_refused():
    with pytest.raises(ValueError, match="2"):
        BlockManager(1, 16)


@pytest.mark.parametrize("computed,new,owned,expected", [
    (0, 1, 0, 1), (0, 16, 0, 1), (0, 17, 0, 2), (16, 1, 1, 1), (15, 1, 1, 0), (0, 48, 0, 3), (10, 30, 1, 2),
])
def test_blocks_needed(computed, new, owned, expected):
    bm = BlockManager(16, 16)
    seq = _seq(64)
    seq.num_computed_tokens = computed
    seq.block_table = list(range(1, 1 + owned))
    assert bm.blocks_needed(seq, new) == expected


def test_allocate_until_exhausted_never_hands_out_page_zero():
    bm = BlockManager(6, 4)
    seqs = [_seq(4) for _ in range(5)]
    for seq in seqs:
        assert bm.can_allocate(seq, 4)
        bm.allocate(seq, 4)
    owned = [b for s in seqs for b in s.block_table]
    assert sorted(owned) == [1, 2, 3, 4, 5]
    assert bm.num_free_blocks == 0 and bm.usage == 1.0
    assert all(bm.ref_counts[b] == 1 for b in owned) and bm.ref_counts[0] == 0
    extra = _seq(4)
    assert not bm.can_allocate(extra, 1)
    with pytest.raises(RuntimeError):
        bm.allocate(extra, 1)
    assert extra.block_table == [] and bm.num_free_blocks == 0


def test_allocate_grows_a_table_only_by_what_is_missing():
    bm = BlockManager(10, 4)
    seq = _seq(12)
    bm.allocate(seq, 6)  # 2 pages
    assert len(seq.block_table) == 2
    seq.num_computed_tokens = 6
    bm.allocate(seq, 2)  # 8 tokens fit in 2 pages
    assert len(seq.block_table) == 2
    bm.allocate(seq, 3)  # 9 tokens need 3
    assert len(seq.block_table) == 3 and len(set(seq.block_table)) == 3
    assert bm.num_free_blocks == 9 - 3


def test_free_returns_pages_and_resets_counts():
    bm = BlockManager(10, 4)
    a, b = _seq(), _seq()
    bm.allocate(a, 10)
    bm.allocate(b, 5)
    pages_a = list(a.block_table)
    bm.free(a)
    assert a.block_table == []
    assert bm.num_free_blocks == 9 - len(b.block_table)
    assert all(bm.ref_counts[p] == 0 for p in pages_a)
    assert set(pages_a) <= set(bm.free_blocks)
    bm.free(b)
    assert bm.num_free_blocks == 9 and not any(bm.ref_counts)
    assert sorted(bm.free_blocks) == list(range(1, 10))


def test_freed_pages_are_reused():
    bm = BlockManager(3, 4)
    a = _seq()
    bm.allocate(a, 8)
    pages = set(a.block_table)
    bm.free(a)
    b = _seq()
    bm.allocate(b, 8)
    assert set(b.block_table) == pages


def test_shared_page_returns_only_when_the_last_holder_frees():
    bm = BlockManager(6, 4)
    a, b = _seq(), _seq()
    bm.allocate(a, 8)
    shared = a.block_table[0]
    b.block_table = [shared]  # b shares a's first page (how prefix caching / parallel samples hold pages)
    bm.ref_counts[shared] += 1
    bm.free(a)
    assert shared not in bm.free_blocks and bm.ref_counts[shared] == 1
    assert bm.num_free_blocks == 5 - 1
    bm.free(b)
    assert shared in bm.free_blocks and bm.num_free_blocks == 5 and not any(bm.ref_counts)


def test_free_of_an_empty_table_is_harmless():
    bm = BlockManager(4, 4)
    seq = _seq()
    bm.free(seq)
    bm.free(seq)
    assert bm.num_free_blocks == 3 and not any(bm.ref_counts)
