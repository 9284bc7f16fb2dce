"""Timing, command-line and error helpers shared by the benchmarks (numpy only at import; no side effects)."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from chords_core.demo import positive_float  # noqa: F401 (the benchmarks' argparse type, from here)


def rms(a: Any) -> float:
    """The root mean square of the array ``a`` over all its elements, as a float (in ``a``'s dtype): the
    benchmarks' error measure (``rms(x - ref)``)."""
    return float(np.sqrt(np.mean(np.square(a))))


def spread(v: Sequence[float] | np.ndarray, scale: float = 1.0, fmt: str = ".1f") -> str:
    """``median [min-max]`` of the samples ``v`` (times ``scale``)."""
    a = np.asarray(v, dtype=np.float64) * scale
    return f"{np.median(a):{fmt}} [{a.min():{fmt}}-{a.max():{fmt}}]"


K = TypeVar("K", bound=Hashable)


def interleaved(fns: Mapping[K, Callable[[], Any]], repeats: int, *, shuffle: bool = False,
                sync: Callable[[], Any] | None = None,
                after_call: Callable[[int, K, float], Any] | None = None,
                after_repeat: Callable[[int, dict], Any] | None = None) -> tuple[dict[K, np.ndarray], dict[K, list]]:
    """Wall seconds of each function, called in turn ``repeats`` times, so that every one sees the
    same machine load; ratios between them are then taken repeat by repeat.

    Args:
        fns: the functions to time, by name; each is called without arguments.
        repeats: how many times each is called.
        shuffle: call the functions in a fresh random order every repeat (seeded: the same orders
            every run), so that no function always runs first or always after the same other one: a
            call right after one that evicts the caches runs measurably slower (5-15% at small sizes
            here), which a fixed or merely rotated order charges to one function every time.
        sync: called before starting and before stopping each clock (a device synchronisation).
        after_call: called after each call with the repeat's index, the name and the seconds.
        after_repeat: called after each repeat with its index and the seconds so far, by name
            (progress output).

    Returns:
        (seconds per call, one array of ``repeats`` per name; what each call returned, in order).
    """
    times: dict = {k: [] for k in fns}
    results: dict = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    for r in range(repeats):
        if shuffle:
            rng.shuffle(order)
        for k in order:
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            out = fns[k]()
            if sync is not None:
                sync()
            times[k].append(time.perf_counter() - t0)
            results[k].append(out)
            if after_call is not None:
                after_call(r, k, times[k][-1])
        if after_repeat is not None:
            after_repeat(r, times)
    return {k: np.array(v) for k, v in times.items()}, results


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


def worker_bound(res: Any, workers: int, capacity: float | None = None) -> float:
    """The best wall speedup of a run's rounds on ``workers`` one-thread workers against the one-thread
    sequential solve, with no overhead: sequential evaluations / sum_r cost_r, cost_r = ceil(n_r /
    workers) evaluation times, or on a machine that currently runs only ``capacity`` evaluations at
    once max(ceil(n_r / workers), n_r / capacity).

    Args:
        res: a ``chords_core.Result`` (its ``trace``: the rounds run; ``sequential_rounds``).
        workers: the worker count.
        capacity: evaluations the machine runs at once (``None``: ``workers``).
    """
    cap = capacity or workers
    return res.sequential_rounds / sum(max(-(-len(r.evals) // workers), len(r.evals) / cap) for r in res.trace)


def read_report(ap: argparse.ArgumentParser, path: str | Path, keys: Sequence[str], option: str = "--report") -> dict:
    """The JSON object in ``path`` (an earlier run's record), or ``ap.error`` (exit status 2, one line)
    if it cannot be read, is not JSON, or lacks one of ``keys``."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # (a missing file, a decoding or JSON error)
        ap.error(f"argument {option}: cannot read {str(path)!r} as JSON: {str(e).splitlines()[0]}")
    if not isinstance(rec, dict) or any(k not in rec for k in keys):
        ap.error(f"argument {option}: {str(path)!r} is not a record of this benchmark (needs keys {', '.join(keys)})")
    return rec


def require_runs(ap: argparse.ArgumentParser, steps: Sequence[int], cores: Sequence[int]) -> None:
    """``ap.error`` (exit status 2) where every ``--cores`` exceeds every ``--steps``: no run could be
    made (the scripts printed "no runs" and exited 0)."""
    if min(cores) > max(steps):
        ap.error(f"argument --cores: every core count ({' '.join(map(str, cores))}) exceeds every --steps "
                 f"({' '.join(map(str, steps))}): nothing to run")
