"""ModelConfig from GGUF metadata (llama.cpp's key names), RoPE scaling included."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gguf import GGUFReader, ReaderTensor
from gguf.quants import dequantize

from jaxserve.config import ModelConfig

from .base import CheckpointError

# GGUF architecture -> ModelConfig.architecture. llama.cpp converts Mistral checkpoints to "llama".
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
_LLAMA3_DEFAULT_ORIGINAL_CONTEXT = 8192  # what llama.cpp's converter assumes when writing rope_freqs


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (a scalar, string or list), or `default` when absent."""
    field = reader.get_field(key)
    return default if field is None else field.contents()


def config_from_gguf(reader: GGUFReader, tensors: dict[str, ReaderTensor], source: str) -> ModelConfig:
    """Build the ModelConfig of a GGUF file from its metadata and tensor list.

    Missing keys, unsupported architectures and RoPE scaling that jaxserve cannot reproduce are CheckpointErrors.
    """
    arch = field_value(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{source}: unsupported GGUF architecture {arch!r}; supported: "
                              f"{', '.join(GGUF_ARCHITECTURES)} (Mistral files use 'llama')")

    def required(suffix: str) -> Any:
        value = field_value(reader, f"{arch}.{suffix}")
        if value is None:
            raise CheckpointError(f"{source}: GGUF metadata lacks {arch}.{suffix}")
        return _uniform(value, f"{arch}.{suffix}", source)

    def optional(suffix: str, default: Any) -> Any:
        return _uniform(field_value(reader, f"{arch}.{suffix}", default), f"{arch}.{suffix}", source)

    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{source}: missing tensor 'token_embd.weight'")
    hidden = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(optional("attention.head_count_kv", num_heads))
    head_dim = int(optional("attention.key_length", hidden // num_heads))
    if int(optional("attention.value_length", head_dim)) != head_dim:
        raise CheckpointError(f"{source}: key_length != value_length is not supported")
    if int(optional("rope.dimension_count", head_dim)) != head_dim:
        raise CheckpointError(f"{source}: partial rotary embeddings ({arch}.rope.dimension_count != head_dim "
                              f"{head_dim}) are not supported")
    rope_theta = float(optional("rope.freq_base", 10000.0))
    eos = [field_value(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    try:
        return ModelConfig(
            architecture=GGUF_ARCHITECTURES[arch],
            vocab_size=int(tensors["token_embd.weight"].shape[-1]),  # GGUF shapes are (in, out): numpy reversed
            hidden_size=hidden,
            intermediate_size=int(required("feed_forward_length")),
            num_layers=int(required("block_count")),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(optional("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=_rope_scaling(reader, arch, tensors, head_dim, rope_theta, source),
            max_position_embeddings=int(optional("context_length", 2048)),
            tie_word_embeddings="output.weight" not in tensors,
            attention_bias="blk.0.attn_q.bias" in tensors,
            bos_token_id=field_value(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def _uniform(value: Any, key: str, source: str) -> Any:
    # Some GGUF files store per-layer hyper-parameters as arrays; only uniform ones make sense here.
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise CheckpointError(f"{source}: per-layer values for {key} are not supported: {value}")
        return value[0]
    return value


def _rope_scaling(reader: GGUFReader, arch: str, tensors: dict[str, ReaderTensor], head_dim: int, theta: float,
                  source: str) -> dict[str, Any] | None:
    kind = field_value(reader, f"{arch}.rope.scaling.type", "none")
    factor = field_value(reader, f"{arch}.rope.scaling.factor")
    original = field_value(reader, f"{arch}.rope.scaling.original_context_length")
    if "rope_freqs.weight" in tensors:
        if kind not in ("none", "linear") or (kind == "linear" and factor not in (None, 1.0)):
            raise CheckpointError(f"{source}: rope_freqs.weight together with rope scaling type {kind!r} is not "
                                  f"supported")
        freqs = tensors["rope_freqs.weight"]
        factors = np.asarray(dequantize(freqs.data, freqs.tensor_type), dtype=np.float64).reshape(-1)
        return llama3_from_rope_freqs(factors, head_dim, theta, original, source)
    if kind == "none" or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    raise CheckpointError(f"{source}: unsupported rope scaling type {kind!r} (supported: none, linear, llama3 via "
                          f"rope_freqs.weight)")


def llama3_rope_factors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_context: int) -> np.ndarray:
    """The per-frequency divisors that Llama 3.1's RoPE scaling applies (as llama.cpp stores in rope_freqs)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    medium = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original_context / high_freq_factor, 1.0,
                    np.where(wavelen > original_context / low_freq_factor, factor, medium))


def llama3_from_rope_freqs(factors: np.ndarray, head_dim: int, theta: float, original_context: int | None,
                           source: str) -> dict[str, Any] | None:
    """Recover Hugging Face's llama3 `rope_scaling` from llama.cpp's rope_freqs tensor, or raise.

    The factors fix (low, high) only relative to the original context length, so that length comes from the
    metadata or llama.cpp's own default (8192); the fit is then verified against every factor.
    """
    if factors.shape != (head_dim // 2,):
        raise CheckpointError(f"{source}: rope_freqs.weight has shape {factors.shape}, expected ({head_dim // 2},)")
    if np.allclose(factors, 1.0):
        return None
    factor = float(factors.max())
    context = int(original_context or _LLAMA3_DEFAULT_ORIGINAL_CONTEXT)
    candidates = [(1.0, 4.0)]  # Llama 3.1 / 3.2 values
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    x = context * inv_freq / (2 * math.pi)  # original_context / wavelength
    medium = (factors > 1 + 1e-4) & (factors < factor - 1e-4)
    if medium.sum() >= 2:
        smooth = (1 / factors[medium] - 1 / factor) / (1 - 1 / factor)  # = (x - low) / (high - low)
        slope, intercept = np.polyfit(x[medium], smooth, 1)
        if slope > 0:
            low = -intercept / slope
            candidates.insert(0, (float(low), float(low + 1 / slope)))
    for low, high in candidates:
        expected = llama3_rope_factors(head_dim, theta, factor, low, high, context)
        if np.allclose(expected, factors, rtol=1e-3, atol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": round(low, 6),
                    "high_freq_factor": round(high, 6), "original_max_position_embeddings": context}
    raise CheckpointError(f"{source}: rope_freqs.weight does not match Llama 3 RoPE scaling; this RoPE variant is "
                          f"not supported")
