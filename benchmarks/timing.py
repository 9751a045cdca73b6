"""Timing shared by the speed benchmarks: the methods take turns within each repeat, so that a noisy
machine slows every method alike and the ratios measured in one run hold."""
from __future__ import annotations

import time
from typing import Callable


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each callable per repeat, the callables taking turns within each repeat."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times
