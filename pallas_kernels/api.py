"""The public kernel entry points: one call per kernel, dispatching to the TPU (Mosaic) or GPU (Triton) version.

`backend=None` follows the default JAX platform (GPU -> "gpu", anything else -> "tpu"; on CPU the TPU kernels run
only with `interpret`, and the GPU ones can be chosen explicitly for interpret-mode tests). `chip=None` sizes the
blocks for the chip found (`chips.detect_chip`), or the backend's smallest listed chip when none is.

Pages may be stored with a larger head dim than the queries (`padded_head_dim`: 80 -> 128, ...): the API pads q
with zeros to the pages' head dim and slices the output back. The padded columns of K add nothing to the scores and
those of V are zero, so the result is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import (
    gpu_decode,
    gpu_ragged,
    gpu_rules,
    tpu_decode,
    tpu_ragged,
    tpu_rules,
)
from pallas_kernels.chips import Chip, GpuChip, TpuChip, get_chip

BACKENDS = ("tpu", "gpu")

# What the kernels are built and tested for (`pallas_kernels.production`); `check_config` refuses more.
MAX_MODEL_LEN = 131072
MAX_NUM_SEQS = 256
MAX_HEAD_DIM = 256
PAGE_SIZES = (16, 32, 64, 128)
PAGE_DTYPES = ("bfloat16", "float32", "int8")


def kernel_backend(backend: str | None = None) -> str:
    """"tpu" or "gpu": `backend` itself, or the one matching the default JAX platform."""
    if backend is None:
        backend = "gpu" if jax.default_backend() == "gpu" else "tpu"
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def padded_head_dim(backend: str | None, head_dim: int) -> int:
    """The head dim `backend`'s kernels want the pages stored with for a model of `head_dim`.

    TPU: the next multiple of 128 lanes (narrower pages are padded in HBM anyway, or copied into the kernel's layout
    before every call: `tpu_rules`). GPU: the next power of two >= 16 (Triton shapes, `tl.dot`).
    """
    if head_dim < 1:
        raise ValueError(f"head_dim must be positive, got {head_dim}")
    if kernel_backend(backend) == "tpu":
        return tpu_rules.padded_head_dim(head_dim)
    return gpu_rules.padded_head_dim(head_dim)


def _chip(backend: str, chip: Chip | str | None) -> Chip | None:
    if isinstance(chip, str):
        chip = get_chip(chip)
    if chip is not None and chip.platform != backend:
        raise ValueError(f"chip {chip.name!r} is not a {backend} chip")
    return chip


def check_config(backend: str | None, block_size: int, head_dim: int, page_dtype,
                 pages_per_compute_block: int = 1, *, max_model_len: int | None = None,
                 max_num_seqs: int | None = None, chip: Chip | str | None = None) -> None:
    """Raise ValueError (saying what to change) unless `backend`'s kernels support this deployment.

    `head_dim` is the model's: the pages are checked at `padded_head_dim(backend, head_dim)`. Beyond the built
    and tested limits (`MAX_MODEL_LEN`, `MAX_NUM_SEQS`, `MAX_HEAD_DIM`, `PAGE_SIZES`, `PAGE_DTYPES`) it refuses,
    naming the limit.
    """
    backend = kernel_backend(backend)
    _chip(backend, chip)
    dtype_name = jnp.dtype(page_dtype).name
    if dtype_name not in PAGE_DTYPES:
        raise ValueError(f"Pallas kernels support page dtypes {PAGE_DTYPES}, got {dtype_name}")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"Pallas kernels support head_dim up to MAX_HEAD_DIM={MAX_HEAD_DIM}, got {head_dim}")
    # The hardware rules first (they say what the kernels cannot do), then what is built and tested.
    padded = padded_head_dim(backend, head_dim)
    if backend == "tpu":
        tpu_rules.check_tpu_pages(block_size, padded, page_dtype, pages_per_compute_block)
    else:
        gpu_rules.check_gpu_pages(block_size, padded, pages_per_compute_block)
    if block_size not in PAGE_SIZES:
        raise ValueError(f"Pallas kernels are built and tested for page sizes (block_size) {PAGE_SIZES}, "
                         f"got {block_size}")
    if max_model_len is not None and max_model_len > MAX_MODEL_LEN:
        raise ValueError(f"Pallas kernels are built and tested up to max_model_len MAX_MODEL_LEN={MAX_MODEL_LEN}, "
                         f"got {max_model_len}")
    if max_num_seqs is not None and max_num_seqs > MAX_NUM_SEQS:
        raise ValueError(f"Pallas kernels are built and tested up to max_num_seqs MAX_NUM_SEQS={MAX_NUM_SEQS}, "
                         f"got {max_num_seqs}")


def _pad_q(q: jax.Array, k_pages: jax.Array) -> tuple[jax.Array, int]:
    """q padded with zeros to the pages' head dim, and q's own head dim."""
    head_dim, page_dim = q.shape[-1], k_pages.shape[-1]
    if page_dim < head_dim:
        raise ValueError(f"pages have head_dim {page_dim}, smaller than the queries' {head_dim}")
    if page_dim > head_dim:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, page_dim - head_dim)))
    return q, head_dim


def table_width_multiple(backend: str | None) -> int:
    """What the block tables' width should be a multiple of: on TPU a row is copied into SMEM by DMA in chunks of
    `tpu_rules.TABLE_CHUNK` entries (512 bytes, the DMA granule); the GPU kernels take any width. Callers that
    allocate tables this wide spare the kernels a padded copy of the table per call (`_aligned_tables`)."""
    return tpu_rules.TABLE_CHUNK if kernel_backend(backend) == "tpu" else 1


def _aligned_tables(backend: str, block_tables: jax.Array) -> jax.Array:
    """`block_tables` widened with zero (padding-page) columns to `table_width_multiple(backend)`."""
    multiple = table_width_multiple(backend)
    extra = -block_tables.shape[1] % multiple
    return block_tables if extra == 0 else jnp.pad(block_tables, ((0, 0), (0, extra)))


def paged_decode_attention(q, k_pages, v_pages, lengths, block_tables, *, scale, k_scales=None, v_scales=None,
                           pages_per_compute_block=None, backend=None, chip=None, interpret=False, **options):
    """Paged decode attention: `q [B, Hq, D]`, pages `[Hkv, NB, BS, Dp]` (Dp >= D), `lengths [B]`,
    `block_tables [B, M]`.

    Returns `[B, Hq, D]`. int8 pages take `k_scales`/`v_scales` `[Hkv, NB, BS]`. `options` go to the backend's
    kernel (`layer`, `num_splits`, ...). See `tpu_decode` / `gpu_decode`; block sizes not given are planned for
    `chip` (`tpu_rules.plan_decode` / `gpu_rules.plan_decode`).
    """
    backend = kernel_backend(backend)
    module = tpu_decode if backend == "tpu" else gpu_decode
    if pages_per_compute_block is not None:
        options["pages_per_compute_block"] = pages_per_compute_block
    q, head_dim = _pad_q(q, k_pages)
    block_tables = _aligned_tables(backend, block_tables)
    out = module.paged_decode_attention(q, k_pages, v_pages, lengths, block_tables, scale=scale, k_scales=k_scales,
                                        v_scales=v_scales, chip=_chip(backend, chip), interpret=interpret, **options)
    return out[..., :head_dim]


def ragged_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs, *, scale,
                           k_scales=None, v_scales=None, pages_per_compute_block=None, backend=None, chip=None,
                           interpret=False, **options):
    """Causal attention of packed chunks `q [T, Hq, D]` over their sequences' pages (head dim Dp >= D) ->
    `[T, Hq, D]`.

    Query token i of sequence s is at position `seq_lens[s] - query_len[s] + i` and sees positions <= its own;
    see `tpu_ragged` / `gpu_ragged` (block sizes: `tpu_rules.plan_ragged` / `gpu_rules.plan_ragged`).
    """
    backend = kernel_backend(backend)
    module = tpu_ragged if backend == "tpu" else gpu_ragged
    if pages_per_compute_block is not None:
        options["pages_per_compute_block"] = pages_per_compute_block
    q, head_dim = _pad_q(q, k_pages)
    block_tables = _aligned_tables(backend, block_tables)
    out = module.ragged_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs,
                                        scale=scale, k_scales=k_scales, v_scales=v_scales, chip=_chip(backend, chip),
                                        interpret=interpret, **options)
    return out[..., :head_dim]


__all__ = ["BACKENDS", "MAX_HEAD_DIM", "MAX_MODEL_LEN", "MAX_NUM_SEQS", "PAGE_DTYPES", "PAGE_SIZES", "GpuChip",
           "TpuChip", "check_config", "kernel_backend", "padded_head_dim", "paged_decode_attention",
           "ragged_paged_attention", "table_width_multiple"]
