"""What the TPU kernels require of their inputs, checked before tracing so errors say what to change.

Mosaic tiles VMEM as (sublanes, 128 lanes) with 8 sublanes of 32-bit values (16 for bf16, 32 for int8). The
kernels reshape a `[pages, page_size, head_dim]` buffer into `[pages * page_size, head_dim]`, which is free only
when the page size is a whole number of sublane tiles; head_dim is the lane axis, so it must fill half or whole
lane tiles (64 is padded to 128 lanes by Mosaic at half efficiency; 128 and 256 are native).
"""

from __future__ import annotations

import jax.numpy as jnp

TPU_HEAD_DIMS = (64, 128, 256)
RAGGED_QUERY_ROWS = 8  # query-block rows (tokens x heads) must be a multiple of the 8-sublane tile


def sublane_tile(dtype) -> int:
    """Rows in one (sublane) tile of a VMEM buffer of `dtype`."""
    return 32 // jnp.dtype(dtype).itemsize


def check_tpu_pages(block_size: int, head_dim: int, page_dtype, pages_per_compute_block: int) -> None:
    """Raise ValueError unless the TPU kernels support this page geometry."""
    tile = sublane_tile(page_dtype)
    if block_size % tile:
        raise ValueError(f"TPU kernels need a page size (block_size) that is a multiple of {tile} for "
                         f"{jnp.dtype(page_dtype).name} pages, got {block_size}")
    if head_dim not in TPU_HEAD_DIMS:
        raise ValueError(f"TPU kernels support head_dim in {TPU_HEAD_DIMS}, got {head_dim}")
    if pages_per_compute_block < 1:
        raise ValueError(f"pages_per_compute_block must be >= 1, got {pages_per_compute_block}")


def check_tpu_query_block(queries_per_block: int, groups: int) -> None:
    """Raise ValueError unless a ragged query block (tokens x query heads per KV head) fills whole sublane tiles."""
    if (queries_per_block * groups) % RAGGED_QUERY_ROWS:
        raise ValueError(f"queries_per_block x query heads per KV head ({queries_per_block} x {groups}) must be a "
                         f"multiple of {RAGGED_QUERY_ROWS}")
