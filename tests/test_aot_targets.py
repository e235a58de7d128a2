"""Compile targets and the toolchain checks, without the toolchains (the compiles themselves are tests/aot)."""

from __future__ import annotations

import pytest

from jaxserve.aot import toolchain
from jaxserve.aot.targets import gpu_target_config, parse_target


@pytest.mark.parametrize("spec, platform, chip, topology, devices", [
    ("tpu-v5e", "tpu", "v5e", "v5e:1x1", 1),
    ("tpu-v5e:2x2", "tpu", "v5e", "v5e:2x2", 4),
    ("tpu-v6e:2x4", "tpu", "v6e", "v6e:2x4", 8),
    ("tpu-v5p:2x2x1", "tpu", "v5p", "v5p:2x2x1", 4),
    ("tpu-v5p", "tpu", "v5p", "v5p:1x1x1", 1),
    ("h100", "gpu", "h100", "1x1x1", 1),
    ("H100:8", "gpu", "h100", "1x1x8", 8),
    ("a100-80gb", "gpu", "a100", "1x1x1", 1),
])
def test_parse_target(spec, platform, chip, topology, devices) -> None:
    target = parse_target(spec)
    assert (target.platform, target.chip.name, target.topology, target.num_devices) == (platform, chip, topology,
                                                                                         devices)
    assert target.device.name == spec.lower().split(":")[0]


@pytest.mark.parametrize("spec, match", [("tpu-v9", "unknown compile target"), ("l4", "unknown compile target"),
                                         ("tpu-v5e:2y2", "bad TPU topology"), ("h100:x", "bad GPU count"),
                                         ("tpu-v5e:0x2", "bad TPU topology")])
def test_bad_targets_name_the_problem(spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        parse_target(spec)


def test_gpu_target_config_carries_the_card_limits() -> None:
    h100 = parse_target("h100")
    text = gpu_target_config(h100.chip, h100.device)
    assert "shared_memory_per_block_optin: 232448" in text and "core_count: 132" in text
    assert "cuda_compute_capability { major: 9 minor: 0 }" in text
    a100 = parse_target("a100-80gb")
    text = gpu_target_config(a100.chip, a100.device)
    assert "shared_memory_per_block_optin: 166912" in text and "major: 8" in text


def test_missing_toolchain_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving environment has neither toolchain: the check names what to run instead of failing deep in jax."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(toolchain.importlib.util, "find_spec", lambda name: None)
    for platform in ("tpu", "gpu"):
        with pytest.raises(toolchain.ToolchainMissing, match="make aot-tools"):
            toolchain.require(platform)
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert "JAX_PLATFORMS=cpu" in toolchain.missing("tpu")


def test_compile_without_the_toolchain_says_what_to_install(capsys, tmp_path) -> None:
    """`jaxserve compile` in the serving environment, which has neither toolchain: exit 2 naming the command that
    installs them, not a traceback."""
    if toolchain.missing("gpu") is None:
        pytest.skip("the GPU toolchain is installed in this environment (this checks the serving .venv)")
    from jaxserve.cli import main

    assert main(["compile", "smollm2-135m", "--target", "h100"]) == 2
    assert "make aot-tools" in capsys.readouterr().err
