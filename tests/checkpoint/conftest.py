"""Fixtures for checkpoint tests: tiny random Hugging Face models, GGUF writers and the real default model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from checkpoint_helpers import make_hf_model


@pytest.fixture
def hf_model(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """Factory: hf_model(arch, **kw) -> (directory, state_dict)."""
    counter = iter(range(1000))

    def make(arch: str = "llama", **kwargs: Any) -> tuple[Path, dict[str, np.ndarray]]:
        directory = tmp_path / f"{arch}-{next(counter)}"
        return directory, make_hf_model(directory, arch, **kwargs)

    return make


@pytest.fixture(scope="session")
def default_gguf() -> str:
    from jaxserve.checkpoint import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def default_loaded(default_gguf: str):
    """The default model loaded once from its GGUF (float32), with the load time."""
    import time

    from jaxserve.checkpoint import load_checkpoint

    start = time.perf_counter()
    loaded = load_checkpoint(default_gguf, progress=False)
    return loaded, time.perf_counter() - start
