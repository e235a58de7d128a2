"""Helpers for model tests: tiny random transformers checkpoints (the reference) and a paged forward pass."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


def make_tiny_hf(directory: Path, arch: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """Save a tiny random transformers model (safetensors) to `directory`; returns the float32 torch model."""
    import transformers

    torch.manual_seed(seed)
    config_cls, model_cls = (getattr(transformers, name) for name in ARCHS[arch])
    kwargs: dict[str, Any] = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, initializer_range=0.1)
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped or swapped one shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def hf_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    """float32 logits [T, V] of transformers for one unpadded sequence."""
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def hf_greedy(model: torch.nn.Module, tokens: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation, no EOS stopping, explicit all-ones attention mask."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0)
    return out[0, len(tokens):].tolist()


def paged_prompt_logits(loaded: Any, tokens: list[int], chunks: list[int] | None = None,
                        block_size: int = 16, kv_dtype: str = "float32", unrolled: bool = False,
                        backend: str = "xla") -> np.ndarray:
    """Logits [T, V] from `jaxserve.model.llama.forward` over a fresh paged KV cache of `kv_dtype`.

    `chunks` lists chunk lengths (default: the whole prompt at once); later chunks read earlier ones from pages
    (int8 pages dequantized). `unrolled` runs per-layer weights in an unrolled loop instead of the scan.
    `backend` "cpu" packs the weights for the native CPU kernels and runs their matmuls and attention.
    Pages are handed out in reverse order so a table/slot mix-up cannot pass by accident.
    """
    import jax
    import jax.numpy as jnp

    from jaxserve.attention.metadata import AttentionMetadata
    from jaxserve.attention.xla import context_chunk_blocks
    from jaxserve.kv_cache import allocate_kv_cache
    from jaxserve.model.llama import compute_logits, forward, unstack_layers
    from jaxserve.attention.dispatch import get_attention_fn
    from jaxserve.model.cpu_weights import pack_params

    cfg = loaded.config
    params = unstack_layers(loaded.params) if unrolled else loaded.params
    params = jax.device_put(pack_params(params) if backend == "cpu" else params)
    num_pages = -(-len(tokens) // block_size)
    cache = allocate_kv_cache(cfg, num_pages + 3, block_size, kv_dtype)
    chunk = context_chunk_blocks(block_size)
    table = np.zeros((1, -(-num_pages // chunk) * chunk), np.int32)
    table[0, :num_pages] = np.arange(num_pages + 2, 2, -1)
    attention = get_attention_fn(backend, platform="cpu")
    step = jax.jit(functools.partial(forward, config=cfg, attention_fn=attention), donate_argnames=("cache",))
    logits_fn = jax.jit(compute_logits)
    out, start = [], 0
    for n in chunks or [len(tokens)]:
        pos = np.arange(start, start + n, dtype=np.int32)
        slots = (table[0, pos // block_size] * block_size + pos % block_size).astype(np.int32)
        meta = AttentionMetadata(jnp.asarray(slots), jnp.asarray(table), jnp.asarray([start + n], jnp.int32),
                                 jnp.asarray([0, n], jnp.int32))
        hidden, cache = step(params, tokens=jnp.asarray(tokens[start:start + n], jnp.int32),
                             positions=jnp.asarray(pos), cache=cache, meta=meta)
        out.append(np.asarray(logits_fn(params, hidden)))
        start += n
    assert start == len(tokens)
    return np.concatenate(out)


def first_mismatch_note(model: torch.nn.Module, prompt: list[int], ours: list[int], ref: list[int]) -> str:
    """For a failing greedy comparison: where the sequences part and how close the reference's top-2 were."""
    i = next((j for j, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    if i >= len(ref):
        return f"lengths differ: {len(ours)} vs {len(ref)}"
    top = np.sort(hf_logits(model, prompt + ref[:i])[-1])[::-1]
    return (f"first difference at output {i}: ours {ours[i:i + 4]} ref {ref[i:i + 4]}, "
            f"ref top-2 gap {top[0] - top[1]:.2e}")
