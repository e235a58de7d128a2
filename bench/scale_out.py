"""Interleaved vs disaggregated serving: TTFT and inter-token latency under long prompts arriving mid-decode.

Workload (timed arrivals, offline, greedy, EOS ignored): `--num-decodes` requests with short prompts and
`--decode-tokens` outputs start at t=0 and keep decoding; meanwhile `--num-long` prompts of `--long-tokens` tokens
arrive every `--interval-ms` and generate `--long-output` tokens each. Every token's emission time is recorded
(when `step()` returns it), giving per-request TTFT and each gap between consecutive tokens of a request (ITL).

- interleaved: one LLMEngine on one device group (`tensor_parallel_size` devices). Its scheduler alternates prefill
  and decode steps, so each long prefill step lands inside the running decodes' token gaps.
- disaggregated: `EngineArgs(disaggregated=True)`: a prefill engine on devices [0, tp) and a decode engine on
  [tp, 2 tp); decode steps run while a prefill step computes in a background thread.

Each engine first runs the workload once untimed (compiling the shapes it meets); then `--repeats` timed runs,
the two engines taking turns (this host may be shared), are pooled. On
simulated CPU devices (`--xla_force_host_platform_device_count=8`, set below before jax is imported) all "devices"
share the host's cores: disaggregation cannot add compute there, it can only stop decodes waiting behind prefills
(the two engines then split the cores). On real multi-chip hardware the groups are separate chips.

    python bench/scale_out.py [--tp 1] [--num-long 4] [--long-tokens 450] [--interval-ms 2000]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_common import pyplot, run_header

RESULTS = Path(__file__).parent / "results"
MODES = ("interleaved", "disaggregated")


def make_workload(vocab: int, args: argparse.Namespace) -> list[tuple[float, str, list[int], int]]:
    """(arrival s, request id, prompt ids, max_tokens), sorted by arrival."""
    rng = np.random.default_rng(0)
    work = [(0.0, f"decode{i}", [int(t) for t in rng.integers(100, vocab - 100, 24)], args.decode_tokens)
            for i in range(args.num_decodes)]
    work += [(args.first_long_s + i * args.interval_ms / 1000, f"long{i}",
              [int(t) for t in rng.integers(100, vocab - 100, args.long_tokens)], args.long_output)
             for i in range(args.num_long)]
    return sorted(work, key=lambda w: w[0])


def drive(engine, work: list[tuple[float, str, list[int], int]]) -> dict[str, dict]:
    """Run the arrival schedule; per request: arrival and each token's emission time (s from the start)."""
    from jaxserve import SamplingParams

    pending = list(work)
    record: dict[str, dict] = {}
    start = time.monotonic()
    while pending or engine.has_unfinished_requests():
        now = time.monotonic() - start
        while pending and pending[0][0] <= now:
            arrival, rid, prompt, max_tokens = pending.pop(0)
            engine.add_request(rid, {"prompt_token_ids": prompt},
                               SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
            record[rid] = {"arrival": arrival, "times": [], "tokens": None}
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[0][0] - (time.monotonic() - start)))
            continue
        outputs = engine.step()
        t = time.monotonic() - start
        for out in outputs:
            rec = record[out.request_id]
            rec["times"] += [t] * (len(out.outputs[0].token_ids) - len(rec["times"]))
            rec["tokens"] = list(out.outputs[0].token_ids)
    record["_elapsed"] = {"s": time.monotonic() - start}
    return record


def summarize(records: list[dict[str, dict]]) -> dict:
    """Over the timed runs: TTFT (all requests, and long prompts only), ITL (all gaps between consecutive tokens
    of a request, and the ongoing decodes' gaps), throughput; the first run's timeline for the plot."""
    ttft, long_ttft, all_gaps, decode_gaps, tokens, elapsed = [], [], [], [], 0, 0.0
    for record in records:
        elapsed += record["_elapsed"]["s"]
        for rid, r in record.items():
            if rid == "_elapsed":
                continue
            ttft.append(r["times"][0] - r["arrival"])
            if rid.startswith("long"):
                long_ttft.append(ttft[-1])
            gaps = np.diff(r["times"]).tolist()
            all_gaps += gaps
            decode_gaps += gaps if rid.startswith("decode") else []
            tokens += len(r["times"])

    def ms(values: list[float], q: float) -> float:
        return float(np.percentile(values, q) * 1000) if values else float("nan")

    return {"runs": len(records), "elapsed_s": elapsed / len(records), "output_tokens": tokens,
            "throughput_tok_s": tokens / elapsed, "ttft_mean_ms": float(np.mean(ttft) * 1000),
            "ttft_median_ms": ms(ttft, 50), "ttft_p99_ms": ms(ttft, 99), "long_ttft_median_ms": ms(long_ttft, 50),
            "long_ttft_p99_ms": ms(long_ttft, 99), "itl_median_ms": ms(all_gaps, 50), "itl_p99_ms": ms(all_gaps, 99),
            "itl_max_ms": ms(all_gaps, 100), "decode_itl_median_ms": ms(decode_gaps, 50),
            "decode_itl_p99_ms": ms(decode_gaps, 99),
            "timeline": {rid: [round(t, 4) for t in r["times"]] for rid, r in records[0].items() if rid != "_elapsed"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled SmolLM2-135M)")
    parser.add_argument("--tp", type=int, default=1, help="devices per group (tensor_parallel_size)")
    parser.add_argument("--num-decodes", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--num-long", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=450)
    parser.add_argument("--long-output", type=int, default=8)
    parser.add_argument("--first-long-s", type=float, default=0.3)
    parser.add_argument("--interval-ms", type=float, default=2000.0)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (taking turns)")
    parser.add_argument("--out", default=str(RESULTS / "scale_out.json"))
    args = parser.parse_args()

    import jax

    from jaxserve.engine.engine_args import EngineArgs, build_engine

    results = {"header": {**run_header(), "devices": f"{len(jax.devices())} x {jax.devices()[0].platform}",
                          "load_average_1m_at_start": os.getloadavg()[0]},
               "args": vars(args), "modes": {}}
    engines, work = {}, None
    for mode in MODES:
        engines[mode] = build_engine(EngineArgs(
            model=args.model, tensor_parallel_size=args.tp, disaggregated=mode == "disaggregated",
            max_model_len=1024, max_num_seqs=16, max_num_batched_tokens=args.max_num_batched_tokens,
            num_kv_blocks=512, compile_all_buckets=False, progress=False, skip_tokenizer_init=True,
            enable_prefix_caching=False))  # the timed runs repeat the warm-up's prompts: no cache hits wanted
        work = make_workload(engines[mode].config.model.vocab_size, args)
        warm = time.monotonic()
        drive(engines[mode], work)  # compiles the shapes this workload meets
        print(f"{mode}: warm-up run {time.monotonic() - warm:.1f} s", flush=True)
    # The modes take turns, so a change in the machine's load (a shared host) hits both alike.
    records: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            records[mode].append(drive(engines[mode], work))
    tokens = {mode: [{rid: r["tokens"] for rid, r in rec.items() if rid != "_elapsed"} for rec in records[mode]]
              for mode in MODES}
    results["same_tokens"] = all(t == tokens["interleaved"][0] for mode in MODES for t in tokens[mode])
    for mode, engine in engines.items():
        results["modes"][mode] = summarize(records[mode])
        stats = engine.stats()  # cumulative over the warm-up and timed runs
        results["modes"][mode]["engine"] = {k: stats[k] for k in ("step_time_s", "step_tokens", "step_count")}
        if mode == "disaggregated":
            results["modes"][mode]["handoffs"] = {k: stats[k] for k in ("num_handoffs", "pages_moved",
                                                                         "handoff_time_s", "num_returned")}
            engine.shutdown()
    # This host may be shared with other work: its load while the runs ran is part of the result.
    results["header"]["load_average_1m_at_end"] = os.getloadavg()[0]
    report(results, Path(args.out))


def report(results: dict, out: Path) -> None:
    rows = [("TTFT mean (ms)", "ttft_mean_ms"), ("TTFT median (ms)", "ttft_median_ms"), ("TTFT p99 (ms)", "ttft_p99_ms"),
            ("long-prompt TTFT median (ms)", "long_ttft_median_ms"), ("ITL median (ms)", "itl_median_ms"),
            ("ITL p99 (ms)", "itl_p99_ms"), ("ITL max (ms)", "itl_max_ms"),
            ("ongoing decodes' ITL median (ms)", "decode_itl_median_ms"),
            ("ongoing decodes' ITL p99 (ms)", "decode_itl_p99_ms"), ("throughput (tok/s)", "throughput_tok_s"),
            ("elapsed (s)", "elapsed_s")]
    modes = results["modes"]
    print(f"\n{'':34s}{'interleaved':>14s}{'disaggregated':>15s}")
    for label, key in rows:
        print(f"{label:34s}{modes['interleaved'][key]:14.1f}{modes['disaggregated'][key]:15.1f}")
    print(f"same tokens: {results['same_tokens']}; {results['header']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, mode in zip(axes, ("interleaved", "disaggregated")):
        for rid, times in sorted(modes[mode]["timeline"].items()):
            ax.plot(times, [rid] * len(times), "|", markersize=8, color="C0" if rid.startswith("decode") else "C3")
        ax.set_title(f"{mode}: ITL p99 {modes[mode]['itl_p99_ms']:.0f} ms, "
                     f"TTFT p99 {modes[mode]['ttft_p99_ms']:.0f} ms")
        ax.set_xlabel("seconds since start (one mark per token)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
