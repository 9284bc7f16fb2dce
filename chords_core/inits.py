"""CHORDS init sequences: where each core starts on the grid.

An init sequence for K cores on a T-step grid is ``(t_0 = 0, t_1, ..., t_{K-1})``, strictly
increasing grid indices below T. Core c starts at t_c from the coarse jump of core c-1 and, with one
evaluation per step, outputs after R_c = T - t_c + c rounds.

- ``validate_init``: the checks every entry point applies.
- ``paper_init``: the paper's sequences 0-8-16-32, 0-3-6-12-24-36, 0-2-4-8-16-24-32-40 (T = 50),
  where they scale exactly to T.
- ``recipe_times`` / ``recipe_init``: the reconstruction that reproduces the paper's sequences
  (reference notes §4.2). With frame end E = T - 2 and the fastest start t_{K-1}, walk down the
  cores: s = E / (E - t_k); t_{k-1} = t_k / 2 if s <= 3 else 2 t_k - E; then E = t_k.
- ``uniform_init``: evenly spaced starts.
- ``default_init``: the paper's sequence where it exists without adjacent starts, the recipe
  otherwise (evenly spaced starts beyond 8 cores and where the rounded recipe has adjacent starts).

The recipe's fastest start grows with K ((0.48 + 0.04 K) T, the paper's 40 of 50 at K = 8) and is
capped at 0.8 T: uncapped it reaches the frame end T - 2 from K = 13 - 50 / T (12 at T = 50) and every
faster core collapses onto the last steps (the old default ``(0, 185, 186, ..., 199)`` for T = 200, K = 16,
no faster than the sequential solver). Beyond K = 8 the default is evenly spaced (measured better; see
``default_init``).
``tuning.search.optimize_init`` finds better sequences for a given error budget.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

from .checks import _is_int, check_float, check_int

__all__ = ["validate_init", "paper_init", "default_top", "recipe_times", "recipe_init", "uniform_init", "default_init"]

#: The paper's sequences at T = 50, by core count.
PAPER_SEQUENCES = {4: (0, 8, 16, 32), 6: (0, 3, 6, 12, 24, 36), 8: (0, 2, 4, 8, 16, 24, 32, 40)}


def _index(value: Any, position: int, init: Sequence[Any]) -> int:
    """One init entry as an int: integers (numpy's too) and integral finite floats; nothing else."""
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        v = float(value)
        if v.is_integer():
            return int(v)
    raise ValueError(f"init must hold integers (grid indices); init[{position}]={value!r} in {list(init)!r}")


def validate_init(init: Sequence[int], steps: int, cores: int | None = None) -> tuple[int, ...]:
    """Check an init sequence and return it as a tuple of ints.

    Args:
        init: grid indices, one per core: integers (or integral floats), starting at 0, strictly
            increasing, below ``steps``.
        steps: T, the grid's number of steps.
        cores: if given, the number of entries ``init`` must have.

    Returns:
        The sequence as a tuple of Python ints. Raises ``ValueError`` naming the offending entry.
    """
    if isinstance(init, (str, bytes, set, frozenset, dict)) or not hasattr(init, "__iter__"):  # (a set's order is
        raise ValueError(f"init must be a sequence of integers, got {init!r}")  # not the cores')
    items = list(init)
    seq = tuple(_index(v, n, items) for n, v in enumerate(items))
    if cores is not None and len(seq) != cores:
        raise ValueError(f"init has {len(seq)} entries but cores={cores}; give one start index per core")
    if not seq or seq[0] != 0:
        raise ValueError(f"init must start at 0 (core 0 is the sequential solver), got {list(seq)!r}")
    for c in range(1, len(seq)):
        if seq[c] <= seq[c - 1]:
            raise ValueError(f"init must be strictly increasing: init[{c}]={seq[c]} <= init[{c - 1}]={seq[c - 1]}")
    if seq[-1] >= steps:
        raise ValueError(f"init must stay below steps={steps}: init[{len(seq) - 1}]={seq[-1]}")
    return seq


def _steps_cores(steps: Any, cores: Any) -> tuple[int, int]:
    steps, cores = check_int("steps", steps, 1), check_int("cores", cores, 1)
    if cores > steps:
        raise ValueError(f"cores={cores} needs at least as many steps, got steps={steps}")
    return steps, cores


def paper_init(steps: int, cores: int) -> tuple[int, ...] | None:
    """The paper's sequence for ``cores`` scaled exactly to ``steps``.

    Args:
        steps: T; the sequence exists where every entry scales to an integer (T = 50, 100, ...).
        cores: K: 4, 6 or 8.

    Returns:
        The init sequence, or ``None`` where the paper has none or it does not scale exactly.
    """
    base = PAPER_SEQUENCES.get(cores)
    if base is None:
        return None
    if any((v * steps) % 50 for v in base):
        return None  # only exact scalings: rounded ones lose the sequence's structure (measured worse)
    seq = tuple(v * steps // 50 for v in base)
    try:
        return validate_init(seq, steps, cores)
    except ValueError:
        return None


def default_top(steps: int, cores: int) -> float:
    """The recipe's fastest start t_{K-1}, unrounded.

    T/2 - 1 for K = 2, (0.48 + 0.04 K) T for K = 3..8 (24 + 2K at T = 50), capped at 0.8 T beyond
    (the paper's K = 8 value; uncapped it reaches the frame end T - 2 from K = 13 - 50 / T, 12 at T = 50,
    and every faster core collapses onto the last steps).

    Args:
        steps: T.
        cores: K.

    Returns:
        The fastest start as a float.
    """
    return steps / 2 - 1 if cores == 2 else min(0.48 + 0.04 * cores, 0.8) * steps


def recipe_times(steps: int, cores: int, top: float | None = None) -> list[float]:
    """The recipe's real-valued starts (see the module docstring), unrounded.

    Args:
        steps: T.
        cores: K, at most T.
        top: the fastest start t_{K-1} in (0, T) (default ``default_top``). For K >= 3 the walk is
            defined below the frame end T - 2; at or past it the values do not increase (T = 50,
            K = 3: 48 gives [0, 48, 48], 49 gives [0, 50, 49]), which ``recipe_init`` repairs.

    Returns:
        [0, t_1, ..., t_{K-1}] as floats.
    """
    steps, cores = _steps_cores(steps, cores)
    if cores == 1:
        return [0.0]
    if top is None:
        top = default_top(steps, cores)  # may fall outside (0, T) for tiny T: rounding repairs it
    else:
        top = check_float("top (the fastest start)", top, 0.0, low_open=True)
        if top >= steps:
            raise ValueError(f"top (the fastest start) must be a number in (0, steps={steps}), got {top!r}")
    E, ts = steps - 2.0, [top]
    for _ in range(cores - 2):
        t = ts[-1]
        s = E / (E - t) if E > t else math.inf
        ts.append(t / 2 if s <= 3 else 2 * t - E)
        E = t
    return [0.0] + list(reversed(ts))


def recipe_init(steps: int, cores: int, speedup: float | None = None, top: float | None = None) -> tuple[int, ...]:
    """The recipe as integer grid indices.

    The fastest start is ``top``, or chosen so that the fastest output comes after T / ``speedup``
    rounds (R_{K-1} = T - t_{K-1} + K - 1), or ``default_top``. Rounding: each start is rounded to
    the nearest integer; then the fastest is clamped to [K-1, T-1] and the sequence is repaired to be
    strictly increasing (first from the top down, t_c <= t_{c+1} - 1, then from the bottom up,
    t_c >= t_{c-1} + 1).

    Args:
        steps: T.
        cores: K, at most T.
        speedup: the target speedup of the fastest output, >= 1 (not with ``top``).
        top: the fastest start (not with ``speedup``).

    Returns:
        The init sequence (validated).
    """
    steps, cores = _steps_cores(steps, cores)
    if speedup is not None and top is not None:
        raise ValueError("give speedup or top, not both")
    if speedup is not None:
        speedup = check_float("speedup", speedup, 1.0)
        top = min(max(steps + cores - 1 - steps / speedup, 0.5), steps - 0.5)
    seq = [int(round(v)) for v in recipe_times(steps, cores, top)]
    if cores > 1:
        seq[-1] = min(max(seq[-1], cores - 1), steps - 1)
        for c in range(cores - 2, 0, -1):
            seq[c] = min(seq[c], seq[c + 1] - 1)
        for c in range(1, cores):
            seq[c] = max(seq[c], seq[c - 1] + 1)
    return validate_init(seq, steps, cores)


def uniform_init(steps: int, cores: int) -> tuple[int, ...]:
    """Evenly spaced starts t_c = round(c T / K).

    Args:
        steps: T.
        cores: K, at most T.

    Returns:
        The init sequence (validated).
    """
    steps, cores = _steps_cores(steps, cores)
    return validate_init([round(c * steps / cores) for c in range(cores)], steps, cores)


#: Up to this many cores the default is the paper's recipe; beyond, evenly spaced starts.
RECIPE_MAX_CORES = 8


def default_init(steps: int, cores: int) -> tuple[int, ...]:
    """The default init sequence for (``steps``, ``cores``); needs steps >= cores.

    For K = 4, 6, 8 the paper's sequence where it scales exactly to ``steps`` (K = 4 and 8: T a
    multiple of 25; K = 6: of 50) without adjacent starts (T = 25, K = 8 scales to 0-1-2-4-8-...:
    its recipe, 0-2-5-8-11-14-17-20, takes 1221 rounds against 1469 at the default stop, neither
    missing 1.05x, in ``benchmarks/few_steps.py --chords-only --solver euler heun dpmpp_2m
    --schedules vp cos rf --steps 25 --cores 8 --seeds 3 4 5 6 7 8``);
    otherwise ``recipe_init(steps, cores)`` up to K = 8 (the range the paper's sequences cover) and
    ``uniform_init`` beyond: on the 8-D mixture calibration (Euler, budget 1.05) evenly spaced
    starts need 18 / 21 / 22 rounds at T = 50 and K = 10 / 12 / 16 against the capped recipe's 26 /
    28 / 32 (28 / 41 / 37 against 46 / 48 / 52 at T = 100). Where rounding collapses the recipe
    into adjacent starts (few steps per core: T = 16, K = 8 gives 0-6-7-8-9-10-12-13) the evenly
    spaced starts are taken: cores started one step apart finish on nearly the same output whatever
    its error, which a convergence stop mistakes for convergence (the default stop returned 1.7-2.1x
    the sequential error at T = 16, K = 8 on 16-D mixtures); over the 57 such (T, K) up to T = 200
    on four 16-D mixtures, the recipe missed 1.05x the sequential error in 7 of 228 runs (worst
    2.06x) and the evenly spaced starts in none (worst 1.003x), in 1900 rounds against 1997 (with
    the default stop of that release; today's takes no evidence from starts two steps apart either,
    ``stopping.NEAR_STARTS``, so where every start is two from the next it runs to core 0).

    Args:
        steps: T.
        cores: K, at most T.

    Returns:
        The init sequence (``(0,)`` for one core).
    """
    steps, cores = _steps_cores(steps, cores)
    if cores == 1:
        return (0,)
    paper = paper_init(steps, cores)
    if paper is not None and not _adjacent(paper):
        return paper
    if cores > RECIPE_MAX_CORES:
        return uniform_init(steps, cores)
    recipe = recipe_init(steps, cores)
    if _adjacent(recipe):  # rounding collapsed it
        return uniform_init(steps, cores)
    return recipe


#: ``crowded`` says so where the default init's fastest output comes this many times later than with
#: the best number of cores
CROWDED = 1.5


@functools.lru_cache(maxsize=128)  # (a pure function of two ints: O(cores^2), 24 ms at 256 cores, every call)
def crowded(steps: int, cores: int) -> str | None:
    """Why ``default_init(steps, cores)`` wastes cores, or ``None``: each core is spawned a round after
    the one before, so the fastest output comes at round T - s + K - 1 (s the fastest core's start,
    one evaluation a step), least near K = sqrt(T) for evenly spaced starts; beyond ``CROWDED``
    times the least over the default inits of 1 to ``cores`` cores, more cores are slower (a user
    trial: T = 500 on 256 cores, the fastest output at round 257, where 16 cores give it at 46, and
    the default stop, with no evidence from starts two steps apart, ran all 500 rounds)."""
    if cores <= RECIPE_MAX_CORES:
        return None

    def fastest(k: int) -> int:
        return steps - default_init(steps, k)[-1] + k - 1

    best = min(range(1, cores + 1), key=fastest)
    if fastest(cores) <= CROWDED * fastest(best):
        return None
    return (f"{cores} cores on {steps} steps: each core is spawned a round after the one before, so the default "
            f"init's fastest output comes at round {fastest(cores)}, where {best} cores give it at round "
            f"{fastest(best)}; use fewer cores, an init of your own, or the cascade sampler (parallel(), "
            "method='cascade'), which keeps every core busy")


def _adjacent(init: Sequence[int]) -> bool:
    """Whether two cores of ``init`` start one step apart (they finish on nearly the same output)."""
    return any(b - a == 1 for a, b in zip(init, init[1:]))
