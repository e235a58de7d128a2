"""Fixtures for the scale-out tests: the tiny GQA model of parallel_helpers, saved natively once per session."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from parallel_helpers import TINY_GQA


@pytest.fixture(scope="session")
def tiny_gqa_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A native checkpoint of TINY_GQA with random weights large enough that attention is not one-hot."""
    from jaxserve.checkpoint import save_native
    from jaxserve.checkpoint.base import LoadedCheckpoint
    from jaxserve.model.llama import init_params

    if len(jax.devices()) < 8:
        pytest.fail(f"the scale-out tests need 8 CPU devices (tests/conftest.py sets XLA_FLAGS); got "
                    f"{len(jax.devices())}: was jax initialised before the flag was set?")
    params = jax.tree_util.tree_map(np.asarray, init_params(TINY_GQA, jax.random.PRNGKey(0), scale=0.15))
    loaded = LoadedCheckpoint(config=TINY_GQA, params=params, tokenizer_path=None, format="native")
    return save_native(loaded, tmp_path_factory.mktemp("tiny-gqa") / "ckpt", progress=False)

