"""One process of the two-process engine test: `python multihost_engine_worker.py PROCESS_ID PORT CHECKPOINT`.

Both processes join the job and build the same engine over the 4 global devices (tensor parallelism across the
processes). Process 0 schedules: it generates greedily and prints `TOKENS <json>`; process 1 replays its steps and
prints `STEPS <json>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from jaxserve.parallel import multihost


def main(process_id: int, port: int, checkpoint: str) -> None:
    multihost.initialize(multihost.DistributedConfig(f"127.0.0.1:{port}", 2, process_id))
    from parallel_helpers import ENGINE_KWARGS, prompts

    from jaxserve.engine.engine_args import EngineArgs, build_engine
    from jaxserve.sampling_params import SamplingParams

    engine = build_engine(EngineArgs(model=checkpoint, tensor_parallel_size=4, compilation_cache_dir=None,
                                     **ENGINE_KWARGS))
    if process_id > 0:
        print("STEPS " + json.dumps(engine.runner.follow()), flush=True)
        return
    from jaxserve.engine import runner

    runner.KEEPALIVE_S = 0.0  # an idle leader's no-op message: the follower must skip it, not replay a step
    engine.keepalive()
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    for i, prompt in enumerate(prompts()):
        engine.add_request(str(i), prompt, greedy)
    done = {}
    while engine.has_unfinished_requests():
        done.update({out.request_id: list(out.outputs[0].token_ids) for out in engine.step() if out.finished})
    print("TOKENS " + json.dumps([done[str(i)] for i in range(len(done))]), flush=True)
    print("STEPS " + json.dumps(engine.num_steps), flush=True)
    engine.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
