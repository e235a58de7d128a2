"""BlockManager: the KV page pool on the host (free list, reference counts, prefix cache). Plain Python, no JAX."""

from __future__ import annotations

import collections

from jaxserve.engine.prefix_cache import PrefixIndex, update_page_hashes
from jaxserve.engine.sequence import Sequence

CopyPair = tuple[int, int]  # (source page, destination page) of a copy-on-write


class BlockManager:
    """Hands out pages of `block_size` token slots to sequences and takes them back.

    Page 0 is reserved for padding writes and never handed out. Reference counts let a page be shared: by the
    samples of one request (`fork`) and, with `enable_caching`, by every sequence whose prefix names it. A page
    whose count reaches zero goes on the free list but, if it holds a named full page, keeps its content and its
    name there: a later request can take it back (`allocate(..., cached=...)`) until the pool needs the page for
    something else. The free list is in eviction order: pages nobody can reuse first, then named pages least
    recently freed first (a sequence frees its tail before its head, so shared prefixes are evicted last).

    A page is written only while exactly one sequence holds it and it has no name; a write into a shared, partly
    filled page (a forked prompt's last page) first moves the writer to a copy (copy-on-write).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV pool needs at least 2 pages (one is reserved), got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.free_blocks: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(1, num_blocks))
        self.ref_counts = [0] * num_blocks
        self.index = PrefixIndex(num_blocks)
        self.num_evictions = 0  # named pages handed out for other tokens
        self.num_page_copies = 0  # copy-on-writes
        self.num_forks = 0

    @property
    def num_usable_blocks(self) -> int:
        """Pages sequences can own (the pool minus the reserved page)."""
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Pages nobody holds (named cached pages among them: they are reclaimed on demand)."""
        return len(self.free_blocks)

    @property
    def num_cached_blocks(self) -> int:
        """Pages holding a named full page (held or free)."""
        return len(self.index)

    @property
    def usage(self) -> float:
        """Fraction of usable pages held by sequences, 0..1."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    # -- prefix cache --------------------------------------------------------------------------------------------

    def uses_cache(self, seq: Sequence) -> bool:
        """Whether `seq` may take cached pages: not when caching is off, nor for prompt logprobs (those need the
        logits of every prompt position, so the whole prompt is computed; its pages are still cached for others)."""
        return self.enable_caching and seq.params.prompt_logprobs is None

    def lookup(self, seq: Sequence) -> list[int]:
        """Pages of the longest cached run of `seq`'s full pages, leaving at least its last token to compute."""
        if not self.uses_cache(seq):
            return []
        hashes = update_page_hashes(seq, self.block_size)
        hits = []
        for h in hashes[:(seq.num_tokens - 1) // self.block_size]:
            block = self.index.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def names_completed(self, seq: Sequence, num_new_tokens: int) -> list[bytes]:
        """Names of the pages `seq` fills by computing `num_new_tokens` more tokens (none when caching is off)."""
        if not self.enable_caching:
            return []
        first = seq.num_computed_tokens // self.block_size
        last = (seq.num_computed_tokens + num_new_tokens) // self.block_size
        return update_page_hashes(seq, self.block_size)[first:last]

    def next_page_in(self, seq: Sequence, cached: list[int], names: set[bytes]) -> bool:
        """True if the page after `seq`'s cached run could be a hit and is named in `names` (being written now)."""
        i = len(cached)
        if not names or not self.uses_cache(seq) or i >= (seq.num_tokens - 1) // self.block_size:
            return False
        return update_page_hashes(seq, self.block_size)[i] in names

    def cache_computed_pages(self, seq: Sequence) -> None:
        """Name `seq`'s pages that are full and computed. Call after the step that wrote them, never before.

        Naming only written pages is what keeps a request from being handed a page whose K/V is still being
        computed (by another request in the same step, or by a chunked prefill that has not reached it yet).
        """
        if not self.enable_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        if seq.num_named_pages >= num_full:
            return
        hashes = update_page_hashes(seq, self.block_size)
        for i in range(seq.num_named_pages, num_full):
            self.index.add(hashes[i], seq.block_table[i])
        seq.num_named_pages = num_full

    def reset_prefix_cache(self) -> None:
        """Forget every cached name (pages in use keep their content; free ones become plain free pages)."""
        self.index.clear()

    # -- allocation ----------------------------------------------------------------------------------------------

    def _cow_index(self, seq: Sequence) -> int | None:
        """Index of the page `seq` writes next if it is a shared, partly computed page (to copy before writing)."""
        i, offset = divmod(seq.num_computed_tokens, self.block_size)
        if offset and i < len(seq.block_table) and self.ref_counts[seq.block_table[i]] > 1:
            return i
        return None

    def blocks_needed(self, seq: Sequence, num_new_tokens: int, num_cached: int = 0) -> int:
        """Extra pages `seq` needs for `num_new_tokens` more tokens (after taking `num_cached` cached pages)."""
        total = max(seq.num_computed_tokens, num_cached * self.block_size) + num_new_tokens
        have = max(len(seq.block_table), num_cached)
        copy = 1 if num_new_tokens and self._cow_index(seq) is not None else 0
        return max(0, -(-total // self.block_size) - have) + copy

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> bool:
        """True if the pool covers `blocks_needed` (cached pages taken off the free list count against it)."""
        reclaimed = sum(1 for block in cached if self.ref_counts[block] == 0)
        return self.blocks_needed(seq, num_new_tokens, len(cached)) <= self.num_free_blocks - reclaimed

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> list[CopyPair]:
        """Give `seq` the pages for `num_new_tokens` more tokens; raises if the pool is short.

        `cached` (from `lookup`, for a sequence with no pages yet) become its first pages and count as computed.
        Returns the page copies the device must make before this step writes (copy-on-write).
        """
        if not self.can_allocate(seq, num_new_tokens, cached):
            needed = self.blocks_needed(seq, num_new_tokens, len(cached))
            raise RuntimeError(f"KV pool exhausted: need {needed} pages, {self.num_free_blocks} free")
        if cached:
            assert not seq.block_table and seq.num_computed_tokens == 0, "cached pages go to an empty table"
            for block in cached:
                self._take(block)
            seq.block_table = list(cached)
            seq.num_named_pages = len(cached)
            seq.num_computed_tokens = len(cached) * self.block_size
        copies = []
        i = self._cow_index(seq) if num_new_tokens else None
        if i is not None:
            src, dst = seq.block_table[i], self._pop_free()
            self.ref_counts[src] -= 1
            seq.block_table[i] = dst
            copies.append((src, dst))
            self.num_page_copies += 1
        total = seq.num_computed_tokens + num_new_tokens
        for _ in range(max(0, -(-total // self.block_size) - len(seq.block_table))):
            seq.block_table.append(self._pop_free())
        return copies

    def take_free_pages(self, count: int) -> list[int]:
        """`count` free pages, each held once, for K/V copied in from another pool (disaggregated serving: the
        decode engine receives a prefilled sequence's pages this way). Raises if the pool is short."""
        if count > self.num_free_blocks:
            raise RuntimeError(f"KV pool exhausted: need {count} pages, {self.num_free_blocks} free")
        return [self._pop_free() for _ in range(count)]

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let `child` share every page of `parent` (a sample of the same prompt)."""
        assert not child.block_table, "a forked sequence starts without pages"
        for block in parent.block_table:
            self.ref_counts[block] += 1
        child.block_table = list(parent.block_table)
        self.num_forks += 1
        child.num_named_pages = parent.num_named_pages
        child.page_hashes = parent.page_hashes[:child.num_tokens // self.block_size]

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free_blocks[block]
        self.ref_counts[block] += 1

    def _pop_free(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        assert self.ref_counts[block] == 0, f"page {block} on the free list is in use"
        if self.index.is_cached(block):
            self.index.evict(block)  # its old content is about to be overwritten
            self.num_evictions += 1
        self.ref_counts[block] = 1
        return block

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references; pages nobody else holds go on the free list (named ones keep their name)."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"page {block} freed twice"
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
                if not self.index.is_cached(block):
                    self.free_blocks.move_to_end(block, last=False)  # nothing to keep: reuse it first
        seq.block_table = []
        seq.num_named_pages = 0
