"""Suite-wide set-up: eight simulated CPU devices, so the tensor- and data-parallel tests have a mesh to use, and
the one default-model LLM that every directory's text-level tests share.

XLA reads the flag when its CPU backend starts, so it is set here, before any test touches a device. Tests that do
not ask for a mesh run on device 0 as before.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

SIMULATED_DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={SIMULATED_DEVICES}"

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()


@pytest.fixture(scope="session")
def default_llm() -> Any:
    """The default model (SmolLM2-135M-Instruct GGUF) with small limits, every bucket compiled: built once (~15 s on
    2 cores) for the engine and model tests that need real text. Tests must leave it drained and its settings as
    they found them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from jaxserve import LLM

    return LLM(dtype="float32", max_model_len=512, max_num_seqs=8, max_num_batched_tokens=128, progress=False)
