"""The `jaxserve` command line: `serve`, `generate`, `convert`, `plan` and `compile`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from jaxserve.engine.engine_args import EngineArgs
from jaxserve.sampling_params import SamplingParams

_BOOL_DEFAULT_TRUE = {"compile_all_buckets", "progress", "enable_prefix_caching", "quantize_embedding"}


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """One flag per EngineArgs field (`max_num_seqs` -> `--max-num-seqs`), so flags map 1:1 to the config."""
    parser.add_argument("model", nargs="?", default=None, help="checkpoint (HF dir, .gguf, native dir); "
                        "default: SmolLM2-135M-Instruct")
    for field in dataclasses.fields(EngineArgs):
        if field.name == "model":
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            if field.name in _BOOL_DEFAULT_TRUE:
                parser.add_argument("--no-" + field.name.replace("_", "-"), dest=field.name, action="store_false")
            else:
                parser.add_argument(flag, action="store_true")
        else:
            kind = int if "int" in str(field.type) else float if "float" in str(field.type) else str
            parser.add_argument(flag, type=kind, default=field.default)


def engine_args_from(ns: argparse.Namespace) -> EngineArgs:
    """EngineArgs from parsed flags."""
    return EngineArgs(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(EngineArgs)})


def _join_job(ns: argparse.Namespace) -> bool:
    """Join a multi-process job when the flags or environment ask for one (before any other JAX call).

    Returns True on a follower (process_index > 0), which then only replays the leader's steps.
    """
    from jaxserve.parallel import multihost

    index, count = multihost.initialize(multihost.DistributedConfig.from_args(ns))
    return count > 1 and index > 0


def _follow(ns: argparse.Namespace) -> int:
    """A follower process: build the same engine (its shards of the weights and pages), replay the leader's steps."""
    from jaxserve.engine.engine_args import build_engine

    engine = build_engine(engine_args_from(ns))
    steps = engine.runner.follow()
    logging.getLogger(__name__).info("the leader stopped after %d steps", steps)
    return 0


def _generate(ns: argparse.Namespace) -> int:
    from jaxserve.llm import LLM

    if _join_job(ns):
        return _follow(ns)
    args = engine_args_from(ns)
    llm = LLM(**dataclasses.asdict(args))
    params = SamplingParams(max_tokens=ns.max_tokens, temperature=ns.temperature, top_p=ns.top_p, top_k=ns.top_k,
                            seed=ns.sampling_seed, stop=ns.stop or None)
    prompts = ns.prompt or ["The capital of France is"]
    if ns.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    else:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, out in zip(prompts, outputs):
        record: dict[str, Any] = {"prompt": prompt, "text": out.outputs[0].text,
                                  "finish_reason": out.outputs[0].finish_reason}
        if ns.json:
            print(json.dumps(record, ensure_ascii=False))
        elif ns.chat:
            print(f"> {prompt}\n{out.outputs[0].text}\n")
        else:
            print(f"{prompt}{out.outputs[0].text}")
    return 0


def _serve(ns: argparse.Namespace) -> int:
    from jaxserve.server.launch import serve

    if _join_job(ns):
        return _follow(ns)
    serve(engine_args_from(ns), host=ns.host, port=ns.port, api_key=ns.api_key,
          served_model_name=ns.served_model_name, log_level=ns.log_level, max_queue_len=ns.max_queue_len,
          max_body_bytes=ns.max_body_bytes, graceful_shutdown_s=ns.graceful_shutdown_s)
    return 0


def _convert(ns: argparse.Namespace) -> int:
    from jaxserve.checkpoint.convert import convert

    from jaxserve.quant import QuantConfig

    if ns.quantization is None and ns.quantization_group_size is not None:
        raise ValueError("--quantization-group-size needs --quantization int8 or int4")
    quant = None if ns.quantization is None else QuantConfig(ns.quantization, ns.quantization_group_size,
                                                             ns.quantize_embedding)
    convert(ns.src, ns.dst, dtype=ns.dtype, progress=not ns.no_progress, quantization=quant)
    print(f"wrote {ns.dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `jaxserve`."""
    parser = argparse.ArgumentParser(prog="jaxserve", description="JAX LLM inference engine")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    srv = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    add_engine_args(srv)
    from jaxserve.server.launch import add_server_args

    add_server_args(srv)
    srv.set_defaults(func=_serve)

    gen = sub.add_parser("generate", help="generate text for prompts")
    add_engine_args(gen)
    gen.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--sampling-seed", type=int, default=None)
    gen.add_argument("--stop", action="append")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt")
    gen.set_defaults(func=_generate)

    conv = sub.add_parser("convert", help="write a native (orbax) checkpoint that loads faster")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    conv.add_argument("--no-progress", action="store_true")
    conv.add_argument("--quantization", default=None, help="int8 (per output channel) or int4 (group-wise): save "
                      "quantized weights, which load without a float copy")
    conv.add_argument("--quantization-group-size", type=int, default=None, help="int4: 32 (default), 64 or 128")
    conv.add_argument("--no-quantize-embedding", dest="quantize_embedding", action="store_false",
                      help="keep the embedding (and a tied LM head) in float")
    conv.set_defaults(func=_convert)

    from jaxserve.planner.cli import add_plan_args, run_plan

    plan = sub.add_parser("plan", help="capacity plan: memory, max concurrency, roofline TTFT/TPOT for a device")
    add_plan_args(plan)
    plan.set_defaults(func=run_plan)
    from jaxserve.aot.cli import add_compile_args, run_compile

    comp = sub.add_parser("compile", help="compile every step function of a deployment for a TPU or GPU target "
                          "this machine does not have (needs `make aot-tools`)")
    add_engine_args(comp)
    add_compile_args(comp)
    comp.set_defaults(func=run_compile)
    from jaxserve.parallel.multihost import add_cli_arguments

    for subparser in (srv, gen):  # multi-host: every process runs the same command with its own process id
        add_cli_arguments(subparser)
    # --log-level works before or after the subcommand (so `python serve.py --log-level DEBUG` works too).
    for subparser in (srv, gen, conv, plan, comp):
        subparser.add_argument("--log-level", default=argparse.SUPPRESS, help="logging level (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jaxserve` console script."""
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return ns.func(ns)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
