"""The peers of CHORDS on the same solvers and executors: ParaDiGMS (Picard) and SRDS (parareal).

Both take the arguments of ``chords`` (model, x, grid, solver, executor, solver options), batch every
evaluation of a round into one executor call, and return a ``PeerResult`` (a ``ChordsResult`` with
``plan=None``): ``rounds`` = sequential model-evaluation latency, ``nfe`` = all evaluations made.

**ParaDiGMS** (Shih et al. 2023): Picard iteration on a sliding window of ``window`` grid points
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

**SRDS** (Selvam et al. 2024): parareal over ``blocks`` blocks of grid indices n_0 = 0 < ... <
n_B = T. The coarse propagator G_i(x) is the solver's one-step ``jump`` across block i from one
evaluation at x; the fine one F_i is the solver's own steps across the block. With iterates x_i^k:

    x_{i+1}^0 = G_i(x_i^0),   x_{i+1}^k = F_i(x_i^{k-1}) + G_i(x_i^k) - G_i(x_i^{k-1}),

and x_i^k = x_i^{i} (exact) for i <= k. Pipelined: block i's fine solve of iteration k starts as
soon as x_i^k exists, and its first evaluation is also the one G_i(x_i^k) needs, so a round
evaluates every running fine solve at once (``width`` in the result is the most evaluations of any
round: the cores it needs). The output of iteration k is x_B^k; SRDS stops when
rms(x_B^k - x_B^{k-1}) < tol, and at the latest after B iterations, where x_B^B is the sequential
solution bit for bit. A fine solve starting at a point carries the multistep history of the fine
solve that produced that point ("keep"); solves from coarse points start fresh (warm-up order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from .executors import BatchedExecutor, Executor
from .models import DiffusionModel, Model
from .pipeline import ChordsResult, Hit
from .sequential import check_grid, check_state
from .solvers import Solver, State, make_solver

__all__ = ["paradigms", "srds", "PeerResult", "Sweep", "noise_variances", "srds_blocks"]


@dataclass(frozen=True)
class PeerResult(ChordsResult):
    """A ``ChordsResult`` of a peer method (``plan`` is None).

    ``hits`` are the outputs in arrival order (SRDS: one per iteration, ``Hit.core`` = iteration k;
    ParaDiGMS: the final one); ``width`` the most evaluations in one round; ``log`` the per-sweep
    (ParaDiGMS) or per-iteration (SRDS) record returned by ``trace``.
    """

    method: str = ""
    sequential_rounds: int = 0
    width: int = 0
    log: tuple = field(default=(), repr=False)

    @property
    def speedup(self) -> float:
        """Sequential rounds over rounds used: the latency speedup in model evaluations."""
        return self.sequential_rounds / self.rounds

    @property
    def trace(self) -> tuple:
        return self.log

    def diagram(self) -> str:
        return "\n".join(str(s) for s in self.log)


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


def _setup(model, x, grid, solver, executor, solver_options):
    times = check_grid(grid)
    check_state(model, x)
    sol = make_solver(solver, model, times, **solver_options)
    evals = [sol.evals(i, i + 1) for i in range(sol.steps)]
    return sol, evals, BatchedExecutor() if executor is None else executor


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return float(tol)


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _row_sq(d) -> Any:
    """Per-sample sum of squares over all but the batch axis (a scalar for unbatched states)."""
    if len(d.shape) <= 1:
        return (d * d).sum()
    return (d * d).reshape(d.shape[0], -1).sum(1)


# ---------------------------------------------------------------------------------------- ParaDiGMS
def paradigms(
    model: Model,
    x: Any,
    grid,
    solver: "str | Solver" = "euler",
    *,
    window: int = 8,
    tol: float = 0.1,
    executor: Executor | None = None,
    **solver_options,
) -> PeerResult:
    """ParaDiGMS: sliding-window Picard iteration with ``window`` parallel points (see module doc).

    ``tol`` is the per-step tolerance tau relative to the noise level (paper default 0.1); ``tol=0``
    runs until every point is accepted exactly. Returns a ``PeerResult``; ``window=1`` equals
    ``solve`` bit for bit.
    """
    sol, evals, executor = _setup(model, x, grid, solver, executor, solver_options)
    T = sol.steps
    window = _check_int("window", window, 1, 10**9)
    tol2 = _check_tol(tol) ** 2
    if sol.history and max(evals) > 1:
        raise ValueError(f"solver {sol.name!r} is both multistep and multi-stage; paradigms supports one or the other")
    var = noise_variances(model, sol.times)
    inv = np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), 0.0)
    numel_row = int(np.prod(x.shape[1:])) if len(x.shape) > 1 else int(np.prod(x.shape))
    t = sol.t

    xs: list = [x] * (min(window, T) + 1)  # the iterate x_0 .. x_e (later points start as copies)
    base = sol.begin(x)  # accepted state at the window start b (with its multistep history)
    b, rounds, nfe, width, log = 0, 0, 0, 0, []
    while b < T:
        e = min(b + window, T)
        pts = range(b, e)
        qs = {m: [] for m in pts}
        for k in range(max(evals[m] for m in pts)):
            idx = [m for m in pts if evals[m] > k]
            if k == 0:
                px, ti = [xs[m] for m in idx], idx
            else:
                px, ti = zip(*(sol.stage_point(State(xs[m]), qs[m], m, m + 1, k) for m in idx))
            outs = executor(model, list(px), [t[j] for j in ti])
            rounds, nfe, width = rounds + 1, nfe + len(idx), max(width, len(idx))
            for m, xp, j, out in zip(idx, px, ti, outs):
                qs[m].append(sol.quantity_of(xp, out, j))
        st, new, states, accepted = base, [xs[b]], {}, None
        for m in pts:
            st = sol.step(State(xs[m], st.hist, st.aux), qs[m], m, m + 1)
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
        base = State(xs[nb], states[nb].hist, states[nb].aux)
        log.append(Sweep(rounds, b, e, nb))
        b = nb
    hit = Hit(0, rounds, nfe, xs[T])
    return PeerResult(x=xs[T], rounds=rounds, nfe=nfe, hits=(hit,), coarse=None, plan=None,
                      stopped_by=f"window reached T after {len(log)} sweeps", method="paradigms",
                      sequential_rounds=sum(evals), width=width, log=tuple(log))


# --------------------------------------------------------------------------------------------- SRDS
def srds_blocks(steps: int, blocks: int | None = None) -> tuple[int, ...]:
    """Block boundaries 0 = n_0 < ... < n_B = steps, as even as possible; ``blocks=None``: round(sqrt(steps))."""
    steps = _check_int("steps", steps, 1, 10**9)
    blocks = max(1, round(math.sqrt(steps))) if blocks is None else _check_int("blocks", blocks, 1, steps)
    return tuple(int(v) for v in np.round(np.linspace(0, steps, blocks + 1)))


class _Fine:
    """A fine solve over block ``i`` started at iterate k's point: one evaluation (stage) per round."""

    __slots__ = ("i", "k", "state", "m", "end", "qs")

    def __init__(self, i, k, state, start, end):
        self.i, self.k, self.state, self.m, self.end, self.qs = i, k, state, start, end, []


class SrdsIteration(NamedTuple):
    """Iteration k's output x_B^k: the round it formed, NFE so far and its RMS change from x_B^{k-1}."""

    iteration: int
    round: int
    nfe: int
    change: float


def srds(
    model: Model,
    x: Any,
    grid,
    solver: "str | Solver" = "euler",
    *,
    blocks: int | None = None,
    tol: float = 1e-3,
    max_iters: int | None = None,
    executor: Executor | None = None,
    **solver_options,
) -> PeerResult:
    """SRDS: pipelined parareal over ``blocks`` blocks (default round(sqrt(T))); see the module doc.

    Stops at the first iteration whose final sample moved by an RMS below ``tol``, or after
    ``max_iters`` iterations (default and at most ``blocks``, after which the output is the sequential
    solution; ``tol=0`` runs them all). ``hits`` holds every iteration's output.
    """
    sol, evals, executor = _setup(model, x, grid, solver, executor, solver_options)
    tol = _check_tol(tol)
    n = srds_blocks(sol.steps, blocks)
    nb = len(n) - 1
    last = nb if max_iters is None else _check_int("max_iters", max_iters, 1, nb)
    t = sol.t
    pts: dict = {(0, k): (x, None) for k in range(nb + 1)}  # (i, k) -> (x_i^k, state of the solve that made it)
    G: dict = {}  # (i, k) -> G_i(x_i^k)
    F: dict = {}  # (i, k) -> end State of the fine solve from x_i^k
    running: list[_Fine] = []

    def start(i, k):
        xk, st = pts[(i, k)]
        state = sol.begin(xk) if st is None else State(xk, st.hist, st.aux)
        running.append(_Fine(i, k, state, n[i], n[i + 1]))

    def form(i1, k):
        """Try to form x_{i1}^k; return it or None."""
        i = i1 - 1
        if k == 0:
            return (G[(i, 0)], None) if (i, 0) in G else None
        if i1 == k:
            return (F[(i, k - 1)].x, F[(i, k - 1)]) if (i, k - 1) in F else None
        if (i, k - 1) in F and (i, k) in G:
            f = F[(i, k - 1)]
            return (f.x + (G[(i, k)] - G[(i, k - 1)]), f)
        return None

    start(0, 0)
    outputs, hits, log, next_k = {}, [], [], 1
    rounds = nfe = width = 0
    result = stopped_by = None
    while result is None:
        batch = [(c, *((c.state.x, c.m) if not c.qs else sol.stage_point(c.state, c.qs, c.m, c.m + 1, len(c.qs)))) for c in running]
        outs = executor(model, [p for _, p, _ in batch], [t[j] for _, _, j in batch])
        rounds, nfe, width = rounds + 1, nfe + len(batch), max(width, len(batch))
        for (c, xp, j), out in zip(batch, outs):
            q = sol.quantity_of(xp, out, j)
            if not c.qs and c.m == n[c.i]:  # the solve's first evaluation is also G_i's
                G[(c.i, c.k)] = sol.jump(xp, q, n[c.i], n[c.i + 1])
            c.qs.append(q)
            if len(c.qs) == evals[c.m]:
                c.state, c.qs = sol.step(c.state, c.qs, c.m, c.m + 1), []
                c.m += 1
                if c.m == c.end:
                    F[(c.i, c.k)] = c.state
        running = [c for c in running if c.m < c.end]
        changed = True
        while changed:  # form every point whose inputs exist; start the fine solves they feed
            changed = False
            for k in range(nb + 1):
                for i1 in range(max(k, 1), nb + 1):
                    if (i1, k) in pts:
                        continue
                    p = form(i1, k)
                    if p is None:
                        continue
                    pts[(i1, k)], changed = p, True
                    if i1 < nb:
                        start(i1, k)
                    else:
                        outputs[k] = p[0]
        while result is None and next_k in outputs:  # outputs form in iteration order
            xk = outputs[next_k]
            change = B.rms(xk - outputs[next_k - 1])
            hits.append(Hit(next_k, rounds, nfe, xk))
            log.append(SrdsIteration(next_k, rounds, nfe, change))
            if change < tol or next_k == last:
                result = hits[-1]
                stopped_by = f"change {change:.3g} below tol {tol:g} at iteration {next_k}" if change < tol else f"{next_k} of {nb} iterations"
            next_k += 1
    coarse = outputs.get(0)
    return PeerResult(x=result.x, rounds=result.round, nfe=result.nfe, hits=tuple(hits), coarse=coarse, plan=None,
                      stopped_by=stopped_by, method="srds", sequential_rounds=sum(evals), width=width, log=tuple(log))
