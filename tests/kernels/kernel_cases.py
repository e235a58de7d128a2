"""Random paged-attention inputs for the kernel tests: pages, block tables and ragged lengths that hit the edges."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

NUM_KV_HEADS = 2
TABLE_WIDTH = 4  # pages per sequence, so a "full" sequence has 4 * block_size tokens

TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2, "int8": 2e-5}


@dataclasses.dataclass
class Case:
    q: jax.Array
    k_pages: jax.Array
    v_pages: jax.Array
    k_scales: jax.Array | None
    v_scales: jax.Array | None
    block_tables: jax.Array
    seq_lens: jax.Array
    query_start_loc: jax.Array | None = None
    num_seqs: int = 0

    @property
    def scales(self) -> dict:
        return {"k_scales": self.k_scales, "v_scales": self.v_scales}


def _pages(rng, num_pages: int, block_size: int, head_dim: int, dtype: str):
    shape = (NUM_KV_HEADS, num_pages, block_size, head_dim)
    if dtype == "int8":
        pages = [jnp.asarray(rng.integers(-127, 128, shape), jnp.int8) for _ in range(2)]
        scales = [jnp.asarray(rng.uniform(0.002, 0.02, shape[:-1]), jnp.float32) for _ in range(2)]
        return pages, scales
    return [jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(2)], [None, None]


def _tables(rng, num_seqs: int, num_pages: int) -> jax.Array:
    # Distinct pages in a shuffled order (page 0 is the engine's padding page and never handed out).
    return jnp.asarray(rng.permutation(np.arange(1, num_pages))[:num_seqs * TABLE_WIDTH].reshape(num_seqs, -1),
                       jnp.int32)


def q_dtype(dtype: str) -> str:
    return "float32" if dtype == "int8" else dtype


def decode_case(groups: int, head_dim: int, block_size: int, dtype: str, seed: int = 0) -> Case:
    """Lengths 1, one page, one page + 1, two pages, full table, and 0 (a padding row)."""
    rng = np.random.default_rng(seed)
    lengths = [1, block_size, block_size + 1, 2 * block_size, TABLE_WIDTH * block_size, 0]
    num_pages = len(lengths) * TABLE_WIDTH + 3
    (k, v), (ks, vs) = _pages(rng, num_pages, block_size, head_dim, dtype)
    q = jnp.asarray(rng.standard_normal((len(lengths), NUM_KV_HEADS * groups, head_dim)), q_dtype(dtype))
    return Case(q, k, v, ks, vs, _tables(rng, len(lengths), num_pages), jnp.asarray(lengths, jnp.int32))


def ragged_case(groups: int, head_dim: int, block_size: int, dtype: str, seed: int = 0,
                pad_tokens: int = 5) -> Case:
    """Sequences as (cached tokens, new tokens): a first token, a decode onto a page boundary, exactly one page,
    a chunk continuing past two boundaries, the last tokens of a full table, a decode; then padding tokens and an
    unused table row."""
    rng = np.random.default_rng(seed)
    bs = block_size
    chunks = [(0, 1), (bs - 1, 1), (0, bs), (bs - 3, bs + 6), (TABLE_WIDTH * bs - 5, 5), (2 * bs, 1)]
    num_rows = len(chunks) + 1
    num_pages = num_rows * TABLE_WIDTH + 3
    (k, v), (ks, vs) = _pages(rng, num_pages, bs, head_dim, dtype)
    new = [n for _, n in chunks]
    seq_lens = [c + n for c, n in chunks] + [0]
    qsl = np.concatenate([[0], np.cumsum(new), [sum(new)]])
    q = jnp.asarray(rng.standard_normal((sum(new) + pad_tokens, NUM_KV_HEADS * groups, head_dim)), q_dtype(dtype))
    return Case(q, k, v, ks, vs, _tables(rng, num_rows, num_pages), jnp.asarray(seq_lens, jnp.int32),
                jnp.asarray(qsl, jnp.int32), len(chunks))


def assert_close(out: jax.Array, ref: jax.Array, dtype: str) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])
