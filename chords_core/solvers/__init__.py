"""Solver registry: ``make_solver(name, model, times, **options)``.

=============  ========================================  ==========  ===============
name           method                                    evals/step  order
=============  ========================================  ==========  ===============
"euler"        explicit Euler on dx/dt = f               1           1
"heun"         Heun (trapezoid) on dx/dt = f             2           2
"ddim"         DPM-Solver++(1) = DDIM, data prediction   1           1
"dpmpp_2m"     DPM-Solver++(2M), midpoint                1           2
"dpmpp_3m"     DPM-Solver++(3M), the reference formula   1           2 (see dpmpp)
"unipc"        UniPC-p (UniP + UniC), default p = 2       1           p + 1
"unip"         UniP-p predictor only                     1           p
=============  ========================================  ==========  ===============

``unipc``/``unip`` take ``order`` (1-3), ``variant`` ("bh1", "bh2") and ``lower_order_final``, ``unipc``
also ``corrector`` (``False``: UniP); the DPM-Solver++ family takes ``lower_order_final``. Euler and Heun work on any
model; the others need a ``DiffusionModel``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import check_grid
from ..models import DiffusionModel, Model, check_model
from .base import DataSolver, Solver, State
from .dpmpp import DPMSolverPP
from .explicit import Euler, Heun
from .unipc import UniPC

__all__ = [
    "make_solver", "register_solver", "SolverSpec", "SOLVERS", "declared_option", "build_parameters", "Solver",
    "velocity_solvers",
    "DataSolver", "State", "Euler", "Heun", "DPMSolverPP", "UniPC",
]


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver: how to bind it and what it costs.

    Attributes:
        build: ``build(model, times, **options) -> Solver`` binds the solver to a model and a grid.
        stages: model evaluations per step (before a final step to sigma = 0).
        order: its convergence order with the default options; ``make_solver`` checks that the
            bound solver's ``accuracy`` (its class's ``order`` unless it says otherwise) agrees, or
            ``estimate_order`` where given.
        summary: a one-line description.
        needs_diffusion_model: it uses the data prediction (not for a plain ``VectorField``).
        options: the option names ``build`` takes; ``make_solver`` refuses any other, naming it
            (``None``: not declared, ``build``'s own ``TypeError`` says).
        estimate_order: the order its local-error estimates use where that is not ``order``
            (``dpmpp_3m``: 3, see ``chords_core.solvers.dpmpp``); ``None``: ``order``.
    """

    build: Callable[..., Solver]
    stages: int
    order: int
    summary: str
    needs_diffusion_model: bool = False
    options: tuple[str, ...] | None = None
    estimate_order: int | None = None

    def option_names(self) -> tuple[str, ...]:
        """The options it takes: ``options`` where declared, else those its ``build`` names
        (``build_parameters``)."""
        return self.options if self.options is not None else build_parameters(self.build)

    def takes(self) -> str:
        """The options it takes, as errors say it ("its options: a, b" or "it takes none")."""
        return f"its options: {', '.join(self.options)}" if self.options else "it takes none"


def declared_option(solver: Any, key: str) -> bool:
    """Whether ``solver``, a name in ``SOLVERS`` whose spec lists its options, declares ``key``: then
    it is the solver's, also where another method lists it in ``Method.options`` (an option named
    as a method's keyword argument, which that method would take, is refused at registration)."""
    spec = SOLVERS.get(solver) if isinstance(solver, str) else None
    return spec is not None and spec.options is not None and key in spec.options


SOLVERS: dict[str, SolverSpec] = {
    "euler": SolverSpec(lambda m, t, **o: Euler(m, t, **o), 1, 1, "explicit Euler on dx/dt = f", options=()),
    "heun": SolverSpec(lambda m, t, **o: Heun(m, t, **o), 2, 2, "Heun (trapezoid) on dx/dt = f", options=()),
    "ddim": SolverSpec(lambda m, t, **o: DPMSolverPP(m, t, order=1, **o), 1, 1, "DPM-Solver++(1) = DDIM", True,
                       ("lower_order_final",)),
    "dpmpp_2m": SolverSpec(lambda m, t, **o: DPMSolverPP(m, t, order=2, **o), 1, 2, "DPM-Solver++(2M)", True,
                           ("lower_order_final",)),
    "dpmpp_3m": SolverSpec(lambda m, t, **o: DPMSolverPP(m, t, order=3, **o), 1, 2, "DPM-Solver++(3M)", True,
                           ("lower_order_final",), estimate_order=3),
    "unipc": SolverSpec(lambda m, t, **o: UniPC(m, t, **{"order": 2, "corrector": True, **o}), 1, 3,
                        "UniPC-2 (UniP + UniC)", True, ("order", "variant", "corrector", "lower_order_final")),
    "unip": SolverSpec(lambda m, t, **o: UniPC(m, t, **{"order": 2, **o, "corrector": False}), 1, 2,
                       "UniP-2, predictor only", True, ("order", "variant", "lower_order_final")),
}


#: checks ``register_solver`` runs on each option a spec declares, ``check(name, option)`` raising
#: ``ValueError``: ``methods`` adds one refusing an option named as a method's argument (which the
#: method would take from the solver), without an import of the methods here
OPTION_CHECKS: list[Callable[[str, str], None]] = []


def register_solver(name: str, spec: SolverSpec, *, replace: bool = False) -> SolverSpec:
    """Add a solver to ``SOLVERS`` under ``name``.

    Args:
        name: the name ``make_solver`` (and every method's ``solver=``) accepts.
        spec: the ``SolverSpec``.
        replace: overwrite an existing entry (``ValueError`` otherwise).

    Returns:
        ``spec``.
    """
    if not isinstance(spec, SolverSpec):
        raise TypeError(f"spec must be a SolverSpec, got {type(spec).__name__}")
    if not isinstance(name, str) or not name:  # (None broke every later unknown-solver message's sorting)
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if name in SOLVERS and not replace:
        raise ValueError(f"solver {name!r} is already registered (pass replace=True to overwrite it)")
    if not callable(spec.build):  # (an instance registered as build failed at every use, naming no solver)
        raise TypeError(f"solver {name!r}: its SolverSpec's build must be callable, build(model, times, **options) "
                        f"-> Solver (a Solver class, say), got a {type(spec.build).__name__}")
    opts = spec.options
    if opts is not None and (not isinstance(opts, (tuple, list)) or not all(isinstance(o, str) for o in opts)):
        # (("tol") is a str: read letter by letter, and "tol" in it matched as a substring)
        raise TypeError(f"solver {name!r}: options must be a tuple of option names or None, got {opts!r}")
    for check in OPTION_CHECKS:
        for key in spec.option_names():
            check(name, key)
    SOLVERS[name] = spec
    return spec


def velocity_solvers() -> list[str]:
    """The registered solvers that a plain ODE (a ``VectorField``) takes: those not needing the data
    prediction (``SolverSpec.needs_diffusion_model``), sorted; the built-in ones and one's own."""
    return sorted(name for name, spec in SOLVERS.items() if not spec.needs_diffusion_model)


def build_parameters(build: Callable[..., Any]) -> tuple[str, ...]:
    """The options a spec's ``build`` names in its signature (after ``model`` and ``times``), where the
    spec declares none: a ``build(model, times, tol=...)`` registered without ``options=`` had its
    option taken by every method with a ``tol`` of its own, the solver built with its default,
    silently (a user trial: 1.5e-3 off ``solve``). Empty where the signature cannot be read, or names
    no option (``**options`` alone)."""
    try:
        params = list(inspect.signature(build).parameters.values())
    except (TypeError, ValueError):
        return ()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    skipped = {p.name for p in positional[:2]}  # (model, times)
    skipped |= set(getattr(build, "keywords", None) or ())  # (a functools.partial's bound keywords: not options)
    return tuple(p.name for p in params if p.kind in named and p.name not in skipped)


#: what an unknown solver option may have been meant as, said beside the error (a user trial passed
#: chords_jax's ``args=`` to the core)
_OPTION_HINTS = {"args": "; args= passes a traced pytree to the model in chords_jax (fn(x, t, args)); in the "
                         "core the model's parameters live in its function (a closure, functools.partial, a module)"}


def make_solver(solver: str | Solver, model: Model, times: Any, **options: Any) -> Solver:
    """Bind a solver to a model and a time grid.

    Args:
        solver: a name in ``SOLVERS`` or an already bound ``Solver`` (returned as is; no options then).
        model: the ``Model`` whose outputs the solver consumes.
        times: the grid's T + 1 times: 1-D, strictly monotone, finite, inside the model's schedule.
        options: the solver's options (e.g. ``order``, ``variant``, ``lower_order_final``).

    Returns:
        The bound ``Solver``. Raises ``TypeError`` / ``ValueError`` naming the model, the times, an unknown
        solver or bad options (a model of None failed on an attribute, a grid of [1, 2] on a rectified flow
        was bound, a trial).
    """
    model = check_model(model)
    times = check_grid(times, "times")
    model.check_times(times)
    return bind_solver(solver, model, times, **options)


def bind_solver(solver: str | Solver, model: Model, times: np.ndarray, **options: Any) -> Solver:
    """``make_solver`` for a model and times already checked (``call.begin`` checks them, naming ``grid``)."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError("solver options go with a solver name, not an already built solver")
        if solver.model is not model:
            raise ValueError("solver: a Solver bound to another model; pass the solver's name, or build it for this "
                             "model with make_solver(name, model, grid)")
        if not np.array_equal(np.asarray(solver.times, np.float64), np.asarray(times, np.float64)):
            raise ValueError(f"solver: a Solver bound to another grid ({solver.steps} steps, t from "
                             f"{solver.times[0]:g} to {solver.times[-1]:g}); pass the solver's name, or build it "
                             "for this grid")
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"solver: unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    spec = SOLVERS[solver]
    if spec.needs_diffusion_model and not isinstance(model, DiffusionModel):  # (it said 'euler' and 'heun' only,
        # where every registered velocity solver is taken: a researcher's trial)
        raise ValueError(f"solver {solver!r} needs a DiffusionModel; a VectorField takes a solver of the velocity: "
                         f"{', '.join(velocity_solvers())}")
    if spec.options is not None:
        for key in options:
            if key not in spec.options:
                raise ValueError(f"{key}: unknown option (not an option of solver {solver!r}: {spec.takes()})"
                                 f"{_OPTION_HINTS.get(key, '')}")
    try:
        built = spec.build(model, times, **options)
    except TypeError as e:  # options the spec does not list: build's TypeError names them ("unexpected keyword
        # argument 'k'"); any other is the solver's own, with its traceback (it read "bad options": a user trial)
        if spec.options is not None or not any(f"keyword argument '{k}'" in str(e) for k in options):
            raise
        raise ValueError(f"bad options for solver {solver!r}: {e}") from None
    if not isinstance(built, Solver):
        raise TypeError(f"solver {solver!r}: its SolverSpec's build returned a {type(built).__name__}, not a Solver")
    if built.name != solver:  # (a subclass that kept its base's name: errors blamed the base, "'heun' evaluates
        built.name = solver  # stage 1 at grid index 0", a researcher's trial) named as registered
    expected = spec.order if spec.estimate_order is None else spec.estimate_order
    if not options and built.accuracy != expected:  # a registration error: the estimates would be off
        says = f"order {spec.order}" if spec.estimate_order is None else f"estimate_order {spec.estimate_order}"
        raise ValueError(f"solver {solver!r}: its SolverSpec says {says}, but the bound "
                         f"{type(built).__name__} says {built.accuracy} (set the class's `order`: local-error "
                         "estimates, and with them the default stop rules, read it)")
    return built
