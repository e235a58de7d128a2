"""Offline throughput: jaxserve's continuous batching vs Hugging Face transformers' `generate`, one run.

Workload: 64 prompts of mixed lengths (16-512 tokens, cut from a fixed public-domain-style text) with mixed output
lengths (32-256 tokens, EOS ignored so both engines generate exactly the same number of tokens). transformers runs
the same prompts in left-padded static batches of 16, each batch generating until its longest request is done; only
requested tokens count as output. Prints a table and writes JSON to bench/results/offline_throughput.json.

    python bench/offline_throughput.py [--num-prompts 64] [--dtype float32] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bench_common import TEXT


def make_workload(tokenizer, num_prompts: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Prompts (token ids) of 16-512 tokens and output lengths of 32-256, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    corpus = tokenizer.encode(TEXT * 40, add_special_tokens=False)
    prompts, outputs = [], []
    for _ in range(num_prompts):
        length = int(rng.integers(16, 513))
        start = int(rng.integers(0, len(corpus) - length))
        prompts.append(corpus[start:start + length])
        outputs.append(int(rng.integers(32, 257)))
    return prompts, outputs


def run_jaxserve(prompts, outputs, args) -> dict:
    from jaxserve import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(dtype=args.dtype, max_model_len=1024, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, layer_loop=args.layer_loop, progress=False)
    startup = time.perf_counter() - start
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in outputs]
    reqs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(reqs[:2], params[:2], use_tqdm=False)  # touch every code path once
    start = time.perf_counter()
    results = llm.generate(reqs, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(r.outputs[0].token_ids) for r in results)
    assert generated == sum(outputs), "jaxserve generated a different number of tokens than requested"
    return {"engine": f"jaxserve (layer_loop={args.layer_loop})", "seconds": elapsed, "output_tokens": generated,
            "output_tokens_per_s": generated / elapsed, "startup_s": startup,
            "compiles_after_warmup": llm.engine.stats()["num_compiles_after_warmup"],
            "step_time_s": llm.engine.stats()["step_time_s"], "step_tokens": llm.engine.stats()["step_tokens"],
            "step_count": llm.engine.stats()["step_count"]}


def run_transformers(prompts, outputs, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from jaxserve.checkpoint import default_model_path

    path = Path(default_model_path())
    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    start = time.perf_counter()
    useful = 0
    for i in range(0, len(prompts), args.hf_batch_size):
        batch, wanted = prompts[i:i + args.hf_batch_size], outputs[i:i + args.hf_batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(wanted), min_new_tokens=max(wanted),
                           do_sample=False, pad_token_id=0)
        useful += sum(wanted)
    elapsed = time.perf_counter() - start
    return {"engine": f"transformers (static batches of {args.hf_batch_size}, float32)", "seconds": elapsed,
            "output_tokens": useful, "output_tokens_per_s": useful / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--layer-loop", default="auto", help="scan | unrolled | auto (unrolled on CPU)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "offline_throughput.json"))
    args = parser.parse_args()

    from jaxserve.checkpoint import default_model_path
    from jaxserve.tokenizer import load_tokenizer

    prompts, outputs = make_workload(load_tokenizer(default_model_path()), args.num_prompts, args.seed)
    rows = [run_jaxserve(prompts, outputs, args)]
    if not args.skip_hf:
        rows.append(run_transformers(prompts, outputs, args))
    print(f"\n{args.num_prompts} prompts, {sum(map(len, prompts))} prompt tokens, {sum(outputs)} output tokens "
          f"({platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"{'engine':58s} {'seconds':>8s} {'out tok/s':>10s}")
    for row in rows:
        print(f"{row['engine']:58s} {row['seconds']:8.1f} {row['output_tokens_per_s']:10.1f}")
        if "step_time_s" in row:
            for kind in ("prefill", "decode"):
                n, t, tok = row["step_count"][kind], row["step_time_s"][kind], row["step_tokens"][kind]
                print(f"    {kind:8s} {n:5d} steps {t:8.1f} s {tok:7d} tokens  {tok / max(t, 1e-9):8.1f} tok/s")
    if len(rows) == 2:
        ratio = rows[0]["output_tokens_per_s"] / rows[1]["output_tokens_per_s"]
        print(f"jaxserve / transformers: {ratio:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpus": os.cpu_count(),
              "args": vars(args), "results": rows}
    Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
