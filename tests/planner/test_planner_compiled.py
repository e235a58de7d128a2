"""The planner with the page geometry `serve` uses and with the compiler's workspace (`--compiled-workspace`)."""

from __future__ import annotations

import json

import pytest

from jaxserve.cli import main


def _plan(capsys, *flags: str) -> dict:
    assert main(["plan", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_tpu_plans_count_the_padded_pages(capsys) -> None:
    """SmolLM2's 64-wide heads are stored padded to 128 lanes for the TPU kernels: twice the KV bytes per token,
    so about half the pages in the same budget; the XLA path keeps them unpadded."""
    common = ["--model", "smollm2-135m", "--device", "tpu-v5e", "--max-model-len", "4096"]
    kernels = _plan(capsys, *common)
    xla = _plan(capsys, *common, "--attention-backend", "xla")
    assert (kernels["page_head_dim"], xla["page_head_dim"]) == (128, 64)
    assert kernels["kv_bytes_per_token"] == 2 * xla["kv_bytes_per_token"]
    assert kernels["num_kv_blocks"] < 0.51 * xla["num_kv_blocks"]
    gpu = _plan(capsys, "--model", "smollm2-135m", "--device", "h100", "--max-model-len", "4096")
    assert gpu["page_head_dim"] == 64  # a power of two already


def test_compiled_workspace_replaces_the_estimate(capsys, tmp_path) -> None:
    report = {"tensor_parallel_size": 2, "max_num_seqs": 256, "max_num_batched_tokens": 512, "max_model_len": 8192,
              "block_size": 16, "per_chip": {"compiler": {"workspace": 3 * 2**30, "code": 2**20}}}
    path = tmp_path / "compile.json"
    path.write_text(json.dumps(report))
    common = ["--model", "llama-3-8b", "--device", "h100", "--num-devices", "2", "--max-model-len", "8192",
              "--max-num-seqs", "256"]
    estimate = _plan(capsys, *common)
    compiled = _plan(capsys, *common, "--compiled-workspace", str(path))
    assert estimate["workspace_source"] == "estimate" and compiled["workspace_source"] == "compiler"
    assert compiled["workspace_bytes"] == 2 * (3 * 2**30 + 2**20)
    assert compiled["num_kv_blocks"] < estimate["num_kv_blocks"]  # a larger workspace leaves fewer pages
    assert main(["plan", *common[:-2], "--max-num-seqs", "128", "--compiled-workspace", str(path)]) == 2
    assert "max_num_seqs=256" in capsys.readouterr().err
    path.write_text("{}")
    assert main(["plan", *common, "--compiled-workspace", str(path)]) == 2
    assert "not a `jaxserve compile --json` report" in capsys.readouterr().err
