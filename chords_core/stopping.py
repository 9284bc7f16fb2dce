"""When CHORDS stops and which output it returns.

- ``StopAtCore(n)``: return the n-th output to arrive (n = 1: the fastest core). Static: the
  number of rounds is known from the plan before any evaluation.
- ``StopOnResidual(tol)``: at each core's output compare it with the previous output (the first
  core's output with the coarse hit) by the RMS per element,
  sqrt(mean((x_new - x_prev)^2)); stop when it is below ``tol`` and return the newer output. Unlike
  the reference code's ||.||_2 / numel this does not depend on the state size.
- ``None``: run every core; the result is core 0's output, the sequential solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StopAtCore", "StopOnResidual", "check_stop"]


@dataclass(frozen=True)
class StopAtCore:
    n: int = 1

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"StopAtCore(n): n must be an integer >= 1 (1 = fastest core), got {self.n!r}")


@dataclass(frozen=True)
class StopOnResidual:
    tol: float

    def __post_init__(self):
        if not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) or self.tol < 0:
            raise ValueError(f"StopOnResidual(tol): tol must be a finite number >= 0, got {self.tol!r}")


def check_stop(stop, cores: int):
    if stop is None or isinstance(stop, StopOnResidual):
        return stop
    if isinstance(stop, StopAtCore):
        if stop.n > cores:
            raise ValueError(f"stop=StopAtCore({stop.n}) asks for more outputs than cores={cores}")
        return stop
    raise TypeError(f"stop must be StopAtCore, StopOnResidual or None, got {type(stop).__name__}")
