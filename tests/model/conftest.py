"""Fixtures for model tests: tiny random Hugging Face checkpoints, cached per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from model_helpers import make_tiny_hf

# With two cores, torch's OpenMP pool spins against itself: a small matmul is ~40x slower with 2 threads than 1.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, torch.nn.Module]]:
    """Factory: tiny_hf(name, arch, **config) -> (checkpoint directory, torch model), cached per name."""
    cache: dict[str, tuple[Path, torch.nn.Module]] = {}

    def make(name: str, arch: str = "llama", **overrides: Any) -> tuple[Path, torch.nn.Module]:
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            cache[name] = (directory, make_tiny_hf(directory, arch, **overrides))
        return cache[name]

    return make
