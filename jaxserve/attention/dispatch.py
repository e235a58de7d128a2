"""Chooses the attention implementation for the platform and configuration.

`attention_backend`: "xla" is the plain-jnp path (`attention/xla.py`); "pallas" runs the kernels of
`pallas_kernels` (Mosaic on TPU, Triton on GPU, interpret mode on CPU, where it is slow and meant for tests);
"auto" is pallas on TPU and GPU and xla on CPU. Both paths share one call signature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxserve.attention.xla import paged_attention as xla_paged_attention
from jaxserve.config import ModelConfig

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "xla", "pallas")
KERNEL_BACKEND = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "cpu": "tpu"}


def get_attention_fn(backend: str = "auto", *, model: ModelConfig | None = None, block_size: int | None = None,
                     kv_dtype: str | None = None, platform: str | None = None) -> Callable:
    """The paged attention function for `backend` ("auto", "xla" or "pallas") on `platform` (default: JAX's).

    With `model`, `block_size` and `kv_dtype` given, the kernels' page-geometry constraints are checked here, at
    start-up: an explicit "pallas" raises ValueError saying what to change; "auto" logs the reason and uses xla.
    Models with a sliding window use xla (the kernels do not implement it), logged.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {backend!r}")
    platform = platform or jax.default_backend()
    if backend == "xla" or (backend == "auto" and platform == "cpu"):
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
