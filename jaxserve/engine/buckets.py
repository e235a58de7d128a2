"""Shape buckets: the few padded sizes jitted steps are compiled for."""

from __future__ import annotations


def power_of_two_buckets(smallest: int, largest: int) -> list[int]:
    """Powers of two from `smallest` up to and including the first one >= `largest`."""
    buckets, size = [], smallest
    while True:
        buckets.append(size)
        if size >= largest:
            return buckets
        size *= 2


def pick_bucket(buckets: list[int], n: int) -> int:
    """The smallest bucket holding `n`."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
