"""BlockManager: the KV page pool on the host (free list and reference counts). Plain Python, no JAX."""

from __future__ import annotations

import collections

from jaxserve.engine.sequence import Sequence


class BlockManager:
    """Hands out pages of `block_size` token slots to sequences and takes them back.

    Page 0 is reserved for padding writes and never handed out. Reference counts let a page be shared (prefix
    caching and parallel samples build on this); a page returns to the free list when its count reaches zero.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV pool needs at least 2 pages (one is reserved), got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: collections.deque[int] = collections.deque(range(1, num_blocks))
        self.ref_counts = [0] * num_blocks

    @property
    def num_usable_blocks(self) -> int:
        """Pages sequences can own (the pool minus the reserved page)."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Pages on the free list."""
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of usable pages in use, 0..1."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Extra pages `seq` needs to hold its computed tokens plus `num_new_tokens`."""
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """True if the free list covers `blocks_needed`."""
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give `seq` the pages for `num_new_tokens` more tokens; raises if the pool is short."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"KV pool exhausted: need {needed} pages, {self.num_free_blocks} free")
        for _ in range(needed):
            block = self.free_blocks.popleft()
            assert self.ref_counts[block] == 0, f"page {block} on the free list is in use"
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; pages nobody else holds go back to the free list."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"page {block} freed twice"
            if self.ref_counts[block] == 0:
                self.free_blocks.append(block)
        seq.block_table = []
