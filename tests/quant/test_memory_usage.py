"""LLM.memory_usage() on the default model: quantized weights and int8 KV pages take what the issue allows."""

from __future__ import annotations

import logging

import pytest

from jaxserve.kv_cache import kv_bytes_per_token

BUDGET = 64 * 2**20
ENGINE = dict(max_model_len=2048, max_num_seqs=64, max_num_batched_tokens=64, compile_all_buckets=False,
              kv_cache_memory=BUDGET, progress=False)


@pytest.mark.parametrize("scheme,limit", [("int8", 0.55), ("int4", 0.32)])
def test_quantized_weights_and_int8_kv_fit_their_budgets(scheme, limit, caplog):
    from jaxserve import LLM

    with caplog.at_level(logging.INFO, logger="jaxserve"):
        llm = LLM(quantization=scheme, kv_cache_dtype="int8", **ENGINE)
    usage = llm.memory_usage()
    model = llm.engine.config.model
    bf16_weights = 2 * model.num_parameters()
    assert usage["weights_bytes"] <= limit * bf16_weights
    assert usage["kv_bytes_per_token"] == kv_bytes_per_token(model, "int8") <= 0.55 * kv_bytes_per_token(
        model, "bfloat16")
    assert usage["kv_cache_bytes"] == usage["num_kv_blocks"] * 16 * usage["kv_bytes_per_token"]
    # The same budget holds more pages than float pages would (bfloat16: budget / (23040 B x 16)).
    bf16_pages = BUDGET // (kv_bytes_per_token(model, "bfloat16") * 16)
    assert usage["num_kv_blocks"] >= 1.8 * bf16_pages
    log = caplog.text
    assert f"int{4 if scheme == 'int4' else 8}/" in log and "MiB" in log and "bytes/token" in log
    assert f"({usage['kv_bytes_per_token']} bytes/token)" in log
