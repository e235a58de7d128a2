"""Helpers shared by the checkpoint tests: tiny random Hugging Face models and GGUF files written from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ARCHS = ("llama", "mistral", "qwen2")


def make_hf_model(directory: Path, arch: str = "llama", *, tie: bool = False, head_dim: int | None = None,
                  max_shard_size: str | None = None, seed: int = 0, **overrides: Any) -> dict[str, np.ndarray]:
    """Save a tiny random model with transformers; returns its float32 state dict as numpy."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cls_config, cls_model = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    kwargs: dict[str, Any] = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                  tie_word_embeddings=tie, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    if head_dim is not None:
        kwargs["head_dim"] = head_dim
    kwargs.update(overrides)
    model = cls_model(cls_config(**kwargs)).eval()
    with torch.no_grad():  # random norms, so a swapped norm weight cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_()
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **save_kwargs)
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


# HF suffix -> GGUF suffix, for writing llama.cpp-style files from a state dict.
HF_TO_GGUF_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
}
HF_TO_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`, verbatim in numpy."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_name(hf_name: str) -> str:
    """The llama.cpp name of a Hugging Face tensor name."""
    if hf_name in HF_TO_GGUF_GLOBAL:
        return HF_TO_GGUF_GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF_LAYER[rest]}"


def encode(array: np.ndarray, qtype: Any) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype) for GGUFWriter.add_tensor, and the value a reader should dequantize it to."""
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    if qtype == gguf.GGMLQuantizationType.I8:
        return array.astype(np.int8), None
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def write_gguf(path: Path, arch: str, hparams: dict[str, Any], tensors: dict[str, np.ndarray],
               types: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Write a GGUF file; `tensors` maps GGUF names to [out, in] arrays stored with `types[name]` (default F32).

    Returns what each tensor dequantizes to, the reference for loaders.
    """
    import gguf

    types = types or {}
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(hparams["layers"])
    writer.add_context_length(hparams.get("context", 256))
    writer.add_embedding_length(hparams["hidden"])
    writer.add_feed_forward_length(hparams["intermediate"])
    writer.add_head_count(hparams["heads"])
    writer.add_head_count_kv(hparams["kv_heads"])
    if "head_dim" in hparams:
        writer.add_key_length(hparams["head_dim"])
        writer.add_value_length(hparams["head_dim"])
    writer.add_rope_freq_base(hparams.get("theta", 10000.0))
    writer.add_layer_norm_rms_eps(hparams.get("eps", 1e-5))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    reference = {}
    for name, array in tensors.items():
        qtype = types.get(name, gguf.GGMLQuantizationType.F32)
        data, raw = encode(array, qtype)
        writer.add_tensor(name, data, raw_dtype=raw)
        if data.dtype in (np.float32, np.float16) or raw is not None:
            reference[name] = gguf.quants.dequantize(data, raw or (gguf.GGMLQuantizationType.F16
                                                                   if data.dtype == np.float16
                                                                   else gguf.GGMLQuantizationType.F32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def gguf_from_state_dict(path: Path, arch: str, sd: dict[str, np.ndarray], hparams: dict[str, Any],
                         types: dict[str, Any] | None = None, permute: bool = True,
                         metadata: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Write a Hugging Face state dict as llama.cpp would: GGUF names, Q/K rows permuted for the llama arch."""
    tensors = {}
    for name, array in sd.items():
        if "rotary_emb" in name:
            continue
        if permute and arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            array = llama_cpp_permute(array, hparams["heads"] if ".q_proj." in name else hparams["kv_heads"])
        tensors[gguf_name(name)] = array
    return write_gguf(path, arch, hparams, tensors, types, metadata)
