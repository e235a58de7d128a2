"""Move KV pages from one engine's pool to another's (disaggregated prefill -> decode hand-off).

Three device steps per hand-off, all asynchronous: a jitted gather of the source pages (every cache array, page
axis 2) on the prefill group, `jax.device_put` of the gathered pages onto the decode group's cache sharding (a
device-to-device copy, shard by shard: both pools are split by KV head), and a jitted scatter into the destination
pages with the decode cache donated, so the pool is updated in place. Page lists are padded to power-of-two lengths
(pairs (0, 0): the reserved page, which only ever holds padding writes) to bound the number of compilations.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxserve.engine.block_manager import BlockManager
from jaxserve.engine.buckets import pick_bucket, power_of_two_buckets
from jaxserve.engine.page_copy import take_pages, put_pages
from jaxserve.engine.sequence import Sequence
from jaxserve.parallel.mesh import replicated
from jaxserve.parallel.sharding import cache_sharding


class KVTransfer:
    """Copies pages from a source runner's cache to a destination runner's cache (the runners' meshes may differ
    in devices; with equal tensor-parallel sizes each device sends only its KV heads)."""

    def __init__(self, src_runner, dst_runner) -> None:  # ModelRunner each; untyped to avoid an import cycle
        self.src = src_runner
        self.dst = dst_runner
        src_sharding, self.dst_sharding = cache_sharding(src_runner.mesh), cache_sharding(dst_runner.mesh)
        self._gather = jax.jit(take_pages, out_shardings=src_sharding)
        self._scatter = jax.jit(put_pages, donate_argnames=("cache",), out_shardings=self.dst_sharding)
        self._src_index, self._dst_index = replicated(src_runner.mesh), replicated(dst_runner.mesh)
        # One copy moves at most one full-length sequence's pages (more go in several copies): the gathered
        # pages are a temporary copy, which must stay small next to a pool that fills the device.
        self.buckets = power_of_two_buckets(8, src_runner.config.max_blocks_per_seq)
        self.num_pages_moved = 0
        self.num_transfers = 0

    def warmup(self) -> None:
        """Compile the copy for every bucket (copying the reserved page onto itself, which changes nothing)."""
        for size in self.buckets:
            self._copy(np.zeros(size, np.int32), np.zeros(size, np.int32))
        jax.block_until_ready(self.dst.cache)

    def copy(self, src_pages: list[int], dst_pages: list[int]) -> None:
        """Copy page `src_pages[i]` of the source pool onto page `dst_pages[i]` of the destination pool.

        Dispatches asynchronously; the source step that wrote the pages and the destination step that reads them
        are ordered by JAX's data dependencies (the caches are the same arrays the runners donate next).
        """
        if len(src_pages) != len(dst_pages):
            raise ValueError(f"{len(src_pages)} source pages for {len(dst_pages)} destination pages")
        step = self.buckets[-1]
        for i in range(0, len(src_pages), step):
            n = len(src_pages[i:i + step])
            src, dst = (np.zeros(pick_bucket(self.buckets, n), np.int32) for _ in range(2))
            src[:n], dst[:n] = src_pages[i:i + step], dst_pages[i:i + step]
            self._copy(src, dst)
            self.num_transfers += 1
        self.num_pages_moved += len(src_pages)

    def _copy(self, src: np.ndarray, dst: np.ndarray) -> None:
        values = self._gather(self.src.cache, jax.device_put(src, self._src_index))
        values = jax.device_put(values, self.dst_sharding)  # source group -> destination group
        self.dst.cache = self._scatter(self.dst.cache, jax.device_put(dst, self._dst_index), values)


def move_pages(group: list[Sequence], src: BlockManager, dst: BlockManager, transfer: KVTransfer) -> None:
    """Move the pages of `group` (samples of one request holding the same pages) from pool `src` to pool `dst`:
    fresh pages in `dst`, their K/V copied over, the `src` pages freed, and the samples sharing the new pages."""
    leader = group[0]
    src_pages = list(leader.block_table)
    dst_pages = dst.take_free_pages(len(src_pages))
    transfer.copy(src_pages, dst_pages)  # dispatched before the source pages can be handed out again
    for seq in group:
        src.free(seq)
    leader.block_table = dst_pages
    for child in group[1:]:
        hashes = child.page_hashes  # its own tokens' page names (fork would copy the leader's)
        dst.fork(leader, child)
        child.page_hashes = hashes
