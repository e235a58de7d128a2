"""The TPU and GPU compile checks: the real XLA:TPU / Mosaic and XLA:GPU / Triton / ptxas compilers on compile-only
devices. They run in the toolchain environments (`make test-aot`, `make test-py312`); elsewhere every test here
is skipped with the reason, which names the command that runs them."""

from __future__ import annotations

import pytest

from jaxserve.aot import toolchain

toolchain.prepare()  # before any test starts a jax backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/aot" not in str(item.fspath).replace("\\", "/"):
            continue
        platform = "gpu" if item.get_closest_marker("gpu") else "tpu"
        reason = toolchain.missing(platform) or toolchain.missing("gpu" if platform == "tpu" else "tpu")
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"{reason} (this check runs in `make test-aot`)"))
