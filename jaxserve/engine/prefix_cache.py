"""Prefix-cache page identity: chained page hashes and the index from hash to page. Plain Python, no JAX.

A full page's K/V is a function of every token up to its end, so a page is named by a hash of its own tokens
chained with its parent page's hash. The chain starts from a root that carries the request's `cache_salt`, so
requests with different salts never produce the same name and can never share a page. Everything else that changes
the K/V (weights, dtype, page size) is fixed for the life of one engine and its pool, so it needs no place here.

SHA-256 rather than Python's `hash`: names must not collide by accident or on purpose (a tenant crafting tokens to
land on another tenant's page), and a 32-byte digest per 16 tokens costs about a microsecond.
"""

from __future__ import annotations

import hashlib
import struct

from jaxserve.engine.sequence import Sequence

PageHash = bytes


def root_hash(cache_salt: str | None) -> PageHash:
    """The chain's start for a salt (None and "" are different namespaces)."""
    tag = b"\x00" if cache_salt is None else b"\x01" + cache_salt.encode("utf-8")
    return hashlib.sha256(b"jaxserve-prefix-cache-v1" + tag).digest()


def page_hash(parent: PageHash, token_ids: list[int]) -> PageHash:
    """The name of a full page holding `token_ids`, whose predecessor pages are named by `parent`."""
    return hashlib.sha256(parent + struct.pack(f"<{len(token_ids)}q", *token_ids)).digest()


def update_page_hashes(seq: Sequence, block_size: int) -> list[PageHash]:
    """Extend `seq.page_hashes` to cover every full page of its tokens (incremental: O(new pages)); returns it."""
    hashes = seq.page_hashes
    num_full = len(seq.token_ids) // block_size
    parent = hashes[-1] if hashes else root_hash(seq.cache_salt)
    for i in range(len(hashes), num_full):
        parent = page_hash(parent, seq.token_ids[i * block_size:(i + 1) * block_size])
        hashes.append(parent)
    return hashes


class PrefixIndex:
    """Two-way map between the hashes of cached full pages and the pages that hold them.

    A page is in the index while its content is valid for its hash: from the step that finished writing it until
    the page is handed out again for other tokens. A page in the index is full and is never written again.
    """

    def __init__(self, num_blocks: int) -> None:
        self.block_of: dict[PageHash, int] = {}
        self.hash_of: list[PageHash | None] = [None] * num_blocks

    def __len__(self) -> int:
        return len(self.block_of)

    def get(self, h: PageHash) -> int | None:
        """The page holding `h`, if cached."""
        return self.block_of.get(h)

    def is_cached(self, block: int) -> bool:
        """True if `block` holds a named full page."""
        return self.hash_of[block] is not None

    def add(self, h: PageHash, block: int) -> bool:
        """Name `block` by `h`. A hash already held by another page keeps that page (first writer wins)."""
        if h in self.block_of or self.hash_of[block] is not None:
            return False
        self.block_of[h] = block
        self.hash_of[block] = h
        return True

    def evict(self, block: int) -> None:
        """Forget `block`'s name (it is about to hold other tokens)."""
        h = self.hash_of[block]
        if h is not None:
            del self.block_of[h]
            self.hash_of[block] = None

    def clear(self) -> None:
        """Forget every name."""
        self.block_of.clear()
        self.hash_of = [None] * len(self.hash_of)
