"""Engine step timeline of a serving run: which steps ran (prefill / decode), how long, how many tokens.

    python bench/step_timeline.py serve STEPS.jsonl [jaxserve serve flags...]   # a server that logs every step
    python bench/step_timeline.py summarize STEPS.jsonl                         # what the steps were

`serve` wraps LLMEngine.step in memory (no engine code changes) and appends one JSON line per step; drive it with
bench/serving.py --base-url. Used to diagnose the streaming stall recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import itertools
import json
import sys
import time


def serve(path: str, flags: list[str]) -> int:
    """Run `jaxserve serve FLAGS`, logging every engine step to `path`."""
    from jaxserve.cli import main
    from jaxserve.engine import llm_engine

    step = llm_engine.LLMEngine.step
    log = open(path, "w", buffering=1)  # noqa: SIM115 - open for the server's lifetime

    def timed_step(self: llm_engine.LLMEngine) -> list:
        start = time.monotonic()
        outputs = step(self)
        stats = self.stats()
        log.write(json.dumps({"start": start, "seconds": time.monotonic() - start, "count": stats["step_count"],
                              "tokens": stats["step_tokens"], "running": stats["num_running"],
                              "waiting": stats["num_waiting"],
                              "compiles": stats["num_compiles_after_warmup"]}) + "\n")
        return outputs

    llm_engine.LLMEngine.step = timed_step
    return main(["serve", *flags])


def summarize(path: str) -> str:
    """Step counts and time per kind, the longest stretch of prefill-only steps, and the step sequence."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    steps, prev = [], {"count": {"prefill": 0, "decode": 0}, "tokens": {"prefill": 0, "decode": 0}}
    for r in rows:
        kind = "P" if r["count"]["prefill"] > prev["count"]["prefill"] else "D"
        tokens = sum(r["tokens"].values()) - sum(prev["tokens"].values())
        steps.append((r["start"] - rows[0]["start"], kind, r["seconds"], tokens))
        prev = r
    longest, first = (0.0, 0, 0), None
    for i, (t, kind, seconds, _) in enumerate(steps):
        first = None if kind == "D" else (i if first is None else first)
        if first is not None and t + seconds - steps[first][0] > longest[0]:
            longest = (t + seconds - steps[first][0], first, i)
    gaps = [b[0] - a[0] - a[2] for a, b in itertools.pairwise(steps)]
    lines = [(f"{len(steps)} steps over {steps[-1][0] + steps[-1][2]:.1f} s; compilations after warm-up: "
              f"{rows[-1]['compiles']}; largest gap between steps: {max(gaps, default=0) * 1000:.1f} ms")]
    for kind, name in (("P", "prefill"), ("D", "decode")):
        sel = [s for s in steps if s[1] == kind]
        lines.append(f"{name}: {len(sel)} steps, {sum(s[2] for s in sel):.1f} s, {sum(s[3] for s in sel)} tokens")
    lines.append(f"longest prefill-only stretch: {longest[0]:.1f} s ({longest[2] - longest[1] + 1} steps from "
                 f"t={steps[longest[1]][0]:.1f} s)")
    lines.append("sequence: " + "".join(s[1] for s in steps))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("serve", "summarize"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3:]))
    print(summarize(sys.argv[2]))
