"""Quantization on the default model: memory, quality and speed of float32, bfloat16, int8, int4 and int8 KV pages.

    python bench/quantization.py [--configs float32,bfloat16,int8,int4,int8-kv,int4-requant] [--num-prompts 20]

For each configuration, in one run:
  - weights bytes and KV bytes per token (`LLM.memory_usage()`);
  - perplexity on fixed public-domain text (bench/data/public_domain.txt: Austen, Melville, Dickens, Carroll,
    Shelley) from `prompt_logprobs`, in windows of --window tokens;
  - greedy agreement with float32: 64 greedy tokens for each of --num-prompts prompts, the fraction of positions
    that match float32's tokens and the mean length of the matching prefix;
  - decode tokens/s at batch 1 and 32 (engine decode-step time: device step plus its one transfer each way);
  - median decode-step ms at batch 1 and 32 (context 128), measured interleaved across configurations in one
    process at the end (--rounds), the fairer speed comparison on a shared machine.

`int4` quantizes the default GGUF directly: its Q4_1 layers load bit-exactly as int4/g32 with offsets, and its Q8_0
embedding is requantized to int4/g32. `int4-requant` instead converts the model to a float32 native checkpoint
first and quantizes every weight from float (symmetric int4, group 32), which is what int4 costs on a float model.
Writes bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).parent
CONFIGS = {
    "float32": dict(dtype="float32"),
    "bfloat16": dict(dtype="bfloat16"),
    "int8": dict(dtype="float32", quantization="int8"),
    "int4": dict(dtype="float32", quantization="int4", quantization_group_size=32),
    "int8-kv": dict(dtype="float32", kv_cache_dtype="int8"),
    "int4-requant": dict(dtype="float32", quantization="int4", quantization_group_size=32),
}
PROMPTS = [
    "The quick brown fox", "def fibonacci(n):", "The capital of France is", "Once upon a time, in a small village,",
    "The three primary colors are", "import numpy as np\n", "In 1492, Columbus", "Water boils at",
    "My favourite recipe for pancakes is", "The theory of relativity states that", "SELECT name FROM users WHERE",
    "The best way to learn a language is", "Photosynthesis is the process by which", "Dear Sir or Madam,",
    "The stock market today", "Here is a haiku about autumn:", "The largest planet in the solar system is",
    "To be or not to be,", "A good night's sleep", "The first step in solving any problem is",
]
CHAT = ["Write a haiku about the sea.", "Name three primary colors.", "What is 17 times 3?",
        "Give me a tip for learning to cook.", "Explain what a CPU does in one sentence.",
        "Suggest a name for a pet turtle.", "What is the capital of Japan?", "Write one sentence about rain.",
        "List two fruits that are red.", "Say hello in French.", "Why is the sky blue?", "Tell me a short joke."]


def perplexity(llm, token_ids: list[int], window: int) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of the text in non-overlapping windows; returns (ppl, tokens scored)."""
    from jaxserve.sampling_params import SamplingParams

    windows = [token_ids[i:i + window] for i in range(0, len(token_ids), window)]
    windows = [w for w in windows if len(w) > 1]
    outs = llm.generate([{"prompt_token_ids": w} for w in windows],
                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)
    nll = []
    for w, out in zip(windows, outs):
        for pos in range(1, len(w)):
            nll.append(-out.prompt_logprobs[pos][w[pos]])
    return math.exp(float(np.mean(nll))), len(nll)


def greedy(llm, prompts: list[dict], max_tokens: int) -> list[list[int]]:
    from jaxserve.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def decode_rate(llm, prompts: list[dict], max_tokens: int) -> float:
    """Decode tokens/s over one greedy run of `prompts` together (engine decode-step time only)."""
    engine = llm.engine
    greedy(llm, prompts, 4)  # compile this batch's buckets first
    engine.step_time["decode"], engine.step_tokens["decode"] = 0.0, 0
    greedy(llm, prompts, max_tokens)
    return engine.step_tokens["decode"] / engine.step_time["decode"]


def agreement(ours: list[list[int]], ref: list[list[int]]) -> tuple[float, float]:
    """(fraction of positions equal, mean length of the equal prefix) against the reference."""
    same = [np.mean([a == b for a, b in zip(o, r)]) for o, r in zip(ours, ref)]
    prefix = [next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), len(r)) for o, r in zip(ours, ref)]
    return float(np.mean(same)), float(np.mean(prefix))


def step_times(names: list[str], rounds: int, context: int = 128) -> dict[str, dict[str, float]]:
    """Median decode-step ms at batch 1 and 32 per configuration, measured interleaved (one step of each
    configuration per round), so load from other processes on a shared machine hits every configuration alike."""
    import statistics

    from jaxserve.checkpoint import default_model_path, load_checkpoint
    from jaxserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from jaxserve.engine.engine_args import EngineArgs, quant_config
    from jaxserve.engine.runner import ModelRunner
    from jaxserve.engine.scheduler import ScheduledBatch
    from jaxserve.engine.sequence import Sequence
    from jaxserve.sampling_params import SamplingParams

    pages_per_seq = -(-(context + 1) // 16)
    runners, batches = {}, {}
    for name in names:
        args = EngineArgs(**CONFIGS[name])
        loaded = load_checkpoint(default_model_path(), dtype=args.dtype, progress=False,
                                 quantization=quant_config(args))
        config = EngineConfig(model=loaded.config, cache=CacheConfig(kv_cache_dtype=args.kv_cache_dtype),
                              scheduler=SchedulerConfig(max_model_len=1024, max_num_seqs=32,
                                                        max_num_batched_tokens=64),
                              dtype=args.dtype, compile_all_buckets=False)
        runners[name] = ModelRunner(config, jax.device_put(loaded.params), 32 * pages_per_seq + 1)
    for size in (1, 32):
        seqs = []
        for i in range(size):
            seq = Sequence(str(i), [1] * (context + 1), SamplingParams(temperature=0), 0, 0, 0.0)
            seq.block_table = list(range(1 + i * pages_per_seq, 1 + (i + 1) * pages_per_seq))
            seq.num_computed_tokens = context
            seqs.append(seq)
        batches[size] = ScheduledBatch(seqs, [1] * size, is_prefill=False)
    samples: dict[tuple[str, int], list[float]] = {}
    for name, runner in runners.items():
        for size, batch in batches.items():
            runner.execute(batch, "greedy")  # compile
    for _ in range(rounds):
        for name, runner in runners.items():
            for size, batch in batches.items():
                start = time.perf_counter()
                runner.execute(batch, "greedy")
                samples.setdefault((name, size), []).append(1000 * (time.perf_counter() - start))
    return {name: {f"step_ms_b{size}": statistics.median(samples[(name, size)]) for size in batches}
            for name in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="float32,bfloat16,int8,int4,int8-kv,int4-requant")
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved decode-step timing rounds (0: skip)")
    parser.add_argument("--out", default=str(HERE / "results" / "quantization.json"))
    args = parser.parse_args()

    from jaxserve import LLM
    from jaxserve.checkpoint import convert, default_model_path

    # Prompts are prefilled in chunks of 64 tokens, so every chunk after the first reads its context back from the
    # KV pages: otherwise a 512-token window would attend only to its own (unquantized) K/V and int8 KV pages would
    # never show in the perplexity.
    engine_kw = dict(max_model_len=1024, max_num_seqs=32, max_num_batched_tokens=64, compile_all_buckets=False,
                     progress=False)
    text = (HERE / "data" / "public_domain.txt").read_text()
    rows, reference = [], None
    tmp = tempfile.TemporaryDirectory()
    for name in args.configs.split(","):
        model = default_model_path()
        if name == "int4-requant":
            model = str(Path(tmp.name) / "float32")
            if not Path(model).exists():
                convert(default_model_path(), model, dtype="float32", progress=False)
        start = time.perf_counter()
        llm = LLM(model, **CONFIGS[name], **engine_kw)
        tok = llm.get_tokenizer()
        prompts = [{"prompt_token_ids": tok.encode(p)} for p in PROMPTS]
        for c in CHAT:
            rendered = tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True)
            prompts.append({"prompt_token_ids": tok.encode(rendered, add_special_tokens=False)})
        ppl, scored = perplexity(llm, tok.encode(text), args.window)
        outs = greedy(llm, prompts[:args.num_prompts], args.new_tokens)
        if reference is None:
            if name != "float32":
                raise SystemExit("the first configuration must be float32 (the greedy reference)")
            reference = outs
        same, prefix = agreement(outs, reference)
        rate1 = decode_rate(llm, prompts[:1], args.new_tokens)
        rate32 = decode_rate(llm, prompts[:32], args.new_tokens)
        mem = llm.memory_usage()
        row = {"config": name, **CONFIGS[name], "weights_bytes": mem["weights_bytes"],
               "kv_bytes_per_token": mem["kv_bytes_per_token"], "perplexity": ppl, "tokens_scored": scored,
               "greedy_agreement": same, "greedy_prefix": prefix, "decode_tok_s_b1": rate1,
               "decode_tok_s_b32": rate32, "seconds": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del llm
    if args.rounds:
        steps = step_times([r["config"] for r in rows if r["config"] != "int4-requant"], args.rounds)
        for row in rows:
            row.update(steps.get(row["config"], {}))
            print(row["config"], steps.get(row["config"]), flush=True)
    base = rows[0]
    for row in rows:
        row["ppl_increase_pct"] = 100 * (row["perplexity"] / base["perplexity"] - 1)
        row["weights_vs_bf16"] = row["weights_bytes"] / next(
            (r["weights_bytes"] for r in rows if r["config"] == "bfloat16"), 2 * base["weights_bytes"] / 4)
    print("\n| config | weights MiB | x bf16 | KV B/token | ppl | ppl +% | greedy agree | prefix | b1 tok/s | "
          "b32 tok/s | step ms b1 | step ms b32 |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        steps = " | ".join(f"{r[k]:.1f}" if k in r else "-" for k in ("step_ms_b1", "step_ms_b32"))
        print(f"| {r['config']} | {r['weights_bytes'] / 2**20:.1f} | {r['weights_vs_bf16']:.3f} | "
              f"{r['kv_bytes_per_token']} | {r['perplexity']:.3f} | {r['ppl_increase_pct']:+.2f} | "
              f"{r['greedy_agreement']:.3f} | {r['greedy_prefix']:.1f} | {r['decode_tok_s_b1']:.1f} | "
              f"{r['decode_tok_s_b32']:.1f} | {steps} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                          "machine": platform.platform(), "cpus": os.cpu_count(),
                                          "jax": jax.__version__, "args": vars(args), "engine": engine_kw,
                                          "results": rows}, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
