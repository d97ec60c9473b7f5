"""The one timing helper the benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(function: Callable[[], object], repeat: int, warm_up: bool = False) -> float:
    """Median wall time of ``repeat`` calls (after one untimed call when ``warm_up``)."""
    if warm_up:
        function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
