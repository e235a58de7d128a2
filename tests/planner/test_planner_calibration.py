"""The calibrated TPOT (jaxserve.planner.calibration): interpolation of the profile, how plan() composes it with
attention, how many layers a profile builds, and `jaxserve plan --device local --measure` end to end on a tiny
model. How close the calibrated numbers come to the engine's measured steps is bench/capacity.py's job, not a
test's (timings are never asserted here)."""

from __future__ import annotations

import json

import pytest

from jaxserve.cli import main
from jaxserve.config import ModelConfig
from jaxserve.planner import PlanRequest, get_device, plan, resolve_model
from jaxserve.planner.calibration import (DecodeProfile, calibrated_decode_seconds, layers_to_time,
                                          profile_decode_step, profiled_rows)
from jaxserve.planner.report import format_plan

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def _profile(num_layers: int = 10) -> DecodeProfile:
    return DecodeProfile("bfloat16", rows=(1, 2, 4, 8), layer_seconds=(1e-3, 1e-3, 1.5e-3, 3e-3),
                         head_seconds=(2e-3, 2e-3, 2e-3, 4e-3), num_layers=num_layers)


def test_profile_interpolates_between_rows_and_extrapolates_beyond():
    p = _profile()
    assert p.step_seconds(1) == pytest.approx(10 * 1e-3 + 2e-3)
    assert p.step_seconds(4) == pytest.approx(10 * 1.5e-3 + 2e-3)
    assert p.step_seconds(6) == pytest.approx(10 * 2.25e-3 + 3e-3)  # halfway between 4 and 8
    # beyond the last row count, the last segment's slope: 16 rows -> layer 3e-3 + 8 * 3.75e-4, head 4e-3 + 8 * 5e-4
    assert p.step_seconds(16) == pytest.approx(10 * 6e-3 + 8e-3)
    assert profiled_rows(1) == (1,) and profiled_rows(64) == (1, 2, 4, 8, 16, 32, 64)
    assert profiled_rows(100) == (1, 2, 4, 8, 16, 32, 64, 128) and profiled_rows(10**6)[-1] == 256
    with_host = DecodeProfile(**{**p.to_dict(), "host_seconds": (1e-3, 1e-3, 1e-3, 2e-3)})
    assert with_host.step_seconds(6) == pytest.approx(p.step_seconds(6) + 1.5e-3)


def test_plan_adds_the_calibrated_tpot_with_attention_growing_with_context():
    _, model = resolve_model("llama-3-8b")
    device, profile = get_device("h100"), _profile(model.num_layers)
    rows = plan(PlanRequest(model=model, device=device, max_model_len=4096, profile=profile))["decode"]
    for row in rows:
        assert row["calibrated_tpot_s"] > profile.step_seconds(row["batch"])
        assert row["calibrated_tokens_per_s"] == pytest.approx(row["batch"] / row["calibrated_tpot_s"])
    short = calibrated_decode_seconds(model, device, profile, 8, 128, "bfloat16", "bfloat16")
    long = calibrated_decode_seconds(model, device, profile, 8, 4096, "bfloat16", "bfloat16")
    assert long > short > profile.step_seconds(8)
    assert "calibrated_tpot_s" not in plan(PlanRequest(model=model, device=device))["decode"][0]
    with pytest.raises(ValueError, match="measured for bfloat16 weights, not int8"):
        PlanRequest(model=model, device=device, weight_format="int8", profile=profile)
    with pytest.raises(ValueError, match="one device"):
        PlanRequest(model=model, device=device, num_devices=2, profile=profile)


def test_profile_builds_every_layer_of_small_models_and_streams_large_ones():
    assert layers_to_time(resolve_model("smollm2-135m")[1], "float32") == 30
    llama70 = resolve_model("llama-2-70b")[1]
    timed = layers_to_time(llama70, "int8")
    assert 1 <= timed < llama70.num_layers  # ~0.86 GB per int8 layer: one is past any cache


@pytest.mark.parametrize("weight_format", ["float32", "int8", "int4"])
def test_profile_decode_step_runs_the_engine_functions(weight_format):
    model = ModelConfig.from_hf_config(TINY)
    host = weight_format == "float32"  # the host measurement does not depend on the format: once is enough
    profile = profile_decode_step(model, weight_format, max_batch=3, repeats=1, host=host)
    assert profile.rows == (1, 2, 4) and profile.num_layers == 2 and profile.weight_format == weight_format
    assert all(s > 0 for s in profile.layer_seconds + profile.head_seconds)
    assert (profile.host_seconds is not None) == host
    if host:
        assert len(profile.host_seconds) == 3 and all(s > 0 for s in profile.host_seconds)


def test_cli_local_measure_prints_the_calibrated_column(tmp_path, capsys):
    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(TINY))
    args = ["plan", "--model", str(config), "--device", "local", "--measure", "--dtype", "float32",
            "--max-num-seqs", "4", "--max-model-len", "128"]
    assert main([*args, "--json"]) == 0  # measures once (seconds); the table is the same dict rendered
    out = json.loads(capsys.readouterr().out)
    assert out["max_concurrency"] == 4 and [r["batch"] for r in out["decode"]] == [1, 2, 4]
    assert all(r["calibrated_tpot_s"] > 0 for r in out["decode"])
    table = format_plan(out)
    assert "calibrated" in table and f"{out['decode'][-1]['calibrated_tokens_per_s']:.1f}" in table
