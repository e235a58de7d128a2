"""Paged attention kernels in Pallas for TPU (Mosaic) and GPU (Triton). They know nothing of models: arrays in,
arrays out. `reference` holds pure-jnp versions with the same signatures."""

from pallas_kernels.api import (
    check_config,
    kernel_backend,
    paged_decode_attention,
    ragged_paged_attention,
)

__all__ = ["check_config", "kernel_backend", "paged_decode_attention", "ragged_paged_attention"]
