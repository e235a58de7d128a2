"""bench/ scripts run as `python bench/x.py`, which puts bench/ first on sys.path: a bench module named like an
installed module or package shadows it for everything the script imports (bench/kernels.py once hid the `kernels`
package that transformers imports, so bench/offline_throughput.py died with `cannot import name 'CUDAProperties'
from 'kernels'`). Subprocesses only, so this process's sys.path (tests/test_bench_render.py adds bench/) does not
matter; a few seconds in all, no jax."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# Run with -P (no script dir / cwd on sys.path) and bench/ dropped from sys.path should PYTHONPATH name it: prints
# {name: origin} for every given top-level name that something else in the environment provides.
FIND_SPECS = """
import importlib.util, json, os, sys
bench = os.path.realpath(sys.argv[1])
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != bench]
found = {}
for name in sys.argv[2:]:
    spec = importlib.util.find_spec(name)
    if spec is not None:
        found[name] = spec.origin or str(list(spec.submodule_search_locations or []))
print(json.dumps(found))
"""


def bench_module_names() -> list[str]:
    """What `import NAME` resolves to bench/ for when bench/ is sys.path[0]: its .py files and regular packages."""
    names = {p.stem for p in BENCH.glob("*.py")}
    names |= {p.parent.name for p in BENCH.glob("*/__init__.py")}
    return sorted(names)


def installed_elsewhere(names: list[str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-P", "-c", FIND_SPECS, str(BENCH), *names], capture_output=True,
                         text=True, timeout=60, cwd=ROOT / "tests", check=True)
    return json.loads(out.stdout)


def test_no_bench_module_shadows_an_installed_module() -> None:
    names = bench_module_names()
    assert "offline_throughput" in names and "render_results" in names  # the glob sees the scripts
    # The check itself finds top-level modules and packages of the environment (stdlib and site-packages alike).
    assert set(installed_elsewhere(["json", "numpy", "transformers"])) == {"json", "numpy", "transformers"}
    clashes = installed_elsewhere(names)
    assert not clashes, (f"bench/ modules shadow importable modules for `python bench/x.py` (rename them): "
                         f"{clashes}")


def test_transformers_imports_with_bench_first_on_sys_path() -> None:
    """What `python bench/offline_throughput.py` loads for its transformers run: the hub-kernels integration
    (imports `kernels` when that package is installed) and the Llama model code."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import transformers.integrations.hub_kernels; "
            "from transformers import AutoModelForCausalLM; "
            "from transformers.models.llama import modeling_llama; "
            "import bench_common; assert bench_common.__file__.startswith(sys.argv[1]), bench_common.__file__")
    out = subprocess.run([sys.executable, "-P", "-c", code, str(BENCH)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr[-3000:]


def test_offline_throughput_help() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "offline_throughput.py"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--num-prompts" in out.stdout
