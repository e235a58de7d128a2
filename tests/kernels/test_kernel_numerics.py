"""Interpret-mode numerics of the TPU and GPU kernels against the pure-jnp references."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import assert_close, decode_case, ragged_case

import pallas_kernels
from pallas_kernels import reference

SCALE = 0.125
PAGE_SIZES = {"tpu": {"float32": (8, 16), "bfloat16": (16, 32), "int8": (32,)},
              "gpu": {"float32": (16, 32), "bfloat16": (16, 32), "int8": (16, 32)}}


def _decode(backend: str, groups: int, head_dim: int, block_size: int, dtype: str, **options) -> None:
    case = decode_case(groups, head_dim, block_size, dtype)
    args = (case.q, case.k_pages, case.v_pages, case.seq_lens, case.block_tables)
    out = pallas_kernels.paged_decode_attention(*args, scale=SCALE, **case.scales, backend=backend, interpret=True,
                                                **options)
    assert_close(out, reference.paged_decode_attention(*args, scale=SCALE, **case.scales), dtype)
    assert not np.any(np.asarray(out[-1], np.float32)), "a length-0 row must give zeros"


def _ragged(backend: str, groups: int, head_dim: int, block_size: int, dtype: str, **options) -> None:
    case = ragged_case(groups, head_dim, block_size, dtype)
    args = (case.q, case.k_pages, case.v_pages, case.block_tables, case.seq_lens, case.query_start_loc,
            case.num_seqs)
    out = pallas_kernels.ragged_paged_attention(*args, scale=SCALE, **case.scales, backend=backend, interpret=True,
                                                **options)
    assert_close(out, reference.ragged_paged_attention(*args, scale=SCALE, **case.scales), dtype)
    num_real = int(case.query_start_loc[case.num_seqs])
    assert not np.any(np.asarray(out[num_real:], np.float32)), "padding tokens must give zeros"


# A small spread for every run: each backend, GQA ratio, head_dim and dtype appears (bfloat16 pages on the TPU
# kernels are also covered by the adapter test); two more cases and the full grid are `slow`.
FAST = [
    ("tpu", 1, 64, 8, "float32"), ("tpu", 8, 64, 32, "int8"), ("gpu", 4, 128, 16, "bfloat16"),
    ("gpu", 8, 64, 16, "int8"),
    pytest.param("tpu", 4, 128, 16, "bfloat16", marks=pytest.mark.slow),
    pytest.param("gpu", 1, 64, 32, "float32", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("backend, groups, head_dim, block_size, dtype", FAST)
def test_decode_matches_reference(backend, groups, head_dim, block_size, dtype) -> None:
    _decode(backend, groups, head_dim, block_size, dtype, pages_per_compute_block=2)


@pytest.mark.parametrize("backend, groups, head_dim, block_size, dtype", FAST)
def test_ragged_matches_reference(backend, groups, head_dim, block_size, dtype) -> None:
    blocks = {"queries_per_block": 8} if backend == "tpu" else {}
    _ragged(backend, groups, head_dim, block_size, dtype, pages_per_compute_block=2, **blocks)


def test_gpu_decode_splits_merge() -> None:
    """Several splits, some with no pages for short sequences, merge to the single-program answer."""
    _decode("gpu", 4, 64, 16, "float32", pages_per_compute_block=1, num_splits=4)


def test_ragged_small_query_blocks_cross_sequences() -> None:
    """Query blocks smaller than the chunks: each block sees pieces of several sequences (and the TPU cases above
    use 8-token blocks for the same reason)."""
    _ragged("gpu", 2, 64, 16, "float32", queries_per_block=8)


GRID = [(b, g, d, bs, dt) for b, g, d, dt in itertools.product(("tpu", "gpu"), (1, 4, 8), (64, 128),
                                                               ("float32", "bfloat16", "int8"))
        for bs in PAGE_SIZES[b][dt]]


def _pages_per_block(head_dim: int) -> int:
    return 1 if head_dim == 64 else 4  # one page per step, and blocks that end mid-sequence


@pytest.mark.slow
@pytest.mark.parametrize("backend, groups, head_dim, block_size, dtype", GRID)
def test_grid_decode(backend, groups, head_dim, block_size, dtype) -> None:
    _decode(backend, groups, head_dim, block_size, dtype, pages_per_compute_block=_pages_per_block(head_dim))


@pytest.mark.slow
@pytest.mark.parametrize("backend, groups, head_dim, block_size, dtype", GRID)
def test_grid_ragged(backend, groups, head_dim, block_size, dtype) -> None:
    _ragged(backend, groups, head_dim, block_size, dtype, pages_per_compute_block=_pages_per_block(head_dim))


def test_bad_inputs_raise() -> None:
    case = decode_case(2, 64, 16, "int8")
    with pytest.raises(ValueError, match="int8 pages need"):
        pallas_kernels.paged_decode_attention(case.q, case.k_pages, case.v_pages, case.seq_lens, case.block_tables,
                                              scale=SCALE, interpret=True)
    with pytest.raises(ValueError, match="share a dtype"):
        pallas_kernels.paged_decode_attention(case.q, case.k_pages.astype(jnp.bfloat16),
                                              case.v_pages.astype(jnp.bfloat16), case.seq_lens, case.block_tables,
                                              scale=SCALE, interpret=True)
