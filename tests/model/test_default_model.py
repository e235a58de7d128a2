"""The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers loading the same file (float32)."""

from __future__ import annotations

import os

import pytest
from model_helpers import first_mismatch_note, hf_greedy

from jaxserve.sampling_params import SamplingParams

NEW_TOKENS = 24
PLAIN = ["The quick brown fox", "def fibonacci(n):"]
CHATS = [[{"role": "user", "content": "Write a haiku about the sea."}],
         [{"role": "system", "content": "You are a terse assistant."},
          {"role": "user", "content": "Name three primary colors."}]]


@pytest.fixture
def llm(default_llm):
    """The suite's shared default-model LLM (tests/conftest.py; same limits as this file always used)."""
    return default_llm


@pytest.fixture(scope="module")
def hf_model():
    import functools

    import gguf
    import torch
    import transformers

    from jaxserve.checkpoint import default_model_path

    path = default_model_path()
    # transformers rebuilds the same tensor-name map once per module while loading (~400 times, seconds on 2
    # cores); memoising it changes nothing else (as in tests/checkpoint/test_checkpoint_default_model.py).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.slow  # transformers' GGUF load alone is ~15 s on 2 cores: make test-all (see below)
def test_greedy_continuations_match_transformers(llm, hf_model):
    """The whole chain at once. make test checks its links separately: every tensor of this file equals
    transformers' dequantization of it (tests/checkpoint/test_checkpoint_default_model.py::
    test_default_model_equals_transformers_gguf_loader), the forward pass equals transformers' on tiny Llamas with
    tied embeddings and GQA (tests/model/test_hf_parity.py), and this model's chat answer and template below."""
    tok = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tok.encode(p)} for p in PLAIN]
    for chat in CHATS:
        text = tok.apply_chat_template(chat, add_generation_prompt=True)
        prompts.append({"prompt_token_ids": tok.encode(text, add_special_tokens=False)})
    assert all(len(p["prompt_token_ids"]) > 3 for p in prompts)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)  # all four share the batch
    for prompt, out in zip(prompts, outs):
        ids = prompt["prompt_token_ids"]
        ours, ref = out.outputs[0].token_ids, hf_greedy(hf_model, ids, NEW_TOKENS)
        assert len(ref) == NEW_TOKENS
        assert ours == ref, f"{tok.decode(ids)!r}: {first_mismatch_note(hf_model, ids, ours, ref)}"
        assert out.outputs[0].text == tok.decode(ours)


def test_chat_template_renders_the_chatml_turns(llm):
    text = llm.get_tokenizer().apply_chat_template(CHATS[1], add_generation_prompt=True)
    assert "<|im_start|>system\nYou are a terse assistant.<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_capital_of_france(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=32), use_tqdm=False)[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert "<|im_end|>" not in out.text
