"""Timing shared by the benchmark scripts (they run as `python benchmarks/NAME.py`, so this
folder is on sys.path)."""
from __future__ import annotations

import time
from typing import Any, Callable


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Least wall time of `repeats` calls: the run least disturbed by other processes."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
