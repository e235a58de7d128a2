"""jaxserve vs Hugging Face transformers vs llama.cpp: one workload, one run, ratios printed.

Workload: prompts of --prompt-len tokens cut from bench_common.TEXT, each opening with a distinct "Request C-i:" tag
so that no engine can reuse another request's prefix; --output-len tokens per request, greedy, EOS ignored on every
engine. The prompts are tokenized once with the GGUF's own vocabulary and every engine receives the same token ids;
llama.cpp's and transformers' tokenizers are checked against jaxserve's on the same text, and the prompt token counts
each engine reports are recorded.

- concurrency 1 (single stream): --single-requests requests one at a time; decode tok/s = 1 / median TPOT (time
  per output token after the first), aggregate tok/s = output tokens / wall time.
- concurrency C (16, 32): C requests at once (one wave); aggregate tok/s = output tokens / wall time.

Engines: jaxserve's OpenAI server (`jaxserve serve`, one launch per --jaxserve-variant) and llama.cpp's
`llama-server -np <max C> -t <threads>` (found via --llama-server, $LLAMA_SERVER or PATH), both driven over HTTP by
bench/serving.py's streaming client; llama-cpp-python in-process for the single stream when it imports;
transformers `generate` (batch 1 with a token clock; left-padded static batches of C via
bench/offline_throughput.py). llama.cpp is skipped, with the reason recorded, when it is not installed.

    python bench/compare.py [--llama-server PATH] [--concurrency 1,16,32] [--jaxserve-variant int4='--quantization int4']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench_common import TEXT, pyplot, run_header
from compare_engines import (
    find_llama_server,
    llama_version,
    run_jaxserve,
    run_llama_cpp_python,
    run_llama_server,
    run_transformers,
)

RESULTS = Path(__file__).resolve().parent / "results"


def make_prompts(tokenizer, count: int, prompt_len: int, tag: str) -> list[list[int]]:
    """`count` prompts of exactly `prompt_len` token ids; the tag makes every request's first tokens unique."""
    corpus = tokenizer.encode(TEXT * 20, add_special_tokens=False)
    prompts = []
    for i in range(count):
        head = tokenizer.encode(f"Request {tag}-{i}: ", add_special_tokens=False)
        start = (i * 37) % 600
        prompts.append((head + corpus[start:start + prompt_len])[:prompt_len])
    return prompts


# ---- the run ----

def measure(name: str, fn, *fn_args) -> dict:
    """Run one engine, recording the load average before and after; an engine's failure is recorded, not raised."""
    before = os.getloadavg()
    print(f"{name} (load average {before[0]:.2f})", flush=True)
    try:
        record = fn(*fn_args)
    except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others' numbers
        record = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(f"  {name} failed: {record['error']}", flush=True)
    record["load_before"], record["load_after"] = before, os.getloadavg()
    return record


def targets(rows: list[dict], llama_single: str) -> list[dict]:
    """The issue's two targets for every jaxserve variant: single-stream decode >= llama.cpp's single stream, and
    aggregate throughput at 32 concurrent requests >= 1.5x llama-server's."""
    def value(engine: str, concurrency: int, key: str) -> float | None:
        return next((r[key] for r in rows if r["engine"] == engine and r["concurrency"] == concurrency), None)

    out = []
    for engine in sorted({r["engine"] for r in rows if r["engine"].startswith("jaxserve")}):
        for name, c, key, reference, required in (
                ("single-stream decode tok/s >= llama.cpp single stream", 1, "decode_tok_s", llama_single, 1.0),
                ("aggregate tok/s at 32 concurrent >= 1.5x llama-server", 32, "output_tok_s", "llama-server", 1.5)):
            ours, theirs = value(engine, c, key), value(reference, c, key)
            ratio = ours / theirs if ours and theirs else None
            out.append({"target": name, "engine": engine, "reference": reference, "value": ours,
                        "reference_value": theirs, "ratio": ratio, "required": required,
                        "met": None if ratio is None else ratio >= required})
    return out


def plot(data: dict, path: Path) -> None:
    """Aggregate tok/s per concurrency level (grouped bars) and single-stream decode tok/s, per engine."""
    rows = data["rows"]
    plt = pyplot() if rows else None
    if plt is None:
        return
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    levels = sorted({r["concurrency"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        got = {r["concurrency"]: r["output_tok_s"] for r in rows if r["engine"] == engine}
        xs = [j + i * width for j, c in enumerate(levels) if c in got]
        left.bar(xs, [got[c] for c in levels if c in got], width, label=engine)
    left.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], [str(c) for c in levels])
    left.set_xlabel("concurrent requests")
    left.set_ylabel("output tok/s (aggregate)")
    left.legend(fontsize=8)
    single = [(r["engine"], r["decode_tok_s"]) for r in rows if r["concurrency"] == 1 and r.get("decode_tok_s")]
    right.barh([e for e, _ in single], [v for _, v in single])
    right.set_xlabel("single-stream decode tok/s (1 / median TPOT)")
    loads = [x for rec in data["engines"].values() for x in (rec.get("load_before"), rec.get("load_after")) if x]
    load = f", load average {min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f}" if loads else ""
    fig.suptitle(f"{data['header']['date']} - {data['header']['machine_note']}{load} - {data['gguf']}, "
                 f"{data['workload']['prompt_len']} prompt + {data['workload']['output_len']} output tokens per request",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", default=None, help="llama-server binary (default: $LLAMA_SERVER, then PATH)")
    p.add_argument("--concurrency", default="1,16,32", help="levels; 1 = single stream")
    p.add_argument("--single-requests", type=int, default=5, help="requests at concurrency 1, one at a time")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--context", type=int, default=512, help="llama.cpp context per slot (-c is slots x this)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp and torch threads")
    p.add_argument("--jaxserve-flags", default="--max-model-len 512 --max-num-seqs 32 --max-num-batched-tokens 512")
    p.add_argument("--jaxserve-variant", action="append", default=None, metavar="NAME=FLAGS",
                   help="extra `jaxserve serve` flags per launch, repeatable (default: float32=, int8=--quantization int8 "
                   "and int4=--quantization int4, the last one the GGUF's own Q4_1 layers bit for bit)")
    p.add_argument("--skip", default="", help="comma-separated: jaxserve,llama-server,llama-cpp-python,transformers")
    p.add_argument("--machine-note", default="2-core AMD EPYC VM, CPU only")
    p.add_argument("--out", default=str(RESULTS / "compare.json"))
    args = p.parse_args()

    from jaxserve.checkpoint import default_model_path
    from jaxserve.tokenizer import load_tokenizer

    gguf, skip = str(default_model_path()), set(filter(None, args.skip.split(",")))
    tokenizer = load_tokenizer(gguf)
    levels = [int(c) for c in args.concurrency.split(",")]
    plan = {c: make_prompts(tokenizer, args.single_requests if c == 1 else c, args.prompt_len, str(c)) for c in levels}
    args.warmup_prompt = make_prompts(tokenizer, 1, args.prompt_len, "warm-up")[0]
    args.check_text = tokenizer.decode(plan[levels[0]][0])
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = {**run_header(), "machine_note": args.machine_note, "python": sys.version.split()[0],
              "loadavg_start": os.getloadavg()}
    engines: dict[str, dict] = {}

    binary = find_llama_server(args.llama_server)
    if "llama-server" in skip:
        engines["llama-server"] = {"skipped": "--skip"}
    elif binary is None:
        engines["llama-server"] = {"skipped": "no llama-server (--llama-server, $LLAMA_SERVER or PATH)"}
    else:
        header["llama_cpp"] = llama_version(binary)
        engines["llama-server"] = measure("llama-server", run_llama_server, binary, gguf, plan, args)
    if binary is not None and "LLAMA_CPP_LIB_PATH" not in os.environ:
        # A llama-cpp-python installed without its own build loads libllama from here (the llama-server build).
        os.environ["LLAMA_CPP_LIB_PATH"] = str(Path(binary).resolve().parent)
    try:
        import llama_cpp  # noqa: F401 - availability check
    except Exception as exc:  # noqa: BLE001 - missing package or missing shared library: skip, say why
        engines["llama-cpp-python"] = {"skipped": f"llama-cpp-python not usable ({type(exc).__name__}: {exc})"}
    else:
        if "llama-cpp-python" not in skip and 1 in plan:
            engines["llama-cpp-python"] = measure("llama-cpp-python", run_llama_cpp_python, gguf, plan[1], args)
    variants = args.jaxserve_variant or ["float32=", "int8=--quantization int8", "int4=--quantization int4"]
    for variant in variants if "jaxserve" not in skip else []:
        name, _, flags = variant.partition("=")
        label = f"jaxserve {name}"
        engines[label] = measure(label, run_jaxserve, label, flags, plan, args)
    if "transformers" not in skip:
        import torch
        import transformers

        header["torch"], header["transformers"] = torch.__version__, transformers.__version__
        engines["transformers"] = measure("transformers", run_transformers, gguf, plan, args)

    header["loadavg_end"] = os.getloadavg()
    rows = [row for record in engines.values() for row in record.get("rows", [])]
    has_python_api = any(r["engine"] == "llama-cpp-python" for r in rows)
    jax_ids = tokenizer.encode(args.check_text, add_special_tokens=False)
    llama_ids = engines["llama-server"].get("check_text_tokens")
    data = {"header": header, "gguf": Path(gguf).name,
            "workload": {"prompt_len": args.prompt_len, "output_len": args.output_len, "levels": levels,
                         "single_requests": args.single_requests, "threads": args.threads, "greedy": True,
                         "ignore_eos": True, "context": args.context},
            "tokenizer_check": {"text": args.check_text, "sent_ids": len(plan[levels[0]][0]),
                                "jaxserve_ids": len(jax_ids), "llama_cpp_ids": None if llama_ids is None else
                                len(llama_ids), "llama_cpp_identical": None if llama_ids is None else
                                llama_ids == jax_ids},
            "engines": engines, "rows": rows,
            "targets": targets(rows, "llama-cpp-python" if has_python_api else "llama-server")}
    Path(args.out).write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {args.out}", flush=True)
    from render_results import render_compare

    print(render_compare(data), flush=True)
    plot(data, Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
