"""The sequential solve: one solver over the whole grid, one model evaluation at a time."""

from __future__ import annotations

from typing import Any

from .call import begin
from .host import host_route
from .models import Model, ModelOutputError
from .progress import progress_bar
from .results import as_array
from .solvers import Solver

__all__ = ["solve"]


@host_route
def solve(model: Model, x: Any, grid: Any, solver: str | Solver = "euler", *, progress: bool = False,
          **solver_options: Any) -> Any:
    """Integrate from ``x`` at ``grid[0]`` to ``grid[-1]`` with a fixed-grid solver.

    Args:
        model: a ``DiffusionModel`` or ``VectorField``.
        x: the initial state (numpy, torch or jax array; a ``DiffusionModel`` needs shape (B, ...)).
        grid: the T + 1 times (e.g. from ``time_grid``), strictly monotone.
        solver: a name from ``SOLVERS`` (its options as keyword arguments) or a bound ``Solver``.
        progress: show a progress bar over steps (needs tqdm).

    Returns:
        The state at ``grid[-1]``: the array type, dtype, shape and device of ``x``. Costs
        ``sum_i evals(i, i+1)`` model evaluations (T for one-stage solvers).
    """
    call = begin(model, x, grid, solver, None, solver_options)
    sol = call.solver
    state = sol.begin(x)
    with progress_bar(progress, sol.steps, sol.name, "step") as bar:
        for i in range(sol.steps):
            qs: list = []
            for k in range(call.evals[i]):  # (the step's evaluations, checked once by begin)
                xk, ti = (state.x, i) if k == 0 else sol.staged(state, qs, i, i + 1, k)
                try:
                    out = model.evaluate([xk], [sol.t[ti]])[0]
                except ModelOutputError as e:
                    raise e.relabel(0, f"{step_where(i, k, sol.t[ti])}: {e}") from None
                qs.append(sol.quantity_of(xk, out, ti))
            state = sol.step(state, qs, i, i + 1)
            bar.update(1)
    return as_array(state.x)


def step_where(step: int, stage: int, time: float) -> str:
    """How an error of the sequential solve names its evaluation (``chords_jax.solve`` too)."""
    return f"step {step} (stage {stage}, t={time:.6g})"
