"""A few small cases under Pallas's checked TPU interpreter, which raises on out-of-bounds DMAs and reads."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu
from kernel_cases import assert_close, decode_case, ragged_case

from pallas_kernels import reference, tpu_decode, tpu_ragged

SCALE = 0.125


def _checked() -> pltpu.InterpretParams:
    # Uninitialised VMEM reads as NaN, so a kernel that used stale buffer rows would fail the comparison.
    return pltpu.InterpretParams(uninitialized_memory="nan")


@pytest.mark.slow
def test_checked_ragged_int8_matches_reference() -> None:
    case = ragged_case(2, 64, 32, "int8", pad_tokens=3)
    args = (case.q, case.k_pages, case.v_pages, case.block_tables, case.seq_lens, case.query_start_loc,
            case.num_seqs)
    out = tpu_ragged.ragged_paged_attention(*args, scale=SCALE, **case.scales, pages_per_compute_block=2,
                                            queries_per_block=8, interpret=_checked())
    assert_close(out, reference.ragged_paged_attention(*args, scale=SCALE, **case.scales), "int8")


def test_checked_decode_raises_on_out_of_bounds_page() -> None:
    case = decode_case(1, 64, 8, "float32")
    num_pages = case.k_pages.shape[1]
    tables = case.block_tables.at[2, 1].set(num_pages + 3)  # a page inside sequence 2's length (9 tokens)
    with pytest.raises(Exception, match="Out-of-bounds"):
        tpu_decode.paged_decode_attention(case.q, case.k_pages, case.v_pages, case.seq_lens, tables, scale=SCALE,
                                          interpret=_checked()).block_until_ready()


def test_checked_ragged_raises_on_out_of_bounds_page() -> None:
    case = ragged_case(1, 64, 8, "float32")
    tables = case.block_tables.at[3, 1].set(case.k_pages.shape[1])  # sequence 3 reads its second page
    with pytest.raises(Exception, match="Out-of-bounds"):
        tpu_ragged.ragged_paged_attention(case.q, case.k_pages, case.v_pages, tables, case.seq_lens,
                                          case.query_start_loc, case.num_seqs, scale=SCALE, queries_per_block=8,
                                          interpret=_checked()).block_until_ready()


def test_checked_decode_matches_reference_and_never_reads_past_the_length() -> None:
    """Table entries past each sequence's length are out of bounds: touching one would raise."""
    case = decode_case(2, 64, 8, "float32")
    lengths = case.seq_lens
    width = case.block_tables.shape[1]
    used = (lengths[:, None] + 7) // 8 > jnp.arange(width)[None, :]
    tables = jnp.where(used, case.block_tables, 10_000)
    args = (case.q, case.k_pages, case.v_pages, lengths, tables)
    out = tpu_decode.paged_decode_attention(*args, scale=SCALE, pages_per_compute_block=3, interpret=_checked())
    assert_close(out, reference.paged_decode_attention(case.q, case.k_pages, case.v_pages, lengths,
                                                       case.block_tables, scale=SCALE), "float32")
