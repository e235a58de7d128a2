"""Prefix caching on vs off, one run: a shared 1,024-token prefix, and a multi-turn chat.

Workloads (default model, float32, greedy, EOS ignored so both modes generate the same token counts):
  shared prefix  N requests = one 1,024-token document + a short distinct question (8-24 tokens), 16 tokens out;
                 measured two ways: one request at a time (TTFT = that request's own prefill, no queueing) and as
                 one burst of N (TTFT includes queueing; throughput = output tokens / wall time).
  chat           C conversations x T turns through the chat template: a long system prompt, then each turn sends
                 the whole history plus a new user message (the assistant's reply re-encoded from its text).
Both modes run on one engine (same compiled steps): `enable_caching` of the block manager is the only switch,
and the cache is emptied before each phase. Outputs of the two modes are compared token for token.

    python bench/prefix_cache.py [--requests 12] [--sequential 6] [--conversations 4] [--turns 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench_common import TEXT

QUESTIONS = ["Who counted the boats?", "What did the town argue about?", "Summarise the first sentence.",
             "Where did the river run?", "What was feared?", "Name the seasons mentioned.",
             "What was read aloud in the square?", "Describe the evenings in one line.",
             "Which age is named first?", "Is the war near or distant?", "List three contrasts in the text.",
             "What did the children wonder?", "Give the text a title.", "What was the price argument about?",
             "Rewrite the last sentence simply.", "Who gathered in the square?"]


def _ttft(out) -> float:
    return out.metrics.first_token_time - out.metrics.arrival_time


def _set_caching(llm, on: bool) -> None:
    llm.engine.block_manager.enable_caching = on
    llm.engine.reset_prefix_cache()


def shared_prefix(llm, tokenizer, args, on: bool) -> dict:
    from jaxserve import SamplingParams

    doc = tokenizer.encode(TEXT * 20, add_special_tokens=False)[:1024]
    prompts = [{"prompt_token_ids": doc + tokenizer.encode(" Question: " + QUESTIONS[i % len(QUESTIONS)] +
                                                           f" ({i})", add_special_tokens=False)}
               for i in range(args.requests)]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    _set_caching(llm, on)
    sequential = [llm.generate(p, params, use_tqdm=False)[0] for p in prompts[:args.sequential]]
    _set_caching(llm, on)
    stats0 = llm.engine.stats()
    start = time.perf_counter()
    burst = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    stats1 = llm.engine.stats()
    out_tokens = sum(len(o.outputs[0].token_ids) for o in burst)
    return {
        "caching": on, "prompt_tokens": [len(p["prompt_token_ids"]) for p in prompts],
        "sequential_ttft_s": [_ttft(o) for o in sequential],
        "sequential_median_ttft_s": statistics.median(_ttft(o) for o in sequential),
        "burst_ttft_s": [_ttft(o) for o in burst], "burst_median_ttft_s": statistics.median(_ttft(o) for o in burst),
        "burst_seconds": wall, "burst_output_tokens_per_s": out_tokens / wall,
        "burst_requests_per_s": len(burst) / wall,
        "burst_prefill_tokens_computed": stats1["step_tokens"]["prefill"] - stats0["step_tokens"]["prefill"],
        "burst_cached_tokens": sum(o.num_cached_tokens for o in burst),
        "outputs": [o.outputs[0].token_ids for o in sequential + burst],
    }


def chat(llm, tokenizer, args, on: bool) -> dict:
    from jaxserve import SamplingParams

    system = "You are a careful reading assistant. Answer briefly. The text under discussion follows. " + TEXT * 3
    convs = [[{"role": "system", "content": system}] for _ in range(args.conversations)]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    _set_caching(llm, on)
    stats0 = llm.engine.stats()
    turns, outputs = [], []
    start = time.perf_counter()
    for t in range(args.turns):
        for c, conv in enumerate(convs):
            conv.append({"role": "user", "content": QUESTIONS[(c * args.turns + t) % len(QUESTIONS)]})
        t0 = time.perf_counter()
        outs = llm.chat(convs, params, use_tqdm=False)
        turns.append({"turn": t + 1, "seconds": time.perf_counter() - t0,
                      "median_ttft_s": statistics.median(_ttft(o) for o in outs),
                      "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
                      "cached_tokens": sum(o.num_cached_tokens for o in outs)})
        for conv, out in zip(convs, outs):
            conv.append({"role": "assistant", "content": out.outputs[0].text})
            outputs.append(out.outputs[0].token_ids)
    wall = time.perf_counter() - start
    stats1 = llm.engine.stats()
    return {"caching": on, "turns": turns, "seconds": wall,
            "median_ttft_s": statistics.median(t["median_ttft_s"] for t in turns),
            "prefill_tokens_computed": stats1["step_tokens"]["prefill"] - stats0["step_tokens"]["prefill"],
            "prompt_tokens": sum(t["prompt_tokens"] for t in turns),
            "cached_tokens": sum(t["cached_tokens"] for t in turns), "outputs": outputs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--sequential", type=int, default=6)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prefix_cache.json"))
    args = parser.parse_args()

    import jax

    from jaxserve import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(dtype=args.dtype, max_model_len=2048, max_num_seqs=16, max_num_batched_tokens=512, progress=False)
    startup = time.perf_counter() - start
    tokenizer = llm.get_tokenizer()
    llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(max_tokens=2), use_tqdm=False)  # touch paths

    results = {"shared_prefix": {}, "chat": {}}
    for on in (False, True):
        key = "on" if on else "off"
        results["shared_prefix"][key] = shared_prefix(llm, tokenizer, args, on)
        results["chat"][key] = chat(llm, tokenizer, args, on)
    sp, ch = results["shared_prefix"], results["chat"]
    same_sp = sp["on"].pop("outputs") == sp["off"].pop("outputs")
    same_chat = ch["on"].pop("outputs") == ch["off"].pop("outputs")
    summary = {
        "sequential_ttft_ratio": sp["off"]["sequential_median_ttft_s"] / sp["on"]["sequential_median_ttft_s"],
        "burst_ttft_ratio": sp["off"]["burst_median_ttft_s"] / sp["on"]["burst_median_ttft_s"],
        "burst_throughput_ratio": sp["on"]["burst_output_tokens_per_s"] / sp["off"]["burst_output_tokens_per_s"],
        "chat_ttft_ratio": ch["off"]["median_ttft_s"] / ch["on"]["median_ttft_s"],
        "chat_time_ratio": ch["off"]["seconds"] / ch["on"]["seconds"],
        "identical_outputs_shared_prefix": same_sp, "identical_outputs_chat": same_chat,
        "compiles_after_warmup": llm.engine.stats()["num_compiles_after_warmup"],
    }
    print(f"shared 1,024-token prefix, {args.requests} requests ({platform.machine()}, {os.cpu_count()} CPUs)")
    for key in ("off", "on"):
        r = sp[key]
        print(f"  caching {key:3s}: sequential median TTFT {r['sequential_median_ttft_s']:.3f} s | burst median "
              f"TTFT {r['burst_median_ttft_s']:.2f} s, {r['burst_seconds']:.1f} s wall, "
              f"{r['burst_output_tokens_per_s']:.1f} out tok/s, prefill computed {r['burst_prefill_tokens_computed']}")
    print(f"chat: {args.conversations} conversations x {args.turns} turns")
    for key in ("off", "on"):
        r = ch[key]
        print(f"  caching {key:3s}: {r['seconds']:.1f} s, median TTFT {r['median_ttft_s']:.3f} s, cached "
              f"{r['cached_tokens']}/{r['prompt_tokens']} prompt tokens")
    print(json.dumps(summary, indent=2))
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "cpus": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
              "startup_s": startup, "args": vars(args), "summary": summary, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
