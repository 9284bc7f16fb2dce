"""The cascade sampler: this library's CHORDS-family method (see ``theory/cascade.md``).

A window of ``cores`` lanes slides along the grid. Lane l holds grid point b + l; every round all
lanes are evaluated at once and each point is corrected by the one before it, the slower, more
accurate lane (the Picard/parareal update x_{m+1} <- Phi_m(x_m) + (x_m^new - x_m^old), exact for a
point whose predecessor has converged). What CHORDS contributes:

- **free coarse seeds**: a lane that moves ahead starts from the zero-cost coarse jump, CHORDS'
  coarse propagator, made second order: the data prediction of the window's last two evaluated
  points extrapolated linearly in log-SNR and integrated exactly from the window's newest point
  (a DPM-Solver++(2)-type jump), instead of a copy of the last point (ParaDiGMS) or the
  first-order x0 jump (ParaSolver);
- **acceptance within the solver's own error**: a point whose change falls below ``tol`` times the
  solver's local error estimate there (``local_error``, from the window's own model values) is
  accepted and its lane starts new work ahead, so no device idles on converged work; the run returns
  only when every point up to T is accepted (never unconverged work). A tolerance relative to the
  solver's error, not to the noise level, transfers across solvers, step counts and workloads;
- optional **triangular Anderson mixing** (``anderson=m``) of the not-yet-accepted points;
- optional **noise-level acceptance** (``scale="level"``): a point's RMS change against
  ``tol`` max(1, sigma_j) (ParaTAA's level) instead of the local error estimate, ``tol`` referring
  to a 20-step grid and shrunk like the sequential error on finer ones (``tol_steps``). A flat
  budget in data units, it spends the error allowance evenly along the trajectory where the
  default spends it in proportion to the solver's local error, which for DPM-Solver++ is nearly
  zero at high noise; it reaches the sequential answer in fewer rounds at its best tolerance
  (``theory/cascade.md`` section 6) but is absolute, in the state's units, so the default stays
  ``"error"``.

With ``tol=0`` or one core it equals ``solve`` bit for bit for every solver (Heun: one round per
stage; multistep solvers carry their history through the window).
"""

from __future__ import annotations

from typing import Any

from ..checks import check_choice, check_grid
from ..executors import Executor
from ..models import Model
from ..results import Result
from ..solvers import Solver
from .parataa import DEFAULT_TOL as PARATAA_TOL
from .window import sliding_window

__all__ = ["cascade", "DEFAULT_TOL", "FULL_TOL_STEPS", "default_tol", "SCALES", "LEVEL_TOL", "tol_steps"]

#: The default tolerance from ``FULL_TOL_STEPS`` steps up (relative to the solver's local error at
#: each point); see ``default_tol``.
DEFAULT_TOL = 1.0
#: Below this many steps the default tolerance shrinks in proportion to the steps (``default_tol``).
FULL_TOL_STEPS = 20
#: What a point's change is measured against: the solver's local error estimate (the default) or
#: the noise level (``"level"``: RMS change against ``tol`` max(1, sigma_j), ParaTAA's rule).
SCALES = ("error", "level")
#: The default tolerance of ``scale="level"`` (ParaTAA's own default), on grids of up to
#: ``FULL_TOL_STEPS`` steps; see ``tol_steps``.
LEVEL_TOL = PARATAA_TOL


def tol_steps(scale: str) -> int | None:
    """The grid a tolerance on ``scale`` refers to (``sliding_window``'s ``tol_steps``): the noise
    level is in the data's units, and the error that may be left shrinks with the solver's global
    error, so a level tolerance refers to ``FULL_TOL_STEPS`` steps and is scaled by
    (FULL_TOL_STEPS / T)^order on finer grids (``window.tolerance_sq``); the local-error scale is
    relative already (``None``)."""
    return FULL_TOL_STEPS if scale == "level" else None


def default_tol(steps: int, scale: str = "error") -> float:
    """The default tolerance on a grid of ``steps`` steps: ``DEFAULT_TOL`` from ``FULL_TOL_STEPS``
    steps up, in proportion to the steps below; ``LEVEL_TOL`` for ``scale="level"``.

    A point keeps about rho / (1 - rho) times its last change after acceptance, and a sweep's
    contraction rho grows with the step size (``theory/cascade.md`` section 5), so a fixed tolerance
    loosens as the steps get fewer: ``tol=1`` stays within 1.02x the sequential error from 20 Euler
    steps up, but gave up to 1.13x at 10 steps on VP mixtures, where 0.5 stays within 1.014x
    (``benchmarks/few_steps.py``).
    """
    if scale == "level":
        return LEVEL_TOL
    return DEFAULT_TOL * min(1.0, steps / FULL_TOL_STEPS)


def cascade(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    cores: int = 8,
    tol: float | None = None,
    scale: str = "error",
    anderson: int = 0,
    ridge: float = 1e-3,
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """The cascade sampler on ``cores`` lanes (see the module docstring).

    Args:
        model, x, grid, solver, executor, solver_options: as for ``chords``.
        cores: lanes (evaluations per round, the devices kept busy), >= 1.
        tol: per-point acceptance tolerance: a point is accepted when its change is at most ``tol``
            times the solver's local error estimate there (``local_error``), or with
            ``scale="level"`` its RMS change at most ``tol`` max(1, sigma_j), ``tol`` scaled by
            (20 / T)^order on grids of T > 20 steps (as the sequential error; ``tol_steps``);
            >= 0, and 0 returns the sequential solution bit for bit. ``None``:
            ``default_tol(steps, scale)`` (1.0 from 20 steps up and in proportion to the steps
            below; ``LEVEL_TOL``, 1e-3, for ``"level"``).
        scale: ``"error"`` (the default) or ``"level"`` (see the module docstring).
        anderson: memory of triangular Anderson mixing of the unaccepted points (0: off).
        ridge: relative ridge of the mixing's least squares.
        progress: show a progress bar over grid steps (needs tqdm).

    Returns:
        A ``Result`` (``method="cascade"``) with one output; ``log`` holds a ``Sweep`` per sweep.
    """
    scale = check_choice("scale", scale, SCALES)
    if tol is None:
        tol = default_tol(len(check_grid(grid)) - 1, scale)
    return sliding_window(model, x, grid, solver, window=cores, tol=tol, seed="jump2", correction="picard",
                          scale=scale, anderson=anderson, ridge=ridge, tol_steps=tol_steps(scale), executor=executor,
                          progress=progress, method="cascade", solver_options=solver_options)
