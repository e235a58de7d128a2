"""The `jaxserve` command line: generate on the default model, convert a checkpoint to the native format."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from jaxserve.cli import build_parser, main

SMALL_ENGINE = ["--max-model-len", "256", "--max-num-seqs", "8", "--max-num-batched-tokens", "64", "--no-progress"]


def test_engine_flags_map_one_to_one_to_engine_args():
    ns = build_parser().parse_args(["generate", "some/model", "--max-num-seqs", "3", "--kv-cache-memory", "1048576",
                                    "--dtype", "bfloat16", "--skip-tokenizer-init", "--no-compile-all-buckets"])
    assert (ns.model, ns.max_num_seqs, ns.kv_cache_memory, ns.dtype) == ("some/model", 3, 1 << 20, "bfloat16")
    assert ns.skip_tokenizer_init is True and ns.compile_all_buckets is False


def test_generate_on_the_default_model_prints_json(capsys):
    # Buckets compile as they are first used (compiling all of them up front is tests/engine/test_kv_donation.py's).
    assert main(["generate", *SMALL_ENGINE, "--no-compile-all-buckets", "--chat", "--json", "--max-tokens", "16",
                 "--prompt", "What is the capital of France?"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["prompt"] == "What is the capital of France?"
    assert "Paris" in record["text"]
    assert record["finish_reason"] in ("stop", "length")


def test_generate_reports_bad_input_as_an_error(capsys):
    # The request is refused before any step runs: compiling every bucket first (~10 s here) would test nothing.
    assert main(["generate", *SMALL_ENGINE, "--no-compile-all-buckets", "--max-tokens", "1000", "--prompt",
                 "hello"]) == 2
    assert "maximum context length is 256" in capsys.readouterr().err


def test_convert_then_load_gives_the_same_tokens(tmp_path):
    import torch
    import transformers

    from jaxserve import LLM, SamplingParams

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "native"), "--no-progress"]) == 0
    kwargs = dict(skip_tokenizer_init=True, max_model_len=64, max_num_seqs=8, max_num_batched_tokens=32,
                  compile_all_buckets=False, progress=False)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompt = {"prompt_token_ids": [3, 14, 15, 92, 65, 35]}
    original = LLM(str(tmp_path / "hf"), **kwargs).generate(prompt, params, use_tqdm=False)
    converted = LLM(str(tmp_path / "native"), **kwargs).generate(prompt, params, use_tqdm=False)
    assert converted[0].outputs[0].token_ids == original[0].outputs[0].token_ids


def test_serve_flags_reach_the_server(monkeypatch):
    import jaxserve.server.launch as launch

    seen = {}
    monkeypatch.setattr(launch, "serve", lambda args, **kwargs: seen.update(kwargs, model=args.model))
    assert main(["serve", "m", "--port", "8123", "--max-queue-len", "5", "--max-body-bytes", "1000",
                 "--graceful-shutdown-s", "7"]) == 0
    assert (seen["model"], seen["port"], seen["max_queue_len"], seen["max_body_bytes"]) == ("m", 8123, 5, 1000)
    assert seen["graceful_shutdown_s"] == 7


def test_log_level_is_accepted_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["--log-level", "DEBUG", "convert", "a", "b"]).log_level == "DEBUG"
    assert parser.parse_args(["convert", "a", "b", "--log-level", "WARNING"]).log_level == "WARNING"
    assert parser.parse_args(["convert", "a", "b"]).log_level == "INFO"
