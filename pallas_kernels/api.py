"""The public kernel entry points: one call per kernel, dispatching to the TPU (Mosaic) or GPU (Triton) version.

`backend=None` follows the default JAX platform (GPU -> "gpu", anything else -> "tpu"; on CPU the TPU kernels run
only with `interpret`, and the GPU ones can be chosen explicitly for interpret-mode tests).
"""

from __future__ import annotations

import jax

from pallas_kernels import (
    gpu_decode,
    gpu_ragged,
    gpu_rules,
    tpu_decode,
    tpu_ragged,
    tpu_rules,
)

BACKENDS = ("tpu", "gpu")


def kernel_backend(backend: str | None = None) -> str:
    """"tpu" or "gpu": `backend` itself, or the one matching the default JAX platform."""
    if backend is None:
        backend = "gpu" if jax.default_backend() == "gpu" else "tpu"
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_config(backend: str | None, block_size: int, head_dim: int, page_dtype,
                 pages_per_compute_block: int = 4) -> None:
    """Raise ValueError (saying what to change) unless `backend`'s kernels support this page geometry."""
    if kernel_backend(backend) == "tpu":
        tpu_rules.check_tpu_pages(block_size, head_dim, page_dtype, pages_per_compute_block)
    else:
        gpu_rules.check_gpu_pages(block_size, head_dim, pages_per_compute_block)


def paged_decode_attention(q, k_pages, v_pages, lengths, block_tables, *, scale, k_scales=None, v_scales=None,
                           pages_per_compute_block=None, backend=None, interpret=False, **options):
    """Paged decode attention: `q [B, Hq, D]`, pages `[Hkv, NB, BS, D]`, `lengths [B]`, `block_tables [B, M]`.

    Returns `[B, Hq, D]`. int8 pages take `k_scales`/`v_scales` `[Hkv, NB, BS]`. `options` go to the backend's
    kernel (`layer`, `num_splits`, ...). See `tpu_decode` / `gpu_decode`.
    """
    module = tpu_decode if kernel_backend(backend) == "tpu" else gpu_decode
    if pages_per_compute_block is not None:
        options["pages_per_compute_block"] = pages_per_compute_block
    return module.paged_decode_attention(q, k_pages, v_pages, lengths, block_tables, scale=scale, k_scales=k_scales,
                                         v_scales=v_scales, interpret=interpret, **options)


def ragged_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs, *, scale,
                           k_scales=None, v_scales=None, pages_per_compute_block=None, backend=None, interpret=False,
                           **options):
    """Causal attention of packed chunks `q [T, Hq, D]` over their sequences' pages -> `[T, Hq, D]`.

    Query token i of sequence s is at position `seq_lens[s] - query_len[s] + i` and sees positions <= its own;
    see `tpu_ragged` / `gpu_ragged`.
    """
    module = tpu_ragged if kernel_backend(backend) == "tpu" else gpu_ragged
    if pages_per_compute_block is not None:
        options["pages_per_compute_block"] = pages_per_compute_block
    return module.ragged_paged_attention(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs,
                                         scale=scale, k_scales=k_scales, v_scales=v_scales, interpret=interpret,
                                         **options)
