"""What the GPU (Triton) kernels require of their inputs, and the padding they apply.

Triton tensors must have power-of-two shapes, and `tl.dot` needs every dimension >= 16. The kernels therefore
pad the query heads of a group to a power of two (>= 16 rows for decode, where one token's heads are the only
rows) and require the page size and head_dim themselves to be powers of two >= 16; pages are never padded, since
that would copy the cache.
"""

from __future__ import annotations

from pallas_kernels.common import next_power_of_two

MIN_DOT = 16


def is_power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def check_gpu_pages(block_size: int, head_dim: int, pages_per_compute_block: int) -> None:
    """Raise ValueError unless the Triton kernels support this page geometry."""
    if not is_power_of_two(block_size) or block_size < MIN_DOT:
        raise ValueError(f"GPU kernels need a power-of-two page size (block_size) >= {MIN_DOT}, got {block_size}")
    if not is_power_of_two(head_dim) or head_dim < MIN_DOT:
        raise ValueError(f"GPU kernels need a power-of-two head_dim >= {MIN_DOT}, got {head_dim}")
    if not is_power_of_two(pages_per_compute_block):
        raise ValueError(f"pages_per_compute_block must be a power of two, got {pages_per_compute_block}")


def padded_groups(groups: int, minimum: int = 1) -> int:
    """Query heads per KV head after padding to a power of two of at least `minimum`."""
    return max(minimum, next_power_of_two(groups))
