"""End to end: the engine with attention_backend="pallas" (kernels in interpret mode on CPU) matches "xla"."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import pallas_kernels
from jaxserve.attention import dispatch
from jaxserve.attention.xla import paged_attention as xla_paged_attention
from jaxserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from jaxserve.engine.llm_engine import LLMEngine
from jaxserve.model.llama import init_params
from jaxserve.sampling_params import SamplingParams

# A tiny random GQA model (6 query heads over 2 KV heads: 3 per group, like SmolLM2) with head_dim 64, the
# smallest head_dim the TPU kernels take.
TINY_GQA = ModelConfig(architecture="llama", vocab_size=128, hidden_size=128, intermediate_size=128, num_layers=2,
                       num_heads=6, num_kv_heads=2, head_dim=64, max_position_embeddings=256, eos_token_ids=(2,))


def _engine(backend: str, block_size: int = 16) -> LLMEngine:
    config = EngineConfig(model=TINY_GQA, cache=CacheConfig(block_size=block_size, num_kv_blocks=40),
                          scheduler=SchedulerConfig(max_model_len=128, max_num_seqs=8, max_num_batched_tokens=32),
                          dtype="float32", compile_all_buckets=False, attention_backend=backend)
    # Weights small enough that attention is not one-hot: a 1.3x softmax-scale error in either kernel changes
    # these greedy tokens (checked when the test was written).
    params = init_params(TINY_GQA, jax.random.PRNGKey(0), scale=0.15)
    return LLMEngine(config, params, tokenizer=None, num_blocks=40, progress=False)


def _greedy(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> dict[str, list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    return done


def test_pallas_engine_matches_xla_greedy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked prefill (a 45-token prompt over 32-token steps), mixed lengths and page boundaries, then decode."""
    traced = []
    for name in ("paged_decode_attention", "ragged_paged_attention"):
        kernel = getattr(pallas_kernels, name)
        monkeypatch.setattr(pallas_kernels, name,
                            lambda *a, _k=kernel, _n=name, **kw: traced.append(_n) or _k(*a, **kw))
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(3, 128, n)] for n in (45, 16, 7)]
    ours = _greedy(_engine("pallas"), prompts, max_tokens=8)
    assert {"paged_decode_attention", "ragged_paged_attention"} <= set(traced)
    ref = _greedy(_engine("xla"), prompts, max_tokens=8)
    assert ours == ref
    assert all(len(t) == 8 for t in ours.values())


def test_dispatch_choices() -> None:
    import cpu_kernels
    from jaxserve.attention.cpu import paged_attention as cpu_paged_attention

    native = cpu_kernels.available() and cpu_kernels.has_simd()
    assert dispatch.get_attention_fn("auto", platform="cpu") is (cpu_paged_attention if native else
                                                                  xla_paged_attention)
    assert dispatch.get_attention_fn("xla", platform="cpu") is xla_paged_attention
    with pytest.raises(ValueError, match="XLA:CPU only"):
        dispatch.get_attention_fn("cpu", platform="tpu")
    assert dispatch.get_attention_fn("xla", platform="tpu") is xla_paged_attention
    assert dispatch.get_attention_fn("pallas", platform="cpu") is not xla_paged_attention
    assert dispatch.get_attention_fn("auto", model=TINY_GQA, block_size=16, kv_dtype="bfloat16",
                                     platform="tpu") is not xla_paged_attention
    windowed = ModelConfig(**{**TINY_GQA.__dict__, "sliding_window": 32})
    assert dispatch.get_attention_fn("pallas", model=windowed, block_size=16, kv_dtype="float32",
                                     platform="gpu") is xla_paged_attention
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        dispatch.get_attention_fn("triton")


@pytest.mark.parametrize("platform, block_size, head_dim, limits, match", [
    ("tpu", 4, 64, {}, "multiple of 8"),
    ("tpu", 16, 320, {}, "MAX_HEAD_DIM"),
    ("gpu", 8, 64, {}, "power-of-two page size"),
    ("gpu", 16, 64, {"max_model_len": 262144}, "MAX_MODEL_LEN"),
    ("tpu", 16, 64, {"max_num_seqs": 512}, "MAX_NUM_SEQS"),
])
def test_startup_checks_name_the_problem(platform: str, block_size: int, head_dim: int, limits: dict,
                                         match: str) -> None:
    model = ModelConfig(**{**TINY_GQA.__dict__, "head_dim": head_dim})
    with pytest.raises(ValueError, match=match):
        dispatch.get_attention_fn("pallas", model=model, block_size=block_size, kv_dtype="float32",
                                  platform=platform, **limits)
    # "auto" does not fail the engine: it logs and takes the XLA path (and the pages keep the model's head dim).
    assert dispatch.get_attention_fn("auto", model=model, block_size=block_size, kv_dtype="float32",
                                     platform=platform, **limits) is xla_paged_attention
    assert dispatch.page_head_dim("auto", model, platform, block_size=block_size, kv_dtype="float32",
                                  **limits) == head_dim


@pytest.mark.parametrize("platform, head_dim, page_dim", [
    ("tpu", 64, 128), ("tpu", 80, 128), ("tpu", 96, 128), ("tpu", 112, 128), ("tpu", 128, 128),
    ("gpu", 48, 64), ("gpu", 80, 128), ("gpu", 96, 128), ("gpu", 256, 256),
])
def test_padded_head_dims_pass_the_startup_check(platform: str, head_dim: int, page_dim: int) -> None:
    model = ModelConfig(**{**TINY_GQA.__dict__, "head_dim": head_dim})
    geometry = {"block_size": 16, "kv_dtype": "bfloat16"}
    assert dispatch.get_attention_fn("pallas", model=model, platform=platform, **geometry) is not xla_paged_attention
    assert dispatch.page_head_dim("pallas", model, platform, **geometry) == page_dim
    assert dispatch.page_head_dim("xla", model, platform, **geometry) == head_dim


def test_engine_rejects_unsupported_pages_at_startup() -> None:
    with pytest.raises(ValueError, match="attention_backend='pallas' on cpu"):
        _engine("pallas", block_size=4)
