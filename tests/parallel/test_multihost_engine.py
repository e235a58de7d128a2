"""The engine across two processes: tensor parallelism over 4 devices of 2 CPU processes, the leader scheduling
and broadcasting each step, the follower replaying it; the tokens equal one device's."""

from __future__ import annotations

from pathlib import Path

import pytest
from parallel_helpers import ENGINE_KWARGS, prompts
from test_multihost import records, run_pair

from jaxserve import LLM, SamplingParams

WORKER = Path(__file__).with_name("multihost_engine_worker.py")


@pytest.mark.slow  # two processes, ~20 s on 2 cores; make test-all
@pytest.mark.timeout(240)
def test_two_processes_serve_one_tensor_parallel_model(tiny_gqa_checkpoint, tmp_path: Path) -> None:
    leader, follower = run_pair(tmp_path, timeout_s=180, worker=WORKER, args=(str(tiny_gqa_checkpoint),))
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    single = [list(o.outputs[0].token_ids)
              for o in LLM(str(tiny_gqa_checkpoint), **ENGINE_KWARGS).generate(prompts(), greedy, use_tqdm=False)]
    assert records(leader, "TOKENS") == [single]
    (steps,) = records(leader, "STEPS")
    assert steps > 10 and records(follower, "STEPS") == [steps]  # every step replayed (the keep-alive skipped), then a clean stop
