"""Timing helpers shared by the benchmarks (numpy only at import; no side effects)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def spread(v: Sequence[float] | np.ndarray, scale: float = 1.0, fmt: str = ".1f") -> str:
    """``median [min-max]`` of the samples ``v`` (times ``scale``)."""
    a = np.asarray(v, dtype=np.float64) * scale
    return f"{np.median(a):{fmt}} [{a.min():{fmt}}-{a.max():{fmt}}]"


def per_eval_ms(fn: Callable[[Any, Any], Any], x: Any, t: Any, n: int = 15, warmup: int = 3) -> float:
    """The median time of ``n`` calls ``fn(x, t)`` after ``warmup`` calls, in ms."""
    for _ in range(warmup):
        fn(x, t)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x, t)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
