"""The engines bench/compare.py measures: jaxserve's and llama.cpp's servers over HTTP (bench/serving.py's
streaming client), llama-cpp-python and transformers in process. Every runner returns a record with "rows": one
summary per concurrency level (engine, concurrency, seconds, tokens, output tok/s, decode tok/s = 1 / median TPOT)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from serving import Result, one_request, summarize


def summary_row(engine: str, concurrency: int, summary: dict) -> dict:
    """One table row from serving.summarize()'s output (per-request details dropped)."""
    tpot = summary["tpot_ms"]["median"]
    return {"engine": engine, "concurrency": concurrency, "requests": summary["successful_requests"],
            "failed_requests": summary["failed_requests"], "errors": summary["errors"],
            "seconds": summary["duration_s"], "prompt_tokens": summary["total_input_tokens"],
            "output_tokens": summary["total_generated_tokens"], "output_tok_s": summary["output_throughput"],
            "decode_tok_s": 1000.0 / tpot if tpot else None, "median_ttft_ms": summary["ttft_ms"]["median"],
            "median_tpot_ms": tpot}


def timed_result(prompt_len: int, start: float, token_times: list[float]) -> Result:
    """A serving.Result from the arrival times of one request's output tokens."""
    itl = [b - a for a, b in itertools.pairwise(token_times)]
    return Result(prompt_len=prompt_len, output_len=len(token_times), success=True, ttft=token_times[0] - start,
                  e2e=token_times[-1] - start, itl=itl)


# ---- HTTP engines (jaxserve serve, llama-server) ----

async def _http_wave(url: str, prompts: list[list[int]], max_tokens: int, concurrency: int) -> tuple:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=1800.0, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        sem, state = asyncio.Semaphore(concurrency), {"active": 0, "peak": 0}

        async def limited(prompt: list[int]) -> Result:
            async with sem:
                return await one_request(client, model, prompt, max_tokens, t0, state)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        return model, results, time.perf_counter() - t0, state["peak"]


def prompt_tokens_seen(url: str, prompt: list[int]) -> int | None:
    """The prompt token count a server reports for `prompt` (one non-streamed 16-token request, also the warm-up;
    `prompt` is none of the measured ones, so that no measured request finds its prompt cached)."""
    body = {"prompt": prompt, "max_tokens": 16, "temperature": 0.0, "ignore_eos": True}
    usage = httpx.post(f"{url}/v1/completions", json=body, timeout=600).json().get("usage") or {}
    return usage.get("prompt_tokens")


def measure_http(engine: str, url: str, plan: dict[int, list[list[int]]], args: argparse.Namespace) -> dict:
    """Every concurrency level of `plan` against one running server, plus the prompt token count it saw."""
    record = {"prompt_tokens_seen": prompt_tokens_seen(url, args.warmup_prompt), "rows": []}
    for concurrency, prompts in plan.items():
        model, results, duration, peak = asyncio.run(_http_wave(url, prompts, args.output_len, concurrency))
        summary = summarize(argparse.Namespace(), model, results, duration, peak)
        record["rows"].append(summary_row(engine, concurrency, summary))
        print(f"  {engine} c={concurrency}: {summary['output_throughput']:.1f} tok/s", flush=True)
    return record


def find_llama_server(explicit: str | None) -> str | None:
    """llama-server from --llama-server, then $LLAMA_SERVER, then PATH."""
    for candidate in (explicit, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def llama_version(binary: str) -> str:
    """What `llama-server --version` prints (version number and commit)."""
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    return " ".join((proc.stdout + proc.stderr).split())


def run_llama_server(binary: str, gguf: str, plan: dict, args: argparse.Namespace) -> dict:
    """Start llama-server with one slot per request of the largest wave, measure, stop it."""
    from jaxserve.server.testing import free_port, stop_process

    slots, port = max(plan), free_port()
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", str(args.threads), "-tb",
           str(args.threads), "-np", str(slots), "-c", str(slots * args.context)]
    log_path = Path(tempfile.gettempdir()) / "compare-llama-server.log"  # ~100 KB at -np 32: not for the repo
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url, start = f"http://127.0.0.1:{port}", time.perf_counter()
    try:
        while not _healthy(url):
            if proc.poll() is not None or time.perf_counter() - start > 300:
                raise RuntimeError(f"llama-server did not start; see {log_path}")
            time.sleep(0.5)
        record = {"command": " ".join(cmd), "log": str(log_path), "startup_s": time.perf_counter() - start}
        record.update(measure_http("llama-server", url, plan, args))
        # llama.cpp's own tokenizer on the prompt text, to compare with the ids every engine was sent.
        body = {"content": args.check_text, "add_special": False}
        record["check_text_tokens"] = httpx.post(f"{url}/tokenize", json=body, timeout=60).json()["tokens"]
        return record
    finally:
        stop_process(proc)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_jaxserve(label: str, flags: str, plan: dict, args: argparse.Namespace) -> dict:
    """Launch `jaxserve serve` with the common flags plus `flags`, measure every level, stop it."""
    from jaxserve.server.testing import start_server

    all_flags = ["--no-progress", *shlex.split(args.jaxserve_flags), *shlex.split(flags)]
    start = time.perf_counter()
    server = start_server(all_flags, timeout=900)
    try:
        record = {"flags": " ".join(all_flags), "startup_s": time.perf_counter() - start}
        record.update(measure_http(label, server.url, plan, args))
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        record["compiles_after_warmup"] = [line.split()[-1] for line in metrics.splitlines()
                                           if line.startswith("jaxserve:compiles_after_warmup_total")]
        return record
    finally:
        server.stop()


# ---- in-process engines (llama-cpp-python, transformers) ----

def run_llama_cpp_python(gguf: str, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """Single stream through llama-cpp-python's token generator (greedy; it never stops on EOS by itself)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=args.context, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    _take(llm.generate(args.warmup_prompt, temp=0.0), 16)
    results, t0 = [], time.perf_counter()
    for prompt in prompts:
        start = time.perf_counter()
        results.append(timed_result(len(prompt), start, _take(llm.generate(prompt, temp=0.0), args.output_len)))
    summary = summarize(argparse.Namespace(), "llama-cpp-python", results, time.perf_counter() - t0, 1)
    return {"version": llama_cpp.__version__, "prompt_tokens_seen": len(prompts[0]),  # token ids go in as they are
            "rows": [summary_row("llama-cpp-python", 1, summary)]}


def _take(tokens, count: int) -> list[float]:
    times = []
    for _ in tokens:
        times.append(time.perf_counter())
        if len(times) == count:
            break
    return times


class TokenClock:
    """A transformers streamer that records when each new token arrives (its first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def run_transformers(gguf: str, plan: dict, args: argparse.Namespace) -> dict:
    """transformers float32: batch 1 with a TokenClock for concurrency 1, static batches of C otherwise."""
    import offline_throughput
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    record = {"torch_threads": args.threads, "prompt_tokens_seen": len(plan[min(plan)][0]), "rows": []}
    for concurrency, prompts in plan.items():
        if concurrency == 1:
            path = Path(gguf)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
            results, t0 = [], time.perf_counter()
            for prompt in prompts:
                clock, start = TokenClock(), time.perf_counter()
                with torch.no_grad():
                    model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=args.output_len,
                                   min_new_tokens=args.output_len, do_sample=False, pad_token_id=0, streamer=clock)
                results.append(timed_result(len(prompt), start, clock.times))
            summary = summarize(argparse.Namespace(), "transformers", results, time.perf_counter() - t0, 1)
            record["rows"].append(summary_row("transformers", 1, summary))
            del model
        else:
            batch_args = argparse.Namespace(hf_batch_size=concurrency)
            out = offline_throughput.run_transformers(prompts, [args.output_len] * len(prompts), batch_args)
            record["rows"].append({"engine": "transformers", "concurrency": concurrency, "requests": len(prompts),
                                   "seconds": out["seconds"], "prompt_tokens": sum(map(len, prompts)),
                                   "output_tokens": out["output_tokens"], "output_tok_s": out["output_tokens_per_s"],
                                   "decode_tok_s": None, "median_ttft_ms": None, "median_tpot_ms": None})
        print(f"  transformers c={concurrency}: {record['rows'][-1]['output_tok_s']:.1f} tok/s", flush=True)
    return record
