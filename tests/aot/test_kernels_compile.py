"""The Pallas kernels through the real compilers: every fast-tier production configuration for v5e, v6e, H100
and A100, the padded head dims, and negative cases proving each compiler's limit bites (with its own message).
The whole grid (`production_configs(tier="full")`) is `slow` and `bench/aot_compile.py`'s."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
import aot_helpers
from aot_helpers import sharding

import pallas_kernels
from pallas_kernels import gpu_rules, production, tpu_rules
from pallas_kernels.chips import get_chip

CHIP_TARGETS = {"v5e": "tpu-v5e", "v6e": "tpu-v6e", "h100": "h100", "a100": "a100-80gb"}


def _compile(config: production.KernelConfig):
    return config.compile(sharding(CHIP_TARGETS[config.chip]))


@pytest.mark.parametrize("config", production.production_configs(tier="fast"), ids=lambda c: c.name)
def test_fast_tier_compiles(config: production.KernelConfig) -> None:
    assert _compile(config).memory_analysis() is not None


@pytest.mark.parametrize("chip", list(CHIP_TARGETS))
@pytest.mark.parametrize("kernel, model, dtype", [("decode", "smollm2-135m", "bfloat16"), ("decode", "mqa-8", "int8"),
                                                  ("ragged", "llama3-8b", "float32"),
                                                  ("ragged", "qwen2.5-7b", "int8")])
def test_pages_are_read_in_place(chip: str, kernel: str, model: str, dtype: str) -> None:
    """The compiled kernel's temporaries do not grow with the page pool: nothing copies or relayouts the pages
    (unpadded 64-wide TPU pages did: a copy of the whole pool per call, found by this check)."""
    small = production.make_config(kernel, chip, model, dtype)
    big = dataclasses.replace(small, num_pages=small.num_pages * 2)
    temps = [_compile(c).memory_analysis().temp_size_in_bytes for c in (small, big)]
    page_bytes = 2 * small.num_layers * small.num_kv_heads * small.num_pages * small.block_size \
        * small.page_head_dim * jnp.dtype(dtype).itemsize
    assert temps[1] - temps[0] < page_bytes / 16, temps


@pytest.mark.slow
@pytest.mark.parametrize("config", production.production_configs(tier="full"), ids=lambda c: c.name)
def test_full_grid_compiles(config: production.KernelConfig) -> None:
    _compile(config)


def test_fast_tier_holds_the_largest_tables() -> None:
    """131,072-token contexts in 16-token pages for 256 sequences: 8 MiB of block table, 8x the TPU's SMEM, which
    the kernels therefore stream from HBM (the configurations above compile with it)."""
    widest = max(production.production_configs("v5e"), key=lambda c: c.table_width * c.max_seqs)
    assert widest.table_width * widest.max_seqs * 4 >= 8 * get_chip("v5e").smem_bytes


@pytest.mark.parametrize("chip", ["v5e", "h100"])
@pytest.mark.parametrize("head_dim", [16, 32, 80, 96])
@pytest.mark.parametrize("kernel", ["decode", "ragged"])
def test_padded_head_dims_compile(chip: str, head_dim: int, kernel: str) -> None:
    backend = get_chip(chip).platform
    config = production.KernelConfig(kernel, backend, f"d{head_dim}", 8, 2, head_dim, 16, "bfloat16", rows=32,
                                     max_seqs=32, table_width=256, num_pages=512, chip=chip)
    assert config.page_head_dim == pallas_kernels.padded_head_dim(backend, head_dim) >= head_dim
    _compile(config)


def _decode_call(chip: str, block_size: int = 64, **options):
    """Llama-3-8B decode over bfloat16 pages with explicit block options (bypassing the sizing rules)."""
    config = production.make_config("decode", chip, "llama3-8b", "bfloat16", block_size, max_num_seqs=32)

    def call(q, k, v, lengths, tables, layer):
        return pallas_kernels.paged_decode_attention(q, k, v, lengths, tables, scale=0.1, layer=layer,
                                                     backend=config.backend, chip=get_chip(chip), **options)

    with production.target_context(aot_helpers.device(CHIP_TARGETS[chip])):
        return jax.jit(call).lower(*config.arg_shapes(sharding(CHIP_TARGETS[chip])))


def test_vmem_overflow_is_caught_on_v5e_and_fits_v6e() -> None:
    """128 pages of 128 tokens per step: 4 MiB of K or V per buffer slot, 16 MiB for K and V double-buffered:
    `CompileTimeScopedVmemOom` on v5e (16 MiB of scoped VMEM), compiled within v6e's 32 MiB. The sizing rule,
    which keeps its estimate under half the scoped limit, never plans this."""
    estimate = tpu_rules.vmem_estimate(pages=128, block_size=128, head_dim=128, page_dtype=jnp.bfloat16,
                                       q_dtype=jnp.bfloat16, rows=4)
    assert estimate > get_chip("v5e").scoped_vmem_bytes  # the estimate is conservative: v6e takes it (below)
    with pytest.raises(Exception, match="CompileTimeScopedVmemOom"):
        _decode_call("v5e", block_size=128, pages_per_compute_block=128).compile()
    _decode_call("v6e", block_size=128, pages_per_compute_block=128).compile()


def test_shared_memory_overflow_is_caught_on_h100() -> None:
    """Eight 64-token pages per step (the old fixed default): the K and V blocks alone are 256 KiB, over the
    H100's 232,448 bytes per block. Planned by the rule, the same kernel compiles."""
    with pytest.raises(Exception, match="Shared memory size limit exceeded"):
        _decode_call("h100", pages_per_compute_block=8, num_stages=2).compile()
    _decode_call("h100").compile()
    plan = gpu_rules.plan_decode(get_chip("h100"), block_size=64, head_dim=128, page_dtype=jnp.bfloat16,
                                 q_dtype=jnp.bfloat16, groups=4, table_width=2048, batch=32, num_kv_heads=8)
    assert plan.pages_per_compute_block < 8


def test_tpu_compiler_rejects_a_tiling_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Query blocks of 4 tokens x 3 heads = 12 rows break the 8-row sublane tiling. The kernels' own check refuses
    first; with it switched off, the TPU compiler refuses too: the check stands in front of a real rule."""
    config = production.KernelConfig("ragged", "tpu", "smollm2-135m", 9, 3, 64, 16, "bfloat16", rows=64,
                                     max_seqs=8, table_width=128, num_pages=256, chip="v5e")

    def call(q, k, v, tables, seq_lens, qsl, num_seqs, layer):
        return pallas_kernels.ragged_paged_attention(q, k, v, tables, seq_lens, qsl, num_seqs, scale=0.1,
                                                     layer=layer, backend="tpu", chip=get_chip("v5e"),
                                                     queries_per_block=4)

    def lower():
        with production.target_context(aot_helpers.device("tpu-v5e")):
            return jax.jit(call).lower(*config.arg_shapes(sharding("tpu-v5e"))).compile()

    with pytest.raises(ValueError, match="multiple of 8"):
        lower()
    monkeypatch.setattr(tpu_rules, "check_tpu_query_block", lambda *a: None)
    with pytest.raises(Exception, match="divisible by 8|8 and 128|tiling|layout"):
        lower()


def test_gpu_compiler_rejects_a_non_power_of_two_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 24-token page makes the Triton tensors non-power-of-two: the kernels' check refuses, and with it off the
    GPU compiler does."""
    config = production.KernelConfig("decode", "gpu", "llama3-8b", 32, 8, 128, 24, "bfloat16", rows=8, max_seqs=8,
                                     table_width=64, num_pages=128, chip="h100")
    with pytest.raises(ValueError, match="power-of-two page size"):
        _compile(config)
    monkeypatch.setattr(gpu_rules, "check_gpu_pages", lambda *a, **k: None)
    with pytest.raises(Exception, match="power of 2"):
        _compile(config)
