"""Suite-wide set-up: eight simulated CPU devices, so the tensor- and data-parallel tests have a mesh to use.

XLA reads the flag when its CPU backend starts, so it is set here, before any test touches a device. Tests that do
not ask for a mesh run on device 0 as before.
"""

from __future__ import annotations

import os

SIMULATED_DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={SIMULATED_DEVICES}"

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
