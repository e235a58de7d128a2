"""Pages stored with a padded head dim (80 -> 128, ...), block tables wider than one SMEM chunk, and the engine's
side of the padding (kv_cache): interpret-mode numerics against the references on the unpadded pages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_cases import assert_close, decode_case, ragged_case

import pallas_kernels
from jaxserve import kv_cache
from jaxserve.config import ModelConfig
from pallas_kernels import reference

SCALE = 0.125


def _pad(x, dim):
    return None if x is None else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])])


# (backend, model head_dim, GQA, page size, dtype): head dims 16, 32, 80, 96 at the backend's padded page dim.
# Two in the fast suite (interpret mode is slow); the rest `slow`.
CASES = [("tpu", 80, 1, 16, "bfloat16"), ("gpu", 96, 4, 16, "int8")] + [
    pytest.param(*case, marks=pytest.mark.slow)
    for case in [("tpu", 16, 2, 16, "float32"), ("tpu", 96, 4, 16, "int8"), ("tpu", 32, 1, 16, "float32"),
                 ("gpu", 32, 2, 16, "float32"), ("gpu", 80, 4, 16, "int8"), ("gpu", 16, 8, 16, "float32"),
                 ("gpu", 96, 1, 16, "bfloat16")]]


@pytest.mark.parametrize("backend, head_dim, groups, block_size, dtype", CASES)
def test_decode_and_ragged_on_padded_pages(backend, head_dim, groups, block_size, dtype) -> None:
    page_dim = max(pallas_kernels.padded_head_dim(backend, head_dim), 64 if head_dim == 16 else 0)
    case = decode_case(groups, head_dim, block_size, dtype)
    args = (case.q, case.k_pages, case.v_pages, case.seq_lens, case.block_tables)
    padded = (case.q, _pad(case.k_pages, page_dim), _pad(case.v_pages, page_dim), case.seq_lens, case.block_tables)
    out = pallas_kernels.paged_decode_attention(*padded, scale=SCALE, **case.scales, backend=backend, interpret=True,
                                                pages_per_compute_block=2)
    assert_close(out, reference.paged_decode_attention(*args, scale=SCALE, **case.scales), dtype)

    case = ragged_case(groups, head_dim, block_size, dtype, pad_tokens=3)
    args = (case.q, case.k_pages, case.v_pages, case.block_tables, case.seq_lens, case.query_start_loc,
            case.num_seqs)
    padded = (case.q, _pad(case.k_pages, page_dim), _pad(case.v_pages, page_dim)) + args[3:]
    blocks = {"queries_per_block": 8} if backend == "tpu" else {}
    out = pallas_kernels.ragged_paged_attention(*padded, scale=SCALE, **case.scales, backend=backend,
                                                interpret=True, pages_per_compute_block=2, **blocks)
    assert_close(out, reference.ragged_paged_attention(*args, scale=SCALE, **case.scales), dtype)


@pytest.mark.parametrize("table_chunk, pages", [(3, 1), pytest.param(2, 1, marks=pytest.mark.slow),
                                                 pytest.param(2, 2, marks=pytest.mark.slow)])
def test_tpu_block_tables_streamed_in_chunks(table_chunk: int, pages: int) -> None:
    """Rows of 4 table entries fetched 2 or 3 at a time (the last chunk moved back to end at the row's end)."""
    case = decode_case(2, 64, 8, "float32")
    args = (case.q, case.k_pages, case.v_pages, case.seq_lens, case.block_tables)
    out = pallas_kernels.paged_decode_attention(*args, scale=SCALE, backend="tpu", interpret=True,
                                                pages_per_compute_block=pages, table_chunk=table_chunk)
    assert_close(out, reference.paged_decode_attention(*args, scale=SCALE), "float32")


@pytest.mark.slow
def test_tpu_ragged_block_tables_streamed_in_chunks() -> None:
    case = ragged_case(1, 64, 16, "int8", pad_tokens=3)
    args = (case.q, case.k_pages, case.v_pages, case.block_tables, case.seq_lens, case.query_start_loc,
            case.num_seqs)
    out = pallas_kernels.ragged_paged_attention(*args, scale=SCALE, **case.scales, backend="tpu", interpret=True,
                                                pages_per_compute_block=1, table_chunk=3, queries_per_block=8)
    assert_close(out, reference.ragged_paged_attention(*args, scale=SCALE, **case.scales), "int8")


def test_kv_cache_pages_of_a_padded_head_dim() -> None:
    model = ModelConfig(architecture="llama", vocab_size=16, hidden_size=160, intermediate_size=16, num_layers=2,
                        num_heads=2, num_kv_heads=2, head_dim=80, max_position_embeddings=64)
    assert kv_cache.kv_bytes_per_token(model, "bfloat16", head_dim=128) == 2 * 2 * 2 * 128 * 2
    assert kv_cache.kv_bytes_per_token(model, "int8", head_dim=128) == 2 * 2 * 2 * (128 + 4)
    assert kv_cache.kv_bytes_per_token(model, "bfloat16") == 2 * 2 * 2 * 80 * 2
    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.standard_normal((3, 2, 80)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((3, 2, 80)), jnp.float32)
    slots = jnp.asarray([16, 17, 40], jnp.int32)
    for dtype in ("float32", "int8"):
        cache = kv_cache.allocate_kv_cache(model, 4, 16, dtype, head_dim=128)
        assert cache["k"].shape == (2, 2, 4, 16, 128)
        plain = kv_cache.write_kv(kv_cache.allocate_kv_cache(model, 4, 16, dtype), jnp.int32(1), k, v, slots)
        cache = kv_cache.write_kv(cache, jnp.int32(1), k, v, slots)
        for name in cache:
            if name in ("k", "v"):
                np.testing.assert_array_equal(cache[name][..., :80], plain[name])
                assert not np.any(np.asarray(cache[name][..., 80:]))
            else:
                np.testing.assert_array_equal(cache[name], plain[name])
    with pytest.raises(ValueError, match="smaller"):
        kv_cache.allocate_kv_cache(model, 4, 16, "float32", head_dim=64)
