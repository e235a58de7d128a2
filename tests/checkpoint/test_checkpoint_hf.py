"""Hugging Face safetensors directories -> params equal to the torch state dict (transposed), exactly."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from jaxserve.checkpoint import load_checkpoint

_LAYER_MAP = {
    "wq": ("self_attn.q_proj.weight", True), "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True), "wo": ("self_attn.o_proj.weight", True),
    "bq": ("self_attn.q_proj.bias", False), "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "w_gate": ("mlp.gate_proj.weight", True), "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
    "attn_norm": ("input_layernorm.weight", False), "mlp_norm": ("post_attention_layernorm.weight", False),
}


def assert_matches_state_dict(params: dict, sd: dict[str, np.ndarray], num_layers: int) -> None:
    np.testing.assert_array_equal(params["embed"], sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(params["final_norm"], sd["model.norm.weight"])
    if "lm_head" in params:
        np.testing.assert_array_equal(params["lm_head"], sd["lm_head.weight"].T)
    for key, array in params["layers"].items():
        suffix, transpose = _LAYER_MAP[key]
        assert array.shape[0] == num_layers
        for i in range(num_layers):
            ref = sd[f"model.layers.{i}.{suffix}"]
            np.testing.assert_array_equal(array[i], ref.T if transpose else ref, err_msg=f"{key}[{i}]")
    expected = {k for k, (s, _) in _LAYER_MAP.items() if f"model.layers.0.{s}" in sd}
    assert set(params["layers"]) == expected


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_tiny_models_load_exactly(hf_model, arch):
    directory, sd = hf_model(arch)
    loaded = load_checkpoint(directory, progress=False)
    cfg = loaded.config
    assert loaded.format == "hf" and loaded.tokenizer_path is None
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (arch, 3, 48, 80)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (4, 2, 12, 96)
    assert cfg.attention_bias == (arch == "qwen2") and not cfg.tie_word_embeddings
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2,)
    assert all(a.dtype == np.float32 for a in [loaded.params["embed"], *loaded.params["layers"].values()])
    assert_matches_state_dict(loaded.params, sd, 3)


def test_head_dim_differs_from_hidden_over_heads_and_tied(hf_model):
    directory, sd = hf_model("llama", head_dim=20, tie=True)
    loaded = load_checkpoint(directory, progress=False)
    assert loaded.config.head_dim == 20 and loaded.config.tie_word_embeddings
    assert loaded.params["layers"]["wq"].shape == (3, 48, 4 * 20)
    assert loaded.params["layers"]["wk"].shape == (3, 48, 2 * 20)
    assert loaded.params["layers"]["wo"].shape == (3, 80, 48)
    assert "lm_head" not in loaded.params
    assert_matches_state_dict(loaded.params, sd, 3)


def test_tied_checkpoint_carrying_lm_head_ignores_it(hf_model, tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, sd = hf_model("qwen2", tie=True)
    tensors = load_file(directory / "model.safetensors")
    tensors["lm_head.weight"] = np.zeros_like(tensors["model.embed_tokens.weight"])
    save_file(tensors, directory / "model.safetensors")
    loaded = load_checkpoint(directory, progress=False)
    assert "lm_head" not in loaded.params
    np.testing.assert_array_equal(loaded.params["embed"], sd["model.embed_tokens.weight"])


def test_sharded_checkpoint(hf_model):
    directory, sd = hf_model("llama", max_shard_size="20KB")
    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    assert len(shards) > 1 and (directory / "model.safetensors.index.json").is_file()
    loaded = load_checkpoint(directory, progress=False)
    assert_matches_state_dict(loaded.params, sd, 3)


def test_bfloat16_cast_and_auto(hf_model):
    directory, sd = hf_model("mistral")
    loaded = load_checkpoint(directory, dtype="bfloat16", progress=False)
    wq = loaded.params["layers"]["wq"]
    assert wq.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(wq[1], sd["model.layers.1.self_attn.q_proj.weight"].T.astype(ml_dtypes.bfloat16))
    assert load_checkpoint(directory, dtype="auto", progress=False).params["embed"].dtype == np.float32


def test_bfloat16_checkpoint_auto_stays_bfloat16(tmp_path):
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path, dtype="auto", progress=False)
    assert loaded.params["layers"]["w_up"].dtype == ml_dtypes.bfloat16
    ref = model.state_dict()["model.layers.1.mlp.up_proj.weight"].float().numpy().T
    np.testing.assert_array_equal(loaded.params["layers"]["w_up"][1].astype(np.float32), ref)
    as_f32 = load_checkpoint(tmp_path, progress=False).params["layers"]["w_up"][1]
    assert as_f32.dtype == np.float32
    np.testing.assert_array_equal(as_f32, ref)


def test_tokenizer_path_when_present(hf_model):
    directory, _ = hf_model("llama")
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    assert load_checkpoint(directory, progress=False).tokenizer_path == str(directory)


def test_inv_freq_is_harmless(hf_model):
    from safetensors.numpy import load_file, save_file

    directory, sd = hf_model("llama")
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(6, np.float32)
    save_file(tensors, directory / "model.safetensors")
    assert_matches_state_dict(load_checkpoint(directory, progress=False).params, sd, 3)
