"""What machine a benchmark ran on, and the median-of-repeats timer the benches share."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_CSV = os.path.join(ROOT, "data", "taxi", "data.csv")


def cpu_info() -> dict:
    """CPU count (all and usable by this process) and model name, for every bench line."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpu_usable": usable, "cpu_model": model,
            "machine": platform.machine()}


def median_ms(call: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median wall time of call() in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
