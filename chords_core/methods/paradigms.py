"""ParaDiGMS (Shih et al. 2023): Picard iteration on a sliding window of ``window`` grid points
b .. e-1 (e = min(b + window, T)). A sweep evaluates all of them at once, takes each one's fine
step Phi_m(x_m) with the solver's own ``step``, and updates

    x_{m+1} <- Phi_m(x_m) + (x_m^new - x_m^old),   m = b .. e-1,   x_b^new = x_b,

which is the cumulative Picard sum x_b + sum_{l<=m} (Phi_l(x_l) - x_l) written so that a point
whose predecessor did not move is *exactly* Phi of it (window 1 is the sequential solver bit for
bit, which the public code is not). Per point the change is scored as
|x^new - x^old|^2 / (D var_m) per sample, with var_m the DDPM posterior variance of the step into
m, var_m = sigma_m^2 (1 - exp(2 (lambda_{m-1} - lambda_m))) (0 at sigma = 0: never blocks; 1 for a
``VectorField``); the window slides past the first point whose score exceeds tol^2 (it is exact,
being Phi of an accepted point), by at least 1 and at most ``window``. Multi-stage solvers (Heun)
take one round per stage per sweep. Multistep solvers (DPM-Solver++(2M/3M), UniPC) chain their
history through the window: the step of point m uses the quantities of points m-1, ... of the same
sweep (and the accepted ones before b), so the fixed point is the sequential multistep solution.

Window 1 and ``tol=0`` equal ``solve`` bit for bit for every solver.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..call import begin
from ..checks import check_float, check_int
from ..engine import evaluate_round
from ..executors import Executor
from ..history import move
from ..models import DiffusionModel, Model
from ..plan import Eval, Round
from ..results import Hit, Result
from ..solvers import Solver, State

__all__ = ["paradigms", "Sweep", "noise_variances"]


class Sweep(NamedTuple):
    """One ParaDiGMS sweep: rounds after it, window [start, end), the new window start."""

    round: int
    start: int
    end: int
    accepted_to: int


def noise_variances(model: Model, times: np.ndarray) -> np.ndarray:
    """var[m] (m = 0..T): DDPM posterior variance of the step t_{m-1} -> t_m; var[0] = 1.

    var_m = sigma_m^2 (1 - exp(2 (lambda_{m-1} - lambda_m))), 0 where sigma_m = 0; all ones for a model
    without a noise schedule.
    """
    var = np.ones(len(times))
    if isinstance(model, DiffusionModel):
        sch = model.schedule
        sig = np.asarray(sch.sigma(times), np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.asarray(sch.lam(times), np.float64)
            ratio = np.exp(2.0 * (lam[:-1] - lam[1:]))
        var[1:] = np.where(sig[1:] == 0.0, 0.0, sig[1:] ** 2 * (1.0 - np.nan_to_num(ratio, nan=0.0)))
    return var


def _row_sq(d: Any) -> Any:
    """Per-sample sum of squares over all but the batch axis (a scalar for unbatched states)."""
    if len(d.shape) <= 1:
        return (d * d).sum()
    return (d * d).reshape(d.shape[0], -1).sum(1)


def paradigms(
    model: Model,
    x: Any,
    grid: Any,
    solver: "str | Solver" = "euler",
    *,
    window: int = 8,
    tol: float = 0.1,
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """ParaDiGMS: sliding-window Picard iteration with ``window`` parallel points (see the module doc).

    Args:
        model, x, grid, solver, executor, solver_options: as for ``chords``.
        window: parallel points per sweep (the devices it keeps busy), >= 1.
        tol: the per-step tolerance tau relative to the noise level (paper default 0.1); ``tol=0``
            runs until every point is accepted exactly.
        progress: show a progress bar over sweeps (needs tqdm).

    Returns:
        A ``Result`` (``method="paradigms"``): one output; ``log`` holds a ``Sweep`` per sweep.
    """
    call = begin(model, x, grid, solver, executor, solver_options)
    sol, evals, executor, model = call.solver, call.evals, call.executor, call.model
    T = sol.steps
    window = check_int("window", window, 1)
    tol2 = check_float("tol", tol, 0.0) ** 2
    if sol.history_size and max(evals) > 1:
        raise ValueError(f"solver {sol.name!r} is both multistep and multi-stage; paradigms supports one or the other")
    var = noise_variances(model, sol.times)
    inv = np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), 0.0)
    numel_row = int(np.prod(x.shape[1:])) if len(x.shape) > 1 else int(np.prod(x.shape))
    t = sol.t
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc=f"paradigms {sol.name} w{window}", unit="step")

    xs: list = [x] * (min(window, T) + 1)  # the iterate x_0 .. x_e (later points start as copies)
    base = sol.begin(x)  # accepted state at the window start b (with its multistep history)
    b, rounds, nfe, width, log, trace = 0, 0, 0, 0, [], []
    try:
        while b < T:
            e = min(b + window, T)
            pts = range(b, e)
            qs: dict = {m: [] for m in pts}
            for k in range(max(evals[m] for m in pts)):
                idx = [m for m in pts if evals[m] > k]
                if k == 0:
                    px, ti = [xs[m] for m in idx], idx
                else:
                    px, ti = zip(*(sol.stage_point(State(xs[m]), qs[m], m, m + 1, k) for m in idx))
                rounds += 1
                outs = evaluate_round(executor, model, list(px), [t[j] for j in ti], rounds,
                                      lambda p: f"window point {idx[p]} (stage {k}, t={t[ti[p]]:.6g})")
                nfe, width = nfe + len(idx), max(width, len(idx))
                trace.append(Round(rounds, tuple(Eval(m - b, m, k, j) for m, j in zip(idx, ti))))
                for m, xp, j, out in zip(idx, px, ti, outs):
                    qs[m].append(sol.quantity_of(xp, out, j))
            st, new, states, accepted = base, [xs[b]], {}, None
            for m in pts:
                st = sol.step(move(st, xs[m]), qs[m], m, m + 1)
                xn = st.x if m == b else st.x + (new[-1] - xs[m])  # Phi_m + how far x_m moved this sweep
                new.append(xn)
                states[m + 1] = st
                if accepted is None and inv[m + 1] > 0:
                    score = _row_sq(xn - xs[m + 1]) * (inv[m + 1] / numel_row)
                    if float(score.max() if hasattr(score, "max") else score) > tol2:
                        accepted = m + 1  # the first point over tolerance: exact, as Phi of an accepted point
            nb = e if accepted is None else accepted
            xs[b + 1 : e + 1] = new[1:]
            xs.extend([xs[e]] * (min(nb + window, T) + 1 - len(xs)))
            base = move(states[nb], xs[nb])
            log.append(Sweep(rounds, b, e, nb))
            if bar is not None:
                bar.update(nb - b)
            b = nb
    finally:
        if bar is not None:
            bar.close()
    hit = Hit(0, rounds, nfe, xs[T])
    return Result(x=xs[T], rounds=rounds, nfe=nfe, hits=(hit,), coarse=None,
                  stopped_by=f"window reached T after {len(log)} sweeps", method="paradigms",
                  sequential_rounds=sum(evals), width=width, trace=tuple(trace), log=tuple(log))
