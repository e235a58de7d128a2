"""The production grid covers the limits the kernels promise. Compiling it, and the negative cases that prove each
compiler's limits bite, is tests/aot's job with the real TPU and GPU compilers (`jax.export` lowering checks were
dropped: the compilers catch everything they caught, and export for `cuda` needs a GPU from jax 0.12 on)."""

from __future__ import annotations

import pytest

from pallas_kernels import api, production


@pytest.mark.parametrize("tier", production.TIERS)
def test_production_tiers_cover_the_limits(tier: str) -> None:
    configs = production.production_configs(tier=tier)
    assert {c.chip for c in configs} == set(production.PRODUCTION_CHIPS)
    for chip in production.PRODUCTION_CHIPS:
        mine = [c for c in configs if c.chip == chip]
        assert {(c.kernel, c.page_dtype) for c in mine} == {(k, d) for k in ("decode", "ragged")
                                                           for d in api.PAGE_DTYPES}
        assert {c.num_heads // c.num_kv_heads for c in mine} == {1, 2, 3, 4, 7, 8}
        assert {c.head_dim for c in mine} == {64, 80, 96, 128, 256}
        assert all(c.table_width * c.block_size == api.MAX_MODEL_LEN for c in mine)
        assert all(c.max_seqs == api.MAX_NUM_SEQS for c in mine)
        assert {c.rows for c in mine if c.kernel == "decode"} == {api.MAX_NUM_SEQS}
    if tier == "fast":
        assert all(c.block_size == 16 for c in configs)
        assert all(10 <= len(production.production_configs(chip)) <= 16 for chip in production.PRODUCTION_CHIPS)
    else:
        assert {c.block_size for c in configs} == {16, 64, 128}
