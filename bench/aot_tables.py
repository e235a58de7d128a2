"""Markdown for bench/results/aot_compile.json (`bench/aot_compile.py`): the kernel grid per chip, and per
deployment the planner's memory per chip beside the compiler's, with the roofline step times."""

from __future__ import annotations

from results_tables import f, table  # bench/ is not a package: a sibling module

GIB = 2**30


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def render_aot_compile(d: dict) -> list[str]:
    lines = [f"Python {d['python']}; compile-only devices (`jax.experimental.topologies`).", ""]
    grid = d.get("grid", [])
    if grid:
        chips = sorted({r["chip"] for r in grid}, key=[r["chip"] for r in grid].index)
        rows = []
        for chip in chips:
            mine = [r for r in grid if r["chip"] == chip]
            failed = [r["name"] for r in mine if not r["ok"]]
            rows.append([chip, f"{len(mine) - len(failed)} / {len(mine)}", f(sum(r["compile_s"] for r in mine)),
                         ", ".join(failed) or "-"])
        lines += ["Production kernel grid (every configuration compiled by the chip's real compiler):", "",
                  table(["chip", "compile", "total s", "failed"], rows), ""]
    deployments = d.get("deployments", [])
    if deployments:
        rows = []
        for r in deployments:
            chip = r["per_chip"]
            p, c = chip["planner"], chip["compiler"]
            decode = [s for s in r["steps"] if s["name"].startswith("model/") and s["roofline_s"] is not None]
            one = next((s for s in decode if s["name"] == "model/1"), None)
            big = decode[-1] if decode else None
            setup = r["dtype"] + (f", {r['quantization']} weights" if r["quantization"] else "") + \
                (", int8 KV" if r["kv_cache_dtype"] == "int8" else "")
            planner_tpot = r.get("planner_tpot_batch1_s")
            rows.append([r["model"], r["target"], r["tensor_parallel_size"], setup,
                         f"{len(r['steps']) - len(r['failures'])} / {len(r['steps'])}", f(r["wall_s"], 0),
                         _gib(p["weights"] + p["kv_pool"]), _gib(c["resident"]), _gib(p["workspace"]),
                         _gib(c["workspace"]), _gib(c["total"]), "yes" if chip["fits"] else "NO",
                         "-" if one is None else f(one["roofline_s"] * 1e3, 2),
                         "-" if planner_tpot is None else f(planner_tpot * 1e3, 2),
                         "-" if big is None else f"{f(big['roofline_s'] * 1e3, 2)} ({big['name'].split('/')[1]})"])
        lines += ["Deployments through `jaxserve compile` (GiB per chip; roofline = max(FLOPs / peak, bytes / "
                  "bandwidth) of the compiler's cost analysis at the datasheet peaks):", "",
                  table(["model", "target", "TP", "weights / KV", "steps compiled", "wall s", "planner weights+KV",
                         "compiler args", "planner workspace", "compiler workspace", "compiler total", "fits",
                         "model/1 roofline ms (compiler)", "batch-1 TPOT ms (planner)",
                         "largest bucket ms (tokens)"], rows)]
    return lines
