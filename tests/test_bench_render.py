"""bench/render_results.py: tables rendered from JSON land between their markers, prose survives, --check detects
a RESULTS.md that is out of date. Synthetic JSON only; no jax, no timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import render_results  # bench/ is not a package: imported from the path set above

PROSE_TOP = "# Results\n\nHand-written prose that must survive.\n\n"
PROSE_BOTTOM = "\nMore prose, *with* `markup` | and a pipe.\n"


def batching_json(static_tps: float, continuous_tps: float) -> dict:
    row = {"seconds": 10.0, "output_tokens": 100, "latency_mean_s": 1.5, "latency_median_s": 1.25,
           "latency_p99_s": 2.0}
    return {"date": "2026-01-02", "machine": "test-machine", "cpus": 2,
            "args": {"num_requests": 4, "batch": 2, "max_prompt": 16, "mean_output": 8, "max_output": 32,
                     "dtype": "float32"},
            "throughput_ratio": continuous_tps / static_tps,
            "results": [{**row, "mode": "static", "output_tokens_per_s": static_tps},
                        {**row, "mode": "continuous", "output_tokens_per_s": continuous_tps}]}


def compare_json() -> dict:
    rows = [{"engine": "jaxserve float32", "concurrency": 1, "requests": 3, "seconds": 9.0, "output_tok_s": 42.5,
             "decode_tok_s": 43.75, "median_ttft_ms": 120.0},
            {"engine": "llama-server", "concurrency": 32, "requests": 32, "seconds": 20.0, "output_tok_s": 214.0,
             "decode_tok_s": 7.0, "median_ttft_ms": 900.0}]
    return {"header": {"date": "2026-01-02 10:00 UTC", "machine": "test-machine", "cpus": 2, "jax": "0.0"},
            "engines": {"jaxserve float32": {"prompt_tokens_seen": 128, "load_before": [1.0, 1, 1],
                                             "load_after": [1.5, 1, 1], "rows": rows[:1]},
                        "llama-cpp-python": {"skipped": "not installed"}},
            "rows": rows, "tokenizer_check": {"sent_ids": 128, "llama_cpp_ids": None, "llama_cpp_identical": None},
            "targets": [{"target": "aggregate tok/s at 32", "engine": "jaxserve float32", "value": 100.0,
                         "reference": "llama-server", "reference_value": 214.0, "ratio": 100 / 214,
                         "required": 1.5, "met": False}]}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    results.mkdir()
    (results / "batching.json").write_text(json.dumps(batching_json(10.5, 33.25)))
    (results / "compare.json").write_text(json.dumps(compare_json()))
    md = tmp_path / "RESULTS.md"
    md.write_text(PROSE_TOP + "<!-- results:batching -->\nold table\n<!-- /results:batching -->\n\nMiddle prose.\n\n"
                  "<!-- results:compare -->\n<!-- /results:compare -->\n" + PROSE_BOTTOM)
    return results, md


def run(results: Path, md: Path, *extra: str) -> int:
    return render_results.main(["--results", str(results), "--markdown", str(md), *extra])


def test_numbers_land_in_the_tables_and_prose_survives(setup: tuple[Path, Path]) -> None:
    results, md = setup
    assert run(results, md) == 0
    text = md.read_text()
    assert text.startswith(PROSE_TOP) and text.endswith(PROSE_BOTTOM) and "\nMiddle prose.\n" in text
    assert "old table" not in text
    batching = text.split("<!-- results:batching -->")[1].split("<!-- /results:batching -->")[0]
    assert "| static | 10.0 | 10.5 | 1.5 | 1.2 | 2.0 |" in batching  # 1.25 rounds half to even
    assert "| continuous | 10.0 | 33.2 |" in batching
    assert "**3.17x**" in batching and "test-machine (2 CPUs)" in batching
    compare = text.split("<!-- results:compare -->")[1].split("<!-- /results:compare -->")[0]
    assert "| jaxserve float32 | 1 | 3 | 9.0 | 42.5 | 43.8 | 43.8 | 120 |" in compare
    assert "| llama-server | 32 | 32 | 20.0 | 214.0 | 7.0 | 224.0 | 900 |" in compare
    assert "0.47x" in compare and "**not met**" in compare and "not installed" in compare
    assert "jaxserve float32 1.00 -> 1.50" in compare


def test_check_detects_stale_markdown(setup: tuple[Path, Path]) -> None:
    results, md = setup
    assert run(results, md, "--check") == 1  # never rendered
    assert "old table" in md.read_text()  # --check changes nothing
    assert run(results, md) == 0
    assert run(results, md, "--check") == 0
    rendered = md.read_text()
    assert run(results, md) == 0 and md.read_text() == rendered  # idempotent
    (results / "batching.json").write_text(json.dumps(batching_json(10.5, 40.0)))
    assert run(results, md, "--check") == 1
    assert run(results, md) == 0
    assert "| continuous | 10.0 | 40.0 |" in md.read_text()


def test_block_without_json_is_left_alone(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("<!-- results:attention_kernels -->\nkept as is\n<!-- /results:attention_kernels -->\n")
    (tmp_path / "results").mkdir()
    assert run(tmp_path / "results", md, "--check") == 0
    assert run(tmp_path / "results", md) == 0
    assert "kept as is" in md.read_text()
