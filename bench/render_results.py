"""Regenerate the tables of bench/RESULTS.md from bench/results/*.json.

Every generated block sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; text outside the markers
(the prose: setup, interpretation, history) is never touched. One renderer per benchmark turns its JSON into
markdown: a line saying which JSON, when and on what machine, the table(s), and the plot when there is one. A
block whose JSON is missing is left as it is.

    python bench/render_results.py            # rewrite RESULTS.md in place
    python bench/render_results.py --check    # exit 1 when RESULTS.md is out of date with the JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A markdown table; the first `left` columns are left-aligned, the rest right-aligned."""
    align = ["---" if i < left else "---:" for i in range(len(headers))]
    lines = [headers, align, *[["-" if c is None else str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    """A number with a fixed number of decimals and thousands separators ('-' for None)."""
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def run_line(data: dict, name: str) -> str:
    """Which JSON the block comes from, and when and where it was measured."""
    head = data.get("header", data)
    parts = [f"JSON: `bench/results/{name}`", f"measured {head.get('date', '?')}"]
    if head.get("machine"):
        parts.append(f"{head['machine']} ({head.get('cpus', '?')} CPUs)")
    if head.get("jax"):
        parts.append(f"jax {head['jax']}")
    return " · ".join(parts)


def plot_link(name: str) -> list[str]:
    """A markdown image for results/NAME. Not conditional on the file: --check must give the same answer in a
    checkout where the (git-ignored) PNG was never drawn."""
    return [f"![{Path(name).stem}](results/{name})"]


def render_offline_throughput(d: dict) -> list[str]:
    rows = d["results"]
    out = [table(["engine", "seconds", "output tok/s"],
                 [[r["engine"], f(r["seconds"]), f(r["output_tokens_per_s"])] for r in rows])]
    if len(rows) == 2:
        out.append(f"\nratio {rows[0]['engine']} / {rows[1]['engine']}: "
                   f"**{rows[0]['output_tokens_per_s'] / rows[1]['output_tokens_per_s']:.2f}x**")
    j = rows[0]
    if "step_time_s" in j:
        split = [f"{k} {j['step_count'][k]:,} steps, {f(j['step_time_s'][k])} s, {j['step_tokens'][k]:,} tokens "
                 f"({j['step_tokens'][k] / j['step_time_s'][k]:,.0f} tok/s)" for k in ("prefill", "decode")]
        out.append(f"\n{j['engine']} split: " + "; ".join(split) + ".")
    return out


def render_decode_step(d: dict) -> list[str]:
    res = d["results"]
    batches = sorted({r["batch"] for r in res})
    pools = sorted({r["pool_pages"] for r in res})
    ms = {(r["pool_pages"], r["batch"]): r["median_step_ms"] for r in res}
    rows = [[f"{p:,} ({p * d.get('block_size', 16):,})", *[f(ms.get((p, b)), 1, " ms") if (p, b) in ms else None
                                                            for b in batches]] for p in pools]
    return [(f"Median of {d['args']['repeats']} steps, context {d['args']['context']} tokens per sequence, "
            f"{d['args']['dtype']}.\n"), table(["pool pages (tokens)", *[f"batch {b}" for b in batches]], rows)]


def render_serving(d: dict) -> list[str]:
    return ["```", d["table"], "```"]


def render_serving_policy(runs: dict[str, dict]) -> list[str]:
    rows = []
    for name, s in sorted(runs.items(), key=lambda kv: (kv[1]["config"]["request_rate"], kv[0])):
        policy = re.sub(r"_rate[\d.]+$", "", Path(name).stem).replace("_", "-")
        rows.append([policy, f(s["config"]["request_rate"], 0), f(s["duration_s"]), f(s["output_throughput"]),
                     f(s["ttft_ms"]["mean"], 0), f(s["ttft_ms"]["p99"], 0), f(s["tpot_ms"]["mean"], 0),
                     f(s["itl_ms"]["median"], 0), f(s["itl_ms"]["p99"], 0),
                     s.get("compiles_after_warmup")])
    return [table(["policy", "rate", "duration s", "out tok/s", "mean TTFT ms", "P99 TTFT ms", "mean TPOT ms",
                   "median ITL ms", "P99 ITL ms", "compiles after warm-up"], rows)]


def render_prefix_cache(d: dict) -> list[str]:
    sp, chat, a = d["results"]["shared_prefix"], d["results"]["chat"], d["args"]
    off, on, coff, con = sp["off"], sp["on"], chat["off"], chat["on"]

    def row(label: str, x: float, y: float, digits: int = 2, unit: str = "") -> list[str]:
        return [label, f(x, digits, unit), f(y, digits, unit), f"{x / y:.2f}x" if y else "-"]

    rows = [row("median TTFT, one request at a time", off["sequential_median_ttft_s"],
                on["sequential_median_ttft_s"], unit=" s"),
            row(f"median TTFT, burst of {a['requests']}", off["burst_median_ttft_s"], on["burst_median_ttft_s"],
                unit=" s"),
            row("burst wall time", off["burst_seconds"], on["burst_seconds"], 1, " s"),
            ["burst output throughput", f(off["burst_output_tokens_per_s"], 1, " tok/s"),
             f(on["burst_output_tokens_per_s"], 1, " tok/s"),
             f"{on['burst_output_tokens_per_s'] / off['burst_output_tokens_per_s']:.2f}x"],
            row("prompt tokens computed in the burst", off["burst_prefill_tokens_computed"],
                on["burst_prefill_tokens_computed"], 0),
            row(f"chat ({a['conversations']} x {a['turns']} turns): total time", coff["seconds"], con["seconds"], 1,
                " s"),
            row("chat: median TTFT", coff["median_ttft_s"], con["median_ttft_s"], unit=" s"),
            ["chat: prompt tokens served from the cache", f"{coff['cached_tokens']:,} / {coff['prompt_tokens']:,}",
             f"{con['cached_tokens']:,} / {con['prompt_tokens']:,}", ""]]
    s = d["summary"]
    return [table(["", "caching off", "caching on", "off / on"], rows),
            (f"\nIdentical outputs with caching on and off: shared prefix {s['identical_outputs_shared_prefix']}, "
            f"chat {s['identical_outputs_chat']}; compilations after warm-up: {s['compiles_after_warmup']}.")]


QUANT_LABELS = {"int4": "int4 (group 32)", "int8-kv": "int8 KV (float32 weights)",
                "int4-requant": "int4, requantized from float32"}


def render_quantization(d: dict) -> list[str]:
    rows = [[QUANT_LABELS.get(r["config"], r["config"]), f(r["weights_bytes"] / 2**20), f(r["weights_vs_bf16"], 3),
             r["kv_bytes_per_token"], f(r["perplexity"], 3), f"{r['ppl_increase_pct']:+.2f}%",
             f(r["greedy_agreement"], 3), f(r["greedy_prefix"]), f(r["decode_tok_s_b1"]), f(r["decode_tok_s_b32"]),
             f(r.get("step_ms_b1")), f(r.get("step_ms_b32"))] for r in d["results"]]
    return [table(["config", "weights MiB", "x bf16", "KV B/token", "ppl", "ppl +%", "greedy agree", "equal prefix",
                   "b1 tok/s", "b32 tok/s", "step ms b1", "step ms b32"], rows)]


def render_kernels(d: dict) -> list[str]:
    p = d["peaks"]
    rows = [[r["kind"], r["path"], r["batch"], r["new_tokens"], f"{r['context']:,}", f(r["ms"], 2),
             f"{r['bytes_per_s'] / 1e9:.2f} ({r['frac_peak_bandwidth']:.0%})",
             f"{r['flops_per_s'] / 1e9:.1f} ({r['frac_peak_flops']:.0%})"] for r in d["results"]]
    return [(f"Device {d['device']}, {d['dtype']}, {d['heads']} query / {d['kv_heads']} KV heads, head_dim "
            f"{d['head_dim']}, page size {d['block_size']}; kernels timed: {d['kernels_timed']}. Peaks in the same "
            f"run: read {p['read_bytes_per_s'] / 1e9:.1f} GB/s, copy {p['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
            f"matmul {p['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s.\n"),
            table(["step", "path", "sequences", "new tokens", "context", "ms", "GB/s (of peak)",
                   "GFLOP/s (of peak)"], rows, left=2)]


def render_capacity(d: dict) -> list[str]:
    c, dev = d["concurrency"], d["device"]
    rows = [[r["batch"], f(r["measured_tpot_s"] * 1e3), f(r["predicted_tpot_s"] * 1e3), f(r["error"] * 100, 0, "%"),
             "compute" if r["compute_bound"] else "memory"] for r in d["tpot"]]
    return [(f"Device measured in the run: {dev['bandwidth'] / 1e9:.1f} GB/s read, "
            f"{dev['peak_flops']['float32'] / 1e9:.0f} GFLOP/s float32 matmul. Max concurrency with a "
            f"{c['kv_cache_memory'] / 2**20:.0f} MiB KV budget at max_model_len {c['max_model_len']}: planned "
            f"{c['predicted']}, measured {c['measured']}.\n"),
            table(["batch", "measured ms", "roofline ms", "error", "bound"], rows)]


def render_batching(d: dict) -> list[str]:
    rows = [[r["mode"], f(r["seconds"]), f(r["output_tokens_per_s"]), f(r["latency_mean_s"]),
             f(r["latency_median_s"]), f(r["latency_p99_s"])] for r in d["results"]]
    a = d["args"]
    return [(f"{a['num_requests']} requests, prompts up to {a['max_prompt']} tokens, outputs mean {a['mean_output']} "
            f"/ max {a['max_output']}, batch {a['batch']}, {a['dtype']}.\n"),
            table(["mode", "seconds", "out tok/s", "mean latency s", "median s", "p99 s"], rows),
            f"\nContinuous / static throughput: **{d['throughput_ratio']:.2f}x**."]


def render_kv_memory(d: dict) -> list[str]:
    rows = [[name, f"{d[key]['concurrent_sequences']:,}", f(d[key]["waste_fraction"] * 100, 1, "%")]
            for name, key in (("contiguous (max_model_len per slot)", "contiguous"), ("paged", "paged"))]
    return [(f"Model {d['model']}, {d['kv_dtype']} KV ({d['kv_bytes_per_token']:,} B/token), "
            f"{d['kv_cache_memory'] / 2**30:.0f} GiB budget, max_model_len {d['max_model_len']}, page "
            f"{d['block_size']} tokens, mean live length {d['mean_length']:.0f} tokens.\n"),
            table(["layout", "sequences", "wasted"], rows),
            f"\nPaged / contiguous concurrency **{d['concurrency_ratio']:.2f}x**."]


def render_compare(d: dict) -> str:
    """The compare.py table: per engine and concurrency level, aggregate and single-stream decode tok/s, then the
    targets. Also printed by bench/compare.py at the end of a run."""
    # C / median TPOT: the aggregate rate once every request decodes, without the prefill phase (an estimate).
    rows = [[r["engine"], r["concurrency"], r["requests"], f(r["seconds"]), f(r["output_tok_s"]),
             f(r.get("decode_tok_s")), f(r["decode_tok_s"] * r["concurrency"] if r.get("decode_tok_s") else None),
             f(r.get("median_ttft_ms"), 0)] for r in d["rows"]]
    out = [table(["engine", "concurrency", "requests", "seconds", "out tok/s (aggregate)", "decode tok/s (1/TPOT)",
                  "decode phase tok/s (C/TPOT)", "median TTFT ms"], rows, left=1)]
    load = [f"{name} {rec['load_before'][0]:.2f} -> {rec['load_after'][0]:.2f}"
            for name, rec in d["engines"].items() if "load_before" in rec]
    skipped = [f"{name}: {rec['skipped']}" for name, rec in d["engines"].items() if "skipped" in rec]
    failed = [f"{name}: {rec['error'][:200]}" for name, rec in d["engines"].items() if "error" in rec]
    out.append("\nLoad average (1 min) before -> after each engine: " + "; ".join(load) + ".")
    for title, items in (("Skipped", skipped), ("Failed", failed)):
        if items:
            out.append(f"{title}: " + "; ".join(items) + ".")
    seen = "; ".join(f"{name} {rec['prompt_tokens_seen']}" for name, rec in d["engines"].items()
                     if rec.get("prompt_tokens_seen") is not None)
    tc = d["tokenizer_check"]
    out.append(f"Prompt tokens per request (sent: {tc['sent_ids']} ids; servers: their `usage`, in-process engines: "
               f"the ids passed): {seen}. llama.cpp's tokenizer on the first prompt's decoded text: "
               f"{tc['llama_cpp_ids']} ids, identical to jaxserve's: {tc['llama_cpp_identical']}.")
    targets = [[t["target"], t["engine"], f(t["value"]), f"{t['reference']} {f(t['reference_value'])}",
                "-" if t["ratio"] is None else f"{t['ratio']:.2f}x", f"{t['required']:.1f}x",
                {True: "**met**", False: "**not met**", None: "-"}[t["met"]]] for t in d["targets"]]
    out += ["", table(["target", "jaxserve", "value", "reference", "ratio", "needed", ""], targets, left=2)]
    return "\n".join(out)


# block name -> (JSON file(s) under bench/results, renderer, plot linked from the block: only PNGs in git, as
# bench/results/*.png is git-ignored and compare.png alone is committed, with `git add -f`)
RENDERERS: dict[str, tuple[str, Callable, str | None]] = {
    "compare": ("compare.json", lambda d: [render_compare(d)], "compare.png"),
    "offline_throughput": ("offline_throughput.json", render_offline_throughput, None),
    "decode_step": ("decode_step.json", render_decode_step, None),
    "serving": ("serving.json", render_serving, None),  # its PNG is not committed; the prose names it
    "serving_policy": ("serving_policy/*.json", render_serving_policy, None),
    "prefix_cache": ("prefix_cache.json", render_prefix_cache, None),
    "quantization": ("quantization.json", render_quantization, None),
    "kernels": ("kernels.json", render_kernels, None),
    "capacity": ("capacity.json", render_capacity, None),
    "batching": ("batching.json", render_batching, None),
    "kv_memory": ("kv_memory.json", render_kv_memory, None),
}


def render_blocks(results: Path) -> dict[str, str]:
    """Markdown for every benchmark whose JSON exists under `results`."""
    blocks = {}
    for name, (pattern, renderer, png) in RENDERERS.items():
        if "*" in pattern:
            files = sorted(results.glob(pattern))
            if not files:
                continue
            data = {str(p.relative_to(results)): json.loads(p.read_text()) for p in files}
            head = [f"JSON: `bench/results/{pattern}` ({len(files)} runs)"]
        else:
            path = results / pattern
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            head = [run_line(data, pattern)]
        lines = [*head, "", *renderer(data)]
        if png:
            lines += ["", *plot_link(png)]
        blocks[name] = "\n".join(lines).rstrip("\n") + "\n"
    return blocks


def update(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with every marked block that has a rendering replaced; also the names of the blocks that changed."""
    changed = []

    def substitute(m: re.Match) -> str:
        body = blocks.get(m["name"])
        if body is None or body == m["body"]:
            return m.group(0)
        changed.append(m["name"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(substitute, text), changed


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with --check, verify) the marked blocks of the markdown file; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(BENCH / "results"), help="directory of the benchmark JSON")
    p.add_argument("--markdown", default=str(BENCH / "RESULTS.md"))
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; change nothing")
    args = p.parse_args(argv)
    path = Path(args.markdown)
    text = path.read_text()
    new, changed = update(text, render_blocks(Path(args.results)))
    missing = sorted(set(RENDERERS) - {m["name"] for m in BLOCK.finditer(text)})
    if missing:
        print(f"note: no markers in {path.name} for: {', '.join(missing)}")
    if args.check:
        if changed:
            print(f"{path} is out of date with the JSON in blocks: {', '.join(changed)} "
                  f"(run bench/render_results.py)")
            return 1
        print(f"{path} is up to date")
        return 0
    if changed:
        path.write_text(new)
    print(f"{path}: {len(changed)} block(s) updated" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
