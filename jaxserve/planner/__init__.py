"""The capacity planner: model + KV memory, max concurrency, and roofline TTFT / TPOT / tokens-per-second.

`jaxserve plan --model llama-3-8b --device h100` prints a plan; `plan(PlanRequest(...))` returns it as a dict.
"""

from jaxserve.planner.devices import DEVICE_PRESETS, DeviceSpec, get_device
from jaxserve.planner.memory import kv_pool_blocks, max_concurrency, model_bytes
from jaxserve.planner.model_presets import MODEL_PRESETS, resolve_model
from jaxserve.planner.plan import PlanRequest, plan

__all__ = ["DEVICE_PRESETS", "MODEL_PRESETS", "DeviceSpec", "PlanRequest", "get_device", "kv_pool_blocks",
           "max_concurrency", "model_bytes", "plan", "resolve_model"]
