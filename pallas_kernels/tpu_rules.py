"""What the TPU kernels require of their inputs, and how big their blocks are on a given chip.

Mosaic tiles VMEM as (sublanes, 128 lanes) with 8 sublanes of 32-bit values (16 for bf16, 32 for int8). The float
kernels reshape a `[pages, page_size, head_dim]` buffer into `[pages * page_size, head_dim]`, which is free only
when the page size is a whole number of sublane tiles; int8 pages are dequantized one page at a time (no reshape),
so they need only a multiple of 16 rows. head_dim is the lane axis.

Head dims: pages are stored with head_dim padded to a multiple of 128 lanes. The compiler accepts every head_dim
tried natively (16 ... 256), but what it does with them shows why not to: for 80, 96 and 112 XLA:TPU's HBM layout
pads the minor axis to 128 lanes anyway (`memory_analysis()`: 1.6x, 1.33x, 1.14x the logical bytes), and for 16, 32
and 64 it keeps the pages at their size but, once the page arrays pass a few MiB (any real pool), copies them into
the kernel's layout before every call: the compiled decode step's temporaries equal the whole page pool (2x at
16,384 pages), i.e. a copy of the KV cache per layer per step. Padded to 128 the same kernels copy nothing; the
memory planner and the start-up log count the padded bytes.

Block sizes (`plan_decode`, `plan_ragged`) are derived from the chip (`chips.TpuChip`) and the shapes, never fixed.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels.chips import TpuChip

MAX_HEAD_DIM = 256
# Head dims under one lane tile that the kernels also take unpadded (they compile and compute right; callers with
# large pools should still pad, see the module docstring).
NATIVE_HEAD_DIMS = (16, 32, 64)
RAGGED_QUERY_ROWS = 8  # query-block rows (tokens x heads) must be a multiple of the 8-sublane tile
TARGET_KEYS_PER_BLOCK = 256  # keys per page-loop step: ~2 MXU passes, DMAs of >= 64 KiB for bf16 x 128
MAX_PAGES_PER_BLOCK = 16  # DMA descriptors are unrolled per page: keep the kernel body small
MAX_PAGES_PER_BLOCK_INT8 = 8  # int8 also unrolls the compute per page
TABLE_CHUNK = 128  # block-table entries per SMEM chunk (512 B; 2,048 tokens of 16-token pages)
VMEM_BUDGET_FRACTION = 0.5  # plans stay under half the chip's scoped-VMEM limit (Mosaic's own temporaries)


def sublane_tile(dtype) -> int:
    """Rows in one (sublane) tile of a VMEM buffer of `dtype`."""
    return 32 // jnp.dtype(dtype).itemsize


def page_size_multiple(page_dtype) -> int:
    """What the page size must be a multiple of: the sublane tile for float pages (whole-block reshape), 16 for
    int8 (one page at a time, dequantized to bf16 rows)."""
    return 16 if jnp.dtype(page_dtype) == jnp.int8 else sublane_tile(page_dtype)


def padded_head_dim(head_dim: int) -> int:
    """The head dim the TPU pages are stored with: the next multiple of 128 lanes (see the module docstring)."""
    return -(-head_dim // 128) * 128


def check_tpu_pages(block_size: int, head_dim: int, page_dtype, pages_per_compute_block: int = 1) -> None:
    """Raise ValueError unless the TPU kernels support this page geometry (`head_dim`: the pages' own)."""
    multiple = page_size_multiple(page_dtype)
    if block_size % multiple:
        raise ValueError(f"TPU kernels need a page size (block_size) that is a multiple of {multiple} for "
                         f"{jnp.dtype(page_dtype).name} pages, got {block_size}")
    if head_dim > MAX_HEAD_DIM or (head_dim not in NATIVE_HEAD_DIMS and head_dim % 128):
        raise ValueError(f"TPU kernels need pages of head_dim in {NATIVE_HEAD_DIMS} or a multiple of 128 up to "
                         f"{MAX_HEAD_DIM} (pad with padded_head_dim), got {head_dim}")
    if pages_per_compute_block < 1:
        raise ValueError(f"pages_per_compute_block must be >= 1, got {pages_per_compute_block}")


def check_tpu_query_block(queries_per_block: int, groups: int) -> None:
    """Raise ValueError unless a ragged query block (tokens x query heads per KV head) fills whole sublane tiles."""
    if (queries_per_block * groups) % RAGGED_QUERY_ROWS:
        raise ValueError(f"queries_per_block x query heads per KV head ({queries_per_block} x {groups}) must be a "
                         f"multiple of {RAGGED_QUERY_ROWS}")


def queries_for_rows(rows: int, groups: int) -> int:
    """Tokens per ragged query block giving about `rows` rows (tokens x G): a multiple of 8 tokens, >= 8."""
    return max(8, (rows // groups) // 8 * 8)


@dataclasses.dataclass(frozen=True)
class TpuPlan:
    pages_per_compute_block: int
    table_chunk: int  # block-table entries per SMEM chunk (two chunk buffers)
    queries_per_block: int | None  # ragged only
    vmem_bytes: int  # estimated VMEM of the kernel (buffers, blocks and the main temporaries)
    vmem_budget: int


def _round(n: int, m: int) -> int:
    return -(-n // m) * m


def vmem_estimate(*, pages: int, block_size: int, head_dim: int, page_dtype, q_dtype, rows: int) -> int:
    """VMEM of one program, as Mosaic tiles it: the two-slot K/V page buffers (and int8 scale buffers), the
    double-buffered q and output blocks, and the float32 temporaries of one step (scores/probabilities
    `[rows, keys]`, the accumulator `[rows, D]`, dequantized or masked K/V `[keys, D]`)."""
    page_dtype, q_dtype = jnp.dtype(page_dtype), jnp.dtype(q_dtype)
    lanes_d = _round(head_dim, 128)
    keys = pages * block_size
    total = 2 * 2 * pages * _round(block_size, sublane_tile(page_dtype)) * lanes_d * page_dtype.itemsize
    if page_dtype == jnp.int8:
        total += 2 * 2 * _round(pages, 8) * _round(block_size, 128) * 4
    total += 2 * 2 * _round(rows, sublane_tile(q_dtype)) * lanes_d * q_dtype.itemsize
    step_keys = block_size if page_dtype == jnp.int8 else keys  # int8 attends one page at a time
    total += 3 * _round(rows, 8) * _round(step_keys, 128) * 4 + 2 * _round(rows, 8) * lanes_d * 4
    total += 2 * _round(step_keys, 8) * lanes_d * 4
    return total


def _table_chunk(table_width: int, pages: int, table_chunk: int | None) -> int:
    """Entries per chunk: the whole row when it is at most `TABLE_CHUNK` (or `table_chunk`) wide, else that
    rounded down to a multiple of the pages per block (so no block straddles two chunks)."""
    chunk = max(pages, (table_chunk or TABLE_CHUNK) // pages * pages)
    return table_width if chunk >= table_width else chunk


def _pages(block_size: int, page_dtype, table_width: int) -> int:
    """Pages per step before the VMEM check: about `TARGET_KEYS_PER_BLOCK` keys, a power of two, at most the
    unrolling cap of the dtype and no more than the table holds."""
    cap = MAX_PAGES_PER_BLOCK_INT8 if jnp.dtype(page_dtype) == jnp.int8 else MAX_PAGES_PER_BLOCK
    pages = 1
    while pages * 2 * block_size <= TARGET_KEYS_PER_BLOCK and pages * 2 <= cap and pages * 2 <= table_width:
        pages *= 2
    return pages


def plan_decode(chip: TpuChip, *, block_size: int, head_dim: int, page_dtype, q_dtype, groups: int,
                table_width: int, pages_per_compute_block: int | None = None,
                table_chunk: int | None = None) -> TpuPlan:
    """Decode blocks for `chip`: ~256 keys of pages per step (a power of two pages, <= 16, <= 8 for int8, <= the
    table width), halved until `vmem_estimate` (rows = the G query heads) fits half the chip's scoped VMEM.
    Explicit values are kept as given."""
    budget = int(chip.scoped_vmem_bytes * VMEM_BUDGET_FRACTION)
    est = lambda p: vmem_estimate(pages=p, block_size=block_size, head_dim=head_dim, page_dtype=page_dtype,
                                  q_dtype=q_dtype, rows=groups)
    pages = pages_per_compute_block
    if pages is None:
        pages = _pages(block_size, page_dtype, table_width)
        while pages > 1 and est(pages) > budget:
            pages //= 2
    return TpuPlan(pages, _table_chunk(table_width, pages, table_chunk), None, est(pages), budget)


def plan_ragged(chip: TpuChip, *, block_size: int, head_dim: int, page_dtype, q_dtype, groups: int,
                table_width: int, num_tokens: int, pages_per_compute_block: int | None = None,
                queries_per_block: int | None = None, table_chunk: int | None = None) -> TpuPlan:
    """Ragged blocks for `chip`: query blocks of about one MXU pass of rows (`chip.mxu_rows` = tokens x G, a
    multiple of 8 tokens, no more tokens than the step holds rounded to 8), pages as in `plan_decode`; over half
    the scoped VMEM, pages are halved first, then the query block."""
    budget = int(chip.scoped_vmem_bytes * VMEM_BUDGET_FRACTION)
    est = lambda p, q: vmem_estimate(pages=p, block_size=block_size, head_dim=head_dim, page_dtype=page_dtype,
                                     q_dtype=q_dtype, rows=q * groups)
    block_q = queries_per_block
    if block_q is None:
        block_q = min(queries_for_rows(chip.mxu_rows, groups), _round(max(num_tokens, 1), 8))
    pages = pages_per_compute_block
    if pages is None:
        pages = _pages(block_size, page_dtype, table_width)
        while pages > 1 and est(pages, block_q) > budget:
            pages //= 2
    if queries_per_block is None:
        while block_q > 8 and est(pages, block_q) > budget:
            block_q = max(8, block_q // 2 // 8 * 8)
    return TpuPlan(pages, _table_chunk(table_width, pages, table_chunk), block_q, est(pages, block_q), budget)
