"""The GPU compile runs the ptxas of the nvidia-cuda-nvcc wheel, never a CUDA toolkit installed on the machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

from jaxserve.aot import toolchain

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from jaxserve.aot import toolchain
    toolchain.prepare()
    from jaxserve.aot.targets import compile_only_devices, parse_target
    device = compile_only_devices(parse_target("h100"))[0]
    s = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=s)
    jax.jit(lambda a: jnp.tanh(a) * 2).lower(x).compile()
    print("compiled")
""")


def test_gpu_compile_uses_the_wheels_ptxas() -> None:
    wheel_ptxas = toolchain.ptxas_path()
    assert wheel_ptxas is not None and wheel_ptxas.is_file()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="subprocess_compilation=2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
    used = set(re.findall(r"Using (\S+/ptxas) with version (\S+)", proc.stderr))
    assert used, "XLA logged no ptxas: " + proc.stderr[-2000:]
    assert {path for path, _ in used} == {str(wheel_ptxas)}
    assert {version for _, version in used} == {"13.0.88"}  # the version the Makefile pins
    system = shutil.which("ptxas")  # the development image has a CUDA toolkit on PATH: it must not be the one
    assert system is None or os.path.realpath(system) != os.path.realpath(wheel_ptxas)
