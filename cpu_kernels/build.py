"""Compiles the C++ kernels of `csrc/` once per source, compiler and CPU, and registers them with XLA.

The shared library is cached under `$JAXSERVE_CPU_KERNELS_CACHE` (default `~/.cache/jaxserve/cpu_kernels`), named by
a hash of the sources, the compiler's version, the flags, jaxlib's version and the CPU's feature flags, so a
change to any of them builds a new one. `-march=native` is safe because the hash names the CPU. It needs a C++17
compiler (`$CXX`, else g++ or c++): without one, `load()` raises BuildError and jaxserve uses the XLA path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("matmul.cc", "attention.cc", "sample.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=fast")
TARGETS = ("cpuk_matmul", "cpuk_paged_attention", "cpuk_sample")

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None


class BuildError(RuntimeError):
    """The kernels could not be compiled or loaded here (the message says why)."""


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("JAXSERVE_CPU_KERNELS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "jaxserve" / "cpu_kernels"


def library_path(compiler: str) -> Path:
    """Where the library for these sources, this compiler and this CPU lives (built or not)."""
    import jaxlib

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    for part in (version, " ".join(FLAGS), jaxlib.__version__, _cpu_flags()):
        digest.update(part.encode())
    for path in sorted(CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return _cache_dir() / digest.hexdigest()[:16] / "libcpu_kernels.so"


def _compile(compiler: str, target: Path) -> None:
    import jax.ffi

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), *(str(CSRC / s) for s in SOURCES), "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or [result.stderr[-2000:]]
            raise BuildError(f"compiling the CPU kernels failed ({' '.join(cmd)}):\n" + "\n".join(errors[:20]))
        os.replace(out, target)  # atomic: a concurrent build by another process is never seen half-written


def load() -> ctypes.CDLL:
    """The compiled library with every kernel registered as an XLA FFI target for the CPU (built on first use)."""
    global _library, _error
    with _lock:
        if _library is not None:
            return _library
        if _error is not None:
            raise BuildError(_error)
        try:
            compiler = _compiler()
            if compiler is None:
                raise BuildError("no C++ compiler found (set $CXX, or install g++)")
            path = library_path(compiler)
            if not path.exists():
                _compile(compiler, path)
            library = ctypes.CDLL(str(path))
            import jax.ffi

            for name in TARGETS:
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
        except (BuildError, OSError, AttributeError, subprocess.SubprocessError) as err:
            _error = str(err)
            raise BuildError(_error) from None
        _library = library
        return library
