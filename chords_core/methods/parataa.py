"""ParaTAA (Tang et al., ICML 2024): fixed-point iteration of the sampling trajectory with
triangular Anderson acceleration, in this library's variant (its departures from the official code,
measured: README, "The parallel methods").

Written from the paper: the trajectory is a triangular nonlinear system; with the order s equal to
the window this library iterates ParaDiGMS' window map G (x_{m+1} = Phi_m(x_m) accumulated from
the window start) and mixes the iterates with Anderson acceleration,

    x^{k+1} = x^k + R^k - (dX + dR) gamma,    R = G(x) - x,

where each point j solves its own ridge least-squares problem for gamma_j from the residual
differences of the points up to j only (triangular sums; ``memory`` m past iterates, relative
ridge ``ridge``). A point is converged when its RMS change is at most ``tol`` max(1, sigma_j) (the
paper's tol1 = tol2 rule) and the window slides past the converged prefix. New window points start
as copies (the paper initialises the whole trajectory from the noise). The accepted prefix and the
first unconverged point keep the exact fixed-point update, so ``tol=0`` or window 1 equals
``solve`` bit for bit (mixing only moves points that are iterated again).
"""

from __future__ import annotations

from typing import Any

from ..checks import check_int
from ..executors import Executor
from ..models import Model
from ..results import Result
from ..solvers import Solver
from .window import RIDGE, check_ridge, sliding_window

__all__ = ["parataa"]


#: The default tolerance (the paper's script's): RMS change at most 1e-3 max(1, sigma_j).
DEFAULT_TOL = 1e-3


def parataa(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    window: int | None = None,
    tol: float | None = None,
    memory: int = 3,
    ridge: float = RIDGE,
    multistep: str = "chain",
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """ParaTAA: window fixed-point iteration with triangular Anderson mixing (see the module doc).

    Args (the others as for ``paradigms``):
        tol: a point converges when its RMS change is at most tol max(1, sigma_j); ``None``:
            ``DEFAULT_TOL``, 1e-3 (the script's; in the state's units: a ``UserWarning`` on a plain
            ODE, ``absolute_tol``).
        memory: Anderson memory m (2-5 recommended by the paper; 0 turns mixing off).
        ridge: relative ridge of the least-squares problems (paper: 1e-3); refused with ``memory=0``.

    Returns:
        A ``Result`` (``method="parataa"``); ``log`` holds a ``Sweep`` per sweep.
    """
    memory = check_int("memory", memory, 0)  # named as here, not as the window's "anderson"
    ridge = check_ridge(ridge, memory, "memory")
    return sliding_window(model, x, grid, solver, window=window, tol=tol, seed="copy", correction="picard",
                          scale="level", multistep=multistep, anderson=memory, ridge=ridge, executor=executor,
                          progress=progress, method="parataa", solver_options=solver_options,
                          default_tol=DEFAULT_TOL)
