"""Regenerate the tables of bench/RESULTS.md from bench/results/*.json.

Every generated block sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; text outside the markers
(the prose: setup, interpretation, history) is never touched. One renderer per benchmark turns its JSON into
markdown: a line saying which JSON, when and on what machine, the table(s), and the plot when there is one. A
block whose JSON is missing is left as it is.

    python bench/render_results.py            # rewrite RESULTS.md in place
    python bench/render_results.py --check    # exit 1 when RESULTS.md is out of date with the JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aot_tables import render_aot_compile  # bench/ is not a package: sibling modules
from results_tables import (
    plot_link,
    render_attention_kernels,
    render_batching,
    render_capacity,
    render_compare,
    render_cpu_matmul,
    render_decode_step,
    render_kv_memory,
    render_offline_throughput,
    render_prefix_cache,
    render_quantization,
    render_scale_out,
    render_serving,
    render_serving_policy,
    run_line,
)

BENCH = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)



# block name -> (JSON file(s) under bench/results, renderer, plot linked from the block: only PNGs in git, as
# bench/results/*.png is git-ignored and compare.png alone is committed, with `git add -f`)
RENDERERS: dict[str, tuple[str, Callable, str | None]] = {
    "compare": ("compare.json", lambda d: [render_compare(d)], "compare.png"),
    "offline_throughput": ("offline_throughput.json", render_offline_throughput, None),
    "decode_step": ("decode_step.json", render_decode_step, None),
    "serving": ("serving.json", render_serving, None),  # its PNG is not committed; the prose names it
    "serving_policy": ("serving_policy/*.json", render_serving_policy, None),
    "prefix_cache": ("prefix_cache.json", render_prefix_cache, None),
    "quantization": ("quantization.json", render_quantization, None),
    "attention_kernels": ("attention_kernels.json", render_attention_kernels, None),
    "aot_compile": ("aot_compile.json", render_aot_compile, None),
    "cpu_matmul": ("cpu_matmul.json", render_cpu_matmul, None),
    "capacity": ("capacity.json", render_capacity, None),
    "capacity_int8": ("capacity-int8.json", render_capacity, None),
    "batching": ("batching.json", render_batching, None),
    "kv_memory": ("kv_memory.json", render_kv_memory, None),
    "scale_out": ("scale_out.json", render_scale_out, None),
}


def render_blocks(results: Path) -> dict[str, str]:
    """Markdown for every benchmark whose JSON exists under `results`."""
    blocks = {}
    for name, (pattern, renderer, png) in RENDERERS.items():
        if "*" in pattern:
            files = sorted(results.glob(pattern))
            if not files:
                continue
            data = {str(p.relative_to(results)): json.loads(p.read_text()) for p in files}
            head = [f"JSON: `bench/results/{pattern}` ({len(files)} runs)"]
        else:
            path = results / pattern
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            head = [run_line(data, pattern)]
        lines = [*head, "", *renderer(data)]
        if png:
            lines += ["", *plot_link(png)]
        blocks[name] = "\n".join(lines).rstrip("\n") + "\n"
    return blocks


def update(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with every marked block that has a rendering replaced; also the names of the blocks that changed."""
    changed = []

    def substitute(m: re.Match) -> str:
        body = blocks.get(m["name"])
        if body is None or body == m["body"]:
            return m.group(0)
        changed.append(m["name"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(substitute, text), changed


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with --check, verify) the marked blocks of the markdown file; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(BENCH / "results"), help="directory of the benchmark JSON")
    p.add_argument("--markdown", default=str(BENCH / "RESULTS.md"))
    p.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; change nothing")
    args = p.parse_args(argv)
    path = Path(args.markdown)
    text = path.read_text()
    new, changed = update(text, render_blocks(Path(args.results)))
    missing = sorted(set(RENDERERS) - {m["name"] for m in BLOCK.finditer(text)})
    if missing:
        print(f"note: no markers in {path.name} for: {', '.join(missing)}")
    if args.check:
        if changed:
            print(f"{path} is out of date with the JSON in blocks: {', '.join(changed)} "
                  f"(run bench/render_results.py)")
            return 1
        print(f"{path} is up to date")
        return 0
    if changed:
        path.write_text(new)
    print(f"{path}: {len(changed)} block(s) updated" + (f" ({', '.join(changed)})" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
