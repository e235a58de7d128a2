"""The kernel configurations the engine is built and tested at, and their compilation for a chip.

Each `KernelConfig` is one kernel at one shape as the engine calls it (the pages of a whole cache, a traced layer
index) for one chip, whose limits size the blocks (`tpu_rules` / `gpu_rules` plans). The grid spans the supported
limits of `pallas_kernels.api`: max_model_len `MAX_MODEL_LEN` (table width = MAX_MODEL_LEN / page size),
`MAX_NUM_SEQS` sequences, GQA ratios 1, 2, 3, 4, 7, 8, head dims 64, 80, 96, 128, 256 (all but 128 and 256 stored padded on TPU),
page dtypes bfloat16 / float32 / int8, page sizes 16 (the engine default), 64 and 128.

- `production_configs(tier="fast")`: page size 16, every kernel, dtype and GQA ratio at the largest limits, 14
  configurations per chip (seconds to compile per chip).
- `production_configs(tier="full")`: the whole grid (slow: minutes per chip).

`compile_config(config, sharding)` runs the real backend compiler (Mosaic, or Triton + ptxas) for a compile-only
device (`jax.experimental.topologies`; `jaxserve.aot` makes them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import api, chips

MAX_MODEL_LEN = api.MAX_MODEL_LEN
MAX_NUM_SEQS = api.MAX_NUM_SEQS
MAX_NUM_BATCHED_TOKENS = 8192  # ragged configurations: packed tokens per step
PRODUCTION_CHIPS = ("v5e", "v6e", "h100", "a100")
TIERS = ("fast", "full")

# Models: (name, query heads, KV heads, head_dim) -- the GQA ratios and head dims the limits promise.
MODELS = (
    ("smollm2-135m", 9, 3, 64),  # the engine's default model: G 3, head_dim 64
    ("llama3-8b", 32, 8, 128),  # G 4
    ("qwen2.5-7b", 28, 4, 128),  # G 7
    ("mha-32", 32, 32, 128),  # G 1 (Llama-2-7B)
    ("mqa-8", 8, 1, 128),  # G 8 (Llama-3-70B's heads on one of 8 chips)
    ("gemma2-9b", 16, 8, 256),  # G 2, head_dim 256
    ("phi-2", 32, 32, 80),  # head_dim 80 (pages padded)
    ("phi-3-mini", 32, 32, 96),  # head_dim 96 (pages padded)
)
_MODEL = {m[0]: m for m in MODELS}
FULL_PAGE_SIZES = (16, 64, 128)

# The fast tier: (kernel, model, page dtype), all at page size 16 and the largest limits.
FAST = (
    ("decode", "llama3-8b", "bfloat16"), ("decode", "qwen2.5-7b", "bfloat16"), ("decode", "mha-32", "float32"),
    ("decode", "mqa-8", "int8"), ("decode", "gemma2-9b", "bfloat16"), ("decode", "phi-2", "bfloat16"),
    ("decode", "smollm2-135m", "int8"),
    ("ragged", "llama3-8b", "bfloat16"), ("ragged", "qwen2.5-7b", "int8"), ("ragged", "mha-32", "bfloat16"),
    ("ragged", "mqa-8", "float32"), ("ragged", "gemma2-9b", "bfloat16"), ("ragged", "phi-3-mini", "bfloat16"),
    ("ragged", "smollm2-135m", "bfloat16"),
)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One kernel at one shape for one chip, as the engine would call it."""

    kernel: str  # "decode" | "ragged"
    backend: str  # "tpu" | "gpu"
    model: str
    num_heads: int
    num_kv_heads: int
    head_dim: int  # the model's; the pages hold `page_head_dim`
    block_size: int
    page_dtype: str  # "bfloat16" | "float32" | "int8"
    rows: int = 64  # decode: sequences; ragged: packed tokens
    max_seqs: int = 64
    table_width: int = 128
    num_pages: int = 4096
    num_layers: int = 2
    chip: str | None = None  # a `chips` name; None: the backend's default chip

    @property
    def name(self) -> str:
        return (f"{self.kernel}/{self.chip or self.backend}/{self.model}/{self.page_dtype}/bs{self.block_size}/"
                f"{self.num_heads}q{self.num_kv_heads}kv/d{self.head_dim}/r{self.rows}/w{self.table_width}")

    @property
    def page_head_dim(self) -> int:
        return api.padded_head_dim(self.backend, self.head_dim)

    @property
    def chip_spec(self) -> chips.Chip:
        if self.chip is None:
            return chips.DEFAULT_TPU if self.backend == "tpu" else chips.DEFAULT_GPU
        return chips.get_chip(self.chip)

    def arg_shapes(self, sharding=None) -> list[jax.ShapeDtypeStruct]:
        """Abstract arguments: q, k, v, [k_scales, v_scales], metadata..., layer (placed with `sharding`)."""
        sds = functools.partial(jax.ShapeDtypeStruct, sharding=sharding)
        quantized = self.page_dtype == "int8"
        q_dtype = jnp.bfloat16 if quantized else jnp.dtype(self.page_dtype)
        pages = (self.num_layers, self.num_kv_heads, self.num_pages, self.block_size, self.page_head_dim)
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
        common = {"scale": self.head_dim ** -0.5, "backend": self.backend, "chip": self.chip_spec}

        def call(q, k, v, *rest):
            scales, rest = (rest[:2], rest[2:]) if quantized else ((None, None), rest)
            *meta, layer = rest
            kernel = api.paged_decode_attention if self.kernel == "decode" else api.ragged_paged_attention
            return kernel(q, k, v, *meta, k_scales=scales[0], v_scales=scales[1], layer=layer, **common)

        return jax.jit(call)

    def compile(self, sharding):
        """Compile for the device of `sharding` (e.g. a `SingleDeviceSharding` of a compile-only topology's
        device); raises whatever the compiler raises (VMEM / shared memory over the limit, ...)."""
        return compile_config(self, sharding)


def compile_config(config: KernelConfig, sharding):
    """`config` lowered and compiled for `sharding`'s device: the compiled executable."""
    with target_context(next(iter(sharding.device_set))):
        return config.function().lower(*config.arg_shapes(sharding)).compile()


@contextlib.contextmanager
def target_context(target):
    """Lowering for `target` (a device, or the `Mesh` the computation is sharded over) where it is not the local
    device (compile-only): from jax 0.12 the Triton lowering learns the GPU it compiles for from the abstract mesh
    in context (without one it asks for a local GPU and fails: "No supported GPU devices found"); older jax reads
    the target from the device itself."""
    use_abstract_mesh = getattr(jax.sharding, "use_abstract_mesh", None)
    mesh = target if isinstance(target, jax.sharding.Mesh) else jax.sharding.Mesh(np.asarray([target]), ("target",))
    if use_abstract_mesh is None or getattr(mesh.abstract_mesh, "abstract_device", None) is None:
        yield
        return
    with use_abstract_mesh(mesh.abstract_mesh):
        yield


def make_config(kernel: str, chip: str, model: str, page_dtype: str, block_size: int = 16, *,
                max_model_len: int = MAX_MODEL_LEN, max_num_seqs: int = MAX_NUM_SEQS,
                num_tokens: int = MAX_NUM_BATCHED_TOKENS) -> KernelConfig:
    """The configuration of `kernel` for `model` (a `MODELS` name) on `chip` at the given limits."""
    _, hq, hkv, d = _MODEL[model]
    backend = chips.get_chip(chip).platform
    rows = max_num_seqs if kernel == "decode" else num_tokens
    # Pages: up to 4096, fewer where the two page arrays would pass 2 GiB (the compile checks them against the
    # chip's HBM, 16 GiB on v5e); the kernels do not depend on the pool size.
    page_bytes = 2 * hkv * block_size * api.padded_head_dim(backend, d) * jnp.dtype(page_dtype).itemsize
    num_pages = max(256, min(4096, 2**30 // page_bytes))
    return KernelConfig(kernel, backend, model, hq, hkv, d, block_size, page_dtype, rows=rows,
                        max_seqs=max_num_seqs, table_width=max_model_len // block_size, num_pages=num_pages,
                        chip=chip)


def _chip_names(chip_kind: str | None) -> tuple[str, ...]:
    if chip_kind is None:
        return PRODUCTION_CHIPS
    if chip_kind in api.BACKENDS:
        return tuple(c for c in PRODUCTION_CHIPS if chips.get_chip(c).platform == chip_kind)
    return (chips.get_chip(chip_kind).name,)


@functools.cache
def production_configs(chip_kind: str | None = None, tier: str = "fast") -> tuple[KernelConfig, ...]:
    """The configurations to build and test for `chip_kind` (a chip name such as "v5e" or "h100", a backend
    "tpu" / "gpu", or None: every chip of `PRODUCTION_CHIPS`), in `tier` "fast" or "full" (module docstring)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    out = []
    for chip in _chip_names(chip_kind):
        if tier == "fast":
            out += [make_config(kernel, chip, model, dtype) for kernel, model, dtype in FAST]
            continue
        for kernel in ("decode", "ragged"):
            for model, *_ in MODELS:
                for dtype in api.PAGE_DTYPES:
                    for bs in FULL_PAGE_SIZES:
                        out.append(make_config(kernel, chip, model, dtype, bs))
    return tuple(out)
