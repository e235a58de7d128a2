"""The engine on the native CPU kernels (packed weights, in-place paged attention) against the XLA path."""

from __future__ import annotations

import pytest
from conftest import TINY_LLM_KWARGS
from engine_helpers import assert_pool_whole, tokens

import cpu_kernels
from cpu_kernels import PackedWeight
from jaxserve.model.cpu_weights import resolve_matmul_backend
from jaxserve.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason=f"CPU kernels unavailable: {cpu_kernels.unavailable_reason()}")

KWARGS = {**TINY_LLM_KWARGS, "compile_all_buckets": False, "max_num_seqs": 8, "max_num_batched_tokens": 64}


def _generate(directory, backend: str, **kwargs):
    from jaxserve import LLM

    llm = LLM(str(directory), **{**KWARGS, **kwargs}, matmul_backend=backend, attention_backend=backend)
    prompts = [{"prompt_token_ids": tokens(s, n)} for s, n in [(1, 5), (2, 40), (3, 17), (4, 100), (5, 1)]]
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=7, max_tokens=24, ignore_eos=True, logprobs=2)]
    outs = llm.generate(prompts, [params[i % 2] for i in range(len(prompts))], use_tqdm=False)
    assert_pool_whole(llm.engine)
    return llm, [o.outputs[0] for o in outs]


# ~12 s each on 2 cores. int8 weights and chunked prompts (16-token steps) run in make test-all only; in make test
# the native kernels over int8 weights and over prompt chunks stay covered by
# tests/quant/test_quant_model.py::test_native_cpu_kernels_compute_the_same_quantized_model (int8 per channel and
# per group, whole and 4-token chunks) and tests/model/test_hf_parity.py::test_prompt_logits_match_transformers
# (the cpu backend over two prompt chunks), and the engine here keeps float and int4 + int8 KV.
@pytest.mark.parametrize("kwargs", [{}, pytest.param({"quantization": "int8"}, marks=pytest.mark.slow),
                                    {"quantization": "int4", "kv_cache_dtype": "int8"},
                                    pytest.param({"max_num_batched_tokens": 16}, marks=pytest.mark.slow)])
def test_native_kernels_give_the_xla_paths_tokens(tiny_model, kwargs, monkeypatch):
    directory, _ = tiny_model
    native, ours = _generate(directory, "cpu", **kwargs)
    # The XLA quantized matmul takes bfloat16 operands above 16 rows (prefill); the kernels stay in float32, so the
    # reference here does too.
    monkeypatch.setattr("jaxserve.quant.matmul.FLOAT32_MAX_ROWS", 1 << 30)
    _, ref = _generate(directory, "xla", **kwargs)
    layers = native.engine.runner.params["layers"]
    assert all(isinstance(layers[k], PackedWeight) for k in ("wqkv", "wo", "w_gate_up", "w_down"))  # fused
    assert not {"wq", "wk", "wv", "w_gate", "w_up"} & layers.keys()
    for a, b in zip(ours, ref):
        assert a.token_ids == b.token_ids
        if b.logprobs:  # the seeded rows: same draws, logprobs equal to rounding
            for la, lb in zip(a.logprobs, b.logprobs):
                assert la.keys() == lb.keys()
                assert max(abs(la[t] - lb[t]) for t in la) < 1e-4


@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                                    SamplingParams(temperature=0.8, seed=11, max_tokens=16, ignore_eos=True)])
def test_native_sampler_gives_the_xla_paths_tokens(tiny_model, params):
    """Batches that are all greedy or all plainly sampled take the native vocabulary reduction (the "greedy" /
    "sample" variants); the tokens are the XLA path's."""
    from jaxserve import LLM

    directory, _ = tiny_model
    prompts = [{"prompt_token_ids": tokens(s, n)} for s, n in [(1, 5), (2, 40), (3, 17)]]
    runs = []
    for backend in ("cpu", "xla"):
        llm = LLM(str(directory), **KWARGS, matmul_backend=backend, attention_backend=backend)
        runs.append([o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)])
        assert_pool_whole(llm.engine)
    assert runs[0] == runs[1]


def test_memory_usage_counts_the_packed_weights(tiny_model):
    from jaxserve import LLM

    directory, _ = tiny_model
    xla = LLM(str(directory), **KWARGS, quantization="int4", matmul_backend="xla").memory_usage()
    native = LLM(str(directory), **KWARGS, quantization="int4", matmul_backend="cpu").memory_usage()
    # Same bytes: the tile layout only reorders (the tiny model's 64/128/256 channels need no padding).
    assert native["weights_bytes"] == xla["weights_bytes"]


def test_backend_choice_is_checked():
    assert resolve_matmul_backend("xla", "cpu") == "xla"
    assert resolve_matmul_backend("auto", "tpu") == "xla"
    with pytest.raises(ValueError, match="matmul_backend must be one of"):
        resolve_matmul_backend("triton", "cpu")
    with pytest.raises(ValueError, match="XLA:CPU only"):
        resolve_matmul_backend("cpu", "gpu")
    with pytest.raises(ValueError, match="not split over devices"):
        resolve_matmul_backend("cpu", "cpu", tensor_parallel_size=2)
    if cpu_kernels.has_simd():
        assert resolve_matmul_backend("auto", "cpu") == "cpu"
