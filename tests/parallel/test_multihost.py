"""Multi-host support: config validation, the step wire format, and two real CPU processes.

The two-process test starts ``multihost_worker.py`` twice (2 CPU devices each, 4 global),
joined by ``jax.distributed`` over gloo on localhost: the leader broadcasts steps, both run a
matmul whose weights are sharded across the processes, and both must agree byte for byte
with what was sent and with a numpy reference.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from multihost_worker import checksum, make_steps, reference

from jaxserve.parallel import multihost
from jaxserve.parallel.multihost import DistributedConfig, decode, encode

WORKER = Path(__file__).with_name("multihost_worker.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_processes": 0}, "num_processes must be >= 1"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, r"process_id must be in \[0, 2\)"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": -1}, "process_id must be in"),
        ({"process_id": 0}, "num_processes is not"),
        ({"num_processes": 2, "process_id": 1}, "needs a coordinator_address"),
        ({"coordinator_address": "h:1", "num_processes": 2}, "needs this process's process_id"),
        ({"coordinator_address": "nohost", "num_processes": 2, "process_id": 0}, "host:port"),
        ({"coordinator_address": "h:99999", "num_processes": 2, "process_id": 0}, "host:port"),
        ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 0, "local_device_ids": (-1,)},
         "local_device_ids"),
        ({"heartbeat_timeout_s": 0}, "timeouts must be > 0"),
    ],
)
def test_config_rejects(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistributedConfig(**kwargs)


def test_config_from_env() -> None:
    assert DistributedConfig.from_env({}) is None
    assert DistributedConfig.from_env({"JAXSERVE_DISTRIBUTED": "auto"}) == DistributedConfig()
    env = {"JAXSERVE_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAXSERVE_NUM_PROCESSES": "4",
           "JAXSERVE_PROCESS_ID": " 3", "JAXSERVE_LOCAL_DEVICE_IDS": "0,1,"}
    assert DistributedConfig.from_env(env) == DistributedConfig("10.0.0.1:1234", 4, 3, (0, 1))
    with pytest.raises(ValueError, match="num_processes must be an integer"):
        DistributedConfig.from_env({**env, "JAXSERVE_NUM_PROCESSES": "four"})
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 4\)"):
        DistributedConfig.from_env({**env, "JAXSERVE_PROCESS_ID": "4"})
    with pytest.raises(ValueError, match="JAXSERVE_DISTRIBUTED"):
        DistributedConfig.from_env({"JAXSERVE_DISTRIBUTED": "yes please"})
    assert DistributedConfig.from_values("[::1]:80", 2, "1", [2, 3]).local_device_ids == (2, 3)


def test_config_from_cli_flags_override_env() -> None:
    parser = argparse.ArgumentParser()
    multihost.add_cli_arguments(parser)
    env = {"JAXSERVE_COORDINATOR_ADDRESS": "h0:1234", "JAXSERVE_NUM_PROCESSES": "2", "JAXSERVE_PROCESS_ID": "0"}
    assert DistributedConfig.from_args(parser.parse_args([]), {}) is None
    assert DistributedConfig.from_args(parser.parse_args(["--process-id", "1"]), env) == DistributedConfig(
        "h0:1234", 2, 1)
    args = parser.parse_args(["--coordinator-address", "h1:80", "--num-processes", "3", "--process-id", "2",
                              "--local-device-ids", "4,5"])
    assert DistributedConfig.from_args(args, {}) == DistributedConfig("h1:80", 3, 2, (4, 5))
    assert DistributedConfig.from_args(parser.parse_args(["--distributed", "auto"]), {}) == DistributedConfig()
    assert DistributedConfig.from_args(parser.parse_args(["--distributed", "0"]), env) is None


def test_wire_format_roundtrip() -> None:
    for meta, arrays in make_steps():
        meta2, arrays2 = decode(encode(meta, arrays))
        assert checksum(meta, arrays) == checksum(meta2, arrays2)
        assert all(a.flags.writeable and a.flags.c_contiguous for a in arrays2.values())
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3).T
    (_, out) = decode(encode({}, {"b": big_endian, "h": np.ones(3, ml_dtypes.bfloat16)}))
    assert out["b"].dtype == np.int32 and (out["b"] == big_endian).all()
    assert out["h"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize(
    "meta, arrays, match",
    [
        ({}, {"o": np.array([object()])}, "need a str name"),
        ({}, {"s": np.array(["text"])}, "need a str name"),
        ({}, {1: np.zeros(2)}, "need a str name"),
        ({"x": float("nan")}, {}, "JSON-serializable"),
        ({"x": {1, 2}}, {}, "JSON-serializable"),
    ],
)
def test_wire_format_rejects(meta: dict[str, Any], arrays: dict[Any, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        encode(meta, arrays)


def test_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "LOCAL_DEVICE_IDS", "DISTRIBUTED"):
        monkeypatch.delenv(f"JAXSERVE_{name}", raising=False)
    assert multihost.initialize() == (0, 1)
    assert multihost.initialize(DistributedConfig(num_processes=1)) == (0, 1)
    assert multihost.is_leader()
    channel = multihost.StepChannel()
    channel.send({"kind": "step"}, {"x": np.zeros(3)})  # nobody to send to: a no-op
    channel.send_stop()
    assert channel.exchange({"a": 1}, {"x": np.ones(2)})[0] == {"a": 1}
    with pytest.raises(RuntimeError, match="does not receive"):
        channel.receive()
    with pytest.raises(ValueError, match="inline_bytes"):
        multihost.StepChannel(inline_bytes=100)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(logs: Path, timeout_s: float = 60.0, worker: Path = WORKER, args: tuple[str, ...] = ()) -> list[str]:
    """Run both workers to completion (output to files: a full pipe cannot block one); return stdouts."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "LOCAL_DEVICE_IDS", "DISTRIBUTED"):
        env.pop(f"JAXSERVE_{name}", None)
    port, deadline = _free_port(), time.monotonic() + timeout_s
    files = [(logs / f"out{i}.txt", logs / f"err{i}.txt") for i in range(2)]
    procs = []
    try:
        for i, (out, err) in enumerate(files):
            with out.open("w") as o, err.open("w") as e:
                procs.append(subprocess.Popen([sys.executable, str(worker), str(i), str(port), *args], env=env,
                                              cwd=REPO, stdout=o, stderr=e))
        for p, (out, err) in zip(procs, files, strict=True):
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))  # a hang fails, never stalls CI
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker timed out after {timeout_s}s:\n{err.read_text()[-4000:]}")
            assert p.returncode == 0, f"worker exited {p.returncode}:\n{out.read_text()}\n{err.read_text()[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [out.read_text() for out, _ in files]


def records(out: str, tag: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(tag) + 1:]) for line in out.splitlines() if line.startswith(tag + " ")]


@pytest.mark.timeout(120)
def test_two_cpu_processes_share_steps_and_a_sharded_matmul(tmp_path: Path) -> None:
    leader, follower = run_pair(tmp_path)
    steps = make_steps()
    for index, out in enumerate((leader, follower)):
        (info,) = records(out, "INFO")
        assert info == {"index": index, "count": 2, "global": 4, "local": 2}
        assert records(out, "DONE") == [{"steps": len(steps)}]
        results = records(out, "RESULT")
        assert [r["sha"] for r in results] == [checksum(m, a) for m, a in steps], f"process {index}"
        for (meta, arrays), r in zip(steps, results, strict=True):
            assert r["meta"] == meta
            np.testing.assert_allclose(np.array(r["result"]), reference(meta, arrays["x"]), rtol=1e-5, atol=1e-5)
    assert records(leader, "RESULT") == records(follower, "RESULT")  # bit-identical on both processes
