"""An engine and server smoke with no torch reference: what `make test-py312` runs on the newest verified jax.

The full suite (torch / transformers parity included) runs on the oldest supported jax; this proves the engine
starts, compiles its buckets and serves the official `openai` client on the newest one.
"""

from __future__ import annotations

import jax
import pytest

from jaxserve.server.testing import start_server

openai = pytest.importorskip("openai")

FLAGS = ["--max-model-len", "256", "--max-num-seqs", "4", "--max-num-batched-tokens", "32", "--no-progress"]


@pytest.fixture(scope="module")
def client():
    server = start_server(FLAGS)
    try:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        assert server.stop() == 0, server.log_tail()


def test_completion_and_stream(client) -> None:
    print(f"jax {jax.__version__}")
    model = client.models.list().data[0].id
    greedy = dict(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    first, again = client.completions.create(**greedy), client.completions.create(**greedy)
    assert first.choices[0].text and first.choices[0].text == again.choices[0].text  # greedy is deterministic
    assert first.usage.completion_tokens == 8 and first.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=6, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces)
