"""`jaxserve compile` end to end: a small model's every step function through the TPU and the GPU compiler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxserve.cli import main
from jaxserve.engine.buckets import power_of_two_buckets
from jaxserve.engine.sampler import VARIANTS

# A small GQA model (head_dim 64, 2 layers): the steps compile in seconds, the kernels see grouped heads.
TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1024, "max_position_embeddings": 1024,
        "head_dim": 64}
FLAGS = ["--max-model-len", "512", "--max-num-seqs", "4", "--max-num-batched-tokens", "16"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _expected_steps() -> set[str]:
    """The step functions the runner warms up for FLAGS, named as the report names them."""
    tokens, rows = power_of_two_buckets(1, 16), power_of_two_buckets(1, 4)
    names = {f"model/{t}" for t in tokens} | {f"prompt_logprobs/{t}" for t in tokens} | {"copy"}
    names |= {f"sample/{r}/{v}" for r in rows for v in VARIANTS}
    names |= {f"select/{t}/{r}" for t in tokens for r in rows if r <= max(t, 1)}
    return names


@pytest.mark.parametrize("target, extra", [("tpu-v5e", []), ("h100", ["--kv-cache-dtype", "int8"]),
                                           ("tpu-v5e:2x2", ["--tensor-parallel-size", "2", "--quantization", "int4"])])
def test_compile_a_small_model(tiny_config: str, target: str, extra: list[str], capsys, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    assert main(["compile", tiny_config, "--target", target, "--json", "--out", str(out), *FLAGS, *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    names = {s["name"] for s in report["steps"]}
    assert names == _expected_steps()
    assert not report["failures"]
    assert report["attention_backend"] == "auto"
    model_steps = [s for s in report["steps"] if s["name"].startswith("model/")]
    for step in model_steps:
        memory = step["memory"]
        assert memory["argument_size_in_bytes"] > 0 and step["compile_s"] > 0
        # The KV pages are donated: the compiler aliases them to the output rather than holding a second copy.
        assert memory["alias_size_in_bytes"] > 0
    # More tokens, more work: the compiler's FLOPs grow with the token bucket.
    flops = [s["flops"] for s in sorted(model_steps, key=lambda s: int(s["name"].split("/")[1]))]
    assert all(f is not None for f in flops) and flops[-1] > flops[0]
    chip = report["per_chip"]
    assert chip["fits"] and chip["compiler"]["resident"] >= chip["planner"]["weights"]
    assert any(out.iterdir()), "--out wrote no compiled executables"


def test_a_deployment_that_does_not_fit_is_refused(capsys) -> None:
    """Llama-3-70B in bfloat16 (~141 GB) cannot fit one 80 GB H100: refused before compiling, naming the sizes."""
    assert main(["compile", "llama-3-70b", "--target", "h100"]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "GiB" in err


def test_bad_target_and_tensor_parallel_size(tiny_config: str, capsys) -> None:
    assert main(["compile", tiny_config, "--target", "tpu-v9"]) == 2
    assert "unknown compile target" in capsys.readouterr().err
    assert main(["compile", tiny_config, "--target", "tpu-v5e", "--tensor-parallel-size", "2"]) == 2
    assert "needs 2 devices" in capsys.readouterr().err


def test_a_step_the_compiler_refuses_is_named(tiny_config: str, capsys) -> None:
    """A KV pool of ~24 GiB on a 16 GiB v5e: the compiler refuses the model step (HBM), the command exits 1
    naming the step, its shapes and the compiler's message, and the other step functions still compile."""
    flags = ["compile", tiny_config, "--target", "tpu-v5e", "--json", "--num-kv-blocks", "750000", *FLAGS]
    assert main(flags) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["failures"] and all(name.startswith(("model/", "copy")) for name in report["failures"])
    assert any(s["name"].startswith("sample/") and s["error"] is None for s in report["steps"])
    assert "error: model/1 [int32[1]" in captured.err and "does not compile for tpu-v5e" in captured.err
    assert "memory" in captured.err.lower()
