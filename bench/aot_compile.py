"""The TPU and GPU compilers on this CPU-only machine: the whole kernel grid, and large deployments end to end.

    .venv-aot/bin/python bench/aot_compile.py                  # everything (tens of minutes on 2 cores)
    .venv-aot/bin/python bench/aot_compile.py --grid-only      # the production kernel grid per chip
    .venv-aot/bin/python bench/aot_compile.py --deployments-only
    .venv-aot/bin/python bench/aot_compile.py --print-gpu-config   # on a GPU machine: its real target config

Needs the compile-only toolchains (`make aot-tools`). Every kernel configuration of
`pallas_kernels.production.production_configs(tier="full")` is compiled for each production chip, and each
deployment below goes through `jaxserve compile` (`jaxserve.aot`): every step function the runner warms up, with
the compiler's memory and cost figures, the roofline step time at the target's datasheet peaks, and the planner's
memory prediction per chip beside the compiler's. Results go to bench/results/aot_compile.json, rendered into
bench/RESULTS.md by `bench/render_results.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from jaxserve.aot import toolchain

if "--print-gpu-config" not in sys.argv:  # on a real GPU the real backend is wanted
    toolchain.prepare()  # before jax starts a backend

import jax  # noqa: E402

from jaxserve.aot.compile_steps import compile_deployment  # noqa: E402
from jaxserve.aot.deployment import plan_deployment  # noqa: E402
from jaxserve.aot.report import to_json  # noqa: E402
from jaxserve.aot.targets import compile_only_devices, parse_target  # noqa: E402
from jaxserve.engine.engine_args import EngineArgs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "aot_compile.json"
CHIP_TARGETS = {"v5e": "tpu-v5e", "v6e": "tpu-v6e", "h100": "h100", "a100": "a100-80gb"}
# (model, target, engine arguments): the deployments bench/RESULTS.md reports.
DEPLOYMENTS = [
    ("llama-3-8b", "h100", {}),
    ("llama-3-8b", "h100", {"quantization": "int8"}),
    ("llama-3-8b", "h100", {"kv_cache_dtype": "int8"}),
    ("llama-3-8b", "tpu-v5e:2x2", {"tensor_parallel_size": 4}),
    ("llama-3-70b", "tpu-v6e:2x4", {"tensor_parallel_size": 8}),
    ("llama-3-70b", "h100:8", {"tensor_parallel_size": 8}),
]


def compile_grid(tier: str) -> list[dict]:
    """Every production kernel configuration compiled for its chip; one row each."""
    from pallas_kernels import production

    rows = []
    for chip, target in CHIP_TARGETS.items():
        sharding = jax.sharding.SingleDeviceSharding(compile_only_devices(parse_target(target))[0])
        configs = production.production_configs(chip, tier=tier)
        start = time.perf_counter()
        for config in configs:
            t = time.perf_counter()
            try:
                compiled = config.compile(sharding)
                memory = compiled.memory_analysis()
                row = {"ok": True, "temp_bytes": None if memory is None else int(memory.temp_size_in_bytes)}
            except Exception as err:  # noqa: BLE001 - a failed configuration is a row
                row = {"ok": False, "error": " ".join(str(err).split())[:300]}
            rows.append({"chip": chip, "name": config.name, "compile_s": time.perf_counter() - t, **row})
            print(f"{chip:5s} {config.name:72s} {'ok' if row['ok'] else 'FAIL ' + row['error'][:100]}", flush=True)
        ok = sum(r["ok"] for r in rows if r["chip"] == chip)
        print(f"{chip}: {ok}/{len(configs)} compile in {time.perf_counter() - start:.1f} s", flush=True)
    return rows


def compile_deployments(only: str | None = None) -> list[dict]:
    """Each deployment of DEPLOYMENTS (or those whose `MODEL@TARGET` is `only`) through `jaxserve compile`."""
    reports = []
    for model, target_name, overrides in DEPLOYMENTS:
        if only is not None and only != f"{model}@{target_name}":
            continue
        target = parse_target(target_name)
        args = EngineArgs(**{"max_model_len": 8192, **overrides})
        start = time.perf_counter()
        deployment = plan_deployment(model, target, args)
        steps = compile_deployment(deployment, compile_only_devices(target))
        report = to_json(deployment, steps)
        report["wall_s"] = time.perf_counter() - start
        reports.append(report)
        chip = report["per_chip"]
        print(f"{model} on {target_name} {overrides}: {len(steps) - len(report['failures'])}/{len(steps)} step "
              f"functions compile in {report['wall_s']:.0f} s; per chip planner {chip['planner']['total'] / 2**30:.2f}"
              f" GiB, compiler {(chip['compiler']['total'] or 0) / 2**30:.2f} GiB", flush=True)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid-only", action="store_true")
    parser.add_argument("--deployments-only", action="store_true")
    parser.add_argument("--tier", default="full", choices=("fast", "full"))
    parser.add_argument("--only", default=None, metavar="MODEL@TARGET",
                        help="recompile one deployment (e.g. llama-3-8b@tpu-v5e:2x2), keeping the others' results")
    parser.add_argument("--print-gpu-config", action="store_true",
                        help="print this machine's GPU target config (run on a real GPU, without JAX_PLATFORMS=cpu)")
    ns = parser.parse_args()
    if ns.print_gpu_config:
        from jax._src.lib import xla_client  # untested until a GPU is lent: the entry point moves between versions

        print(xla_client.get_topology_for_devices(jax.devices()).target_config)
        return 0
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result = {"machine": f"{platform.machine()}, no accelerator", "cpus": os.cpu_count(),
              "python": platform.python_version(),
              "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "grid": previous.get("grid", []), "deployments": previous.get("deployments", [])}
    if not ns.deployments_only:
        result["grid"] = compile_grid(ns.tier)
    if not ns.grid_only:
        fresh = compile_deployments(ns.only)
        if ns.only is None:
            result["deployments"] = fresh
        else:  # replace that deployment's rows in place
            key = lambda r: tuple(r[k] for k in ("model", "target", "tensor_parallel_size", "dtype",  # noqa: E731
                                                 "quantization", "kv_cache_dtype"))
            replaced = {key(r): r for r in fresh}
            result["deployments"] = [replaced.pop(key(r), r) for r in result["deployments"]] + list(replaced.values())
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    failed = [r for r in result["grid"] if not r["ok"]] + [r for r in result["deployments"] if r["failures"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
