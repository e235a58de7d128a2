"""Fixtures for quantization tests: tiny random Hugging Face checkpoints (the float reference), cached per session.

The model and checkpoint test helpers are reused (their directories are put on sys.path).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
for helpers in ("model", "checkpoint"):
    sys.path.insert(0, str(Path(__file__).parent.parent / helpers))

from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# With two cores, torch's OpenMP pool spins against itself (see tests/model/conftest.py).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: tiny_checkpoint(name, arch="llama", **config) -> a saved tiny HF checkpoint, cached per name.

    Sizes are multiples of 32 (hidden 64, intermediate 128, vocab 256) so every group size and GGUF block fits.
    """
    from model_helpers import make_tiny_hf

    cache: dict[str, Path] = {}

    def make(name: str, arch: str = "llama", **overrides: Any) -> Path:
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            make_tiny_hf(directory, arch, **overrides)
            cache[name] = directory
        return cache[name]

    return make
