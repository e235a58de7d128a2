"""The engine sizes its KV pool with the planner's code: the planned max concurrency is what the engine admits."""

from __future__ import annotations

from engine_helpers import run_to_completion, tokens

from jaxserve.engine.engine_args import EngineArgs, build_engine
from jaxserve.kv_cache import kv_bytes_per_token
from jaxserve.planner import PlanRequest, get_device, plan, resolve_model
from jaxserve.sampling_params import SamplingParams


def test_planned_concurrency_is_what_the_engine_admits(tiny_model):
    directory, _ = tiny_model
    max_len, block = 64, 16
    args = EngineArgs(model=str(directory), skip_tokenizer_init=True, dtype="float32", max_model_len=max_len,
                      max_num_seqs=8, max_num_batched_tokens=512, block_size=block, progress=False,
                      compile_all_buckets=False, enable_prefix_caching=False)
    _, model = resolve_model(str(directory))  # the planner reads the checkpoint's config.json
    # A budget for 5.5 full-length sequences (4 pages each) plus the reserved page: 5 must fit, not 6.
    per_page = kv_bytes_per_token(model, "float32") * block
    args.kv_cache_memory = per_page * (1 + 4 * 5 + 2)
    engine = build_engine(args)
    assert engine.config.model == model
    planned = plan(PlanRequest(model=model, device=get_device("h100"), weight_format="float32",
                               max_model_len=max_len, block_size=block, kv_cache_memory=args.kv_cache_memory,
                               max_num_seqs=args.max_num_seqs))
    assert planned["num_kv_blocks"] == engine.block_manager.num_blocks == 23
    assert planned["max_concurrency"] == 5

    # Eight full-length requests (63 prompt tokens + 1 generated = 4 pages each) arrive together: the first step
    # runs exactly as many as the plan says, and the rest wait for pages.
    for i in range(8):
        engine.add_request(f"r{i}", {"prompt_token_ids": tokens(i, max_len - 1)},
                           SamplingParams(max_tokens=1, ignore_eos=True))
    first = engine.step()
    assert sum(out.finished for out in first) == planned["max_concurrency"]
    assert len(run_to_completion(engine)) == 8 - planned["max_concurrency"]
