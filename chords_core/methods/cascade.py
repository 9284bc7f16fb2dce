"""The cascade sampler: this library's CHORDS-family method (see ``theory/cascade.md``).

A window of ``cores`` lanes slides along the grid. Lane l holds grid point b + l; every round all
lanes are evaluated at once and each point is corrected by the one before it, the slower, more
accurate lane (the Picard/parareal update x_{m+1} <- Phi_m(x_m) + (x_m^new - x_m^old), exact for a
point whose predecessor has converged). What CHORDS contributes:

- **free coarse seeds**: a lane that moves ahead starts from a zero-cost seed: the data prediction of
  the window's last two evaluated points extrapolated linearly in log-SNR and fed to the solver's
  own steps from the window's newest point (``seed="solver"``: the seeds aim at the solver's
  trajectory, the fixed point, not the exact ODE's; the exact integral of the same extrapolation,
  ``"jump2"``, remains for multi-stage solvers; a plain ODE, with no noise schedule to extrapolate
  in, gets the solver's jump with the last evaluated value), instead of a copy of the last point
  (ParaDiGMS) or the first-order x0 jump (ParaSolver);
- **acceptance within the solver's own error** (``scale="error"``, the default for a plain ODE): a
  point whose change falls below ``tol`` times the solver's local error estimate there
  (``local_error``, from the window's own model values) is accepted and its lane starts new work
  ahead, so no device idles on converged work; the run returns only when every point up to T is
  accepted (never unconverged work). A tolerance relative to the solver's error transfers across
  solvers, step counts and units;
- optional **triangular Anderson mixing** (``anderson=m``) of the not-yet-accepted points;
- **a multistep solver's gain** (``history_gain``): where its steps weigh a point's model value many
  times more than a first-order step would (an extrapolation over one very short step divides a
  difference by it), that point's tolerance is divided by the excess (``Solver.history_gains``);
- **noise-level acceptance for diffusion models** (``scale="level"``, the default for a
  ``DiffusionModel``): a point's RMS change against ``tol`` max(0.1, sigma_j) (ParaTAA's level,
  whose floor is 1; ``LEVEL_FLOOR``) instead of the local error estimate, ``tol`` referring to a
  20-step grid and shrunk like the sequential error on finer ones (``tol_steps``). A budget in data
  units, it spends the error allowance along the whole trajectory where the local-error scale
  spends it in proportion to the solver's local error, which for DPM-Solver++ is nearly zero at high
  noise; at each scale's best tolerance it reaches the sequential answer in fewer rounds
  (``theory/cascade.md`` section 6; at the two defaults, 1e-4 and the local-error scale's 1, the
  suite's rows take 1038 rounds against 927, with no miss against 2). It is absolute, in the
  state's units: right for diffusion models, whose data are scaled to about unit size by convention
  (pixels in [-1, 1], latents times the autoencoder's scaling factor), wrong for a plain ODE, so
  ``scale="auto"`` (the default) takes ``"level"`` for a ``DiffusionModel`` and ``"error"`` for a
  ``VectorField``; pass ``scale="error"`` for diffusion data far from unit size.

With ``tol=0`` or one core it equals ``solve`` bit for bit for every solver (Heun: one round per
stage; multistep solvers carry their history through the window), for a model whose output for a
row does not depend on the batch it is evaluated in (``BatchedExecutor``).
"""

from __future__ import annotations

from typing import Any

from ..checks import check_bool, check_choice, check_float, check_grid, check_int
from ..executors import Executor
from ..models import Model, is_plain_ode
from ..results import Result
from ..solvers import Solver
from .window import RIDGE, check_ridge, same_at_float32, sliding_window

__all__ = ["cascade", "DEFAULT_TOL", "PLAIN_TOL", "FULL_TOL_STEPS", "default_tol", "SCALES", "LEVEL_TOL", "LEVEL_FLOOR",
           "tol_steps", "resolve_scale", "default_tol_for", "RIDGE", "check_applies"]

#: The default tolerance from ``FULL_TOL_STEPS`` steps up (relative to the solver's local error at
#: each point); see ``default_tol``.
DEFAULT_TOL = 1.0
#: The default tolerance for a plain ODE (a ``VectorField``): its dynamics can amplify an early
#: deviation far more than a diffusion model's (``benchmarks/plain_odes.py``: on Lorenz, Van der Pol,
#: Lotka-Volterra, a pendulum, a rigid body and a stiff linear system with Euler and Heun at 50-200
#: steps and 2-8 lanes, ``tol=1`` missed the no-degradation criterion in 2 of 99 runs, up to 1.071x;
#: 0.25 in none. A user trial then found 0.25 above it on Van der Pol at mu = 5, a forced Duffing
#: oscillator and FitzHugh-Nagumo (13 of 246 runs, up to 1.77x); ``--more``, those
#: ODEs and Roessler and Kepler: 0.25 misses 4 of 69, 0.1 misses 3, 0.05 none (worst 1.039x) for 4.3%
#: more rounds than 0.25 there and 4.9% on the first set; the trial's own runs: 2 of 246 at 0.05).
PLAIN_TOL = 0.05
#: Below this many steps the default tolerance shrinks in proportion to the steps (``default_tol``).
FULL_TOL_STEPS = 20
#: What a point's change is measured against: the solver's local error estimate (``"error"``) or
#: the noise level (``"level"``: RMS change against ``tol`` max(``LEVEL_FLOOR``, sigma_j), after ParaTAA's rule);
#: ``"auto"`` (the default): ``"level"`` for a ``DiffusionModel``, ``"error"`` otherwise (``resolve_scale``).
SCALES = ("auto", "error", "level")
#: The default tolerance of ``scale="level"``, on grids of up to ``FULL_TOL_STEPS`` steps (see
#: ``tol_steps``): 0.1x ParaTAA's 1e-3, with the floor ``LEVEL_FLOOR``. The level is absolute, and
#: where the sequential error is small it leaves no margin: 1e-3 at ParaTAA's floor of 1 left outputs
#: up to 1.08x the sequential error on 10 of 612 runs of small mixtures (``benchmarks/level_tol.py``,
#: all four earlier figures at that floor); 5e-4, chosen
#: on those, missed 10 of 1,954 runs of random mixture problems outside everything it was tuned on
#: (``benchmarks/safety_sweep.py`` seeds 11 and 12: unequal modes, 256-D, data at 0.18 scale,
#: guidance-like combinations; every schedule, prediction and solver), and 2.2e-4, chosen on those,
#: 5, and 8 more on seeds 13-17 (4,795 runs). 1e-4 with the floor at 0.1 misses 1 of the 6,749 runs
#: of seeds 11-17 (0 of the 1,907 of seeds 16 and 17, held out until it was chosen) for 7.9% more
#: rounds than 2.2e-4 (docs/safety.md). Not a guarantee (README, "Safe defaults").
LEVEL_TOL = 1e-4
#: The cascade sampler's floor of the noise level: ``scale="level"`` measures a point's RMS change
#: against ``tol`` max(``LEVEL_FLOOR``, sigma_j). ParaTAA's floor, 1, lets the last points (sigma
#: below 1, where a change reaches the output nearly undamped) keep as much as the first; where the
#: sequential error is itself small (narrow modes, a higher-order solver: 7.6e-5) that alone put the
#: output at 2.1x it (``benchmarks/safety_sweep.py``, problem 12.367; 2.8x on 17.493 at 1e-4).
LEVEL_FLOOR = 0.1


def resolve_scale(scale: str, model: Any) -> str:
    """``scale`` checked (one of ``SCALES``, else ``ValueError`` naming it), with ``"auto"`` decided for
    ``model``: ``"level"`` for a ``DiffusionModel`` (data of about unit size, the convention its noise
    schedule assumes), ``"error"`` for anything else (a plain ODE, whose units no rule knows)."""
    scale = check_choice("scale", scale, SCALES)
    if scale == "auto":
        return "error" if is_plain_ode(model) else "level"
    return scale


def tol_steps(scale: str) -> int | None:
    """The grid a tolerance on ``scale`` refers to (``sliding_window``'s ``tol_steps``): the noise
    level is in the data's units, and the error that may be left shrinks with the solver's global
    error, so a level tolerance refers to ``FULL_TOL_STEPS`` steps and is scaled by
    (FULL_TOL_STEPS / T)^order on finer grids (``window.tolerance_sq``); the local-error scale is
    relative already (``None``)."""
    return FULL_TOL_STEPS if scale == "level" else None


def check_applies(scale: str, plain: bool, level_floor: Any, anderson: Any, ridge: Any) -> tuple[float, int, float]:
    """``(level_floor, anderson, ridge)`` checked (``ValueError`` / ``TypeError`` naming the argument),
    and refused where they cannot act (they were accepted and ignored): a ``level_floor`` other than
    ``LEVEL_FLOOR`` with a ``scale`` (decided: ``resolve_scale``) other than ``"level"``, or at most 1
    on a plain ODE (``plain``: its noise level is taken as 1); a ``ridge`` other than ``RIDGE``
    without Anderson mixing (``anderson=0``). A float32 copy of a default is the default."""
    level_floor = check_float("level_floor", level_floor, 0.0, low_open=True)
    anderson = check_int("anderson", anderson, 0)
    if not same_at_float32(level_floor, LEVEL_FLOOR):
        if scale != "level":
            raise ValueError(f"level_floor: the noise level's floor of scale='level'; this run measures changes on "
                             f"the {scale!r} scale (scale='auto' takes 'level' for a DiffusionModel, 'error' "
                             "otherwise), where it does nothing: pass scale='level' with it, or leave it out")
        if plain and level_floor <= 1.0:
            raise ValueError(f"level_floor: {level_floor} does nothing on a plain ODE, whose noise level is taken as "
                             "1 (max(level_floor, 1) = 1): only a floor above 1 changes its runs")
    return level_floor, anderson, check_ridge(ridge, anderson, "anderson")


def default_tol(steps: int, scale: str = "error", plain: bool = False) -> float:
    """The default tolerance on a grid of ``steps`` steps: ``DEFAULT_TOL`` (``PLAIN_TOL`` for a plain
    ODE, ``plain``) from ``FULL_TOL_STEPS`` steps up, in proportion to the steps below; ``LEVEL_TOL``
    for ``scale="level"`` (a scale decided already: ``resolve_scale``).

    A point keeps about rho / (1 - rho) times its last change after acceptance, and a sweep's
    contraction rho grows with the step size (``theory/cascade.md`` section 5), so a fixed tolerance
    loosens as the steps get fewer: on the VP mixtures of ``benchmarks/few_steps.py`` ``tol=1``
    stayed within 1.02x the sequential error from 20 Euler steps up, but gave up to 1.13x at 10
    steps, where 0.5 stays within 1.014x. Not a bound elsewhere: on mixtures with narrow modes a
    review found 1.28x at 20 Euler steps and 1.07x at 100 (``theory/cascade.md`` section 5).
    """
    if scale not in ("error", "level"):
        raise ValueError(f"scale: default_tol takes a decided scale, 'error' or 'level' (resolve_scale), got {scale!r}")
    if scale == "level":
        return LEVEL_TOL
    return (PLAIN_TOL if plain else DEFAULT_TOL) * min(1.0, steps / FULL_TOL_STEPS)


def default_tol_for(model: Any, steps: int, scale: str) -> float:
    """``default_tol`` for ``model`` (a plain ODE is anything but a ``DiffusionModel``), ``scale``
    decided already (``resolve_scale``): the one place the core and ``chords_jax`` take it from."""
    return default_tol(steps, scale, is_plain_ode(model))


def cascade(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    cores: int | None = None,
    tol: float | None = None,
    scale: str = "auto",
    level_floor: float = LEVEL_FLOOR,
    anderson: int = 0,
    ridge: float = RIDGE,
    history_gain: bool = True,
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """The cascade sampler on ``cores`` lanes (see the module docstring).

    Args:
        model, x, grid, solver, executor, solver_options: as for ``chords``.
        cores: lanes (evaluations per round, the devices kept busy), >= 1; ``None``:
            ``DEFAULT_WINDOW`` (8), or the grid's steps where fewer.
        tol: per-point acceptance tolerance: a point is accepted when its change is at most ``tol``
            times the solver's local error estimate there (``local_error``), or with
            ``scale="level"`` its RMS change at most ``tol`` max(``level_floor``, sigma_j), ``tol`` scaled by
            (20 / T)^order on grids of T > 20 steps (as the sequential error; ``tol_steps``);
            >= 0, and 0 returns the sequential solution bit for bit. ``None``:
            ``default_tol(steps, scale, plain)`` (1.0 from 20 steps up and in proportion to the
            steps below, 0.05 for a plain ODE; ``LEVEL_TOL``, 1e-4, for ``"level"``).
        scale: ``"auto"`` (the default: ``"level"`` for a ``DiffusionModel``, ``"error"`` for a
            ``VectorField``), ``"error"`` or ``"level"`` (see the module docstring).
        level_floor: the noise level's floor with ``scale="level"``, > 0 (``LEVEL_FLOOR``, 0.1;
            ParaTAA's rule is 1); a plain ODE's noise level is taken as 1, so only a floor above 1
            changes its runs. Refused where it would do nothing (``ValueError``: another scale, or at
            most 1 on a plain ODE).
        anderson: memory of triangular Anderson mixing of the unaccepted points (0: off).
        ridge: relative ridge of the mixing's least squares (``RIDGE``); refused without mixing.
        history_gain: with a multistep solver, divide a point's tolerance by how many times more than
            a first-order step the solver's steps weigh its model value, beyond ``HISTORY_GAIN_FREE``
            (16; ``Solver.history_gains``: at most 8.1 for DPM-Solver++(2M) and UniPC on every
            ``time_grid``, up to 115 for (3M) on a uniform EDM grid, about the inverse of the step ratio
            where one step is much shorter than the next). ``False``: every point keeps ``tol`` (a grid
            with one step of 1e-5 among steps of 0.03 then returned 2.16x the sequential error).
        progress: show a progress bar over grid steps (needs tqdm).

    Returns:
        A ``Result`` (``method="cascade"``) with one output; ``log`` holds a ``Sweep`` per sweep.
    """
    steps = len(check_grid(grid)) - 1
    if cores is not None:  # named as here, not as the window's "window" (None: the window's default)
        cores = check_int("cores", cores, 1, steps)
    scale = resolve_scale(scale, model)  # (its options after the grid and cores, as parallel() checks them)
    level_floor, anderson, ridge = check_applies(scale, is_plain_ode(model), level_floor, anderson, ridge)
    history_gain = check_bool("history_gain", history_gain)
    if tol is None:
        tol = default_tol_for(model, steps, scale)
    return sliding_window(model, x, grid, solver, window=cores, tol=tol, seed="solver", correction="picard",
                          scale=scale, anderson=anderson, ridge=ridge, tol_steps=tol_steps(scale),
                          level_floor=level_floor, history_gain=history_gain, executor=executor,
                          progress=progress, method="cascade", solver_options=solver_options)
