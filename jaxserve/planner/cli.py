"""`jaxserve plan`: flags and the command that prints a plan."""

from __future__ import annotations

import argparse
import dataclasses
import json

from jaxserve.planner import memory
from jaxserve.planner.devices import DEVICE_PRESETS, get_device
from jaxserve.planner.model_presets import MODEL_PRESETS, resolve_model
from jaxserve.planner.plan import PlanRequest, plan
from jaxserve.planner.report import format_plan


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    """The planner's flags."""
    parser.add_argument("--model", default="smollm2-135m",
                        help=f"a preset ({', '.join(MODEL_PRESETS)}), a config.json, or a checkpoint")
    parser.add_argument("--dtype", default="bfloat16", choices=memory.WEIGHT_FORMATS, help="weight format")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto follows the compute dtype")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--device", default="h100", help=f"{', '.join(DEVICE_PRESETS)}, or local")
    parser.add_argument("--measure", action="store_true", help="with --device local: measure bandwidth and "
                        "matmul rate now, and time this model's matmuls at each batch size (a calibrated TPOT)")
    parser.add_argument("--memory-gb", type=float, default=None)
    parser.add_argument("--bandwidth-gbs", type=float, default=None)
    parser.add_argument("--tflops", type=float, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=memory.DEFAULT_MEMORY_UTILIZATION)
    parser.add_argument("--num-devices", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-cache-memory", type=int, default=None, help="fix the KV budget in bytes")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=None, help="quantization group size (int4 default 32; "
                        "int8 default: per output channel)")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--compiled-workspace", default=None, metavar="REPORT.json",
                        help="take the step workspace per chip from a `jaxserve compile --json` report of this "
                             "deployment instead of the planner's estimate")
    parser.add_argument("--attention-backend", default="auto", help="auto | xla | pallas | cpu: the path whose "
                        "page geometry (head_dim padding) the KV pool is planned with, as `serve` would choose it")
    parser.add_argument("--json", action="store_true")


def request_from_args(ns: argparse.Namespace) -> PlanRequest:
    """A PlanRequest from parsed flags (measuring the local device when asked)."""
    name, model = resolve_model(ns.model)
    kv_cache_memory = ns.kv_cache_memory
    if ns.device == "local":
        if not ns.measure:
            raise ValueError("--device local needs --measure (or use a preset / --memory-gb --bandwidth-gbs "
                             "--tflops)")
        from jaxserve.planner.measure import measure_local_device

        device = measure_local_device()
        if kv_cache_memory is None:  # size the pool exactly as the engine will
            kv_cache_memory = _local_budget(model, ns)
        profile = _local_profile(model, device, kv_cache_memory, ns)
    else:
        device, profile = get_device(ns.device), None
    device = device.with_overrides(ns.memory_gb, ns.bandwidth_gbs, ns.tflops)
    workspace = None if ns.compiled_workspace is None else compiled_workspace(ns.compiled_workspace, ns)
    request = PlanRequest(model=model, device=device, model_name=name, weight_format=ns.dtype,
                       kv_cache_dtype=ns.kv_cache_dtype, max_model_len=ns.max_model_len,
                       memory_utilization=ns.gpu_memory_utilization, num_devices=ns.num_devices,
                       block_size=ns.block_size, kv_cache_memory=kv_cache_memory,
                       max_num_batched_tokens=ns.max_num_batched_tokens, max_num_seqs=ns.max_num_seqs,
                       prompt_len=ns.prompt_len, output_len=ns.output_len, group_size=ns.group_size,
                       profile=profile, workspace_bytes=workspace)
    return dataclasses.replace(request, page_head_dim=_page_head_dim(request, ns))


def _page_head_dim(req: PlanRequest, ns: argparse.Namespace) -> int:
    """The head dim `serve` would store the pages with on this device (padded for some Pallas kernels)."""
    from jaxserve.attention.dispatch import page_head_dim

    if ns.device == "local":
        import jax

        platform = jax.default_backend()
    else:
        platform = "tpu" if ns.device.lower().startswith("tpu") else "gpu"
    return page_head_dim(ns.attention_backend, req.model, platform, block_size=req.block_size, kv_dtype=req.kv_dtype,
                         max_model_len=req.context_len, max_num_seqs=req.max_num_seqs)


def compiled_workspace(path: str, ns: argparse.Namespace) -> float:
    """The step workspace of all `--num-devices` devices from a `jaxserve compile --json` report of the same
    deployment: the largest transient (temporaries, non-aliased outputs) of any step function plus the code of all
    of them, per chip, times the chips. A report of another deployment is refused, naming what differs."""
    num_devices = ns.num_devices
    try:
        with open(path) as f:
            report = json.load(f)
        per_chip = report["per_chip"]["compiler"]["workspace"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--compiled-workspace {path}: not a `jaxserve compile --json` report ({err})") from None
    if per_chip is None:
        raise ValueError(f"--compiled-workspace {path}: the report has no workspace (a step failed to compile)")
    mine = {"tensor_parallel_size": num_devices, "max_num_batched_tokens": ns.max_num_batched_tokens,
            "max_num_seqs": ns.max_num_seqs, "max_model_len": ns.max_model_len, "block_size": ns.block_size}
    for key, value in mine.items():
        if value is not None and report.get(key, value) != value:
            raise ValueError(f"--compiled-workspace {path} was compiled with {key}={report[key]}; this plan has "
                             f"{value}: compile the same deployment")
    code = report["per_chip"]["compiler"].get("code") or 0
    return (float(per_chip) + code) * num_devices


def _local_profile(model, device, kv_cache_memory: float, ns: argparse.Namespace):
    """This model's matmuls timed here at each batch the plan reports (None with --num-devices > 1)."""
    if ns.num_devices != 1:
        return None
    from jaxserve.planner.calibration import profile_decode_step

    sizing = PlanRequest(model=model, device=device, weight_format=ns.dtype, kv_cache_dtype=ns.kv_cache_dtype,
                         max_model_len=ns.max_model_len, block_size=ns.block_size, kv_cache_memory=kv_cache_memory,
                         max_num_seqs=ns.max_num_seqs, group_size=ns.group_size)
    batches = plan(sizing)["max_concurrency"]
    import jax

    # Activations: the engine's default float32 on CPU, else the plan's compute dtype.
    dtype = "float32" if jax.default_backend() == "cpu" else sizing.compute_dtype
    return profile_decode_step(model, ns.dtype, max(batches, 1), dtype=dtype)


def _local_budget(model, ns: argparse.Namespace) -> float:
    import jax

    budget = memory.local_kv_budget(ns.gpu_memory_utilization)
    if jax.default_backend() != "cpu":  # the engine measures after loading the weights; subtract them here
        budget -= memory.model_bytes(model, ns.dtype, "float32" if ns.dtype == "float32" else "bfloat16",
                                     ns.group_size)
    return max(budget, 0)


def run_plan(ns: argparse.Namespace) -> int:
    """Print the plan (a table, or JSON with --json)."""
    result = plan(request_from_args(ns))
    print(json.dumps(result, indent=2) if ns.json else format_plan(result))
    return 0
