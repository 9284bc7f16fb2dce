"""Time grids for diffusion sampling: ``steps + 1`` float64 times from noise to data.

``time_grid(schedule, steps, spacing)`` places points evenly in a *spacing coordinate* u(t):

===========  =====================================  =====================================
spacing      u(t)                                   matches
===========  =====================================  =====================================
"uniform"    t                                      flow-matching linspace, DDIM "linspace"
"logsnr"     lambda(t) = log(alpha/sigma)           DPM-Solver "logSNR", diffusers lu_lambdas
"karras"     (sigma/alpha)^(1/rho), rho = 7         Karras et al. / k-diffusion
===========  =====================================  =====================================

If the schedule has a ``t_min`` (VP, EDM) or ``t_min`` is passed, the first ``steps`` points run
from ``t_max`` to ``t_min`` and the last point is the data end ``t_data`` (sigma = 0): the final
step jumps to clean data, as diffusers' ``final_sigmas_type="zero"`` and k-diffusion do. That last
step does not shrink with more steps, so the error against the exact flow to sigma = 0 levels off
(VP, Heun: 1.0e-4 at 160 steps, 1.6e-4 at 1280 in a docs trial); measure a solver's order up to
``t_min`` (``tests/test_solvers.py``).
Otherwise (rectified flow) all ``steps + 1`` points run from ``t_max`` to ``t_data`` evenly in u,
which needs u(t_data) finite ("logsnr" therefore needs a ``t_min``).

``shift`` (rectified flow only) then maps every time by t -> shift t / (1 + (shift - 1) t), the
SD3 / Flux flow-matching shift; it keeps t = 0 and t = 1 fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .checks import check_choice, check_float, check_int
from .schedules import RectifiedFlow, Schedule, check_schedule

__all__ = ["time_grid", "shift_time", "SPACINGS"]

SPACINGS = ("uniform", "logsnr", "karras")
#: The most steps a grid may have (int32 indices, as the compiled JAX programs use; a grid of this
#: many float64 times is 16 GiB already: larger values are typos, which numpy refused unnamed)
MAX_STEPS = 2**31 - 1


def shift_time(t: Any, shift: float) -> np.ndarray:
    """The flow-matching time shift t -> shift t / (1 + (shift - 1) t) (SD3 / Flux).

    Args:
        t: a time (float) or an array of times in [0, 1].
        shift: the shift factor, > 0 (1 leaves the times unchanged).

    Returns:
        The shifted times, float64, the shape of ``t``; t = 0 and t = 1 stay fixed.
    """
    t = np.asarray(t, dtype=np.float64)
    out = np.clip(shift * t / (1.0 + (shift - 1.0) * t), 0.0, 1.0)
    # (exactly: s / (1 + (s - 1)) rounds to 1.0000000000000002 for s = 0.1, and every solver then refused
    # the grid as starting outside the schedule's domain)
    return np.where(t == 1.0, 1.0, np.where(t == 0.0, 0.0, out))[()]  # (a scalar for a scalar, as before)


def time_grid(
    schedule: Schedule,
    steps: int,
    spacing: str = "uniform",
    *,
    shift: float = 1.0,
    t_max: float | None = None,
    t_min: float | None = None,
    rho: float | None = None,
) -> np.ndarray:
    """The ``steps + 1`` grid times from noise to data (see the module docstring).

    Args:
        schedule: the noise schedule (its ``t_noise``, ``t_data``, ``t_min`` and lambda).
        steps: T, the number of steps, >= 1.
        spacing: ``"uniform"``, ``"logsnr"`` or ``"karras"`` (``SPACINGS``). Uniform in an EDM
            schedule's t (sigma) puts its last steps far longer in log-SNR than the ones before, and the
            multistep solvers extrapolate across them: their error does not fall with the steps there
            (DPM-Solver++(2M) on a 4-D Gaussian: 1.0, 0.66, 0.096, 0.67, 1.0 at 10 to 160 steps; on
            Karras spacing 0.22 down to 7.5e-4): use ``"karras"`` or ``"logsnr"`` for EDM.
        shift: the flow-matching shift (``RectifiedFlow`` only), applied to the times below.
        t_max: the first time, before ``shift`` maps it (default ``schedule.t_noise``).
        t_min: the last time before the final step to ``t_data``, before ``shift`` maps it (default
            ``schedule.t_min``).
        rho: the Karras exponent (``"karras"`` spacing only; default 7).

    Returns:
        (T + 1,) float64 times, strictly monotone, ending at ``t_data``. Raises ``ValueError`` naming
        the offending argument.
    """
    check_schedule(schedule)
    steps = check_int("steps", steps, 1, MAX_STEPS)
    check_choice("spacing", spacing, SPACINGS)
    shift = check_float("shift", shift, 0.0, low_open=True)
    if rho is not None and spacing != "karras":  # (a user trial: it was ignored, silently)
        raise ValueError(f"rho: the Karras exponent applies to spacing='karras' only, got spacing={spacing!r}")
    rho = 7.0 if rho is None else check_float("rho", rho, 0.0, low_open=True)
    if shift != 1.0 and not isinstance(schedule, RectifiedFlow):
        raise ValueError("shift applies to RectifiedFlow schedules only")
    t_max = schedule.t_noise if t_max is None else check_float("t_max", t_max)
    t_min_given = t_min is not None
    t_min = schedule.t_min if t_min is None else check_float("t_min", t_min)
    t_data = schedule.t_data
    for arg, value in (("t_max", t_max), ("t_min", t_min)):
        problem = "" if value is None else schedule.outside(arg, value)
        if problem:
            raise ValueError(problem)
    if spacing != "uniform" and t_max != schedule.t_noise and not _invertible_at(schedule, t_max):
        # (its points come from t_from_lam, which searches [t_data, t_noise] unless a schedule inverts lambda in
        # closed form: they were clamped to t_noise, a "logsnr" grid silently not even in log-SNR, a "karras" one
        # refused as not monotone)
        raise ValueError(f"t_max={t_max!r} lies beyond the schedule's t_noise={schedule.t_noise!r}, where spacing "
                         f"{spacing!r} cannot place points; give t_max within it, a schedule whose t_noise reaches it, "
                         "or spacing='uniform'")
    if t_max == t_data:  # (it said the grid was not monotone, or blamed the default t_min)
        raise ValueError(f"t_max: the grid would start where it ends, at t_data={t_data}; give a t_max towards noise")
    if t_min is not None and not (min(t_max, t_data) <= t_min < max(t_max, t_data) or t_min == t_data):
        if not t_min_given:  # the schedule's own smallest time, which the caller did not pass: t_max is the problem
            raise ValueError(f"t_max={t_max} lies within the schedule's smallest time t_min={t_min} of t_data={t_data} "
                             "(the grid's last step before t_data); give a t_max beyond it, or a smaller t_min")
        raise ValueError(f"t_min must lie between t_data={t_data} and t_max={t_max}, got {t_min}")

    u = _coordinate(schedule, spacing, rho)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            start = u(t_max)
    except OverflowError:  # (a raw "Numerical result out of range", naming nothing)
        raise ValueError(f"rho={rho:g}: the Karras coordinate sigma^(1/rho) overflows at t_max={t_max:g}; use a "
                         "moderate rho (Karras et al.'s is 7)") from None
    if not np.isfinite(start):
        also = " and a t_min > 0 (nor end at sigma = 0)" if spacing == "logsnr" else ""
        raise ValueError(f"spacing {spacing!r} cannot start at t_max={t_max:g}, where the signal is 0 (sigma/alpha "
                         f"is infinite); pass a t_max short of it (for RectifiedFlow, t_max=0.999, say){also}")
    if t_min is None or t_min == t_data:
        end = u(t_data)
        if not np.isfinite(end):
            raise ValueError(f"spacing {spacing!r} cannot reach sigma = 0 directly; pass t_min > 0")
        ts = _from_coordinate(schedule, spacing, rho, np.linspace(u(t_max), end, steps + 1))
        ts[0], ts[-1] = t_max, t_data
    else:
        inner = np.linspace(u(t_max), u(t_min), steps) if steps > 1 else np.array([u(t_max)])
        ts = _from_coordinate(schedule, spacing, rho, inner)
        ts[0] = t_max
        if steps > 1:
            ts[-1] = t_min
        ts = np.append(ts, t_data)
    if shift != 1.0:
        ts = shift_time(ts, shift)
    ts = np.asarray(ts, dtype=np.float64)
    d = np.diff(ts)
    if not (np.all(d < 0) or np.all(d > 0)):
        raise ValueError(f"the grid is not strictly monotone (times repeat in float64: steps={steps}, spacing "
                         f"{spacing!r}, rho={rho:g}, shift={shift:g}); use fewer steps, another spacing, or a "
                         "moderate rho or shift")
    return ts


def _invertible_at(schedule: Schedule, t: float) -> bool:
    """Whether ``schedule.t_from_lam`` gives ``t`` back from its lambda (a bisection searches only
    [t_data, t_noise]); where lambda is infinite, the caller's own check speaks."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = float(np.asarray(schedule.lam(t)))
    if not np.isfinite(lam):
        return True
    back = float(np.asarray(schedule.t_from_lam(np.array([lam]))).reshape(-1)[0])
    return abs(back - t) <= 1e-9 * max(1.0, abs(t))


def _coordinate(schedule: Schedule, spacing: str, rho: float) -> Callable[[float], float]:
    if spacing == "uniform":
        return lambda t: float(t)
    if spacing == "logsnr":
        return lambda t: float(schedule.lam(t))
    return lambda t: float(schedule.ve_sigma(t)) ** (1.0 / rho)


def _from_coordinate(schedule: Schedule, spacing: str, rho: float, u: np.ndarray) -> np.ndarray:
    if spacing == "uniform":
        return np.array(u, dtype=np.float64)
    if spacing == "logsnr":
        return np.asarray(schedule.t_from_lam(u), dtype=np.float64).reshape(u.shape)
    ve = np.asarray(u, dtype=np.float64) ** rho  # sigma / alpha = exp(-lambda)
    with np.errstate(divide="ignore"):
        return np.asarray(schedule.t_from_lam(-np.log(ve)), dtype=np.float64).reshape(u.shape)
