"""Solver registry: ``make_solver(name, model, times, **options)``.

=============  ========================================  ==========  ===============
name           method                                    evals/step  order
=============  ========================================  ==========  ===============
"euler"        explicit Euler on dx/dt = f               1           1
"heun"         Heun (trapezoid) on dx/dt = f             2           2
"ddim"         DPM-Solver++(1) = DDIM, data prediction   1           1
"dpmpp_2m"     DPM-Solver++(2M), midpoint                1           2
"dpmpp_3m"     DPM-Solver++(3M)                          1           3
"unipc"        UniPC-p (UniP + UniC), default p = 2       1           p + 1
"unip"         UniP-p predictor only                     1           p
=============  ========================================  ==========  ===============

``unipc``/``unip`` take ``order`` (1-3) and ``variant`` ("bh1", "bh2"); the DPM-Solver++ family takes
``lower_order_final``. Euler and Heun work on any model; the others need a ``DiffusionModel``.
"""

from __future__ import annotations


from ..models import Model
from .base import DataSolver, Solver, State
from .dpmpp import DPMSolverPP
from .explicit import Euler, Heun
from .unipc import UniPC

__all__ = ["make_solver", "SOLVERS", "Solver", "DataSolver", "State", "Euler", "Heun", "DPMSolverPP", "UniPC"]

SOLVERS = {
    "euler": lambda m, t, **o: Euler(m, t, **o),
    "heun": lambda m, t, **o: Heun(m, t, **o),
    "ddim": lambda m, t, **o: DPMSolverPP(m, t, order=1, **o),
    "dpmpp_2m": lambda m, t, **o: DPMSolverPP(m, t, order=2, **o),
    "dpmpp_3m": lambda m, t, **o: DPMSolverPP(m, t, order=3, **o),
    "unipc": lambda m, t, **o: UniPC(m, t, **{"order": 2, "corrector": True, **o}),
    "unip": lambda m, t, **o: UniPC(m, t, **{"order": 2, **o, "corrector": False}),
}


def make_solver(solver: "str | Solver", model: Model, times, **options) -> Solver:
    """Bind a solver (by name) to a model and a time grid."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError("solver options go with a solver name, not an already built solver")
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    try:
        return SOLVERS[solver](model, times, **options)
    except TypeError as e:
        raise ValueError(f"bad options for solver {solver!r}: {e}") from None
