"""Human-readable rendering of a plan (the JSON form is the dict itself)."""

from __future__ import annotations

from typing import Any


def _size(num_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes:.0f} B"


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_plan(p: dict[str, Any]) -> str:
    """The plan as a table: memory first, then latency and throughput by batch size."""
    lines = [
        f"model            {p['model']} ({p['parameters'] / 1e9:.3f} B parameters, {p['weight_format']} weights)",
        f"device           {p['device']} x {p['num_devices']}: {_size(p['device_memory_bytes'])}, "
        f"{p['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, {p['peak_flops'] / 1e12:.1f} TFLOP/s",
        f"model memory     {_size(p['model_bytes'])}",
        f"KV per token     {p['kv_bytes_per_token']:,} B ({p['kv_cache_dtype']}; 2 x layers x kv_heads x head_dim "
        f"x bytes)",
        f"KV per sequence  {_size(p['kv_bytes_per_sequence'])} at max_model_len={p['max_model_len']}",
        f"step workspace   {_size(p['workspace_bytes'])} ({p.get('workspace_source', 'estimate')})",
        f"KV budget        {_size(p['kv_budget_bytes'])} -> {p['num_kv_blocks']} pages of {p['block_size']} tokens",
        f"max concurrency  {p['max_concurrency']} full-length sequences" + ("" if p["fits"] else
                                                                           "  (DOES NOT FIT)"),
        f"TTFT             {_time(p['ttft_s'])} for a {p['prompt_len']}-token prompt "
        f"({'compute' if p['prefill_compute_bound'] else 'memory'}-bound)",
        f"compute-bound at batch >= {p['compute_bound_batch'] or 'never (memory-bound at every batch)'} "
        f"(decode context {p['decode_context']})",
        "",
    ]
    calibrated = bool(p["decode"]) and "calibrated_tpot_s" in p["decode"][0]
    extra = f" {'calibrated':>11} {'tokens/s':>12}" if calibrated else ""
    lines.append(f"{'batch':>6} {'TPOT':>10} {'tokens/s':>12}{extra}  roofline bound")
    for row in p["decode"]:
        extra = f" {_time(row['calibrated_tpot_s']):>11} {row['calibrated_tokens_per_s']:>12.1f}" if calibrated else ""
        lines.append(f"{row['batch']:>6} {_time(row['tpot_s']):>10} {row['tokens_per_s']:>12.1f}{extra}  "
                     f"{'compute' if row['compute_bound'] else 'memory'}")
    if calibrated:
        lines.append("(TPOT: the roofline at the device's peaks; calibrated: this model's layers, LM head and sampler "
                     "timed on this machine, plus attention's KV reads at the measured bandwidth)")
    return "\n".join(lines)
