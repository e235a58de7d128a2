"""Chooses the attention implementation for the platform and configuration.

`attention_backend`: "xla" is the plain-jnp path (`attention/xla.py`); "pallas" runs the kernels of
`pallas_kernels` (Mosaic on TPU, Triton on GPU, interpret mode on CPU, where it is slow and meant for tests);
"cpu" runs the native kernel of `cpu_kernels` (XLA:CPU only; `attention/cpu.py`); "auto" is pallas on TPU and GPU,
and cpu on CPU when the native kernels build here (else xla). All paths share one call signature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxserve.attention.xla import paged_attention as xla_paged_attention
from jaxserve.config import ModelConfig

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "xla", "pallas", "cpu")
KERNEL_BACKEND = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "cpu": "tpu"}


def resolve_attention_backend(backend: str = "auto", *, model: ModelConfig | None = None,
                              block_size: int | None = None, kv_dtype: str | None = None,
                              platform: str | None = None, max_model_len: int | None = None,
                              max_num_seqs: int | None = None, chip=None) -> str:
    """Which path `get_attention_fn` takes for these arguments: "xla", "pallas" or "cpu".

    With `model`, `block_size` and `kv_dtype` given, the kernels' constraints (`pallas_kernels.check_config`, at
    the model's head dim padded for the kernels, and the supported `max_model_len` / `max_num_seqs`) are checked
    here, at start-up: an explicit "pallas" raises ValueError saying what to change; "auto" logs the reason and
    takes xla. Models with a sliding window take xla (the kernels do not implement it), logged. An explicit
    "cpu" that cannot run raises.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {backend!r}")
    platform = platform or jax.default_backend()
    if backend == "cpu" or (backend == "auto" and platform == "cpu"):
        reason = _cpu_reason(backend, model, platform)
        if reason is not None and backend == "cpu":
            raise ValueError(f"attention_backend='cpu': {reason}")
        return "cpu" if reason is None else "xla"
    if backend == "xla":
        return "xla"
    if platform not in KERNEL_BACKEND:
        if backend == "pallas":
            raise ValueError(f"attention_backend='pallas' has no kernels for platform {platform!r}")
        return "xla"
    # Imported here so the XLA path (CPU) does not pay for importing Pallas and its TPU / Triton modules.
    import pallas_kernels

    kernel_backend = KERNEL_BACKEND[platform]
    if model is not None:
        if model.sliding_window is not None:
            logger.warning("attention_backend=%r: the Pallas kernels do not implement sliding-window attention "
                           "(sliding_window=%d); using the XLA attention path", backend, model.sliding_window)
            return "xla"
        if block_size is not None and kv_dtype is not None:
            try:
                pallas_kernels.check_config(kernel_backend, block_size, model.head_dim, jnp.dtype(kv_dtype),
                                            max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                            chip=chip if chip is None or isinstance(chip, str)
                                            or chip.platform == kernel_backend else None)
            except ValueError as err:
                if backend == "pallas":
                    raise ValueError(f"attention_backend='pallas' on {platform}: {err}") from None
                logger.warning("attention_backend='auto': %s; using the XLA attention path", err)
                return "xla"
    return "pallas"


def page_head_dim(attention_backend: str, model: ModelConfig, platform: str | None = None, **options) -> int:
    """The head dim to allocate the KV pages with (`kv_cache.allocate_kv_cache(head_dim=...)`) for the path
    `attention_backend` resolves to on `platform` (`options`: those of `resolve_attention_backend`).

    The Pallas kernels want some head dims padded (`pallas_kernels.padded_head_dim`: TPU a multiple of 128 lanes,
    GPU the next power of two); the XLA and CPU paths read the model's own.
    """
    platform = platform or jax.default_backend()
    if resolve_attention_backend(attention_backend, model=model, platform=platform, **options) != "pallas":
        return model.head_dim
    import pallas_kernels

    return pallas_kernels.padded_head_dim(KERNEL_BACKEND[platform], model.head_dim)


def table_width_multiple(attention_backend: str, model: ModelConfig, platform: str | None = None, **options) -> int:
    """What the block tables' width must be a multiple of for the path `attention_backend` resolves to (the TPU
    kernels copy table rows by DMA in 512-byte chunks; other paths take any width)."""
    platform = platform or jax.default_backend()
    if resolve_attention_backend(attention_backend, model=model, platform=platform, **options) != "pallas":
        return 1
    import pallas_kernels

    return pallas_kernels.table_width_multiple(KERNEL_BACKEND[platform])


def get_attention_fn(backend: str = "auto", *, model: ModelConfig | None = None, block_size: int | None = None,
                     kv_dtype: str | None = None, platform: str | None = None, max_model_len: int | None = None,
                     max_num_seqs: int | None = None, chip=None) -> Callable:
    """The paged attention function for `backend` ("auto", "xla", "pallas" or "cpu") on `platform` (default: JAX's).

    The choice and the start-up checks are `resolve_attention_backend`'s. `chip` (a `pallas_kernels.chips` chip or
    name) sizes the kernels' blocks; default: the chip found at trace time. The Pallas path accepts pages of a
    padded head dim (`page_head_dim`).
    """
    platform = platform or jax.default_backend()
    choice = resolve_attention_backend(backend, model=model, block_size=block_size, kv_dtype=kv_dtype,
                                       platform=platform, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                       chip=chip)
    if choice == "cpu" or (backend == "auto" and platform == "cpu"):
        return _cpu_attention(backend, model, platform)  # logs why "auto" takes xla instead
    if choice == "xla":
        return xla_paged_attention
    from jaxserve.attention.pallas import make_pallas_attention

    if platform == "cpu":
        logger.warning("attention_backend='pallas' on CPU runs the kernels in interpret mode (slow; for tests)")
    options = {}
    if chip is not None:
        from pallas_kernels.chips import get_chip

        chip = get_chip(chip) if isinstance(chip, str) else chip
        if chip.platform == KERNEL_BACKEND[platform]:
            options["chip"] = chip
    return make_pallas_attention(KERNEL_BACKEND[platform], interpret=platform == "cpu", **options)


def _cpu_reason(backend: str, model: ModelConfig | None, platform: str) -> str | None:
    """Why the native CPU kernel cannot serve (None: it can)."""
    import cpu_kernels

    reason = cpu_kernels.unusable_reason(platform, require_simd=backend == "auto")
    if reason is None and model is not None and model.head_dim % 8:
        reason = f"the native kernel needs head_dim divisible by 8, got {model.head_dim}"
    return reason


def _cpu_attention(backend: str, model: ModelConfig | None, platform: str) -> Callable:
    """The native CPU kernel, or (auto only) the XLA path with the reason logged."""
    reason = _cpu_reason(backend, model, platform)
    if reason is None:
        from jaxserve.attention.cpu import paged_attention

        return paged_attention
    if backend == "cpu":
        raise ValueError(f"attention_backend='cpu': {reason}")
    logger.info("attention_backend='auto': %s; using the XLA attention path", reason)
    return xla_paged_attention
