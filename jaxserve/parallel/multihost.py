"""Multi-host serving: ``jax.distributed`` start-up and a leader-to-follower step channel.

Every process of a multi-host job runs the same jitted steps over a global mesh; only
process 0 (the *leader*) runs the scheduler and the HTTP server and, before each step,
broadcasts the step's host inputs so the followers can launch the identical step.

Integration contract (runner side)::

    multihost.initialize(multihost.DistributedConfig.from_env())  # before any other JAX call
    channel = multihost.StepChannel()
    if multihost.is_leader():                       # scheduler + server, as today, and per step:
        channel.send({"kind": "step", "variant": "greedy"}, {"tokens": tok, "pos": pos})
        out = decode_step(params, tok, pos)         # the same jitted call on every process
        ...
        channel.send_stop()                         # on shutdown
    else:
        def handle(meta, arrays):                   # called once per leader ``send``
            decode_step(params, arrays["tokens"], arrays["pos"])
        multihost.follower_loop(channel, handle)    # returns after ``send_stop``

``send`` comes before the leader launches the step; followers launch the steps in the
leader's order (collectives pair up in program order). Pass the host inputs to the jitted
step as numpy arrays (jit treats them as replicated over the global mesh), never
``device_put`` them to one device: a device of another process is not addressable. Outputs
the leader reads back must be replicated (``out_shardings``) or addressable on it.

Wire format (no pickle: nothing received is executed): one ``broadcast_one_to_all`` of a
fixed-size int32 buffer with an 8-word header, a JSON document (metadata; each array's
name, dtype, shape) and the arrays' raw bytes; what does not fit goes in a second broadcast
padded to a power of two (few shapes to compile). Hosts must share byte order (little-endian).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "JAXSERVE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXSERVE_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSERVE_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAXSERVE_LOCAL_DEVICE_IDS"
ENV_DISTRIBUTED = "JAXSERVE_DISTRIBUTED"  # "auto": let jax detect a Cloud TPU / SLURM / MPI job


@dataclass(frozen=True)
class DistributedConfig:
    """Where this process sits in a multi-process job.

    Fields left ``None`` are auto-detected by ``jax.distributed.initialize`` (Cloud TPU
    pod slices, SLURM, Open MPI); on other clusters give all of the first three.
    """

    coordinator_address: str | None = None  # "host:port" of process 0, reachable by all
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None  # GPUs this process owns, e.g. (0, 1)
    initialization_timeout_s: int = 300  # wait this long for all processes to join
    heartbeat_timeout_s: int = 100  # a process silent this long is dead: the job aborts

    def __post_init__(self) -> None:
        n, pid, addr = self.num_processes, self.process_id, self.coordinator_address
        if n is not None and n < 1:
            raise ValueError(f"num_processes must be >= 1, got {n}")
        if pid is not None and n is None:
            raise ValueError("process_id is set but num_processes is not; set both")
        if pid is not None and n is not None and not 0 <= pid < n:
            raise ValueError(f"process_id must be in [0, {n}), got {pid}")
        if n is not None and n > 1 and addr is None:
            raise ValueError(f"num_processes={n} needs a coordinator_address (host:port of process 0)")
        if n is not None and n > 1 and pid is None:
            raise ValueError(f"num_processes={n} needs this process's process_id")
        if addr is not None:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"coordinator_address must be 'host:port', got {addr!r}")
        if self.local_device_ids is not None and any(i < 0 for i in self.local_device_ids):
            raise ValueError(f"local_device_ids must be >= 0, got {self.local_device_ids}")
        if min(self.initialization_timeout_s, self.heartbeat_timeout_s) <= 0:
            raise ValueError("timeouts must be > 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistributedConfig | None:
        """Read ``JAXSERVE_*`` variables; ``None`` when none is set (single-process serving).

        ``JAXSERVE_DISTRIBUTED=auto`` alone selects jax's own cluster auto-detection.
        """
        env = os.environ if env is None else env
        mode = env.get(ENV_DISTRIBUTED, "").strip().lower()
        if mode not in ("", "auto", "0"):
            raise ValueError(f"{ENV_DISTRIBUTED} must be 'auto', '0' or unset, got {mode!r}")
        values = {k: env.get(v) or None for k, v in _ENV.items()}
        if mode == "0" or (mode != "auto" and not any(values.values())):
            return None
        return cls.from_values(**values)

    @classmethod
    def from_values(cls, coordinator_address: str | None = None, num_processes: int | str | None = None,
                    process_id: int | str | None = None,
                    local_device_ids: str | Sequence[int] | None = None) -> DistributedConfig:
        """Build from flag or environment values (strings are parsed, "0,1" for device ids)."""
        def as_int(name: str, value: int | str) -> int:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None

        if isinstance(local_device_ids, str):
            local_device_ids = [as_int("local_device_ids", p) for p in local_device_ids.split(",") if p.strip()]
        return cls(coordinator_address=coordinator_address,
                   num_processes=None if num_processes is None else as_int("num_processes", num_processes),
                   process_id=None if process_id is None else as_int("process_id", process_id),
                   local_device_ids=None if local_device_ids is None else tuple(int(i) for i in local_device_ids))

    @classmethod
    def from_args(cls, ns: argparse.Namespace, env: Mapping[str, str] | None = None) -> DistributedConfig | None:
        """Flags from :func:`add_cli_arguments`, each overriding its ``JAXSERVE_*`` variable."""
        env = dict(os.environ if env is None else env)
        for key, var in _ENV.items():
            if getattr(ns, key, None) is not None:
                env[var] = str(getattr(ns, key))
        if getattr(ns, "distributed", None):
            env[ENV_DISTRIBUTED] = ns.distributed
        return cls.from_env(env)


_ENV = {"coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
        "process_id": ENV_PROCESS_ID, "local_device_ids": ENV_LOCAL_DEVICE_IDS}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --coordinator-address, --num-processes, --process-id, --local-device-ids, --distributed."""
    group = parser.add_argument_group("multi-host (or the JAXSERVE_* environment variables)")
    group.add_argument("--coordinator-address", help="host:port of process 0, reachable from every host")
    group.add_argument("--num-processes", type=int, help="number of processes in the job")
    group.add_argument("--process-id", type=int, help="this process's index, 0 = leader")
    group.add_argument("--local-device-ids", help="accelerators this process owns, e.g. 0,1")
    group.add_argument("--distributed", choices=["auto", "0"],
                       help="auto: let jax detect a Cloud TPU / SLURM / MPI job; 0: single process")


_initialized_with: DistributedConfig | None = None


def initialize(config: DistributedConfig | None = None) -> tuple[int, int]:
    """Start ``jax.distributed`` (before any other JAX call); return (process_index, process_count).

    ``None`` reads :meth:`DistributedConfig.from_env`; when that is also ``None`` (or the
    config says one process) nothing is started. Calling again with the same config is a
    no-op; with a different one it raises ``RuntimeError``. On CPU the cross-process
    collectives are set to gloo unless the user chose another implementation.
    """
    global _initialized_with
    if jax.distributed.is_initialized():
        if config is not None and _initialized_with is not None and config != _initialized_with:
            raise RuntimeError(f"jax.distributed already initialized with {_initialized_with}, not {config}")
        return jax.process_index(), jax.process_count()
    config = DistributedConfig.from_env() if config is None else config
    if config is None or config.num_processes == 1:  # nothing to coordinate
        return jax.process_index(), jax.process_count()
    platforms = (jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or "").lower()
    if (not platforms or "cpu" in platforms) and jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    ids = None if config.local_device_ids is None else list(config.local_device_ids)
    jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id, ids,
                               initialization_timeout=config.initialization_timeout_s,
                               heartbeat_timeout_seconds=config.heartbeat_timeout_s)
    _initialized_with = config
    return jax.process_index(), jax.process_count()


def is_leader() -> bool:
    """True on process 0, the one that runs the scheduler and the server."""
    return jax.process_index() == 0


_MAGIC, _VERSION, _STEP, _STOP, _HEADER_WORDS, _ALIGN = 0x4A58534D, 1, 0, 1, 8, 8
_DTYPES = {n: np.dtype(n) for n in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                    "float16", "float32", "float64")} | {"bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def encode(meta: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> bytes:
    """Serialize a message body (JSON + raw array bytes); raises before anything is sent."""
    specs, chunks = [], []
    for name, value in (arrays or {}).items():
        arr = np.asarray(value)
        if not isinstance(name, str) or arr.dtype.name not in _DTYPES:
            raise TypeError(f"array {name!r}: need a str name and one of {sorted(_DTYPES)}, got {arr.dtype}")
        arr = np.asarray(arr, dtype=_DTYPES[arr.dtype.name], order="C")  # native byte order
        specs.append([name, arr.dtype.name, list(arr.shape)])
        chunks.append(arr.tobytes())
    try:
        doc = json.dumps({"meta": dict(meta), "arrays": specs}, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise TypeError(f"step metadata must be JSON-serializable: {e}") from None
    out = bytearray(doc)
    for chunk in chunks:
        out += bytes(_aligned(len(out)) - len(out)) + chunk
    return len(doc).to_bytes(4, "little") + bytes(out)


def decode(body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of :func:`encode`; arrays are fresh, writable copies."""
    n = int.from_bytes(body[:4], "little")
    doc = json.loads(body[4:4 + n].decode())
    arrays, off, data = {}, n, memoryview(body)[4:]
    for name, dtype_name, shape in doc["arrays"]:
        dtype = _DTYPES[dtype_name]
        off = _aligned(off)
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype, count, off).reshape(tuple(shape)).copy()
        off += count * dtype.itemsize
    return doc["meta"], arrays


class StepChannel:
    """Broadcast of step inputs from the leader (process 0) to every other process.

    All processes must construct it with the same arguments and call it in lockstep: one
    :meth:`receive` on every follower for each :meth:`send` / :meth:`send_stop` on the leader.
    ``inline_bytes`` is the fixed first-broadcast size; larger messages cost a second one.
    """

    def __init__(self, inline_bytes: int = 16384) -> None:
        if inline_bytes < 256 or inline_bytes % 4:
            raise ValueError("inline_bytes must be a multiple of 4 and >= 256")
        self._words = inline_bytes // 4
        self.is_leader = jax.process_index() == 0
        self.single = jax.process_count() == 1

    def _broadcast(self, buf: np.ndarray) -> np.ndarray:
        return np.asarray(multihost_utils.broadcast_one_to_all(buf, is_source=self.is_leader))

    def _send(self, kind: int, body: bytes) -> None:
        if not self.is_leader:
            raise RuntimeError("only the leader (process 0) sends")
        if self.single:
            return
        if len(body) >= 2**31:
            raise ValueError(f"step message of {len(body)} bytes is too large")
        rest = _HEADER_WORDS * 4 + len(body) - self._words * 4
        rest_words = 0 if rest <= 0 else 1 << max(6, (-(-rest // 4) - 1).bit_length())  # power of 2
        buf = np.zeros(self._words + rest_words, np.int32)
        buf[:5] = [_MAGIC, _VERSION, kind, len(body), rest_words]
        buf.view(np.uint8)[_HEADER_WORDS * 4:_HEADER_WORDS * 4 + len(body)] = np.frombuffer(body, np.uint8)
        self._broadcast(buf[:self._words])
        if rest_words:
            self._broadcast(buf[self._words:])

    def send(self, meta: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> None:
        """Leader: broadcast one step's metadata (JSON-able) and named numpy arrays."""
        self._send(_STEP, encode(meta, arrays))

    def send_stop(self) -> None:
        """Leader: tell the followers to leave :func:`follower_loop`."""
        self._send(_STOP, b"")

    def receive(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """Follower: block until the leader's next message; ``None`` means stop."""
        if self.is_leader:
            raise RuntimeError("the leader does not receive")
        first = self._broadcast(np.zeros(self._words, np.int32))
        magic, version, kind, length, rest_words = (int(x) for x in first[:5])
        if magic != _MAGIC or version != _VERSION:
            raise RuntimeError(f"step channel out of sync: header {first[:_HEADER_WORDS].tolist()}")
        if kind == _STOP:
            return None
        body = first[_HEADER_WORDS:].tobytes()
        if rest_words:
            body += self._broadcast(np.zeros(rest_words, np.int32)).tobytes()
        return decode(body[:length])

    def exchange(self, meta: Mapping[str, Any], arrays: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """Symmetric form: the leader sends and gets back its inputs; followers receive."""
        if self.is_leader:
            self.send(meta, arrays)
            return dict(meta), {k: np.asarray(v) for k, v in (arrays or {}).items()}
        return self.receive()


def follower_loop(channel: StepChannel, handle: Callable[[dict[str, Any], dict[str, np.ndarray]], None]) -> int:
    """Follower: call ``handle(meta, arrays)`` for each step until stop; return the step count."""
    steps = 0
    while (msg := channel.receive()) is not None:
        handle(*msg)
        steps += 1
    return steps
