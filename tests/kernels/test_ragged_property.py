"""Property: for any ragged layout (empty chunks, decode tokens, chunks over page boundaries, full tables, padding),
the ragged kernels agree with the reference. Shapes are fixed, so one compilation serves every example."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import assert_close

import pallas_kernels
from pallas_kernels import reference

ROWS, WIDTH, BLOCK, TOKENS, KV_HEADS, GROUPS, HEAD_DIM = 4, 4, 16, 32, 2, 2, 64
PAGES = ROWS * WIDTH + 1


@st.composite
def layouts(draw):
    """(query lengths, context lengths, number of sequences, table seed) within the fixed shapes."""
    num_seqs = draw(st.integers(1, ROWS))
    new, context, budget = [], [], TOKENS
    for _ in range(num_seqs):
        n = draw(st.integers(0, min(12, budget)))
        budget -= n
        new.append(n)
        context.append(draw(st.integers(0, WIDTH * BLOCK - n)))
    return new, context, num_seqs, draw(st.integers(0, 2 ** 16))


@functools.cache
def _kernel(backend: str):
    return jax.jit(functools.partial(pallas_kernels.ragged_paged_attention, scale=0.125, backend=backend,
                                     pages_per_compute_block=2, queries_per_block=8, interpret=True))


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@settings(max_examples=12, deadline=None)
@given(layout=layouts())
def test_ragged_kernel_matches_reference_on_any_layout(backend: str, layout) -> None:
    new, context, num_seqs, seed = layout
    rng = np.random.default_rng(seed)
    seq_lens = np.zeros(ROWS, np.int32)
    seq_lens[:num_seqs] = np.add(new, context)
    qsl = np.full(ROWS + 1, sum(new), np.int32)
    qsl[:num_seqs + 1] = np.concatenate([[0], np.cumsum(new)])
    tables = rng.permutation(np.arange(1, PAGES)).reshape(ROWS, WIDTH).astype(np.int32)
    shape = (KV_HEADS, PAGES, BLOCK, HEAD_DIM)
    k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((TOKENS, KV_HEADS * GROUPS, HEAD_DIM)), jnp.float32)
    args = (q, k, v, jnp.asarray(tables), jnp.asarray(seq_lens), jnp.asarray(qsl), jnp.int32(num_seqs))
    assert_close(_kernel(backend)(*args), reference.ragged_paged_attention(*args, scale=0.125), "float32")
