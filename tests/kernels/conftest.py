"""Kernel tests run on CPU: numerics in Pallas interpret mode (the TPU / GPU compiles are tests/aot)."""

from __future__ import annotations

import os

# Set before jax initialises: these tests must never pick up an accelerator's backend by accident.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
