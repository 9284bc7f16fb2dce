"""ParaDiGMS (Shih et al. 2023): Picard iteration on a sliding window of ``window`` grid points
b .. e-1 (e = min(b + window, T)). A sweep evaluates all of them at once, takes each one's fine
step Phi_m(x_m) with the solver's own ``step``, and updates

    x_{m+1} <- Phi_m(x_m) + (x_m^new - x_m^old),   m = b .. e-1,   x_b^new = x_b,

which is the cumulative Picard sum x_b + sum_{l<=m} (Phi_l(x_l) - x_l) written so that a point
whose predecessor did not move is *exactly* Phi of it (window 1 is the sequential solver bit for
bit, which the public code is not). Per point the change is scored as
|x^new - x^old|^2 / (D var_m) per sample, with var_m the DDPM posterior variance of the step into
m, var_m = sigma_m^2 (1 - exp(2 (lambda_{m-1} - lambda_m))) (0 at sigma = 0: never blocks; 1 for a
``VectorField``); the window slides past the first point whose score exceeds tol^2, by at least 1
and at most ``window`` (that point starts the next window as it is: exact at ``tol=0``, otherwise as
accurate as the accepted points; ``window.sliding_window``). Multi-stage solvers (Heun)
take one round per stage per sweep. Multistep solvers (DPM-Solver++(2M/3M), UniPC) chain their
history through the window: the step of point m uses the quantities of points m-1, ... of the same
sweep (and the accepted ones before b), so the fixed point is the sequential multistep solution.

Window 1 and ``tol=0`` equal ``solve`` bit for bit for every solver with the default
``multistep="chain"`` (with ``"restart"`` a multistep solver steps at first order at every window start:
window 1 is then the first-order data-prediction solver, DDIM; a one-step solver is its own there). The official code's
conventions are options: ``variance="out"`` (the step out of a point, a zero variance weighing
infinitely as the official's 1 / 0: points T - 1 and T block unless unmoved) and
``multistep="restart"``; the defaults are this library's (``"into"``, a zero variance never blocks:
the same rounds or fewer, a review's 300 runs: the same in 153, one round fewer in 138, two in 9;
``"chain"``, an extension). The machinery is ``window.sliding_window``.
"""

from __future__ import annotations

from typing import Any

from ..executors import Executor
from ..models import Model
from ..results import Result
from ..solvers import Solver
from .window import Sweep, noise_variances, sliding_window

__all__ = ["paradigms", "Sweep", "noise_variances", "DEFAULT_TOL"]

#: The default tolerance (the paper's tau), relative to the noise level (``absolute_tol``).
DEFAULT_TOL = 0.1


def paradigms(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    window: int | None = None,
    tol: float | None = None,
    variance: str = "into",
    multistep: str = "chain",
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """ParaDiGMS: sliding-window Picard iteration with ``window`` parallel points (see the module doc).

    Args:
        model, x, grid, solver, executor, solver_options: as for ``chords``.
        window: parallel points per sweep (the devices it keeps busy), >= 1; ``None``:
            ``DEFAULT_WINDOW`` (8), or the grid's steps where fewer.
        tol: the per-step tolerance tau relative to the noise level; ``tol=0`` runs until every
            point is accepted exactly; ``None``: ``DEFAULT_TOL``, 0.1 (the paper's; in the state's
            units: a ``UserWarning`` on a plain ODE, ``absolute_tol``).
        variance: which step's noise variance scores a point: ``"into"`` it (this library) or
            ``"out"`` of it (the official code).
        multistep: ``"chain"`` (this library's extension: the multistep history runs through the
            window, the fixed point is the sequential solution) or ``"restart"`` (the official
            DPM-Solver code: every sweep starts first order at the window start).
        progress: show a progress bar over grid steps (needs tqdm).

    Returns:
        A ``Result`` (``method="paradigms"``): one output; ``log`` holds a ``Sweep`` per sweep.
    """
    return sliding_window(model, x, grid, solver, window=window, tol=tol, seed="copy", correction="picard",
                          variance=variance, multistep=multistep, executor=executor, progress=progress,
                          method="paradigms", solver_options=solver_options, default_tol=DEFAULT_TOL)
