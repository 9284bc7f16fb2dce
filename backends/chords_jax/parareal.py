"""``chords_jax.srds``: SRDS (``chords_core.srds``) compiled the way CHORDS is.

SRDS's schedule is static: which fine solves run in which round depends only on the block
boundaries, and every update (the fine steps F, the coarse jumps G, x^k = F + G^k - G^{k-1}) is a
linear combination of states. So the core's own pipeline (``srds_run``, the method without its
log) runs once on a symbolic state with the static stop ``RunAll`` up to the last iteration the
stop rule may need (``outputs_needed``), the recording is lowered to per-round arrays as for CHORDS
(``lower.py``; the rounds' varying widths, 1, 2, ..., B, ..., become segments) and the compiled
run is the one-call runner of ``run.py``. The stop rule then picks the iteration on the host, as
``srds_run`` does while it runs (``_pick``); the rounds after it are executed but not counted.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

import chords_core as cc
from chords_core.call import check_model
from chords_core.checks import check_float, check_grid, check_int
from chords_core.methods.srds import srds_blocks, srds_log, srds_run
from chords_core.models import ModelOutputError
from chords_core.results import Hit, Result
from chords_core.stopping import RunAll, StopOnResidual, StopRule, as_stop_rule, warn_unmet

from .api import _PROGRAMS, _PROGRAMS_SIZE, _as_state, _device_arrays, _model_key, _replicated
from .linear import LinearRecorder, Sym
from .lower import Program, lower
from .run import NO_BAD, make_mesh, runner

__all__ = ["srds", "compile_srds"]


def _replay(model: cc.Model, rec: LinearRecorder, times: np.ndarray, solver: Any, blocks: int, iterations: int,
            solver_options: dict) -> Result:
    """The core's SRDS pipeline on ``rec``'s symbolic state: all ``iterations`` iterations (no log)."""
    res, _ = srds_run(model, rec.x0, times, solver, blocks=blocks, max_iters=iterations, stop=RunAll(), executor=rec,
                      **solver_options)
    return res


def compile_srds(model: cc.Model, shape: tuple, dtype: Any, grid: Any, solver: str | cc.solvers.Solver = "euler", *,
                 blocks: int | None = None, iterations: int | None = None, slots_multiple: int = 1,
                 **solver_options: Any) -> tuple[Program, Result]:
    """Replay the core's SRDS symbolically for ``iterations`` iterations and lower it to the arrays of
    one compiled run. Cached per (model kind, shape, dtype, grid, solver and options, blocks,
    iterations, slots) when ``solver`` is a name.

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
    key = None
    if isinstance(solver, str):
        opts = tuple(sorted((k, repr(v)) for k, v in solver_options.items()))
        key = ("srds", _model_key(model), tuple(shape), str(dtype), times.tobytes(), solver, opts, nb, last,
               slots_multiple)
        got = _PROGRAMS.get(key)
        if got is not None:
            _PROGRAMS.move_to_end(key)
            return got
    rec = LinearRecorder(shape, dtype)
    res = _replay(model, rec, times, solver, nb, last, solver_options)
    slots = -(-res.width // slots_multiple) * slots_multiple
    prog = lower(rec, slots, [h.x for h in res.hits] + [res.coarse], float(times[0]), slots_multiple)
    if key is not None:
        _PROGRAMS[key] = (prog, res)
        while len(_PROGRAMS) > _PROGRAMS_SIZE:
            _PROGRAMS.popitem(last=False)
    return prog, res


def srds(
    model: cc.Model,
    x: Any,
    grid: Any,
    solver: str | cc.solvers.Solver = "euler",
    *,
    blocks: int | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    stop: StopRule | None = None,
    devices: Any = None,
    executor: None = None,
    progress: bool = False,
    args: Any = None,
    **solver_options: Any,
) -> Result:
    """SRDS as ``chords_core.srds``, compiled: same arguments, same ``Result`` (jax arrays).

    One compiled call runs every round up to the last iteration the stop rule may need (``max_iters``,
    default B, or fewer where the rule says so, ``outputs_needed``: ``StopAtCore(n)`` runs n
    iterations); the rule then picks the iteration on the host as the core does while it runs, so
    ``x``, ``rounds``, ``nfe``, ``hits``, ``coarse``, ``stopped_by``, ``width``, ``trace`` and
    ``log`` are the core's. Rounds after the chosen iteration are executed, not counted: to execute
    only what is returned, fix the iteration (``stop=StopAtCore(n)`` or ``max_iters=n``).

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` whose function is jax-traceable.
        x: the initial state (shape (B, ...) for a ``DiffusionModel``), floating.
        grid: the T + 1 times.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        blocks: the number of parareal blocks (1..T; default round(sqrt(T))).
        tol: shorthand for ``stop=StopOnResidual(tol)`` (default 1e-3), as in the core.
        max_iters: the most iterations (default and at most ``blocks``).
        stop: any stop rule over the iterations' outputs; not with ``tol``.
        devices: as for ``chords_jax.chords``: the slots (at most B per round) are sharded over it.
        executor: must be None (the compiled scan is the executor).
        progress: accepted and ignored.
        args: a pytree passed to the model function as a traced third argument, as for
            ``chords_jax.chords``: new values give new results without recompiling.
        solver_options: the solver's options.

    Returns:
        The core's ``Result`` (``method="srds"``), its arrays jax arrays of x's shape and dtype.
    """
    if executor is not None:
        raise ValueError("executor: chords_jax compiles the model evaluation itself; use devices= to shard it")
    mesh = make_mesh(devices)
    ndev = 1 if mesh is None else mesh.shape["cores"]
    check_model(model)  # the core's checks in the core's order, with its messages
    x = _as_state(x)
    times = check_grid(grid)
    model.check_times(times)
    if stop is not None and tol is not None:
        raise ValueError("give tol or stop, not both (tol is short for stop=StopOnResidual(tol))")
    if stop is not None:
        rule = as_stop_rule(stop)
    else:
        rule = StopOnResidual(1e-3 if tol is None else check_float("tol", tol, 0.0))
    nb = len(srds_blocks(len(times) - 1, blocks)) - 1
    last = rule.outputs_needed(nb if max_iters is None else check_int("max_iters", max_iters, 1, nb))
    prog, sym = compile_srds(model, x.shape, x.dtype, times, solver, blocks=nb, iterations=last, slots_multiple=ndev,
                             **solver_options)
    x, args = _replicated(mesh, x, args)
    check = bool(model.check_outputs)
    run = runner(model, mesh, check, with_args=args is not None)
    outs, bad = run(x, *_device_arrays(prog, x.size, x.dtype, mesh), args)
    # the core raises at the round of the first bad output, after offering the earlier outputs to the rule
    limit = _bad_round(int(bad), prog) if check else None
    vals = dict(zip(prog.outputs, outs))
    coarse = vals[sym.coarse.id]
    hits = [Hit(h.core, h.round, h.nfe, vals[h.x.id]) for h in sym.hits if limit is None or h.round < limit]
    picked = _pick(rule, hits, coarse, last, nb)
    if picked is None:  # the bad round came first
        assert limit is not None
        _raise_nonfinite(limit, int(bad), prog, model, sym, times, solver, nb, last, solver_options)
    n, stopped_by, unmet = picked
    if unmet:
        warn_unmet(rule, stopped_by)
    out = hits[n]
    trace = sym.trace[:out.round]
    return Result(x=out.x, rounds=out.round, nfe=out.nfe, hits=tuple(hits[:n + 1]), coarse=coarse,
                  stopped_by=stopped_by, method="srds", sequential_rounds=sym.sequential_rounds,
                  width=max(len(r.evals) for r in trace), trace=trace, log=srds_log(tuple(hits[:n + 1]), coarse))


def _pick(rule: StopRule, hits: list[Hit], coarse: Any, last: int, nb: int) -> tuple[int, str, bool] | None:
    """The stop rule replayed over the iterations' outputs as ``srds_run`` applies it while it runs:
    (index of the returned output, ``stopped_by``, whether to warn that the rule went unmet), or
    ``None`` if neither the rule nor ``last`` ended the run within ``hits``."""
    for n, h in enumerate(hits):
        k = h.core
        if rule.accept([g.x for g in hits[:n + 1]], coarse):
            return n, rule.describe(k, k, True), False
        if k == last:
            return n, rule.describe(k, k, False) + f" ({k} of {nb} iterations)", k < nb
    return None


def _bad_round(bad: int, prog: Program) -> int | None:
    """The round (1-based) of the run's first non-finite output (``bad`` from ``runner``), or ``None``."""
    return None if bad == NO_BAD else bad // max(s.width for s in prog.segments) + 1


class _Probe(LinearRecorder):
    """A recorder whose round ``round`` (1-based) fails at point ``point`` as a non-finite model output
    fails in the core: replayed, the method names the round's point in its own words."""

    def __init__(self, shape: tuple, dtype: Any, round: int, point: int) -> None:
        super().__init__(shape, dtype)
        self.round, self.point = round, point

    def __call__(self, model: cc.Model, xs: Any, ts: Any) -> list[Sym]:
        outs = super().__call__(model, xs, ts)
        if len(self.rounds) == self.round:
            raise ModelOutputError(self.point, "model returned non-finite values (nan or inf)")
        return outs


def _raise_nonfinite(round: int, bad: int, prog: Program, model: cc.Model, sym: Result, times: np.ndarray,
                     solver: Any, nb: int, last: int, solver_options: dict) -> NoReturn:
    """Raise the ``ModelOutputError`` the core raises for the first non-finite output (round ``round``,
    slot ``bad % slots``): the symbolic replay is run again, failing there, so that the core's
    pipeline names it (block, iteration, step, stage, time)."""
    slot = bad % max(s.width for s in prog.segments)
    probe = _Probe(sym.coarse.shape, sym.coarse.dtype, round, slot)
    _replay(model, probe, times, solver, nb, last, solver_options)
    raise AssertionError("the replay did not reach the bad output's round")  # pragma: no cover
