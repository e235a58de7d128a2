"""Lowering without hardware: every production configuration exports for tpu and cuda; the checks bite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels import gpu_rules, lowering, tpu_ragged, tpu_rules

CONFIGS = lowering.production_configs()


def test_production_configs_cover_both_kernels_backends_and_dtypes() -> None:
    seen = {(c.kernel, c.backend, c.page_dtype) for c in CONFIGS}
    assert seen == {(k, b, d) for k in ("decode", "ragged") for b in ("tpu", "gpu")
                    for d in ("bfloat16", "float32", "int8")}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_production_config_exports(config: lowering.KernelConfig) -> None:
    exported = lowering.export(config)
    assert exported.platforms == (lowering.PLATFORM[config.backend],)
    assert lowering.custom_call_name(config) in exported.mlir_module()


def test_tpu_lowering_rejects_a_tiling_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Query blocks of 4 tokens x 3 heads = 12 rows break the 8-row sublane tiling. Our check refuses first; with
    it switched off, Mosaic's lowering must still refuse, proving the export test would catch such a kernel."""
    config = lowering.KernelConfig("ragged", "tpu", "smollm2-135m", 9, 3, 64, 16, "bfloat16")

    def call(q, k, v, tables, seq_lens, qsl, num_seqs, layer):
        return tpu_ragged.ragged_paged_attention(q, k, v, tables, seq_lens, qsl, num_seqs, scale=0.1, layer=layer,
                                                 queries_per_block=4)

    export = jax.export.export(jax.jit(call), platforms=["tpu"])
    with pytest.raises(ValueError, match="multiple of 8"):
        export(*config.arg_shapes())
    monkeypatch.setattr(tpu_rules, "check_tpu_query_block", lambda *a: None)
    with pytest.raises(Exception, match="divisible by 8 and 128"):
        export(*config.arg_shapes())


def test_tpu_lowering_rejects_a_bad_block_in_a_plain_kernel() -> None:
    """The same rule on a minimal kernel: an (8, 100) block of a (16, 200) array does not lower for TPU."""
    def copy(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    def f(x):
        spec = pl.BlockSpec((8, 100), lambda i, j: (i, j))
        return pl.pallas_call(copy, grid=(2, 2), in_specs=[spec], out_specs=spec,
                              out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

    with pytest.raises(Exception, match="divisible by 8 and 128"):
        jax.export.export(jax.jit(f), platforms=["tpu"])(jax.ShapeDtypeStruct((16, 200), jnp.float32))


def test_gpu_lowering_rejects_a_non_power_of_two_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 24-token page makes the Triton tensors non-power-of-two: with our check off, the lowering refuses."""
    config = lowering.KernelConfig("decode", "gpu", "llama3-8b", 32, 8, 128, 24, "bfloat16")
    with pytest.raises(ValueError, match="power-of-two page size"):
        lowering.export(config)
    monkeypatch.setattr(gpu_rules, "check_gpu_pages", lambda *a: None)
    with pytest.raises(Exception, match="power of 2"):
        lowering.export(config)


def test_gpu_lowering_rejects_a_non_power_of_two_block_in_a_plain_kernel() -> None:
    def copy(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    def f(x):
        spec = pl.BlockSpec((24,), lambda i: (i,))
        return pl.pallas_call(copy, grid=(2,), in_specs=[spec], out_specs=spec, out_shape=x,
                              compiler_params=pltriton.CompilerParams(num_warps=4))(x)

    with pytest.raises(Exception, match="power of 2"):
        jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=[lowering.TRITON_CALL])(
            jax.ShapeDtypeStruct((48,), jnp.float32))
