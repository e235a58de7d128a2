"""Production kernel configurations and their lowering for hardware this machine does not have.

`jax.export` with `platforms=["tpu"]` runs the Mosaic lowering (block tiling rules, unsupported primitives) and with
`["cuda"]` the Triton lowering (power-of-two shapes, unsupported ops), all on CPU. It cannot see VMEM or shared
memory capacity, Mosaic layout legality or PTX compilation: those need the hardware.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from pallas_kernels import api

PLATFORM = {"tpu": "tpu", "gpu": "cuda"}
TRITON_CALL = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One kernel at one shape, as the engine would call it (pages of a whole cache, a traced layer index)."""

    kernel: str  # "decode" | "ragged"
    backend: str  # "tpu" | "gpu"
    model: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    page_dtype: str  # "bfloat16" | "float32" | "int8"
    rows: int = 64  # decode: sequences; ragged: packed tokens
    max_seqs: int = 64
    table_width: int = 128
    num_pages: int = 1024
    num_layers: int = 2

    @property
    def name(self) -> str:
        return (f"{self.kernel}/{self.backend}/{self.model}/{self.page_dtype}/bs{self.block_size}/"
                f"{self.num_heads}q{self.num_kv_heads}kv/d{self.head_dim}")

    def arg_shapes(self) -> list[jax.ShapeDtypeStruct]:
        """Abstract arguments: q, k, v, [k_scales, v_scales], metadata..., layer."""
        sds = jax.ShapeDtypeStruct
        quantized = self.page_dtype == "int8"
        q_dtype = jnp.bfloat16 if quantized else jnp.dtype(self.page_dtype)
        pages = (self.num_layers, self.num_kv_heads, self.num_pages, self.block_size, self.head_dim)
        args = [sds((self.rows, self.num_heads, self.head_dim), q_dtype), sds(pages, self.page_dtype),
                sds(pages, self.page_dtype)]
        if quantized:
            args += [sds(pages[:-1], jnp.float32)] * 2
        if self.kernel == "decode":
            args += [sds((self.rows,), jnp.int32), sds((self.rows, self.table_width), jnp.int32)]
        else:
            args += [sds((self.max_seqs, self.table_width), jnp.int32), sds((self.max_seqs,), jnp.int32),
                     sds((self.max_seqs + 1,), jnp.int32), sds((1,), jnp.int32)]
        return args + [sds((), jnp.int32)]

    def function(self):
        """The jitted call under test, taking `arg_shapes()`."""
        quantized = self.page_dtype == "int8"
        common = {"scale": self.head_dim ** -0.5, "backend": self.backend}

        def call(q, k, v, *rest):
            scales, rest = (rest[:2], rest[2:]) if quantized else ((None, None), rest)
            *meta, layer = rest
            kernel = api.paged_decode_attention if self.kernel == "decode" else api.ragged_paged_attention
            return kernel(q, k, v, *meta, k_scales=scales[0], v_scales=scales[1], layer=layer, **common)

        return jax.jit(call)


def export(config: KernelConfig) -> jax.export.Exported:
    """Lower `config` for its backend's platform; raises whatever the lowering raises."""
    checks = [TRITON_CALL] if config.backend == "gpu" else []
    return jax.export.export(config.function(), platforms=[PLATFORM[config.backend]],
                             disabled_checks=checks)(*config.arg_shapes())


def custom_call_name(config: KernelConfig) -> str:
    """The custom call the lowered module must contain."""
    return "tpu_custom_call" if config.backend == "tpu" else "__gpu$xla.gpu.triton"


# Models: (name, query heads, KV heads, head_dim). SmolLM2-135M is the engine's default model (GQA 3, head_dim 64).
MODELS = (("smollm2-135m", 9, 3, 64), ("llama3-8b", 32, 8, 128), ("mha-32", 32, 32, 128), ("mqa-8", 8, 1, 128))


@functools.cache
def production_configs() -> tuple[KernelConfig, ...]:
    """Every kernel configuration the engine can run in production (checked by tests and `bench/kernels.py`).

    TPU pages: bf16 / f32 at page size 16 (the engine default) and 128; int8 at 32 (the int8 sublane tile).
    GPU pages: bf16 / f32 at 16 and 64; int8 at 16.
    """
    pages = {"tpu": (("bfloat16", 16), ("bfloat16", 128), ("float32", 16), ("int8", 32)),
             "gpu": (("bfloat16", 16), ("bfloat16", 64), ("float32", 16), ("int8", 16))}
    out = []
    for kernel in ("decode", "ragged"):
        for backend in ("tpu", "gpu"):
            for model, hq, hkv, d in MODELS:
                for dtype, bs in pages[backend]:
                    if model != "llama3-8b" and (dtype, bs) not in (("bfloat16", 16), ("int8", bs)):
                        continue
                    rows = 64 if kernel == "decode" else 256
                    out.append(KernelConfig(kernel, backend, model, hq, hkv, d, bs, dtype, rows=rows,
                                            table_width=max(8, 4096 // bs)))
    return tuple(out)
