"""CHORDS (ICCV 2025): a hierarchy of cores started along the grid by coarse jumps, each rectified
by its slower neighbour; see ``engine`` for the update and ``plan`` for the schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..call import begin, warn_caller
from ..checks import check_int
from ..engine import run_plan
from ..executors import Executor
from ..history import check_history
from ..host import host_route
from ..inits import crowded, default_init, validate_init
from ..models import Model
from ..plan import make_plan
from ..results import Result
from ..solvers import Solver
from ..stopping import DEFAULT_STOP, StopRule, as_stop_rule

__all__ = ["chords"]


@host_route
def chords(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    cores: int | None = None,
    init: Sequence[int] | None = None,
    stop: StopRule | None = DEFAULT_STOP,
    executor: Executor | None = None,
    history: str = "shift",
    progress: bool = False,
    **solver_options: Any,
) -> Result:
    """Solve from ``x`` at ``grid[0]`` to ``grid[-1]`` with CHORDS.

    Args:
        model: a ``DiffusionModel`` or ``VectorField``.
        x: the initial state (numpy, torch or jax array; a ``DiffusionModel`` needs shape (B, ...)).
        grid: the T + 1 times (e.g. from ``time_grid``).
        solver: a name from ``SOLVERS`` (its options as keyword arguments) or a bound ``Solver``.
        cores: K, the number of cores; ``None`` takes ``len(init)``.
        init: the cores' start indices; ``None`` takes ``default_init(T, cores)``.
        stop: the stop rule (``stopping``). The default, ``StopWhenConverged(0.1)``, returns the first
            output within 0.1 x the estimated error of the sequential solver of the previous one:
            no worse than the sequential solver on problems it was not tuned on, at the cost of
            waiting for the next output to confirm one. ``StopAtCore(n)`` returns the n-th output
            (n = 1: the fastest core, the paper's fixed schedule, unchecked), ``StopOnResidual(tol)``
            the first output within ``tol`` of the previous one, ``None`` runs every core and
            returns core 0's (the sequential solution, bit for bit).
        executor: evaluates each round (default ``BatchedExecutor``: batched calls, one a round up to its
            ``max_batch_bytes``).
        history: what a rectification does to a multistep solver's history (``history``).
        progress: show a progress bar over rounds (needs tqdm).

    Returns:
        A ``Result`` with the output, rounds, NFE, every output in arrival order and the plan. A
        faster core whose model output is not finite (a far coarse start that ran off, on a plain
        ODE) is retired with the cores faster than it and the run goes on with the slower ones
        (``engine.Survivors``; ``stopped_by`` and a ``RuntimeWarning`` name it); ``trace`` then holds
        the rounds as they ran.

    Raises:
        ModelOutputError: a bad model output (wrong type, shape or dtype; nan or inf in core 0's),
            naming the round, core, step, stage and time.
    """
    call = begin(model, x, grid, solver, executor, solver_options)
    defaulted = False
    if cores is not None:
        cores = check_int("cores", cores, 1)
    if init is not None:
        init = validate_init(init, call.steps, cores)
    elif cores is None:
        raise ValueError("give cores, init or both")
    else:
        init = default_init(call.steps, cores)
        defaulted = True
    rule = as_stop_rule(stop)
    # (not where every core runs: stop=None, or a tolerance of 0, takes T rounds whatever the cores; a
    # duck-typed rule, which as_stop_rule takes, may lack never_accepts)
    if defaulted and not getattr(rule, "never_accepts", False) and (why := crowded(call.steps, len(init))) is not None:
        warn_caller(f"chords: {why}", UserWarning)
    history = check_history(history)
    plan = make_plan(call.steps, init, call.evals)
    return run_plan(call.model, x, call.solver, plan, rule, call.executor, history, progress)
