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


def get_attention_fn(backend: str = "auto", *, model: ModelConfig | None = None, block_size: int | None = None,
                     kv_dtype: str | None = None, platform: str | None = None) -> Callable:
    """The paged attention function for `backend` ("auto", "xla", "pallas" or "cpu") on `platform` (default: JAX's).

    With `model`, `block_size` and `kv_dtype` given, the kernels' page-geometry constraints are checked here, at
    start-up: an explicit "pallas" raises ValueError saying what to change; "auto" logs the reason and uses xla.
    Models with a sliding window use xla (the kernels do not implement it), logged.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {backend!r}")
    platform = platform or jax.default_backend()
    if backend == "cpu" or (backend == "auto" and platform == "cpu"):
        return _cpu_attention(backend, model, platform)
    if backend == "xla":
        return xla_paged_attention
    if platform not in KERNEL_BACKEND:
        if backend == "pallas":
            raise ValueError(f"attention_backend='pallas' has no kernels for platform {platform!r}")
        return xla_paged_attention
    # Imported here so the XLA path (CPU) does not pay for importing Pallas and its TPU / Triton modules.
    import pallas_kernels
    from jaxserve.attention.pallas import make_pallas_attention

    kernel_backend = KERNEL_BACKEND[platform]
    if model is not None:
        if model.sliding_window is not None:
            logger.warning("attention_backend=%r: the Pallas kernels do not implement sliding-window attention "
                           "(sliding_window=%d); using the XLA attention path", backend, model.sliding_window)
            return xla_paged_attention
        if block_size is not None and kv_dtype is not None:
            try:
                pallas_kernels.check_config(kernel_backend, block_size, model.head_dim, jnp.dtype(kv_dtype))
            except ValueError as err:
                if backend == "pallas":
                    raise ValueError(f"attention_backend='pallas' on {platform}: {err}") from None
                logger.warning("attention_backend='auto': %s; using the XLA attention path", err)
                return xla_paged_attention
    if platform == "cpu":
        logger.warning("attention_backend='pallas' on CPU runs the kernels in interpret mode (slow; for tests)")
    return make_pallas_attention(kernel_backend, interpret=platform == "cpu")


def _cpu_attention(backend: str, model: ModelConfig | None, platform: str) -> Callable:
    """The native CPU kernel, or (auto only) the XLA path with the reason logged."""
    import cpu_kernels

    reason = cpu_kernels.unusable_reason(platform, require_simd=backend == "auto")
    if reason is None and model is not None and model.head_dim % 8:
        reason = f"the native kernel needs head_dim divisible by 8, got {model.head_dim}"
    if reason is None:
        from jaxserve.attention.cpu import paged_attention

        return paged_attention
    if backend == "cpu":
        raise ValueError(f"attention_backend='cpu': {reason}")
    logger.info("attention_backend='auto': %s; using the XLA attention path", reason)
    return xla_paged_attention
