"""``chords_jax.srds``: SRDS (``chords_core.srds``) compiled the way CHORDS is.

SRDS's schedule is static: which fine solves run in which round depends only on the block
boundaries, and every update (the fine steps F, the coarse jumps G, x^k = F + G^k - G^{k-1}) is a
linear combination of states. So the core's own pipeline (``srds_run``, the method without its
log) runs once on a symbolic state with the static stop ``RunAll`` up to the last iteration the
stop rule may need (``outputs_needed``), the recording is lowered to per-round arrays as for CHORDS
(``lower.py``; the rounds' varying widths, 1, 2, ..., B, ..., become segments) and the compiled
run is ``run.py``'s. The stop rule picks the iteration on the host with the core's own replay
(``srds_stop``): a rule that decides on the outputs runs the program in chunks that end where
iterations' outputs arrive (CHORDS' chunked run, ``api._chunk_outputs``) and stops executing rounds
at the iteration it accepts; one whose choice is known before any value (``StopAtCore(n)``,
``RunAll()``, ``tol=0``) runs it as one compiled call.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

import chords_core as cc
from chords_core.call import check_model
from chords_core.checks import check_grid, check_int
from chords_core.methods.srds import (
    SRDS_STOP,
    srds_blocks,
    srds_first,
    srds_latest,
    srds_log,
    srds_rule,
    srds_run,
    srds_stop,
)
from chords_core.models import ModelOutputError
from chords_core.results import Hit, Result
from chords_core.solvers import bind_solver
from chords_core.stopping import RunAll, StopRule, outputs_needed, warn_unmet

from .api import (
    RuleValues,
    _as_state,
    _chunk_outputs,
    _chunk_plan,
    _mesh,
    _model_key,
    _one_call,
    _program,
    _run_once,
    inside_transformation,
    options_key,
    solver_key,
    unchecked,
)
from .linear import LinearRecorder, Sym
from .lower import Program, lower
from .multihost import call_parts, in_step, replicated, same_call
from .run import NO_BAD

__all__ = ["srds", "compile_srds"]


def _replay(model: cc.Model, rec: LinearRecorder, times: np.ndarray, solver: Any, blocks: int, iterations: int,
            solver_options: dict) -> Result:
    """The core's SRDS pipeline on ``rec``'s symbolic state: all ``iterations`` iterations (no log)."""
    replay, replay_solver = unchecked(model, solver)
    res, _ = srds_run(replay, rec.x0, times, replay_solver, blocks=blocks, max_iters=iterations, stop=RunAll(),
                      executor=rec, **solver_options)
    return res


def compile_srds(model: cc.Model, shape: tuple, dtype: Any, grid: Any, solver: str | cc.solvers.Solver = "euler", *,
                 blocks: int | None = None, iterations: int | None = None, slots_multiple: int = 1,
                 **solver_options: Any) -> tuple[Program, Result]:
    """Replay the core's SRDS symbolically for ``iterations`` iterations and lower it to the arrays of
    one compiled run. Cached per (model kind, shape, dtype, grid, solver and options, blocks,
    iterations, slots): a bound solver by identity (``solver_key``).

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` (only its parametrisation matters here).
        shape: the state's shape S.
        dtype: the state's dtype.
        grid: the T + 1 times.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        blocks: B (default round(sqrt(T)), as ``srds_blocks``).
        iterations: how many iterations to run (1..B, default B).
        slots_multiple: pad the slots to a multiple of this (the device count).
        solver_options: the solver's options.

    Returns:
        (program arrays, symbolic ``Result`` of ``srds_run``): its ``hits`` (every iteration up to
        ``iterations``) and ``coarse`` are ``Sym`` nodes, ``program.outputs`` maps their ids to
        buffer rows; ``trace`` holds every round of the program.
    """
    times = check_grid(grid)
    nb = len(srds_blocks(len(times) - 1, blocks)) - 1
    last = nb if iterations is None else check_int("iterations", iterations, 1, nb)
    key = ("srds", _model_key(model, times), tuple(shape), np.dtype(dtype), times.tobytes(), solver_key(solver),
           options_key(solver_options), nb, last, slots_multiple)  # (a bound solver by identity: ``solver_key``)

    def build() -> tuple[Program, Result]:
        rec = LinearRecorder(shape, dtype)
        res = _replay(model, rec, times, solver, nb, last, solver_options)
        return lower(rec, res.width, [h.x for h in res.hits] + [res.coarse], float(times[0]), slots_multiple), res

    return _program(key, build)


def srds(
    model: cc.Model,
    x: Any,
    grid: Any,
    solver: str | cc.solvers.Solver = "euler",
    *,
    blocks: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    stop: StopRule | None = SRDS_STOP,
    devices: Any = None,
    executor: None = None,
    progress: bool = False,
    args: Any = None,
    **solver_options: Any,
) -> Result:
    """SRDS as ``chords_core.srds``, compiled: same arguments, same ``Result`` (jax arrays).

    The program holds every round up to the last iteration the stop rule may need (``max_iters``,
    default B, or fewer where the rule says so, ``outputs_needed``: ``StopAtCore(n)`` runs n
    iterations). A rule whose choice is known before any value (``StopAtCore(n)``, ``RunAll()``,
    ``tol=0``) runs it as one compiled call; any other (the default ``StopOnResidual(1e-3)``) in
    chunks ending where iterations' outputs arrive, one small read-back per chunk, and stops
    executing rounds at the iteration it accepts. The rule picks as the core does while it runs
    (``srds_stop``), so ``x``, ``rounds``, ``nfe``, ``hits``, ``coarse``, ``stopped_by``,
    ``width``, ``trace`` and ``log`` are the core's.

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` whose function is jax-traceable.
        x: the initial state (shape (B, ...) for a ``DiffusionModel``), floating.
        grid: the T + 1 times.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        blocks: the number of parareal blocks (1..T; default round(sqrt(T))).
        tol: shorthand for ``stop=StopOnResidual(tol)``, as in the core.
        max_iters: the most iterations (default and at most ``blocks``).
        stop: any stop rule over the iterations' outputs; not with ``tol``; the default
            ``StopOnResidual(1e-3)``, ``None`` every iteration, as in the core.
        devices: as for ``chords_jax.chords``: the slots (at most B per round) are sharded over it.
        executor: must be None (the compiled scan is the executor).
        progress: accepted and ignored.
        args: a pytree passed to the model function as a traced third argument, as for
            ``chords_jax.chords``: new values give new results without recompiling.
        solver_options: the solver's options.

    It cannot run inside ``jax.jit``, ``vmap`` or ``grad`` (``TypeError``): its stop and its log read
    the iterations' outputs on the host.

    Returns:
        The core's ``Result`` (``method="srds"``), its arrays jax arrays of x's shape and dtype.
    """
    mesh, ndev = _mesh(executor, devices)
    check_model(model)  # the core's checks in the core's order, with its messages
    x = _as_state(x)
    inside_transformation(x, args, None, "chords_jax.srds")  # (TypeError: its log reads the outputs on the host)
    times = check_grid(grid)
    model.check_times(times)
    rule = srds_rule(tol, stop, model)
    nb = len(srds_blocks(len(times) - 1, blocks)) - 1
    last = outputs_needed(rule, nb if max_iters is None else check_int("max_iters", max_iters, 1, nb))
    prog, sym = compile_srds(model, x.shape, x.dtype, times, solver, blocks=nb, iterations=last, slots_multiple=ndev,
                             **solver_options)
    with in_step(mesh):  # (an interruption from here on leaves the processes out of step)
        same_call(mesh, lambda: {**call_parts(model, x, times, solver, args, solver_options, prog),
                                 "blocks, iterations": (nb, last), "stop": rule}, x, args)
        x, args = replicated(mesh, x, args)
        check = bool(model.check_outputs)

        def raise_bad(bad: int) -> None:
            """The core's ``ModelOutputError`` for the first non-finite output, if any (``bad`` from
            ``runner``): the core raises at its round, and every output offered to the rule so far
            came before it (one call: the returned output is the program's last)."""
            if bad != NO_BAD:
                _raise_nonfinite(bad, prog, model, sym, times, solver, nb, last, solver_options)

        first = srds_first(bind_solver(solver, model, times, **solver_options), nb)  # (model and times checked above)
        chunks = None if _one_call(rule) else _chunk_plan(prog, sym)
        read = RuleValues(rule, x)
        if chunks is None:  # a choice known before any value, or one chunk: one call
            outs, bad = _run_once(model, x, prog, mesh, check, args)
            if check:
                raise_bad(bad)
            vals = dict(zip(prog.outputs, outs))
            m = len(sym.hits)  # (the outputs formed: every one)
            stop_at = srds_stop(rule, *read.outputs(vals, sym, m), last, nb, first=first)
        else:
            n = 0  # the outputs before n were offered to the rule already
            for vals, m in _chunk_outputs(model, x, prog, chunks, mesh, check, args, raise_bad):
                stop_at = srds_stop(rule, *read.outputs(vals, sym, m), last, nb, start=n, first=first)
                if stop_at is not None:
                    break
                n = m
        assert stop_at is not None  # the program ends at iteration ``last``
        n, stopped_by, unmet = stop_at
        if unmet:
            warn_unmet(rule, stopped_by)
        chosen, stopped_by = srds_latest(rule, [h.round for h in sym.hits[:m]], n, last, stopped_by)
        hits = tuple(Hit(h.core, h.round, h.nfe, vals[h.x.id]) for h in sym.hits[:chosen + 1])
        coarse = vals[sym.coarse.id]
        trace = sym.trace[:hits[-1].round]
        return Result(x=hits[-1].x, rounds=hits[-1].round, nfe=hits[-1].nfe, hits=hits, coarse=coarse,
                      stopped_by=stopped_by, method="srds", sequential_rounds=sym.sequential_rounds,
                      width=max(len(r.evals) for r in trace), trace=trace, log=srds_log(hits, coarse))


class _Probe(LinearRecorder):
    """A recorder whose round ``round`` (1-based) fails at point ``point`` as a non-finite model output
    fails in the core: replayed, the method names the round's point in its own words."""

    def __init__(self, shape: tuple, dtype: Any, round: int, point: int) -> None:
        super().__init__(shape, dtype)
        self.round, self.point = round, point

    def __call__(self, model: cc.Model, xs: Any, ts: Any) -> list[Sym]:
        outs = super().__call__(model, xs, ts)
        if len(self.rounds) == self.round:
            raise ModelOutputError.nonfinite(self.point)
        return outs


def _raise_nonfinite(bad: int, prog: Program, model: cc.Model, sym: Result, times: np.ndarray, solver: Any,
                     nb: int, last: int, solver_options: dict) -> NoReturn:
    """Raise the ``ModelOutputError`` the core raises for the run's first non-finite output (``bad``
    from ``runner``: round ``bad // slots``, 0-based, and slot ``bad % slots``): the symbolic replay
    is run again, failing there, so that the core's pipeline names it (block, iteration, step,
    stage, time)."""
    r, slot = divmod(bad, prog.width)
    probe = _Probe(sym.coarse.shape, sym.coarse.dtype, r + 1, slot)
    _replay(model, probe, times, solver, nb, last, solver_options)
    raise AssertionError("the replay did not reach the bad output's round")  # pragma: no cover
