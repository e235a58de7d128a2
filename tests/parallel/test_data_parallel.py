"""Data-parallel replicas: each on its own devices with its own scheduler, routed by load, same outputs."""

from __future__ import annotations

import pytest
from openai import OpenAI
from parallel_helpers import ENGINE_KWARGS, prompts

from jaxserve import LLM, SamplingParams
from jaxserve.engine.data_parallel import DataParallelEngine
from jaxserve.server.testing import start_server

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, ignore_eos=True, seed=7)


def tokens_of(llm: LLM, params: SamplingParams) -> list[list[int]]:
    return [list(out.outputs[0].token_ids) for out in llm.generate(prompts(), params, use_tqdm=False)]


@pytest.fixture(scope="module")
def reference(tiny_gqa_checkpoint) -> dict[str, list[list[int]]]:
    llm = LLM(str(tiny_gqa_checkpoint), **ENGINE_KWARGS)
    return {"greedy": tokens_of(llm, GREEDY), "seeded": tokens_of(llm, SEEDED)}


# tp=2 (two replicas of two devices each, ~11 s on 2 cores): make test-all; make test keeps tp=1 here and tensor
# parallelism itself in tests/parallel/test_tensor_parallel.py::test_greedy_tokens_match_one_device.
@pytest.mark.parametrize("tp", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_replicas_give_the_same_tokens_as_one_engine(tiny_gqa_checkpoint, reference, tp: int) -> None:
    llm = LLM(str(tiny_gqa_checkpoint), data_parallel_size=2, tensor_parallel_size=tp, **ENGINE_KWARGS)
    engine = llm.engine
    assert isinstance(engine, DataParallelEngine)
    meshes = [set(replica.runner.mesh.devices.flat) for replica in engine.replicas]
    assert all(len(m) == tp for m in meshes) and not meshes[0] & meshes[1]  # disjoint device groups
    assert tokens_of(llm, GREEDY) == reference["greedy"]
    assert tokens_of(llm, SEEDED) == reference["seeded"]  # a request's seed, not its replica, decides its samples
    steps = [replica.stats()["num_steps"] for replica in engine.replicas]
    assert all(s > 0 for s in steps), f"a replica was never used: {steps}"
    for replica in engine.replicas:
        bm = replica.block_manager
        assert bm.num_free_blocks == bm.num_blocks - 1  # every page back on every replica


def test_router_balances_by_load_and_owns_each_request(tiny_gqa_checkpoint) -> None:
    engine = LLM(str(tiny_gqa_checkpoint), data_parallel_size=3, **ENGINE_KWARGS).engine
    for i, prompt in enumerate(prompts(6)):
        engine.add_request(f"r{i}", prompt, GREEDY)
    assert [len(replica.requests) for replica in engine.replicas] == [2, 2, 2]
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("r0", prompts(1)[0], GREEDY)
    owner = next(r for r in engine.replicas if "r4" in r.requests)
    engine.abort_request("r4")
    assert "r4" not in owner.requests
    engine.add_request("r6", prompts(1)[0], GREEDY)
    assert "r6" in owner.requests  # the replica that lost a request is now the least loaded
    with pytest.raises(ValueError, match="prompt token ids must be integers"):
        engine.add_request("bad", {"prompt_token_ids": [10**6]}, GREEDY)
    assert "bad" not in engine._owner
    stats = engine.stats()
    assert stats["num_waiting"] == 6 and len(stats["replicas"]) == 3
    while engine.has_unfinished_requests():
        engine.step()
    assert not engine._owner and engine.stats()["kv_cache_usage"] == 0.0


@pytest.mark.slow  # ~30 s on 2 cores; make test-all (the engine-level replica tests stay in make test)
def test_server_with_two_replicas() -> None:
    """`jaxserve serve --data-parallel-size 2` on the default model: concurrent requests all answered, identical."""
    from concurrent.futures import ThreadPoolExecutor

    server = start_server(["--data-parallel-size", "2", "--max-model-len", "256",
                           "--max-num-seqs", "4", "--max-num-batched-tokens", "64"], log_level="INFO")
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)

        def complete(_: int) -> str:
            return client.completions.create(model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=8,
                                             temperature=0).choices[0].text

        with ThreadPoolExecutor(6) as pool:
            texts = list(pool.map(complete, range(6)))
        assert len(set(texts)) == 1 and texts[0], texts
        assert "2 data-parallel replica(s)" in server.log_tail(20000)
    finally:
        server.stop()
