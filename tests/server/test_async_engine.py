"""AsyncLLMEngine over a fake engine: streaming, rejection, abort, and surviving a failed step."""

from __future__ import annotations

import asyncio

import pytest

from jaxserve.engine.async_engine import AsyncLLMEngine, EngineDeadError
from jaxserve.outputs import CompletionOutput, RequestOutput
from jaxserve.sampling_params import SamplingParams


class FakeEngine:
    """Emits one token per step per request; `fail_next` makes the next step raise."""

    def __init__(self) -> None:
        self.requests: dict[str, list] = {}
        self.fail_next = False
        self.aborted: list[str] = []

    def add_request(self, request_id, prompt, params, arrival_time=None, cache_salt=None):
        if prompt == "too long":
            raise ValueError("the prompt has 999 tokens but max_model_len is 512")
        self.requests[request_id] = [params.max_tokens, 0]

    def abort_request(self, request_id):
        if self.requests.pop(request_id, None) is not None:
            self.aborted.append(request_id)

    def has_unfinished_requests(self):
        return bool(self.requests)

    def get_tokenizer(self):
        return None

    def stats(self):
        return {"num_running": len(self.requests)}

    def step(self):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        outs = []
        for rid, state in list(self.requests.items()):
            state[1] += 1
            done = state[1] >= state[0]
            outs.append(RequestOutput(rid, None, [1], None, [CompletionOutput(
                0, "x" * state[1], [7] * state[1], None, None, "length" if done else None)], done))
            if done:
                del self.requests[rid]
        return outs


@pytest.fixture
def engine():
    fake = FakeEngine()
    eng = AsyncLLMEngine(lambda: fake)
    eng.start()
    assert eng.ready.wait(5) and eng.is_ready
    yield eng
    eng.shutdown()


def test_stream_reject_abort_and_failure(engine):
    async def main():
        outs = [o async for o in engine.generate("a", "p", SamplingParams(max_tokens=3))]
        assert [o.outputs[0].text for o in outs] == ["x", "xx", "xxx"] and outs[-1].finished

        with pytest.raises(ValueError, match="512"):
            await engine.add_request("b", "too long", SamplingParams())

        # Long enough that the fake engine's loop (steps of microseconds) cannot finish it before the consumer
        # leaves, however slowly this test's thread is scheduled (with 1000 it once finished first under load).
        gen = engine.generate("c", "p", SamplingParams(max_tokens=10**9))
        await gen.__anext__()
        await gen.aclose()  # the consumer leaves: the request is aborted
        for _ in range(100):
            if "c" in engine.engine.aborted:
                break
            await asyncio.sleep(0.02)
        assert "c" in engine.engine.aborted

        engine.engine.fail_next = True
        with pytest.raises(EngineDeadError, match="boom"):
            async for _ in engine.generate("d", "p", SamplingParams(max_tokens=5)):
                pass
        outs = [o async for o in engine.generate("e", "p", SamplingParams(max_tokens=2))]
        assert outs[-1].finished  # the loop kept serving

    asyncio.run(main())


def test_stats_refreshed_after_an_abort_on_an_idle_engine(engine):
    async def main():
        stream = await engine.add_request("f", "p", SamplingParams(max_tokens=10**6))
        await stream.queue.get()  # it has run a step: the stats say one request runs
        assert engine.last_stats["num_running"] == 1
        engine.abort("f")  # no step follows (nothing else runs): the abort itself must refresh the stats
        for _ in range(100):
            if engine.last_stats["num_running"] == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.last_stats["num_running"] == 0

    asyncio.run(main())
