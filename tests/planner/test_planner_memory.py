"""The planner's memory arithmetic against references it did not write: transformers' own parameter counts and the
per-token KV sizes published for well-known models."""

from __future__ import annotations

import pytest
import torch
import transformers

from jaxserve.config import ModelConfig
from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.planner import MODEL_PRESETS, kv_pool_blocks, max_concurrency, model_bytes, resolve_model
from jaxserve.planner.memory import parameter_inventory, tensor_bytes

torch.set_num_threads(1)

_HF_CLASSES = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_parameter_count_matches_transformers_on_a_shrunk_copy(name):
    """Shrink each preset's widths (keeping its shape rules: GQA ratio, ties, biases) and count transformers' own
    parameters: the inventory must match tensor for tensor in total."""
    cfg = dict(MODEL_PRESETS[name])
    ratio = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    cfg.update(num_hidden_layers=2, hidden_size=8 * ratio, num_attention_heads=ratio, num_key_value_heads=1,
               head_dim=8, intermediate_size=24, vocab_size=50)
    config_cls, model_cls = _HF_CLASSES[cfg["model_type"]]
    hf = model_cls(config_cls(**{k: v for k, v in cfg.items() if k != "model_type"}))
    expected = sum(p.numel() for p in hf.parameters())
    ours = ModelConfig.from_hf_config(cfg)
    assert sum(t.size for t in parameter_inventory(ours)) == expected
    assert ours.num_parameters() == expected


@pytest.mark.parametrize("name, billions", [("llama-2-7b", 6.738), ("llama-2-13b", 13.016), ("llama-2-70b", 68.977),
                                            ("llama-3-8b", 8.030), ("llama-3-70b", 70.554),
                                            ("mistral-7b", 7.242), ("qwen2.5-7b", 7.616),
                                            ("smollm2-135m", 0.1345)])
def test_preset_sizes_match_published_parameter_counts(name, billions):
    _, config = resolve_model(name)
    assert config.num_parameters() / 1e9 == pytest.approx(billions, rel=2e-3)


@pytest.mark.parametrize("name, kib", [("llama-2-7b", 512), ("llama-2-13b", 800), ("llama-3-8b", 128),
                                       ("llama-3-70b", 320), ("mistral-7b", 128), ("qwen2.5-7b", 56)])
def test_kv_bytes_per_token_uses_kv_heads_and_layers(name, kib):
    """2 x layers x kv_heads x head_dim x 2 bytes: Llama-2-13B's 800 KiB is the vLLM paper's figure; GQA models
    (Llama-3, Mistral, Qwen2.5) need far less than their query-head count would suggest."""
    _, config = resolve_model(name)
    assert kv_bytes_per_token(config, "bfloat16") == kib * 1024


def test_weight_format_ratios():
    """int8 and int4 weights against bfloat16, scales included: the quantization issue's 0.55x and 0.32x bounds."""
    _, config = resolve_model("llama-3-8b")
    bf16 = model_bytes(config, "bfloat16")
    assert model_bytes(config, "float32") == 2 * bf16
    assert 0.5 < model_bytes(config, "int8") / bf16 <= 0.55
    assert 0.25 < model_bytes(config, "int4", group_size=32) / bf16 <= 0.32
    assert model_bytes(config, "int4", group_size=128) < model_bytes(config, "int4", group_size=32)


def test_norms_stay_float_and_unknown_formats_are_refused():
    _, config = resolve_model("smollm2-135m")
    norm = next(t for t in parameter_inventory(config) if t.name == "final_norm")
    assert tensor_bytes(norm, "int4") == config.hidden_size * 2
    with pytest.raises(ValueError, match="unknown weight format 'fp8'"):
        model_bytes(config, "fp8")


def test_pool_and_concurrency_arithmetic():
    _, config = resolve_model("smollm2-135m")
    per_block = kv_bytes_per_token(config, "bfloat16") * 16
    assert kv_pool_blocks(config, "bfloat16", 16, per_block * 100 + per_block - 1) == 100
    assert kv_pool_blocks(config, "bfloat16", 16, per_block * 100, max_blocks_per_seq=8, max_num_seqs=4) == 33
    assert max_concurrency(33, 128, 16) == 4  # 32 usable pages, 8 per sequence
    assert max_concurrency(32, 128, 16) == 3
    assert max_concurrency(33, 120, 16) == 4  # a partial last page still takes a page


@pytest.mark.parametrize("scheme, group", [("int8", None), ("int8", 32), ("int4", None), ("int4", 32), ("int4", 64)])
@pytest.mark.parametrize("tied", [True, False])
def test_planned_weight_bytes_equal_the_quantized_engine_params(tmp_path, scheme, group, tied):
    """The planner's bytes per format are exactly what jaxserve.quant stores (values, scales and offsets)."""
    from jaxserve.checkpoint import load_checkpoint
    from jaxserve.quant import QuantConfig, param_nbytes, quantize_params

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    transformers.LlamaForCausalLM(hf_config).save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path, dtype="float32", progress=False)
    assert model_bytes(loaded.config, "float32") == param_nbytes(loaded.params)
    quantized = quantize_params(loaded.params, QuantConfig(scheme, group))
    planned = model_bytes(loaded.config, scheme, float_dtype="float32", group_size=group)
    assert planned == param_nbytes(quantized)
