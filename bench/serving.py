"""Serving benchmark against a running OpenAI-compatible server, after `vllm bench serve`.

Synthetic prompts (random token ids from a fixed seed, sent as `prompt: [int, ...]`), Poisson arrivals with gamma
burstiness, optional concurrency cap, streaming /v1/completions with ignore_eos. Per request: TTFT, ITL list,
TPOT = (e2e - ttft) / (out - 1), E2E. Prints a vLLM-style table, writes JSON (and a PNG when matplotlib is there).

    python bench/serving.py --base-url http://127.0.0.1:8000 --num-prompts 32 --input-len 128 --output-len 64 \
        --request-rate 4
    python bench/serving.py --launch "--max-model-len 1024 --max-num-seqs 32" --num-prompts 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "serving.json")


@dataclass
class Result:
    prompt_len: int
    output_len: int = 0  # generated tokens (from usage)
    success: bool = False
    error: str = ""
    start: float = 0.0  # seconds since the benchmark start
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)  # seconds since the benchmark start


def sample_requests(n: int, input_len: int, output_len: int, range_ratio: float, vocab: int,
                    seed: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, max_tokens) pairs; lengths uniform in [len * (1 - r), len * (1 + r)]."""
    rng = np.random.default_rng(seed)
    lo_in, hi_in = max(1, int(input_len * (1 - range_ratio))), max(1, int(input_len * (1 + range_ratio)))
    lo_out, hi_out = max(1, int(output_len * (1 - range_ratio))), max(1, int(output_len * (1 + range_ratio)))
    in_lens = rng.integers(lo_in, hi_in + 1, n)
    out_lens = rng.integers(lo_out, hi_out + 1, n)
    # Avoid the lowest ids (special tokens in most vocabularies).
    return [(rng.integers(100, vocab, int(li)).tolist(), int(lo)) for li, lo in zip(in_lens, out_lens)]


def arrival_gaps(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Inter-arrival gaps: gamma(shape=burstiness, scale=1/(rate*burstiness)); burstiness 1 = Poisson."""
    if rate == float("inf"):
        return [0.0] * n
    rng = np.random.default_rng(seed + 1)
    return rng.gamma(burstiness, 1.0 / (rate * burstiness), n).tolist()


async def one_request(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int, t0: float,
                      state: dict) -> Result:
    r = Result(prompt_len=len(prompt))
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    state["active"] += 1
    state["peak"] = max(state["peak"], state["active"])
    start = time.perf_counter()
    r.start = start - t0
    last = start
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    r.success = True
                    break
                event = json.loads(data)
                if "error" in event:
                    r.error = str(event["error"])[:200]
                    return r
                if event.get("usage"):
                    r.output_len = event["usage"]["completion_tokens"]
                if any(c.get("text") for c in event.get("choices", [])):
                    now = time.perf_counter()
                    if not r.chunk_times:
                        r.ttft = now - start
                    else:
                        r.itl.append(now - last)
                    r.chunk_times.append(now - t0)
                    last = now
            r.e2e = time.perf_counter() - start
            if r.success and not r.output_len:
                r.success, r.error = False, "no usage in stream"
    except Exception as exc:  # noqa: BLE001 - one failed request must not end the benchmark
        r.error = f"{type(exc).__name__}: {exc}"
    finally:
        state["active"] -= 1
    return r


async def run(args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=args.timeout, limits=limits) as client:
        model = args.model
        if model is None:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
        requests = sample_requests(args.num_prompts, args.input_len, args.output_len, args.range_ratio,
                                   args.vocab_size, args.seed)
        gaps = arrival_gaps(args.num_prompts, args.request_rate, args.burstiness, args.seed)
        sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        state = {"active": 0, "peak": 0}

        async def limited(prompt: list[int], max_tokens: int, t0: float) -> Result:
            if sem is None:
                return await one_request(client, model, prompt, max_tokens, t0, state)
            async with sem:
                return await one_request(client, model, prompt, max_tokens, t0, state)

        print(f"model={model} prompts={args.num_prompts} rate={args.request_rate} burstiness={args.burstiness} "
              f"max_concurrency={args.max_concurrency}", flush=True)
        t0 = time.perf_counter()
        tasks = []
        for (prompt, max_tokens), gap in zip(requests, gaps):
            tasks.append(asyncio.create_task(limited(prompt, max_tokens, t0)))
            if gap > 0:
                await asyncio.sleep(gap)
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        summary = summarize(args, model, results, duration, state["peak"])
        metrics = (await client.get("/metrics")).text
    match = re.search(r"^jaxserve:compiles_after_warmup_total(?:\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
    summary["compiles_after_warmup"] = int(float(match.group(1))) if match else None
    return summary


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    a = np.asarray(values) * 1000.0
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p99": float(np.percentile(a, 99))}


def summarize(args: argparse.Namespace, model: str, results: list[Result], duration: float, peak: int) -> dict:
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_len for r in ok)
    tpots = [(r.e2e - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "model": model,
        "config": {k: (str(v) if isinstance(v, float) and v == float("inf") else v) for k, v in vars(args).items()},
        "successful_requests": len(ok),
        "failed_requests": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:10],
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_generated_tokens": output_tokens,
        "request_throughput": len(ok) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
        "peak_concurrency": peak,
        "ttft_ms": _stats([r.ttft for r in ok]),
        "tpot_ms": _stats(tpots),
        "itl_ms": _stats([x for r in ok for x in r.itl]),
        "e2e_ms": _stats([r.e2e for r in ok]),
        "requests": [asdict(r) for r in results],
    }


def print_table(s: dict) -> str:
    w = 50
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=w, c="=")]

    def row(label: str, value: object, fmt: str = "") -> None:
        lines.append(f"{label:<40}{value:>10{fmt}}")

    row("Successful requests:", s["successful_requests"])
    row("Failed requests:", s["failed_requests"])
    row("Peak concurrent requests:", s["peak_concurrency"])
    row("Benchmark duration (s):", s["duration_s"], ".2f")
    row("Total input tokens:", s["total_input_tokens"])
    row("Total generated tokens:", s["total_generated_tokens"])
    row("Request throughput (req/s):", s["request_throughput"], ".2f")
    row("Output token throughput (tok/s):", s["output_throughput"], ".2f")
    row("Total token throughput (tok/s):", s["total_token_throughput"], ".2f")
    row("Server compilations after warm-up:", str(s.get("compiles_after_warmup")))
    for key, title, long in (("ttft_ms", "Time to First Token", "TTFT"),
                             ("tpot_ms", "Time per Output Token (excl. 1st token)", "TPOT"),
                             ("itl_ms", "Inter-token Latency", "ITL"), ("e2e_ms", "End-to-end Latency", "E2EL")):
        lines.append("{s:{c}^{n}}".format(s=f" {title} ", n=w, c="-"))
        row(f"Mean {long} (ms):", s[key]["mean"], ".2f")
        row(f"Median {long} (ms):", s[key]["median"], ".2f")
        row(f"P99 {long} (ms):", s[key]["p99"], ".2f")
    lines.append("=" * w)
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="served model name (default: the first of /v1/models)")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len*(1-r), len*(1+r)] (default: fixed lengths)")
    p.add_argument("--vocab-size", type=int, default=49152, help="prompt token ids are drawn from [100, this)")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s; inf = all at once")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrivals; 1 = Poisson")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON path; the PNG goes next to it")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--launch", default=None, metavar="FLAGS",
                   help="start `jaxserve serve FLAGS` on a free port (ignores --base-url; its log goes next to the "
                   "JSON), run, stop it")
    p.add_argument("--launch-timeout", type=float, default=300.0)
    args = p.parse_args(argv)

    server = None
    if args.launch is not None:
        sys.path.insert(0, ROOT)
        from jaxserve.server.testing import start_server

        log_path = os.path.splitext(args.out)[0] + "-server.log"
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        server = start_server(["--no-progress", *shlex.split(args.launch)], log_level="INFO",
                              timeout=args.launch_timeout, log_path=log_path, echo=True)
        args.base_url = server.url
    try:
        summary = asyncio.run(run(args))
    finally:
        if server is not None:
            server.stop()
    summary["table"] = print_table(summary)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {args.out}", flush=True)
    if not args.no_plot:
        from serving_plot import plot

        plot(summary, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
