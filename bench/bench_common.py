"""What the benchmark scripts share: the prose their prompts are cut from, the run header of their JSON, and an
optional matplotlib."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

# Original prose in a public-domain style (its first sentence is Dickens, 1859), repeated to make long prompts.
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair. The river ran quietly past the old mill, "
    "where the miller's children counted the boats and wondered where each of them was going. In the evenings the "
    "town gathered in the square to hear the news read aloud, and to argue about the price of grain, the weather, "
    "and the distant war that nobody had seen but everybody feared. "
)


def run_header() -> dict[str, Any]:
    """When and where a result was measured: UTC time, machine, CPU count, jax version."""
    import jax

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
            "cpus": os.cpu_count(), "jax": jax.__version__}


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: skipping the PNG", flush=True)
        return None
    return plt
