"""Roofline predictions: the limits they must respect and the shape of the curves."""

from __future__ import annotations

import json

import pytest

from jaxserve.cli import main
from jaxserve.planner import DEVICE_PRESETS, PlanRequest, get_device, model_bytes, plan, resolve_model
from jaxserve.planner.roofline import compute_bound_batch, decode_step, prefill, streamed_weight_bytes


def _llama3():
    return resolve_model("llama-3-8b")[1]


def test_batch_one_decode_is_the_weights_over_bandwidth():
    """At batch 1 a decode step streams the weights once; at short context that is nearly all of its bytes."""
    config, h100 = _llama3(), get_device("h100")
    weights = model_bytes(config, "bfloat16")
    step = decode_step(config, h100, batch=1, context=16, weights_bytes=weights, kv_dtype="bfloat16")
    assert not step.compute_bound
    assert step.seconds == pytest.approx(streamed_weight_bytes(config, weights) / h100.bandwidth, rel=0.01)
    assert streamed_weight_bytes(config, weights) < weights  # the untied embedding table is not streamed


def test_throughput_grows_with_batch_until_compute_bound():
    config, h100 = _llama3(), get_device("h100")
    weights = model_bytes(config, "bfloat16")
    turn = compute_bound_batch(config, h100, 128, weights, "bfloat16")
    assert turn is not None and 64 < turn < 1024  # ridge ~300 FLOP/byte on an H100: hundreds of sequences
    before = decode_step(config, h100, turn - 1, 128, weights, "bfloat16")
    at = decode_step(config, h100, turn, 128, weights, "bfloat16")
    assert not before.compute_bound and at.compute_bound
    rates = [b / decode_step(config, h100, b, 128, weights, "bfloat16").seconds for b in (1, 8, 64, turn)]
    assert rates == sorted(rates)
    # Reading the KV of long contexts keeps decode memory-bound at any batch.
    assert compute_bound_batch(config, h100, 32768, weights, "bfloat16") is None


def test_quantized_weights_shorten_memory_bound_steps():
    config, l4 = _llama3(), get_device("l4")
    t = {fmt: decode_step(config, l4, 1, 128, model_bytes(config, fmt), "bfloat16").seconds
         for fmt in ("bfloat16", "int8", "int4")}
    assert t["int4"] < t["int8"] < t["bfloat16"]


def test_long_prefill_is_compute_bound_and_quadratic_attention_shows():
    config, h100 = _llama3(), get_device("h100")
    weights = model_bytes(config, "bfloat16")
    short, long = (prefill(config, h100, n, weights, "bfloat16") for n in (2048, 8192))
    assert short.compute_bound and long.compute_bound
    assert long.seconds > 4 * short.seconds


def test_plan_fits_and_concurrency_from_memory():
    config = _llama3()
    p = plan(PlanRequest(model=config, device=get_device("h100"), max_model_len=8192))
    free = p["device_memory_bytes"] * 0.9 - p["model_bytes"] - p["workspace_bytes"]
    assert p["max_concurrency"] == int(free // p["kv_bytes_per_sequence"])
    int8 = plan(PlanRequest(model=config, device=get_device("h100"), max_model_len=8192, weight_format="int8"))
    assert int8["max_concurrency"] > p["max_concurrency"]
    big = plan(PlanRequest(model=resolve_model("llama-3-70b")[1], device=get_device("l4")))
    assert not big["fits"] and big["max_concurrency"] == 0
    seventy = resolve_model("llama-3-70b")[1]
    two = plan(PlanRequest(model=seventy, device=get_device("h100"), num_devices=2))
    assert not two["fits"]  # 141 GB of weights leave too little of 2 x 80 GB for one 8k-token sequence
    four = plan(PlanRequest(model=seventy, device=get_device("h100"), num_devices=4))
    assert four["fits"] and four["max_concurrency"] > 50


@pytest.mark.parametrize("device", sorted(DEVICE_PRESETS))
def test_every_device_preset_has_cited_numbers(device):
    spec = get_device(device)
    assert spec.source and spec.memory_bytes > 10e9 and spec.bandwidth > 100e9
    assert spec.flops_for("int8") >= spec.flops_for("bfloat16") > 50e12


def test_cli_json_and_errors(capsys):
    assert main(["plan", "--model", "mistral-7b", "--device", "a100-80gb", "--dtype", "int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weight_format"] == "int8" and out["max_model_len"] == 32768
    assert out["decode"][0]["batch"] == 1 and out["decode"][-1]["batch"] == out["max_concurrency"]
    assert main(["plan", "--device", "h900"]) == 2
    assert "unknown device 'h900'" in capsys.readouterr().err
    assert main(["plan", "--model", "gpt-5"]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["plan", "--device", "local"]) == 2
    assert "--measure" in capsys.readouterr().err
    assert main(["plan", "--device", "h100", "--gpu-memory-utilization", "1.5"]) == 2
    assert main(["plan", "--memory-gb", "24", "--bandwidth-gbs", "300", "--tflops", "100", "--device", "h100"]) == 0
    assert "24" in capsys.readouterr().out


def test_num_devices_must_split_the_heads_like_the_engine() -> None:
    """Llama-3-8B has 32 query heads over 8 KV heads: 2, 4 and 8 devices split it, 3 does not."""
    llama3 = resolve_model("llama-3-8b")[1]
    with pytest.raises(ValueError, match=r"tensor_parallel_size=3 does not divide .* valid sizes: 1, 2, 4, 8"):
        PlanRequest(model=llama3, device=get_device("h100"), num_devices=3)
    assert plan(PlanRequest(model=llama3, device=get_device("h100"), num_devices=8))["num_devices"] == 8
