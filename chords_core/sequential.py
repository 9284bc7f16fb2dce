"""The sequential solve: one solver over the whole grid, one model evaluation at a time."""

from __future__ import annotations

from typing import Any

import numpy as np

from .models import Model, ModelOutputError
from .solvers import Solver, make_solver

__all__ = ["solve", "check_grid"]


def check_grid(grid) -> np.ndarray:
    """The grid as a float64 array: 1-D, at least two points, finite, strictly monotone."""
    try:
        times = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("grid must be a 1-D sequence of times") from None
    if times.ndim != 1 or times.size < 2:
        raise ValueError(f"grid must be 1-D with at least 2 times (1 step), got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError("grid must hold finite times")
    d = np.diff(times)
    if not (np.all(d > 0) or np.all(d < 0)):
        raise ValueError("grid must be strictly monotone (all increasing or all decreasing)")
    return times


def check_state(model: Model, x) -> None:
    if not hasattr(x, "shape"):
        raise TypeError(f"the initial state must be an array (numpy, torch or jax), got {type(x).__name__}")
    from .models import DiffusionModel

    if isinstance(model, DiffusionModel) and len(x.shape) < 1:
        raise ValueError("a DiffusionModel's state must have a batch axis: shape (B, ...)")


def solve(model: Model, x: Any, grid, solver: "str | Solver" = "euler", *, progress: bool = False, **solver_options) -> Any:
    """Integrate from ``x`` at ``grid[0]`` to ``grid[-1]`` with a fixed-grid solver; return the final state.

    ``model`` is a ``DiffusionModel`` or ``VectorField``; ``grid`` the T + 1 times (e.g. from
    ``time_grid``); ``solver`` a name from ``SOLVERS`` with its options. Array type, dtype and
    device of ``x`` are kept. Costs ``sum_i evals(i, i+1)`` model evaluations (T for one-stage solvers).
    """
    times = check_grid(grid)
    check_state(model, x)
    sol = make_solver(solver, model, times, **solver_options)
    state = sol.begin(x)
    steps = range(sol.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"{sol.name}", unit="step")
    for i in steps:
        qs: list = []
        for k in range(sol.evals(i, i + 1)):
            xk, ti = (state.x, i) if k == 0 else sol.stage_point(state, qs, i, i + 1, k)
            try:
                out = model.evaluate([xk], [sol.t[ti]])[0]
            except ModelOutputError as e:
                raise ModelOutputError(0, f"step {i} (stage {k}, t={sol.t[ti]:.6g}): {e}") from None
            qs.append(sol.quantity_of(xk, out, ti))
        state = sol.step(state, qs, i, i + 1)
    return state.x
