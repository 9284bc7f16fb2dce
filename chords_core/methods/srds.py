"""SRDS (Selvam et al. 2024): parareal over ``blocks`` blocks of grid indices n_0 = 0 < ... < n_B = T.
The coarse propagator G_i(x) is the solver's one-step ``jump`` across block i from one evaluation at
x; the fine one F_i is the solver's own steps across the block. With iterates x_i^k:

    x_{i+1}^0 = G_i(x_i^0),   x_{i+1}^k = F_i(x_i^{k-1}) + G_i(x_i^k) - G_i(x_i^{k-1}),

and x_i^k = x_i^{i} (exact) for i <= k. Pipelined: block i's fine solve of iteration k starts as
soon as x_i^k exists, and its first evaluation is also the one G_i(x_i^k) needs, so a round
evaluates every running fine solve at once (``width`` in the result is the most evaluations of any
round: the cores it needs). The output of iteration k is x_B^k; the stop rule picks one (default
``StopOnResidual(tol)``: rms(x_B^k - x_B^{k-1}) < tol in every sample, with x_B^0 the coarse prediction), at the
latest after B iterations, where x_B^B is the sequential solution bit for bit; of the outputs formed
in the accepted one's round the last is returned (``srds_latest``: no round is lost, and a later
iteration is closer to x_B^B). A fine solve starting
at a point carries the multistep history of the fine solve that produced that point ("keep"); solves
from coarse points start fresh (warm-up order).

``srds_run`` is the method without its ``log``: between model calls it forms linear combinations of
states only, so the compiled JAX path (``chords_jax.srds``) replays it on symbolic states;
``srds_log`` forms the log from the outputs afterwards, and ``srds_stop`` (the rule applied to the
iterations' outputs) is the stop of both.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..call import begin
from ..checks import check_float, check_int
from ..engine import evaluate_round
from ..executors import Executor
from ..history import move
from ..host import host_route
from ..models import Model
from ..plan import Eval, Round
from ..progress import progress_bar
from ..results import Hit, Result
from ..solvers import Solver
from ..stopping import (
    StopOnResidual,
    StopRule,
    as_stop_rule,
    described,
    first_accepted,
    library_rule,
    outputs_needed,
    residual,
    warn_unmet,
)
from .window import absolute_tol

__all__ = ["srds", "srds_run", "srds_log", "srds_rule", "srds_stop", "srds_first", "srds_latest", "srds_blocks",
           "SrdsIteration", "SRDS_STOP"]

#: SRDS' default stop rule: the first iteration whose final sample moved by an RMS below 1e-3 (the
#: paper's rule, early stopping on the final sample's change; the threshold is this library's).
#: ``stop=None`` runs every iteration, as ``chords``' ``stop=None`` runs every core. Not one of the
#: library's safe defaults: a final sample can move little while the iterate is far from the
#: sequential one (``benchmarks/single_gaussian.py``: 7 of 2,640 runs above 1.05x the sequential
#: error, up to 1.30x; 29, up to 6.4x, before ``srds_first`` kept a multistep solver's iteration 1 from
#: it), the threshold does not shrink on long grids (a user trial: 7.7x at 1,000 steps, 16 blocks),
#: and where the coarse jump across a block is 0 (Euler across a block of length 1 on dy/dt = -y)
#: iterations 0 and 1 end alike and any tolerance accepts the coarse prediction.
SRDS_STOP = StopOnResidual(1e-3)


def srds_blocks(steps: int, blocks: int | None = None) -> tuple[int, ...]:
    """Block boundaries 0 = n_0 < ... < n_B = steps, as even as possible; ``blocks=None``: round(sqrt(steps))."""
    steps = check_int("steps", steps, 1)
    blocks = max(1, round(math.sqrt(steps))) if blocks is None else check_int("blocks", blocks, 1, steps)
    return tuple(int(v) for v in np.round(np.linspace(0, steps, blocks + 1)))


class _Fine:
    """A fine solve over block ``i`` started at iterate k's point: one evaluation (stage) per round, on
    ``lane`` (the trace's ``Eval.core``: the device it keeps from start to end)."""

    __slots__ = ("i", "k", "state", "m", "end", "qs", "lane")

    def __init__(self, i, k, state, start, end, lane):
        self.i, self.k, self.state, self.m, self.end, self.qs, self.lane = i, k, state, start, end, [], lane


class SrdsIteration(NamedTuple):
    """Iteration k's output x_B^k: the round it formed, NFE so far and its change from x_B^{k-1} (the
    largest of the samples' RMS changes, as the default stop, ``StopOnResidual`` with its default norm,
    judges it: ``stopping.residual``; ``inf`` for an empty batch)."""

    iteration: int
    round: int
    nfe: int
    change: float


@host_route
def srds(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    blocks: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    stop: StopRule | None = SRDS_STOP,
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """SRDS: pipelined parareal over ``blocks`` blocks (default round(sqrt(T))); see the module doc.

    Args:
        model, x, grid, solver, executor, solver_options: as for ``chords``.
        blocks: B, the number of parareal blocks (1..T).
        tol: shorthand for ``stop=StopOnResidual(tol)``: stop at the first iteration whose final
            sample moved by an RMS below ``tol``, in every sample of the batch; ``tol=0`` runs every iteration.
        max_iters: the most iterations (default and at most ``blocks``, after which the output is
            the sequential solution).
        stop: any stop rule over the iterations' outputs (``stopping``); not with ``tol``. The
            default, ``SRDS_STOP``, is ``StopOnResidual(1e-3)``; ``None`` runs every iteration (the
            last is the sequential solution), as ``chords``' ``stop=None`` runs every core.
        progress: show a progress bar over iterations (needs tqdm).

    Returns:
        A ``Result`` (``method="srds"``): ``hits`` holds the iterations' outputs up to the returned
        one, ``log`` an ``SrdsIteration`` per output.
    """
    res, unmet = srds_run(model, x, grid, solver, blocks=blocks, tol=tol, max_iters=max_iters, stop=stop,
                          executor=executor, progress=progress, **solver_options)
    if unmet is not None:  # warned here, so that the warning names the caller's line
        warn_unmet(unmet, res.stopped_by)
    return dataclasses.replace(res, log=srds_log(res.hits, res.coarse))


def srds_log(hits: tuple[Hit, ...], coarse: Any) -> tuple[SrdsIteration, ...]:
    """``srds``' log: per iteration's output (``hits``, iterations 1, 2, ... in order) its round, NFE
    and change from the previous output (the first from ``coarse``, the iteration-0 output): the
    largest of the samples' RMS changes (``stopping.residual``; ``inf`` for an empty batch)."""
    prev = [coarse] + [h.x for h in hits[:-1]]
    return tuple(SrdsIteration(h.core, h.round, h.nfe, residual(h.x - p)) for h, p in zip(hits, prev))


def srds_rule(tol: float | None, stop: StopRule | None, model: Any = None) -> StopRule:
    """SRDS' stop rule from its ``tol`` / ``stop`` arguments: ``StopOnResidual(tol)`` where ``tol`` is
    given (``stop`` then left at its default, ``SRDS_STOP``), else ``stop`` (``None``: ``RunAll()``,
    every iteration). The default's residual is absolute, in the state's units, as the other peers'
    tolerances: a ``UserWarning`` when ``model`` is given and is not a ``DiffusionModel``
    (``absolute_tol``; a damped linear ODE started at 1e-4 returned 1,500x the solution's size)."""
    if tol is None:
        if stop is SRDS_STOP and model is not None:
            absolute_tol(SRDS_STOP.tol, model, "srds")
        rule = as_stop_rule(stop)
        if getattr(rule, "uses_error_estimate", False):  # (it would run every iteration, whatever its level)
            raise ValueError(f"stop: {type(rule).__name__} reads the estimated sequential error, which SRDS does not "
                             "compute, so it would never accept; use StopOnResidual(tol) (or tol=)")
        return rule
    if stop is not SRDS_STOP:
        raise ValueError("give tol or stop, not both (tol is short for stop=StopOnResidual(tol))")
    return StopOnResidual(check_float("tol", tol, 0.0))


def srds_first(sol: Solver, blocks: int) -> int:
    """The index of the first output SRDS' stop rule is offered: 1 for a multistep solver on two
    blocks or more, else 0. Iteration 1's fine solves start from coarse points, and a multistep
    solver's start fresh there, at first order: its output is the solver restarted at every block
    boundary, not the multistep solution, and its change from the coarse prediction says little of
    how far it is from that. Where every block is one step it *is* the coarse prediction (bit for
    bit, or to rounding for UniPC; at cores = steps the default rule returned it, 12% off, in
    diffusers with DPM-Solver++ and UniPC); with longer blocks it was accepted 6.4x the sequential
    error away (``benchmarks/single_gaussian.py``: 22 of SRDS' 29 misses in 2,640 runs at iteration
    1, UniPC and DPM-Solver++ on blocks of 1-2 steps; offered from iteration 2 on, 7 misses, worst
    1.30x, in 0.845 of the sequential rounds against 0.844). A one-step solver's iteration 1 is
    exact up to block 1 and the same solver after it."""
    return 1 if sol.history_size and blocks > 1 else 0


def srds_stop(rule: StopRule, outputs: Sequence[Any], coarse: Any, last: int, blocks: int,
              start: int = 0, first: int = 0) -> tuple[int, str, bool] | None:
    """SRDS' stop: ``rule`` applied to the iterations' outputs as they form (``outputs[n]``, iteration
    n + 1's, given the outputs up to it and ``coarse``, iteration 0's; those before ``start`` were
    offered already, and to a rule that decides on their values none before ``first``,
    ``srds_first``; at most ``last``). The run ends at the
    first output the rule accepts, or else at iteration ``last`` (the rule's ``outputs_needed`` of
    ``max_iters``), "(k of B iterations)".
    The one home of this replay: ``srds_run`` calls it as each output forms, ``chords_jax.srds``
    after each chunk of its compiled run.

    Returns:
        (index of the returned output, its ``stopped_by``, whether the rule went unmet short of the
        sequential solution, ``last`` < ``blocks``, for ``warn_unmet``), or ``None``: run on.
    """
    if getattr(rule, "decides_on_values", True):  # (a rule choosing by arrival, StopAtCore(1), is not judging)
        start = max(start, first)
    n = first_accepted(rule, outputs, coarse, start=start)
    if n is not None:
        return n, _iterations(rule, described(rule, n + 1, n + 1, True)), False
    if len(outputs) < last:
        return None
    text = _iterations(rule, described(rule, last, last, False)) + f" ({last} of {blocks} iterations)"
    if start >= last:  # (max_iters=1 with a multistep solver: the rule was offered nothing, a review)
        text += ("; none judged: iteration 1 of a multistep solver on several blocks, restarted at every block, is "
                 "not offered to the rule (srds_first)")
    return last - 1, text, last < blocks


def srds_latest(rule: StopRule, rounds: Sequence[int], n: int, last: int, stopped_by: str) -> tuple[int, str]:
    """The output SRDS returns where ``rule`` accepted output ``n`` (``srds_stop``, whose
    ``stopped_by`` is given), given the rounds in which the outputs known so far formed
    (``rounds[k]``, output k's, in iteration order): the last formed in output n's round (at most
    output ``last`` - 1), where the rule decides on the outputs' values; ``n`` for a rule that picks
    by arrival (``StopAtCore``). It costs no round, and later iterations are closer to the sequential
    solution (iteration B is it, bit for bit): a user trial's default run (EDM, DPM-Solver++(2M),
    8 steps, 7 blocks) accepted iteration 1, whose change from the coarse prediction says nothing
    where fine solves from coarse points start fresh, in round 8, the sequential count, with
    iteration 7 (the sequential solution) formed in the same round: 1.52x the sequential solver's
    error for no round saved. The one home of this choice: ``srds_run`` and ``chords_jax.srds``
    call it.

    Returns:
        (index of the returned output, its ``stopped_by``).
    """
    m = n
    if getattr(rule, "decides_on_values", True):
        while m + 1 < min(len(rounds), last) and rounds[m + 1] == rounds[n]:
            m += 1
    return m, stopped_by if m == n else f"{stopped_by}; iteration {m + 1}, formed in the same round, returned"


def _iterations(rule: StopRule, text: str) -> str:
    """A library rule's description with its outputs' source named as SRDS' iterations: the rules say
    "core k" (CHORDS' cores), and the SRDS output k is iteration k's ("residual below 0.001 at core 3").
    A rule of one's own says what it says (its ``describe`` is the ``stopped_by`` text: an extension
    trial's "core" became "iteration"); its ``core`` argument is the iteration under SRDS."""
    if not library_rule(rule):
        return text
    return re.sub(r"\bcore (\d+)", r"iteration \1", text)


def srds_run(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    blocks: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    stop: StopRule | None = SRDS_STOP,
    executor: Executor | None = None,
    progress: bool = False,
    **solver_options: Any,
) -> tuple[Result, StopRule | None]:
    """``srds`` without its ``log`` (empty) and its ``StopNotMet`` warning: the same arguments,
    rounds, outputs and stop. Between model calls it only forms linear combinations of states (and
    the stop rule reads the outputs), so with a rule that does not read them (``RunAll``) it runs on
    symbolic states too.

    Returns:
        (the ``Result``, the stop rule if it accepted no output before ``max_iters`` cut the run
        short, for ``warn_unmet``, else ``None``).
    """
    call = begin(model, x, grid, solver, executor, solver_options)
    sol, evals, executor, model = call.solver, call.evals, call.executor, call.model
    rule = srds_rule(tol, stop, model)
    n = srds_blocks(sol.steps, blocks)
    nb = len(n) - 1
    last = nb if max_iters is None else check_int("max_iters", max_iters, 1, nb)
    last = outputs_needed(rule, last)
    first = srds_first(sol, nb)
    t = sol.t
    # Memory: a state is kept only while a point still to form needs it, so a run holds O(B) states
    # (the running solves, the outputs, and G and F of the points about to form).
    formed: set = set()  # (i, k) of the points x_i^k formed so far (i >= 1)
    G: dict = {}  # (i, k) -> G_i(x_i^k), until x_{i+1}^k and x_{i+1}^{k+1} are formed
    F: dict = {}  # (i, k) -> end State of the fine solve from x_i^k, until x_{i+1}^{k+1} is formed
    running: list[_Fine] = []
    # the lanes no running solve holds: those freed (a heap) and every one from ``fresh`` on
    freed: list[int] = []
    fresh = 0

    def start(i, k, xk, st):
        nonlocal fresh
        state = sol.begin(xk) if st is None else move(st, xk)
        # the lowest lane no running solve holds: a solve keeps its lane (the position in the round's list
        # put one block's steps on other lanes from round to round, in the trace and its diagram); from a
        # heap (a scan of the running solves at each start made a round O(B^2): 83 us an evaluation at
        # 2,000 blocks against 10 at 64, a user trial)
        if freed:
            lane = heapq.heappop(freed)
        else:
            lane, fresh = fresh, fresh + 1
        running.append(_Fine(i, k, state, n[i], n[i + 1], lane))

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

    def release(i1, k):
        """Drop what only x_{i1}^k (just formed) still needed: F_i(x_i^{k-1}), and G_i of the
        iterates whose successors are formed (x_{i1}^j, and x_{i1}^{j+1} unless it is exact, j + 1 >= i1)."""
        i = i1 - 1
        F.pop((i, k - 1), None)
        for j in (k - 1, k):
            if (i, j) in G and (i1, j) in formed and ((i1, j + 1) in formed or j + 1 >= i1):
                del G[(i, j)]

    def form_ready(candidates: set) -> None:
        """Form every point of ``candidates`` whose inputs exist, starting the fine solves they feed, in
        iteration order, then block order. Only a new G or F can make a point formable (G_i(x_i^k):
        x_{i+1}^k; F_i(x_i^k): x_{i+1}^{k+1}), and forming one starts a solve that adds neither before
        the next round, so the round's new values name every candidate: O(new values) a round, not
        a scan of all B^2 points."""
        for i1, k in sorted(candidates, key=lambda p: (p[1], p[0])):
            if not max(k, 1) <= i1 <= nb or (i1, k) in formed or (p := form(i1, k)) is None:
                continue
            formed.add((i1, k))
            release(i1, k)
            if i1 < nb:
                start(i1, k, *p)
            else:
                outputs[k] = p[0]

    outputs: dict = {}  # k -> x_B^k
    start(0, 0, x, None)
    hits: list[Hit] = []
    trace, next_k = [], 1
    rounds = nfe = width = 0
    result: Hit | None = None
    unmet: StopRule | None = None
    stopped_by = ""

    def where(p: int, batch: list) -> str:
        c, _, j = batch[p]
        return f"block {c.i} of iteration {c.k} (step {c.m}, stage {len(c.qs)}, t={t[j]:.6g})"

    with progress_bar(progress, last, f"srds {sol.name} B{nb}", "iteration") as bar:
        while result is None:
            batch = [(c, *((c.state.x, c.m) if not c.qs
                           else sol.staged(c.state, c.qs, c.m, c.m + 1, len(c.qs)))) for c in running]
            rounds += 1
            outs = evaluate_round(executor, model, [p for _, p, _ in batch], [t[j] for _, _, j in batch], rounds,
                                  where, batch)
            nfe, width = nfe + len(batch), max(width, len(batch))
            trace.append(Round(rounds, tuple(Eval(c.lane, c.m, len(c.qs), j) for c, _, j in batch)))
            candidates = set()  # the points the round's new G and F may complete
            for (c, xp, j), out in zip(batch, outs):
                q = sol.quantity_of(xp, out, j)
                if not c.qs and c.m == n[c.i]:  # the solve's first evaluation is also G_i's
                    G[(c.i, c.k)] = sol.jump(xp, q, n[c.i], n[c.i + 1])
                    candidates.add((c.i + 1, c.k))
                c.qs.append(q)
                if len(c.qs) == evals[c.m]:
                    c.state, c.qs = sol.step(c.state, c.qs, c.m, c.m + 1), []
                    c.m += 1
                    if c.m == c.end:
                        F[(c.i, c.k)] = c.state
                        candidates.add((c.i + 1, c.k + 1))
            going = []
            for c in running:
                if c.m < c.end:
                    going.append(c)
                else:
                    heapq.heappush(freed, c.lane)
            running = going
            form_ready(candidates)
            accepted, shown = None, len(hits)
            while next_k in outputs and next_k <= last:  # outputs form in iteration order
                hits.append(Hit(next_k, rounds, nfe, outputs[next_k]))
                if accepted is None:
                    accepted = srds_stop(rule, [h.x for h in hits], outputs[0], last, nb, start=next_k - 1,
                                         first=first)
                next_k += 1
            if accepted is not None:
                chosen, stopped_by = srds_latest(rule, [h.round for h in hits], accepted[0], last, accepted[1])
                del hits[chosen + 1:]  # (the outputs of later rounds: none; past the returned one: dropped)
                result = hits[chosen]
                unmet = rule if accepted[2] else None
            bar.update(len(hits) - shown)  # (the iterations kept: not those past the returned one)
    return Result(x=result.x, rounds=result.round, nfe=result.nfe, hits=tuple(hits), coarse=outputs.get(0),
                  stopped_by=stopped_by, method="srds", sequential_rounds=sum(evals), width=width,
                  trace=tuple(trace)), unmet
