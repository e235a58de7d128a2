"""Fixtures for engine tests: a tiny random model served by one shared LLM (the default model's, `default_llm`, is
in tests/conftest.py: the model tests share it)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import assert_pool_whole, make_tiny_llama

# With two cores, torch's OpenMP pool spins against itself: a small matmul is ~40x slower with 2 threads than 1.
torch.set_num_threads(1)

TINY_LLM_KWARGS = dict(skip_tokenizer_init=True, dtype="float32", max_model_len=256, max_num_seqs=32,
                       max_num_batched_tokens=128, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """(checkpoint directory, transformers reference model) of the tiny random Llama."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    return directory, make_tiny_llama(directory)


@pytest.fixture(scope="session")
def tiny_llm(tiny_model: tuple[Path, Any]) -> Any:
    """One LLM over the tiny model, every bucket compiled (32 sequences, 128-token steps, 256-token context)."""
    from jaxserve import LLM

    return LLM(str(tiny_model[0]), **TINY_LLM_KWARGS)


def _drain(engine: Any) -> None:
    """Abort whatever a failed test left behind, so one failure does not cascade into the next tests."""
    for request_id in list(engine.requests):
        engine.abort_request(request_id)
    for seq in list(engine.scheduler.running) + list(engine.scheduler.waiting):
        engine.scheduler.finish(seq)


@pytest.fixture
def llm(tiny_llm: Any) -> Any:
    """The shared tiny LLM, checked to be drained and leak-free after each test."""
    _drain(tiny_llm.engine)
    yield tiny_llm
    try:
        assert_pool_whole(tiny_llm.engine)
    finally:
        _drain(tiny_llm.engine)
