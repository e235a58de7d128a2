"""The default model's perplexity with quantized weights and int8 KV pages against float32 (slow: three engines)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

TEXT = Path(__file__).parents[2] / "bench" / "data" / "public_domain.txt"
ENGINE = dict(max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64, compile_all_buckets=False, progress=False)


def _perplexity(llm, ids: list[int]) -> float:
    from jaxserve.sampling_params import SamplingParams

    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    return math.exp(-np.mean([out.prompt_logprobs[i][ids[i]] for i in range(1, len(ids))]))


@pytest.mark.slow
def test_quantized_perplexity_stays_within_the_issue_targets():
    from jaxserve import LLM

    ppl = {}
    for name, kw in (("float32", {}), ("int8", dict(quantization="int8", kv_cache_dtype="int8")),
                     ("int4", dict(quantization="int4"))):
        llm = LLM(**ENGINE, **kw)
        ids = llm.get_tokenizer().encode(TEXT.read_text())[:384]
        ppl[name] = _perplexity(llm, ids)
        del llm
    # Targets of the issue (int8 weights and int8 KV each <= 1%; here both at once, so 2%), int4 <= 6%.
    assert ppl["int8"] <= 1.02 * ppl["float32"]
    assert ppl["int4"] <= 1.06 * ppl["float32"]
    assert ppl["int4"] != ppl["float32"]
