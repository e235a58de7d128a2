"""What the GPU (Triton) kernels require of their inputs, the padding they apply, and their block sizes per chip.

Triton tensors must have power-of-two shapes, and `tl.dot` needs every dimension >= 16. The kernels therefore
pad the query heads of a group to a power of two (>= 16 rows for decode, where one token's heads are the only
rows) and require the page size and the pages' head_dim to be powers of two >= 16. A model's head_dim that is not
one (80, 96, 112) is stored padded in the cache (`padded_head_dim`); the API pads q and slices the output.

Shared memory (`smem_estimate`), fitted to what the compiler asks for (deviceless compiles against a target whose
per-block limit is 1 KiB, reading `requested N` off the error, jax 0.10.2, sm_90): with `num_stages >= 2` the
page loop holds one pipelined copy of the K and V blocks in the page dtype (3 stages ask for the same as 2: the
gathered loads are not multi-buffered) plus the operands of the dots; with one stage only the dot operands.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels.chips import GpuChip
from pallas_kernels.common import cdiv, next_power_of_two

MIN_DOT = 16
MAX_HEAD_DIM = 256
DECODE_TARGET_KEYS = 128  # keys per page-loop step in decode
RAGGED_TARGET_KEYS = 64  # and in ragged (the query block is larger)
RAGGED_ROWS = 64  # query-block rows (tokens x padded heads)
MAX_SPLITS = 32
PROGRAMS_PER_SM = 2  # decode splits aim at this many programs per SM
SMEM_HEADROOM = 0.8  # plans use at most this share of the per-block limit


def is_power_of_two(n: int) -> bool:
    return n > 0 and not n & (n - 1)


def padded_head_dim(head_dim: int) -> int:
    """The head dim the GPU pages are stored with: the next power of two >= 16."""
    return max(MIN_DOT, next_power_of_two(head_dim))


def check_gpu_pages(block_size: int, head_dim: int, pages_per_compute_block: int = 1) -> None:
    """Raise ValueError unless the Triton kernels support this page geometry (`head_dim`: the pages' own)."""
    if not is_power_of_two(block_size) or block_size < MIN_DOT:
        raise ValueError(f"GPU kernels need a power-of-two page size (block_size) >= {MIN_DOT}, got {block_size}")
    if not is_power_of_two(head_dim) or head_dim < MIN_DOT or head_dim > MAX_HEAD_DIM:
        raise ValueError(f"GPU kernels need pages of a power-of-two head_dim in [{MIN_DOT}, {MAX_HEAD_DIM}] (pad "
                         f"with padded_head_dim), got {head_dim}")
    if not is_power_of_two(pages_per_compute_block):
        raise ValueError(f"pages_per_compute_block must be a power of two, got {pages_per_compute_block}")


def padded_groups(groups: int, minimum: int = 1) -> int:
    """Query heads per KV head after padding to a power of two of at least `minimum`."""
    return max(minimum, next_power_of_two(groups))


def smem_estimate(kernel: str, *, keys: int, head_dim: int, page_dtype, q_dtype, rows: int, num_stages: int) -> int:
    """Shared memory one program asks for (bytes), with 10% + 4 KiB over the fitted figures.

    Fitted (stages >= 2): decode ~ 2 x keys x D x page bytes + D x q bytes x (rows + keys / 4); ragged ~
    2 x keys x D x page bytes + D x q bytes x (rows + 2 x keys) (1 x keys for float32 queries). One stage drops
    the pipelined K/V copy (int8 decode keeps a quarter of it).
    """
    psz, csz = jnp.dtype(page_dtype).itemsize, jnp.dtype(q_dtype).itemsize
    pipelined = 2 * keys * head_dim * psz
    if kernel == "decode":
        base = head_dim * csz * (rows + keys // 4)
        one_stage = pipelined // 4 if jnp.dtype(page_dtype) == jnp.int8 else 0  # int8 stages its raw block
        total = base + (pipelined if num_stages >= 2 else one_stage)
    else:
        base = head_dim * csz * (rows + (1 if csz == 4 else 2) * keys)
        total = base + (pipelined if num_stages >= 2 else 0)
    return int(total * 1.1) + 4096


@dataclasses.dataclass(frozen=True)
class GpuPlan:
    pages_per_compute_block: int
    num_stages: int
    num_warps: int
    num_splits: int | None  # decode only
    queries_per_block: int | None  # ragged only
    smem_bytes: int  # `smem_estimate` of the plan
    smem_budget: int


def _budget(chip: GpuChip, kernel: str) -> int:
    """Decode (memory-bound) keeps two programs per SM resident; ragged may use a whole block's limit."""
    limit = chip.shared_memory_per_block_optin
    if kernel == "decode":
        limit = min(limit, chip.shared_memory_per_sm // PROGRAMS_PER_SM)
    return int(limit * SMEM_HEADROOM)


def _warps(head_dim: int) -> int:
    return 8 if head_dim >= 256 else 4


def _fit(kernel, chip, *, block_size, pages, stages, rows, head_dim, page_dtype, q_dtype, pages_given,
         stages_given):
    """Halve pages (>= 1), then drop to one stage, until the estimate fits the budget."""
    budget = _budget(chip, kernel)
    est = lambda p, s: smem_estimate(kernel, keys=p * block_size, head_dim=head_dim, page_dtype=page_dtype,
                                     q_dtype=q_dtype, rows=rows, num_stages=s)
    while not pages_given and pages > 1 and est(pages, stages) > budget:
        pages //= 2
    if not stages_given and est(pages, stages) > budget:
        stages = 1
    return pages, stages, est(pages, stages), budget


def plan_decode(chip: GpuChip, *, block_size: int, head_dim: int, page_dtype, q_dtype, groups: int,
                num_kv_heads: int, batch: int, table_width: int, pages_per_compute_block: int | None = None,
                num_splits: int | None = None, num_stages: int | None = None,
                num_warps: int | None = None) -> GpuPlan:
    """Decode blocks for `chip`: `DECODE_TARGET_KEYS` keys of pages per step (a power of two pages), halved (then
    one pipeline stage) until `smem_estimate` fits 80% of min(per-block limit, per-SM memory / 2), so two
    programs stay resident per SM; splits of each sequence's pages so that batch x KV heads x splits gives
    `PROGRAMS_PER_SM` programs per SM, at most `MAX_SPLITS` and no more than the table has blocks."""
    rows = padded_groups(groups, MIN_DOT)
    pages = pages_per_compute_block or max(1, min(DECODE_TARGET_KEYS // block_size, next_power_of_two(table_width)))
    stages = num_stages or 2
    pages, stages, smem, budget = _fit("decode", chip, block_size=block_size, pages=pages, stages=stages, rows=rows,
                                       head_dim=head_dim, page_dtype=page_dtype, q_dtype=q_dtype,
                                       pages_given=pages_per_compute_block is not None,
                                       stages_given=num_stages is not None)
    splits = num_splits or max(1, min(MAX_SPLITS, cdiv(PROGRAMS_PER_SM * chip.num_sms, batch * num_kv_heads),
                                      cdiv(table_width, pages)))
    return GpuPlan(pages, stages, num_warps or _warps(head_dim), splits, None, smem, budget)


def plan_ragged(chip: GpuChip, *, block_size: int, head_dim: int, page_dtype, q_dtype, groups: int,
                table_width: int, num_tokens: int, pages_per_compute_block: int | None = None,
                queries_per_block: int | None = None, num_stages: int | None = None,
                num_warps: int | None = None) -> GpuPlan:
    """Ragged blocks for `chip`: query blocks of `RAGGED_ROWS` rows (tokens x padded G, >= 16, tokens a power of
    two no larger than the step needs), `RAGGED_TARGET_KEYS` keys of pages per step, fitted as in
    `plan_decode` but against 80% of the whole per-block limit; still over it at one page, the query block is
    halved (down to 16 rows)."""
    padded_g = padded_groups(groups)
    block_q = queries_per_block
    if block_q is None:
        block_q = max(1, RAGGED_ROWS // padded_g, cdiv(MIN_DOT, padded_g))
        block_q = max(min(block_q, next_power_of_two(max(num_tokens, 1))), cdiv(MIN_DOT, padded_g))
    pages = pages_per_compute_block or max(1, min(RAGGED_TARGET_KEYS // block_size, next_power_of_two(table_width)))
    stages = num_stages or 2
    while True:
        pages, stages, smem, budget = _fit("ragged", chip, block_size=block_size, pages=pages, stages=stages,
                                           rows=block_q * padded_g, head_dim=head_dim, page_dtype=page_dtype,
                                           q_dtype=q_dtype, pages_given=pages_per_compute_block is not None,
                                           stages_given=num_stages is not None)
        if smem <= budget or queries_per_block is not None or block_q * padded_g <= MIN_DOT or block_q == 1:
            break
        block_q //= 2  # last resort (one page of keys already): fewer query rows
    return GpuPlan(pages, stages, num_warps or _warps(head_dim), None, block_q, smem, budget)
