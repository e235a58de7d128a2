"""Paged attention kernels in Pallas for TPU (Mosaic) and GPU (Triton). They know nothing of models: arrays in,
arrays out. `reference` holds pure-jnp versions with the same signatures; `chips` the chips their blocks are sized
for; `production` the configurations they are built and tested at."""

from pallas_kernels.api import (
    MAX_HEAD_DIM,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    PAGE_DTYPES,
    PAGE_SIZES,
    check_config,
    kernel_backend,
    padded_head_dim,
    paged_decode_attention,
    ragged_paged_attention,
    table_width_multiple,
)

__all__ = ["MAX_HEAD_DIM", "MAX_MODEL_LEN", "MAX_NUM_SEQS", "PAGE_DTYPES", "PAGE_SIZES", "check_config",
           "kernel_backend", "padded_head_dim", "paged_decode_attention", "ragged_paged_attention",
           "table_width_multiple"]
