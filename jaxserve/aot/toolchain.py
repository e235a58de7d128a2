"""The compile-only toolchains: libtpu (XLA:TPU and Mosaic) and the CUDA plugin with the wheels' ptxas.

They live in their own environment (`make aot-tools` -> `.venv-aot`), never in the serving `.venv`: the CUDA plugin
prints a long traceback at start-up wherever `JAX_PLATFORMS` is unset. The GPU compile must use the ptxas and
libdevice of the `nvidia-cuda-nvcc` / `nvidia-nvvm` wheels, never a CUDA toolkit installed on the machine (a
different version would compile different code, or refuse it): `prepare` points XLA at the wheels' directory
before any backend starts, and `require` refuses to go on without them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

INSTALL_HINT = ("run `make aot-tools` (it installs the compile-only toolchains into .venv-aot) and use "
                "`.venv-aot/bin/jaxserve compile ...`")


class ToolchainMissing(RuntimeError):
    """A compile-only toolchain is not installed in this environment."""


def cuda_wheel_dir() -> Path | None:
    """`site-packages/nvidia/cu13` of the nvidia-cuda-nvcc wheel (its `bin/ptxas`, `nvvm/libdevice`), if installed."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "cu13"
        if (candidate / "bin" / "ptxas").is_file():
            return candidate
    return None


def ptxas_path() -> Path | None:
    """The wheel's ptxas, the only one the GPU compile may use."""
    root = cuda_wheel_dir()
    return None if root is None else root / "bin" / "ptxas"


def prepare() -> None:
    """Before jax starts a backend: compile-only mode (`JAX_PLATFORMS=cpu`) and XLA pointed at the wheels' CUDA
    directory. A `JAX_PLATFORMS` naming another platform is left alone (and `require` refuses it)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask: libtpu compiles only
    # libtpu locks /tmp/libtpu_lockfile for the process that owns the TPU; compiling owns none, and two compile
    # processes at once (tests, a benchmark) must not refuse each other.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if "jax" in sys.modules:  # jax reads JAX_PLATFORMS at import; the backends start later, on first use
        sys.modules["jax"].config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
    root = cuda_wheel_dir()
    flags = os.environ.get("XLA_FLAGS", "")
    if root is not None and "xla_gpu_cuda_data_dir" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_cuda_data_dir={root}".strip()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is absent
        return False


def missing(platform: str) -> str | None:
    """Why compiling for `platform` ("tpu" | "gpu") cannot work here, or None."""
    if os.environ.get("JAX_PLATFORMS", "") != "cpu":
        return ("compile-only devices need JAX_PLATFORMS=cpu (set it, or call jaxserve.aot.toolchain.prepare() "
                "before jax starts)")
    if platform == "tpu":
        if not _installed("libtpu"):
            return f"the TPU compiler (libtpu) is not installed in this environment; {INSTALL_HINT}"
        return None
    if not _installed("jax_plugins.xla_cuda13"):
        return f"the GPU compiler (jax-cuda13-plugin) is not installed in this environment; {INSTALL_HINT}"
    if ptxas_path() is None:
        return f"the ptxas of the nvidia-cuda-nvcc wheel is not installed in this environment; {INSTALL_HINT}"
    return None


def require(platform: str) -> None:
    """Raise ToolchainMissing saying what to install unless compiling for `platform` works here."""
    reason = missing(platform)
    if reason is not None:
        raise ToolchainMissing(reason)
