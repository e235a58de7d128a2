"""What `jaxserve compile` prints: per step function the compiler's memory and cost figures with the roofline time
they imply, and per chip the planner's memory prediction beside the compiler's."""

from __future__ import annotations

from typing import Any

from jaxserve.aot.compile_steps import CompiledStep
from jaxserve.aot.deployment import Deployment

MIB = 2**20
GIB = 2**30


def roofline_seconds(step: CompiledStep, deployment: Deployment) -> float | None:
    """The step's time at the target's datasheet peaks: the larger of FLOPs / peak rate and bytes / bandwidth."""
    if step.flops is None and step.bytes_accessed is None:
        return None
    device = deployment.target.device
    compute = "float32" if deployment.config.dtype == "float32" and deployment.config.quantization is None \
        else "bfloat16"
    return max((step.flops or 0.0) / device.flops_for(compute), (step.bytes_accessed or 0.0) / device.bandwidth)


def per_chip(deployment: Deployment, steps: list[CompiledStep]) -> dict[str, Any]:
    """Planner vs compiler, bytes per chip. The compiler's resident bytes are the model step's arguments (weights,
    KV pages, step inputs) plus the code of every step function (all stay loaded); its workspace is the largest
    transient of any step function (temporaries plus outputs that do not alias an input). `fits` compares the
    total with the chip's memory; `within_utilization` with the share of it the pool was planned for."""
    n = deployment.config.tensor_parallel_size
    plan = deployment.plan
    page_bytes = plan["kv_bytes_per_token"] * deployment.config.cache.block_size
    planner = {"weights": plan["model_bytes"] / n, "kv_pool": deployment.config.cache.num_kv_blocks * page_bytes / n,
               "workspace": plan["workspace_bytes"] / n}
    planner["total"] = sum(planner.values())
    ok = [s for s in steps if s.memory is not None]
    model = [s for s in ok if s.key[0] == "model"]
    code = sum(s.memory["generated_code_size_in_bytes"] for s in ok)
    resident = max((s.memory["argument_size_in_bytes"] for s in model), default=None)
    workspace = max((s.memory["temp_size_in_bytes"] + s.memory["output_size_in_bytes"]
                     - s.memory["alias_size_in_bytes"] for s in ok), default=None)
    compiler = {"resident": None if resident is None else resident + code, "code": code, "workspace": workspace,
                "total": None if resident is None or workspace is None else resident + code + workspace}
    memory = deployment.target.device.memory_bytes
    total = compiler["total"]
    return {"planner": planner, "compiler": compiler, "chip_memory": memory,
            "memory_utilization": plan["memory_utilization"], "page_head_dim": plan["page_head_dim"],
            "fits": total is not None and total <= memory,
            "within_utilization": total is not None and total <= memory * plan["memory_utilization"]}


def to_json(deployment: Deployment, steps: list[CompiledStep]) -> dict[str, Any]:
    """The whole report as a JSON-able dict."""
    config = deployment.config
    return {
        "model": deployment.name, "target": deployment.target.name, "chip": deployment.target.chip.name,
        "tensor_parallel_size": config.tensor_parallel_size, "dtype": config.dtype,
        "quantization": config.quantization, "kv_cache_dtype": config.kv_dtype,
        "attention_backend": config.attention_backend, "block_size": config.cache.block_size,
        "num_kv_blocks": config.cache.num_kv_blocks, "max_model_len": config.scheduler.max_model_len,
        "max_num_seqs": config.scheduler.max_num_seqs,
        "max_num_batched_tokens": config.scheduler.max_num_batched_tokens,
        "steps": [{"name": s.name, "compile_s": s.seconds, "memory": s.memory, "flops": s.flops,
                   "bytes_accessed": s.bytes_accessed, "roofline_s": roofline_seconds(s, deployment),
                   "error": s.error, "shapes": s.shapes} for s in steps],
        "per_chip": per_chip(deployment, steps),
        # The planner's roofline decode step at batch 1, for comparison with the compiler-derived figures.
        "planner_tpot_batch1_s": deployment.plan["decode"][0]["tpot_s"] if deployment.plan.get("decode") else None,
        "failures": [s.name for s in steps if s.error],
    }


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / MIB:.1f}"


def _gib(x: float | None) -> str:
    return f"{'-' if x is None else f'{x / GIB:.3f}':>9s}"


def format_report(report: dict[str, Any]) -> str:
    """Human-readable tables of `to_json`'s dict."""
    lines = [f"{report['model']} on {report['target']} ({report['tensor_parallel_size']} chip(s), {report['dtype']}"
             f"{', ' + report['quantization'] if report['quantization'] else ''}, KV {report['kv_cache_dtype']}, "
             f"{report['num_kv_blocks']} pages of {report['block_size']}, attention {report['attention_backend']})",
             "",
             f"{'step function':28s} {'compile s':>9s} {'args MiB':>9s} {'out MiB':>8s} {'temp MiB':>9s} "
             f"{'code MiB':>8s} {'GFLOP':>9s} {'MB read':>9s} {'roofline ms':>11s}"]
    for s in report["steps"]:
        if s["error"]:
            lines.append(f"{s['name']:28s} {s['compile_s']:9.2f}  FAILED [{s['shapes']}]: {s['error']}")
            continue
        m = s["memory"] or {}
        flops = "-" if s["flops"] is None else f"{s['flops'] / 1e9:.2f}"
        nbytes = "-" if s["bytes_accessed"] is None else f"{s['bytes_accessed'] / 1e6:.1f}"
        roof = "-" if s["roofline_s"] is None else f"{s['roofline_s'] * 1e3:.3f}"
        lines.append(f"{s['name']:28s} {s['compile_s']:9.2f} {_mib(m.get('argument_size_in_bytes')):>9s} "
                     f"{_mib(m.get('output_size_in_bytes')):>8s} {_mib(m.get('temp_size_in_bytes')):>9s} "
                     f"{_mib(m.get('generated_code_size_in_bytes')):>8s} {flops:>9s} {nbytes:>9s} {roof:>11s}")
    chip = report["per_chip"]
    p, c = chip["planner"], chip["compiler"]
    lines += ["", "memory per chip (GiB)          planner   compiler",
              f"  weights + KV pool + inputs {_gib(p['weights'] + p['kv_pool'])} {_gib(c['resident'])}",
              f"  step workspace             {_gib(p['workspace'])} {_gib(c['workspace'])}",
              f"  total                      {_gib(p['total'])} {_gib(c['total'])}   of "
              f"{chip['chip_memory'] / GIB:.1f} GiB: {'fits' if chip['fits'] else 'DOES NOT FIT'}"
              + ("" if chip["within_utilization"] or not chip["fits"] else
                 f" (over the {chip['memory_utilization']:.0%} the KV pool was planned for: plan with "
                 f"--compiled-workspace)")]
    if report["failures"]:
        lines.append(f"{len(report['failures'])} step function(s) failed to compile: {', '.join(report['failures'])}")
    return "\n".join(lines)
