"""The default model's perplexity with quantized weights and int8 KV pages against float32 (slow: three engines)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

TEXT = Path(__file__).parents[2] / "bench" / "data" / "public_domain.txt"
WINDOW = 512
ENGINE = dict(max_model_len=WINDOW + 8, max_num_seqs=8, max_num_batched_tokens=64, compile_all_buckets=False,
              progress=False)


def _perplexity(llm, ids: list[int]) -> float:
    """Over the whole text in windows of WINDOW tokens, as bench/quantization.py scores it (~1,500 tokens: the
    first 384 alone put int4 at +6.00%, exactly on its bound, where the whole text gives +4.8%)."""
    from jaxserve.sampling_params import SamplingParams

    windows = [ids[i:i + WINDOW] for i in range(0, len(ids) - 1, WINDOW)]
    outs = llm.generate([{"prompt_token_ids": w} for w in windows], SamplingParams(max_tokens=1, prompt_logprobs=0),
                        use_tqdm=False)
    nll = [-o.prompt_logprobs[i][w[i]] for o, w in zip(outs, windows) for i in range(1, len(w))]
    return math.exp(np.mean(nll))


@pytest.mark.slow
def test_quantized_perplexity_stays_within_the_issue_targets():
    from jaxserve import LLM

    ppl = {}
    for name, kw in (("float32", {}), ("int8", dict(quantization="int8", kv_cache_dtype="int8")),
                     ("int4", dict(quantization="int4"))):
        llm = LLM(**ENGINE, **kw)
        ids = llm.get_tokenizer().encode(TEXT.read_text())
        ppl[name] = _perplexity(llm, ids)
        del llm
    # Targets of the issue (int8 weights and int8 KV each <= 1%; here both at once, so 2%), int4 <= 6%.
    assert ppl["int8"] <= 1.02 * ppl["float32"]
    assert ppl["int4"] <= 1.06 * ppl["float32"]
    assert ppl["int4"] != ppl["float32"]
