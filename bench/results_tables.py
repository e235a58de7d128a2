"""The markdown of each benchmark's block in bench/RESULTS.md, from its JSON (used by bench/render_results.py).

One `render_<benchmark>` per JSON layout, returning markdown lines; `table`, `f`, `run_line` and `plot_link` are
the shared pieces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


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


def render_attention_kernels(d: dict) -> list[str]:
    p = d["peaks"]
    rows = [[r["kind"], r["path"], r["batch"], r["new_tokens"], f"{r['context']:,}", f(r["ms"], 2),
             f"{r['bytes_per_s'] / 1e9:.2f} ({r['frac_peak_bandwidth']:.0%})",
             f"{r['flops_per_s'] / 1e9:.1f} ({r['frac_peak_flops']:.0%})", f(r.get("speedup_vs_xla"), 2)]
            for r in d["results"]]
    timed = d["kernels_timed"]
    timed = ", ".join(timed) or "none" if isinstance(timed, list) else timed
    return [(f"Device {d['device']}, {d['dtype']}, {d['heads']} query / {d['kv_heads']} KV heads, head_dim "
            f"{d['head_dim']}, page size {d['block_size']}; kernels timed: {timed}. Peaks in the same "
            f"run: read {p['read_bytes_per_s'] / 1e9:.1f} GB/s, copy {p['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
            f"matmul {p['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s.\n"),
            table(["step", "path", "sequences", "new tokens", "context", "ms", "GB/s (of peak)",
                   "GFLOP/s (of peak)", "x xla"], rows, left=2)]


def render_cpu_matmul(d: dict) -> list[str]:
    rows = [[r["format"], r["shape"], r["rows"], f(r["cpu_ms"], 3), f(r["xla_ms"], 3), f(r["speedup"], 2),
             f"{r['cpu_gb_s']:.1f} ({r['cpu_frac_bandwidth']:.0%})",
             f"{r['cpu_gflop_s']:.0f} ({r['cpu_frac_flops']:.0%})"]
            for r in d["results"]]
    return [(f"Native kernel (`cpu_kernels.matmul`, SIMD: {d['simd']}) against XLA's dot on the same weights. Peaks "
             f"in the same run: read {d['read_bytes_per_s'] / 1e9:.1f} GB/s, float32 matmul (XLA) "
             f"{d['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s.\n"),
            table(["weights", "shape", "rows", "kernel ms", "xla ms", "x xla", "kernel GB/s (of read)",
                   "kernel GFLOP/s (of peak)"], rows, left=2)]


def render_capacity(d: dict) -> list[str]:
    c, dev = d["concurrency"], d["device"]
    calibrated = all("calibrated_tpot_s" in r for r in d["tpot"])
    rows = [[r["batch"], f(r["measured_tpot_s"] * 1e3), f(r["predicted_tpot_s"] * 1e3), f(r["error"] * 100, 0, "%"),
             f(r["predicted_tpot_s"] / r["measured_tpot_s"] * 100, 0, "%"),
             *([f(r["calibrated_tpot_s"] * 1e3), f(r["calibrated_error"] * 100, 0, "%")] if calibrated else []),
             "compute" if r["compute_bound"] else "memory"] for r in d["tpot"]]
    header = ["batch", "measured ms", "roofline ms", "error", "of roofline",
              *(["calibrated ms", "calibrated error"] if calibrated else []), "bound"]
    return [(f"Weights {d.get('weight_format', 'float32')}. Device measured in the run: "
             f"{dev['bandwidth'] / 1e9:.1f} GB/s read, "
            f"{dev['peak_flops']['float32'] / 1e9:.0f} GFLOP/s float32 matmul. Max concurrency with a "
            f"{c['kv_cache_memory'] / 2**20:.0f} MiB KV budget at max_model_len {c['max_model_len']}: planned "
            f"{c['predicted']}, measured {c['measured']}.\n"),
            table(header, rows)]


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


def render_scale_out(d: dict) -> list[str]:
    """bench/scale_out.py: interleaved vs disaggregated serving on simulated devices (pooled runs per mode)."""
    a = d["args"]
    modes = d["modes"]
    keys = [("ttft_mean_ms", "TTFT mean ms"), ("ttft_median_ms", "TTFT median ms"), ("ttft_p99_ms", "TTFT p99 ms"),
            ("long_ttft_median_ms", "long-prompt TTFT median ms"), ("itl_median_ms", "ITL median ms"),
            ("itl_p99_ms", "ITL p99 ms"), ("decode_itl_p99_ms", "ongoing decodes' ITL p99 ms"),
            ("throughput_tok_s", "throughput tok/s")]
    rows = [[label, *[f(modes[m].get(key), 1 if key == "throughput_tok_s" else 0) for m in modes]]
            for key, label in keys]
    head = d.get("header", {})
    return [(f"{a['num_decodes']} ongoing decodes of {a['decode_tokens']} tokens while {a['num_long']} prompts of "
             f"{a['long_tokens']} tokens arrive every {a['interval_ms'] / 1000:g} s; TP={a['tp']} per group, "
             f"{head.get('devices', '?')} simulated devices, {a['repeats']} runs per mode, pooled; same tokens in both "
             f"modes: {d.get('same_tokens')}. Load average {head.get('load_average_1m_at_start', 0):.1f} -> "
             f"{head.get('load_average_1m_at_end', 0):.1f}.\n"),
            table(["", *modes], rows)]
