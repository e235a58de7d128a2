"""The block-size rules (`tpu_rules.plan_*`, `gpu_rules.plan_*`) against the chips' limits, the head-dim padding
rule, and the deployment limits `check_config` enforces."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import pallas_kernels
from pallas_kernels import chips, gpu_rules, production, tpu_rules

FULL = production.production_configs(tier="full")


def _plan(config: production.KernelConfig):
    chip = config.chip_spec
    q_dtype = jnp.bfloat16 if config.page_dtype == "int8" else jnp.dtype(config.page_dtype)
    shape = dict(block_size=config.block_size, head_dim=config.page_head_dim, page_dtype=jnp.dtype(config.page_dtype),
                 q_dtype=q_dtype, groups=config.num_heads // config.num_kv_heads, table_width=config.table_width)
    rules = tpu_rules if config.backend == "tpu" else gpu_rules
    if config.kernel == "ragged":
        return rules.plan_ragged(chip, num_tokens=config.rows, **shape)
    if config.backend == "gpu":
        shape.update(num_kv_heads=config.num_kv_heads, batch=config.rows)
    return rules.plan_decode(chip, **shape)


def test_h100_llama3_8b_plans_fit_shared_memory() -> None:
    """The two configurations that asked for 282,624 and 278,528 bytes at the old fixed block sizes."""
    h100 = chips.get_chip("h100")
    for kernel in ("decode", "ragged"):
        plan = _plan(production.make_config(kernel, "h100", "llama3-8b", "bfloat16", 64))
        assert plan.smem_bytes <= plan.smem_budget <= 0.8 * h100.shared_memory_per_block_optin
        assert plan.pages_per_compute_block * 64 <= 128


@pytest.mark.parametrize("chip", ["h100", "a100"])
def test_gpu_plans_fit_shared_memory(chip: str) -> None:
    limit = chips.get_chip(chip).shared_memory_per_block_optin
    for config in [c for c in FULL if c.chip == chip]:
        plan = _plan(config)
        assert plan.smem_bytes <= limit, config.name
        assert gpu_rules.is_power_of_two(plan.pages_per_compute_block)


def test_gpu_smem_estimate_covers_what_the_compiler_asked_for() -> None:
    """Figures read off the compiler (`requested N`, sm_90, jax 0.10.2): (kernel, dtype, D, keys, stages, N)."""
    measured = [("decode", "bfloat16", 128, 512, 2, 282624), ("decode", "bfloat16", 128, 128, 2, 73728),
                ("decode", "float32", 256, 128, 2, 286720), ("decode", "int8", 256, 128, 2, 78848),
                ("ragged", "bfloat16", 128, 128, 2, 147456), ("ragged", "float32", 256, 128, 2, 458752),
                ("ragged", "int8", 256, 128, 2, 230400), ("ragged", "bfloat16", 256, 128, 1, 163840)]
    for kernel, dtype, d, keys, stages, asked in measured:
        q_dtype = jnp.bfloat16 if dtype == "int8" else dtype
        rows = 16 if kernel == "decode" else 64
        est = gpu_rules.smem_estimate(kernel, keys=keys, head_dim=d, page_dtype=dtype, q_dtype=q_dtype, rows=rows,
                                      num_stages=stages)
        assert asked <= est <= 1.6 * asked + 8192, (kernel, dtype, d, keys, stages, est)


def test_gpu_decode_splits_fill_the_sms() -> None:
    h100 = chips.get_chip("h100")
    small = gpu_rules.plan_decode(h100, block_size=16, head_dim=128, page_dtype=jnp.bfloat16, q_dtype=jnp.bfloat16,
                                  groups=4, num_kv_heads=8, batch=1, table_width=8192)
    assert 1 * 8 * small.num_splits >= 2 * h100.num_sms or small.num_splits == gpu_rules.MAX_SPLITS
    big = gpu_rules.plan_decode(h100, block_size=16, head_dim=128, page_dtype=jnp.bfloat16, q_dtype=jnp.bfloat16,
                                groups=4, num_kv_heads=8, batch=256, table_width=8192)
    assert big.num_splits == 1


@pytest.mark.parametrize("chip", list(chips.TPU_CHIPS))
def test_tpu_plans_fit_scoped_vmem_on_every_listed_chip(chip: str) -> None:
    tpu = chips.get_chip(chip)
    for config in [c for c in FULL if c.chip == "v5e"]:
        plan = _plan(production.KernelConfig(**{**config.__dict__, "chip": chip}))
        assert plan.vmem_bytes <= tpu.scoped_vmem_bytes // 2, config.name
        assert plan.table_chunk * 4 * 2 <= 4096  # two SMEM chunks of the block table, whatever its width
        if plan.queries_per_block is not None:
            tpu_rules.check_tpu_query_block(plan.queries_per_block, config.num_heads // config.num_kv_heads)


def test_tpu_ragged_query_blocks_follow_the_mxu() -> None:
    shape = dict(block_size=16, head_dim=128, page_dtype=jnp.bfloat16, q_dtype=jnp.bfloat16, groups=1,
                 table_width=8192, num_tokens=8192)
    assert tpu_rules.plan_ragged(chips.get_chip("v5e"), **shape).queries_per_block == 128
    assert tpu_rules.plan_ragged(chips.get_chip("v6e"), **shape).queries_per_block == 256
    assert tpu_rules.plan_ragged(chips.get_chip("v6e"), **{**shape, "num_tokens": 5}).queries_per_block == 8


def test_padded_head_dims() -> None:
    tpu = {d: pallas_kernels.padded_head_dim("tpu", d) for d in (16, 32, 64, 80, 96, 112, 128, 192, 256)}
    assert tpu == {16: 128, 32: 128, 64: 128, 80: 128, 96: 128, 112: 128, 128: 128, 192: 256, 256: 256}
    gpu = {d: pallas_kernels.padded_head_dim("gpu", d) for d in (8, 16, 32, 48, 64, 80, 96, 112, 128, 256)}
    assert gpu == {8: 16, 16: 16, 32: 32, 48: 64, 64: 64, 80: 128, 96: 128, 112: 128, 128: 128, 256: 256}


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_check_config_accepts_the_grid_and_refuses_past_the_limits(backend: str) -> None:
    for d in (16, 32, 64, 80, 96, 112, 128, 256):
        for dtype in ("bfloat16", "float32", "int8"):
            pallas_kernels.check_config(backend, 16, d, jnp.dtype(dtype), max_model_len=131072, max_num_seqs=256)
    with pytest.raises(ValueError, match="MAX_MODEL_LEN=131072"):
        pallas_kernels.check_config(backend, 16, 128, jnp.bfloat16, max_model_len=131073)
    with pytest.raises(ValueError, match="MAX_NUM_SEQS=256"):
        pallas_kernels.check_config(backend, 16, 128, jnp.bfloat16, max_num_seqs=257)
    with pytest.raises(ValueError, match="MAX_HEAD_DIM=256"):
        pallas_kernels.check_config(backend, 16, 512, jnp.bfloat16)
    with pytest.raises(ValueError, match="page sizes"):
        pallas_kernels.check_config(backend, 256, 128, jnp.bfloat16)
    with pytest.raises(ValueError, match="page dtypes"):
        pallas_kernels.check_config(backend, 16, 128, jnp.float16)
    other = "h100" if backend == "tpu" else "v5e"
    with pytest.raises(ValueError, match="is not a"):
        pallas_kernels.check_config(backend, 16, 128, jnp.bfloat16, chip=other)
