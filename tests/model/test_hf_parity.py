"""The Llama family against Hugging Face transformers (float32): prompt logits and greedy continuations."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import first_mismatch_note, hf_greedy, hf_logits, paged_prompt_logits

from jaxserve.checkpoint import load_checkpoint

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}

CASES = {
    "llama_gqa": ("llama", dict(num_attention_heads=8, num_key_value_heads=2)),
    "mistral_window": ("mistral", dict(num_attention_heads=8, num_key_value_heads=2, sliding_window=16)),
    "qwen2_bias": ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2)),
    "llama3_tied_headdim": ("llama", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                          tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE)),
    "llama_mqa": ("llama", dict(num_attention_heads=4, num_key_value_heads=1)),
}
# make test runs every architecture's prompt logits on both backends (minus Mistral on "cpu", whose attention is the
# XLA path's anyway: the window) and greedy decoding for llama_gqa and mistral_window (GQA, the window); make test-all
# adds greedy decoding for the other three (~5-7 s each on 2 cores), whose differences (bias, tied head and head_dim,
# llama3 RoPE, one KV head) sit in the projections and positions that the prompt-logits test checks on both backends,
# chunked, which is what decode steps read (the decode kernels' MQA: tests/kernels/test_cpu_kernels.py).
SLOW_GREEDY = {"qwen2_bias", "llama3_tied_headdim", "llama_mqa"}
SLOW_LOGITS = {("mistral_window", "cpu")}
PROMPT_LEN = 40
NEW_TOKENS = 32
ATOL = 1e-4


def _prompt(seed: int, n: int = PROMPT_LEN, vocab: int = 256) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, vocab, n)]


@pytest.fixture(params=list(CASES))
def case(request, tiny_hf):
    arch, overrides = CASES[request.param]
    directory, model = tiny_hf(request.param, arch, **overrides)
    return request.param, directory, model


def test_loaded_config_matches_the_architecture(case):
    name, directory, _ = case
    cfg = load_checkpoint(directory, dtype="float32", progress=False).config
    if name == "mistral_window":
        assert cfg.sliding_window == 16
    elif name == "qwen2_bias":
        assert cfg.attention_bias and cfg.sliding_window is None
    elif name == "llama3_tied_headdim":
        assert (cfg.head_dim, cfg.tie_word_embeddings) == (32, True)
        assert cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "llama3"
    elif name == "llama_mqa":
        assert cfg.num_kv_heads == 1


@pytest.mark.parametrize("case,backend", [
    pytest.param(name, backend, marks=pytest.mark.slow) if (name, backend) in SLOW_LOGITS else (name, backend)
    for name in CASES for backend in ("xla", "cpu")], indirect=["case"])
def test_prompt_logits_match_transformers(case, backend):
    """Both matmul + attention paths: XLA, and the native CPU kernels over packed weights."""
    name, directory, model = case
    loaded = load_checkpoint(directory, dtype="float32", progress=False)
    if name == "llama3_tied_headdim":
        assert "lm_head" not in loaded.params
    if name == "qwen2_bias":
        assert np.abs(loaded.params["layers"]["bq"]).max() > 0.1
    prompt = _prompt(1)
    ref = hf_logits(model, prompt)
    assert ref.std(axis=-1).min() > 0.3, "reference logits are too flat to test anything"
    whole = paged_prompt_logits(loaded, prompt, backend=backend)
    np.testing.assert_allclose(whole, ref, atol=ATOL, rtol=0)
    # The same prompt in two chunks (not page-aligned): later chunks read the earlier tokens' K/V from the pages.
    chunked = paged_prompt_logits(loaded, prompt, chunks=[17, 23], backend=backend)
    np.testing.assert_allclose(chunked, ref, atol=ATOL, rtol=0)
    # Per-layer weights in an unrolled loop (opt-in with layer_loop="unrolled") compute the same thing.
    unrolled = paged_prompt_logits(loaded, prompt, chunks=[17, 23], unrolled=True, backend=backend)
    np.testing.assert_allclose(unrolled, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_GREEDY else name
                                  for name in CASES], indirect=True)
def test_greedy_continuation_matches_transformers(case):
    from jaxserve import LLM
    from jaxserve.sampling_params import SamplingParams

    name, directory, model = case
    prompts = [_prompt(2), _prompt(3, n=9), _prompt(4, n=23), _prompt(7, n=16)]  # 16: a full page
    llm = LLM(str(directory), skip_tokenizer_init=True, dtype="float32", max_model_len=128, max_num_seqs=4,
              max_num_batched_tokens=64, compile_all_buckets=False, progress=False)
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ours = out.outputs[0].token_ids
        ref = hf_greedy(model, prompt, NEW_TOKENS)
        assert len(ref) == NEW_TOKENS
        assert ours == ref, f"{name}: {first_mismatch_note(model, prompt, ours, ref)}"
        assert out.outputs[0].finish_reason == "length"
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable_blocks


@pytest.mark.parametrize("name,block_size", [("llama_gqa", 8), ("mistral_window", 32)])
def test_long_context_matches_transformers(tiny_hf, name, block_size):
    """Contexts past 256 tokens: attention reads the pages in more than one chunk."""
    from jaxserve import LLM
    from jaxserve.sampling_params import SamplingParams

    arch, overrides = CASES[name]
    directory, model = tiny_hf(name, arch, **overrides)
    prompt = _prompt(6, n=280)
    loaded = load_checkpoint(directory, dtype="float32", progress=False)
    for backend in ("xla", "cpu"):
        logits = paged_prompt_logits(loaded, prompt, chunks=[264, 16], block_size=block_size, backend=backend)
        np.testing.assert_allclose(logits[-16:], hf_logits(model, prompt)[-16:], atol=ATOL, rtol=0)
    llm = LLM(str(directory), skip_tokenizer_init=True, dtype="float32", max_model_len=320, max_num_seqs=4,
              max_num_batched_tokens=128, block_size=block_size, compile_all_buckets=False, progress=False)
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0].token_ids
    ref = hf_greedy(model, prompt, 24)
    assert out == ref, first_mismatch_note(model, prompt, out, ref)


def test_bfloat16_engine_stays_close_to_float32_transformers(tiny_hf):
    """bfloat16 weights and KV pages: prompt logprobs within bf16 rounding of the float32 reference."""
    import torch

    from jaxserve import LLM
    from jaxserve.sampling_params import SamplingParams

    arch, overrides = CASES["llama_gqa"]
    directory, model = tiny_hf("llama_gqa", arch, **overrides)
    prompt = _prompt(5)
    llm = LLM(str(directory), skip_tokenizer_init=True, dtype="bfloat16", max_model_len=128, max_num_seqs=4,
              max_num_batched_tokens=32, compile_all_buckets=False, progress=False)
    assert str(llm.engine.runner.params["embed"].dtype) == "bfloat16"
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=0),
                       use_tqdm=False)[0]
    ref = torch.log_softmax(torch.from_numpy(hf_logits(model, prompt)).double(), -1).numpy()
    ours = np.array([out.prompt_logprobs[i][prompt[i]] for i in range(1, len(prompt))])
    expected = ref[np.arange(len(prompt) - 1), prompt[1:]]
    assert np.abs(ours - expected).max() < 0.15
    assert np.abs(ours - expected).mean() < 0.03


def test_mistral_reference_really_uses_the_window(tiny_hf):
    """Guards the Mistral case: with the window removed, transformers' logits past the window must change."""
    arch, overrides = CASES["mistral_window"]
    _, model = tiny_hf("mistral_window", arch, **overrides)
    prompt = _prompt(1)
    windowed = hf_logits(model, prompt)
    model.config.sliding_window = None
    try:
        full = hf_logits(model, prompt)
    finally:
        model.config.sliding_window = 16
    np.testing.assert_allclose(windowed[:16], full[:16], atol=1e-5)
    assert np.abs(windowed[20:] - full[20:]).max() > 1e-2


def test_llama3_rope_scaling_changes_the_logits(tiny_hf, tmp_path):
    """Guards the llama3 case: the scaled model must differ from the same weights with plain RoPE."""
    import json

    arch, overrides = CASES["llama3_tied_headdim"]
    directory, _ = tiny_hf("llama3_tied_headdim", arch, **overrides)
    plain = tmp_path / "plain"
    plain.mkdir()
    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("rope_scaling", None)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    (plain / "config.json").write_text(json.dumps(cfg))
    (plain / "model.safetensors").symlink_to(directory / "model.safetensors")
    prompt = _prompt(1)
    scaled = paged_prompt_logits(load_checkpoint(directory, progress=False), prompt)
    unscaled = paged_prompt_logits(load_checkpoint(plain, progress=False), prompt)
    assert np.abs(scaled - unscaled).max() > 1e-2
