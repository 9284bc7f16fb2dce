"""ParaSolver (Lu, Zhu, Hou, ICLR 2025): ParaDiGMS' sliding-window Picard iteration whose points
beyond the window start from the predicted x0 (an approximate reverse process) instead of copies.

Written from the paper's description: each window point is one subinterval of one fine step (the
paper's ``num_time_subintervals`` equal to the steps, as in its example), the new points entering
the window are the DDIM / x0-prediction jump from the window's newest point with the data
prediction of its last evaluated one (``window.sliding_window(seed="jump")``), and acceptance is
ParaDiGMS' noise-variance-normalised tolerance. Not implemented: subintervals of several fine
steps and the optional preconditioning steps. Departures from the official code (README, "The
parallel methods"): the first window starts from copies (the official seeds the whole trajectory by
x0 jumps after its preconditioning passes), ``variance="into"`` by default (the official's is
``"out"``), ``tol=0.1`` by default (its LSUN setting; its Stable Diffusion pipelines use 0.05).
Window 1 or ``tol=0`` equals ``solve`` bit for bit.
"""

from __future__ import annotations

from typing import Any

from ..executors import Executor
from ..models import Model
from ..results import Result
from ..solvers import Solver
from .paradigms import DEFAULT_TOL
from .window import sliding_window

__all__ = ["parasolver"]


def parasolver(
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
    """ParaSolver: ParaDiGMS with x0-prediction seeds for new window points (see the module doc).

    The arguments are ``paradigms``', its default tolerance too (the paper's example tolerance 0.55
    is for 1000 steps).

    Returns:
        A ``Result`` (``method="parasolver"``); ``log`` holds a ``Sweep`` per sweep.
    """
    return sliding_window(model, x, grid, solver, window=window, tol=tol, seed="jump", correction="picard",
                          variance=variance, multistep=multistep, executor=executor, progress=progress,
                          method="parasolver", solver_options=solver_options, default_tol=DEFAULT_TOL)
