"""`jaxserve compile MODEL --target TARGET`: every step function of a deployment through the target's compiler."""

from __future__ import annotations

import argparse
import json
import sys

from jaxserve.aot.targets import TARGET_CHIPS


def add_compile_args(parser: argparse.ArgumentParser) -> None:
    """The compile command's own flags (the engine flags are added beside them, as for `serve`)."""
    parser.add_argument("--target", required=True,
                        help=f"{', '.join(TARGET_CHIPS)}; TPUs with a topology (tpu-v5e:2x2, tpu-v6e:2x4, "
                             f"tpu-v5p:2x2x1), GPUs with a count (h100:8)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", default=None, help="write the compiled executables to this directory, in the "
                        "form `serve --compilation-cache-dir DIR` reads (untested on real hardware)")


def run_compile(ns: argparse.Namespace) -> int:
    """Compile, print the report; 1 when a step fails to compile or the deployment does not fit the chip."""
    from jaxserve.aot import toolchain

    toolchain.prepare()  # before jax starts a backend
    import jax

    from jaxserve.aot.compile_steps import compile_deployment
    from jaxserve.aot.deployment import plan_deployment
    from jaxserve.aot.report import format_report, to_json
    from jaxserve.aot.targets import compile_only_devices, parse_target
    from jaxserve.cli import engine_args_from

    if ns.model is None:
        raise ValueError("jaxserve compile needs a model: a preset (e.g. llama-3-8b), a config.json or a checkpoint")
    target = parse_target(ns.target)
    deployment = plan_deployment(ns.model, target, engine_args_from(ns))
    try:
        devices = compile_only_devices(target)
    except toolchain.ToolchainMissing as err:
        raise ValueError(str(err)) from None
    if ns.out:
        jax.config.update("jax_compilation_cache_dir", ns.out)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        try:  # the cache is set up once per process: a second compile in the same process must see the new dir
            from jax._src import compilation_cache

            compilation_cache.reset_cache()
        except (ImportError, AttributeError):
            pass

    def progress(step) -> None:
        if not ns.json:
            state = "FAILED" if step.error else "ok"
            print(f"  compiled {step.name} in {step.seconds:.2f} s: {state}", file=sys.stderr, flush=True)

    steps = compile_deployment(deployment, devices, progress=progress)
    report = to_json(deployment, steps)
    print(json.dumps(report, indent=1) if ns.json else format_report(report))
    for failed in (s for s in steps if s.error):
        print(f"error: {failed.name} [{failed.shapes}] does not compile for {target.name}: {failed.error}",
              file=sys.stderr)
    total = report["per_chip"]["compiler"]["total"]
    if total is None and not report["failures"]:
        print(f"error: the compiler reported no memory figures for {target.name}", file=sys.stderr)
    elif not report["per_chip"]["fits"] and not report["failures"]:
        print(f"error: the deployment needs {total / 2**30:.2f} GiB per chip by the compiler's figures; "
              f"{target.device.name} has {target.device.memory_bytes / 2**30:.1f} GiB", file=sys.stderr)
    return 1 if report["failures"] or not report["per_chip"]["fits"] else 0
