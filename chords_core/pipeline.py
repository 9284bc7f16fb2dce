"""The CHORDS pipeline: K cores on one grid, driven round by round by the static ``Plan``.

Per round the engine gathers every active core's point, asks the executor for all model outputs at
once, converts them to the solver's quantity and applies the plan's updates in core order:

- fine step      F: ``solver.step`` (the same function the sequential ``solve`` uses);
- coarse jump    G(x, q; i -> j) = a x + b q  (``solver.jump_coeffs``), zero evaluations;
- rectification  x_j <- F(own) - G(own anchor; b -> j) + G(slower core at b; b -> j)
                      = F + a (x_slow - x_anchor) + b (q_slow - q_anchor)   (``rectify``).

Core 0 is never rectified, so its output is the sequential solution bit for bit. Multistep solvers
keep a per-core history of model quantities; at a rectification ``history`` decides what happens to
it: "shift" (default) adds the rectification's quantity correction q_slow - q_anchor to every
earlier quantity, so the divided differences stay consistent with the moved point; "keep" leaves
them; "restart" drops them (the next step is first order). "shift" keeps the parareal fixed point
(a core that agrees with its slower neighbour stays on it) and measured best (README table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from . import _backend as B
from .executors import BatchedExecutor, Executor
from .models import Model, ModelOutputError
from .plan import Plan, Round, default_init, make_plan, validate_init
from .sequential import check_grid, check_state
from .solvers import Solver, make_solver
from .stopping import StopAtCore, StopOnResidual, check_stop

__all__ = ["chords", "rectify", "Hit", "ChordsResult", "HISTORY_POLICIES"]

HISTORY_POLICIES = ("keep", "shift", "restart")


@dataclass(frozen=True)
class Hit:
    """A core's output: ``x`` after ``round`` rounds and ``nfe`` model evaluations in total."""

    core: int
    round: int
    nfe: int
    x: Any = field(repr=False)


@dataclass(frozen=True)
class ChordsResult:
    """The returned output ``x``, rounds and NFE until the stop, and every output in arrival order."""

    x: Any = field(repr=False)
    rounds: int
    nfe: int
    hits: tuple[Hit, ...]
    coarse: Any = field(repr=False)  # the coarse hit: chained jumps 0 -> t_1 -> ... -> t_{K-1} -> T
    plan: Plan = field(repr=False)
    stopped_by: str = ""

    @property
    def speedup(self) -> float:
        """Sequential rounds over rounds used: the latency speedup in model evaluations."""
        return self.plan.sequential_rounds / self.rounds

    @property
    def trace(self) -> tuple[Round, ...]:
        """Per round: who evaluated what, which rectifications fired, which cores finished."""
        return self.plan.rounds[: self.rounds]

    def diagram(self) -> str:
        return self.plan.diagram(self.rounds)


def rectify(fine: Any, anchor_x: Any, anchor_q: Any, slow_x: Any, slow_q: Any, a: float, b: float) -> Any:
    """F - G(anchor) + G(slow) for a jump G(x, q) = a x + b q: fine + a (slow_x - anchor_x) + b (slow_q - anchor_q).

    ``fine`` is updated in place where the dtypes allow (the engine owns it: a fresh fine step).
    """
    dx = slow_x - anchor_x
    if a != 1.0:
        dx *= a
    out = B.add_into(fine, dx)
    if b != 0.0:
        dq = slow_q - anchor_q
        dq *= b
        out = B.add_into(out, dq)
    return out


class _Cores:
    """The mutable per-core records of one run, updated round by round as the plan says.

    ``states[c]``: the core's solver State; ``anchor[c]``: (index b, point, quantity) of its anchor;
    ``slow[c]``: the slower core's (point, quantity) at b once evaluated; ``qs[c]``: the stage
    quantities of the step in progress; ``coarse``: the coarse hit.
    """

    def __init__(self, sol: Solver, x: Any, init: Sequence[int], history: str):
        K = len(init)
        self.sol, self.init, self.history = sol, init, history
        self.convert = sol.quantity_of if sol.converts else None
        self.states: list = [sol.begin(x)] + [None] * (K - 1)
        self.anchor: list = [None] + [(init[c], None, None) for c in range(1, K)]
        self.slow: list = [None] * K
        self.qs: list = [None] * K
        self.coarse = None

    def points(self, evs: tuple) -> list:
        """The point each evaluation of the round is at (stage 0: the state; later stages: the solver's)."""
        st, sol = self.states, self.sol
        return [st[e[0]].x if e[2] == 0 else sol.stage_point(st[e[0]], self.qs[e[0]], e[1], e[1] + 1, e[2])[0] for e in evs]

    def apply(self, evs: tuple, xs: list, outs: list) -> list[tuple[int, Any]]:
        """Take the round's model outputs: spawn, record, step, rectify. Returns the (core, output) hits, fastest first."""
        sol, init, K = self.sol, self.init, len(self.init)
        states, anchor, slow, qs = self.states, self.anchor, self.slow, self.qs
        shift = self.history == "shift"
        hits = []
        for (c, i, k, ti, spawn, record_for, completes, rect, hit), xe, out in zip(evs, xs, outs):
            q = out if self.convert is None else self.convert(xe, out, ti)
            if k == 0:
                qs[c] = [q]
                if c and anchor[c][0] == i:
                    anchor[c] = (i, xe, q)
                if record_for is not None:
                    slow[record_for] = (xe, q)
                if spawn:
                    if c + 1 < K:
                        xn = sol.jump(xe, q, init[c], init[c + 1])
                        states[c + 1] = sol.begin(xn)
                        anchor[c + 1] = (init[c + 1], xn, None)
                    else:
                        self.coarse = sol.jump(xe, q, init[c], sol.steps)
            else:
                qs[c].append(q)
            if completes:
                new = sol.step(states[c], qs[c], i, i + 1)
                if rect is not None:
                    _, xa, qa = anchor[c]
                    xsl, qsl = slow[c]
                    a, b = sol.jump_coeffs(rect, i + 1)
                    xn = rectify(new.x, xa, qa, xsl, qsl, a, b)
                    new = new.replace_x(xn, self.history, qsl - qa if shift and new.hist else None)
                    anchor[c], slow[c] = (i + 1, xn, None), None
                states[c] = new
                if hit:
                    hits.append((c, new.x))
        return sorted(hits, key=lambda h: -h[0])


def chords(
    model: Model,
    x: Any,
    grid,
    solver: "str | Solver" = "euler",
    *,
    cores: int | None = None,
    init: Sequence[int] | None = None,
    stop: "StopAtCore | StopOnResidual | None" = StopAtCore(1),
    executor: Executor | None = None,
    history: str = "shift",
    progress: bool = False,
    **solver_options,
) -> ChordsResult:
    """Solve from ``x`` at ``grid[0]`` with CHORDS on ``cores`` cores started at grid indices ``init``.

    ``init=None`` takes ``default_init(steps, cores)``; ``cores=None`` takes ``len(init)``.
    ``stop`` picks the output (see ``stopping``); ``executor`` evaluates each round (default:
    ``BatchedExecutor``, one batched call per round). Returns a ``ChordsResult``.
    """
    times = check_grid(grid)
    check_state(model, x)
    steps = len(times) - 1
    if cores is None and init is None:
        raise ValueError("give cores, init or both")
    if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
        raise ValueError(f"cores must be an integer >= 1, got {cores!r}")
    init = default_init(steps, cores) if init is None else validate_init(init, steps, cores)
    K = len(init)
    stop = check_stop(stop, K)
    if history not in HISTORY_POLICIES:
        raise ValueError(f"history must be one of {HISTORY_POLICIES}, got {history!r}")
    sol = make_solver(solver, model, times, **solver_options)
    plan = make_plan(steps, init, [sol.evals(i, i + 1) for i in range(steps)])
    limit = plan.stop_round(stop)
    executor = BatchedExecutor() if executor is None else executor
    cores_state = _Cores(sol, x, init, history)
    times_of = [[sol.t[e.time_index] for e in r.evals] for r in plan.rounds[:limit]]
    rounds = plan.rounds[:limit]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        rounds = bar = tqdm(rounds, desc=f"chords {sol.name} x{K}", unit="round")
    hits: list[Hit] = []
    result, stopped_by, nfe = None, "", 0
    try:
        for rd, evs, ts in zip(rounds, plan.round_tuples, times_of):
            xs = cores_state.points(evs)
            try:
                outs = executor(model, xs, ts)
            except ModelOutputError as err:
                c, i, k, ti = evs[err.point][:4]
                raise ModelOutputError(
                    err.point, f"round {rd.number}, core {c} (step {i}, stage {k}, t={sol.t[ti]:.6g}): {err}"
                ) from None
            nfe += len(evs)
            for c, xh in cores_state.apply(evs, xs, outs):  # cores finishing this round, fastest first
                hits.append(Hit(c, rd.number, nfe, xh))
                if result is None and isinstance(stop, StopOnResidual):
                    prev = hits[-2].x if len(hits) > 1 else cores_state.coarse
                    if B.rms(xh - prev) < stop.tol:
                        result, stopped_by = hits[-1], f"residual below {stop.tol:g} at core {c}"
            if result is not None:
                break
    finally:
        if bar is not None:
            bar.close()
    if result is None:
        if isinstance(stop, StopAtCore):
            result, stopped_by = hits[stop.n - 1], f"output {stop.n} (core {hits[stop.n - 1].core})"
        else:
            result = hits[-1]
            stopped_by = "all cores" if stop is None else f"residual never below {stop.tol:g}; core 0"
    return ChordsResult(result.x, result.round, plan.nfe(result.round), tuple(hits), cores_state.coarse, plan, stopped_by)
