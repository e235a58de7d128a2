"""Chooses the attention implementation for the platform and configuration.

Only the XLA path exists today; the Pallas kernels plug in here with the same call signature.
"""

from __future__ import annotations

from typing import Callable

from jaxserve.attention.xla import paged_attention as xla_paged_attention

BACKENDS = ("auto", "xla")


def get_attention_fn(backend: str = "auto") -> Callable:
    """The paged attention function for `backend` ("auto" or "xla")."""
    if backend not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {backend!r}")
    return xla_paged_attention
