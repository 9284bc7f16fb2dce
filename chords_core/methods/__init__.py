"""The parallel methods, side by side, each a plug-in of one registry.

Every method solves the same problem as ``solve`` (a model, an initial state, a grid, a solver)
spread over ``cores`` devices, evaluates its rounds through an ``Executor`` and returns a
``Result``. ``parallel`` is the one entry point; each method also has its direct function with its
own knobs (``chords``, ``paradigms``, ``srds``).

A method is registered as a ``Method``: a name, a one-line summary and a ``run`` function

    run(model, x, grid, solver, *, cores, executor, progress, **options) -> Result

that maps ``cores`` onto the method's own parallelism (cascade, CHORDS: cores; ParaDiGMS: window;
SRDS: blocks) and passes the rest on. ``register_method`` adds one from outside the package.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace as replace_fields
from typing import Any

from .. import call, solvers
from ..checks import check_cores, check_grid, check_int
from ..executors import Executor
from ..models import Model
from ..results import Result
from ..solvers import SOLVERS, Solver, declared_option
from .cascade import cascade
from .chords import chords
from .paradigms import paradigms
from .parasolver import parasolver
from .parataa import parataa
from .srds import srds

__all__ = ["Method", "METHODS", "RECOMMENDED", "register_method", "parallel", "check_options", "cascade", "chords",
           "paradigms", "parasolver", "parataa", "srds"]


@dataclass(frozen=True)
class Method:
    """A registered parallel method: ``run(model, x, grid, solver, *, cores, executor, progress, **options)``."""

    name: str
    run: Callable[..., Result]
    summary: str = ""
    #: the method's own keyword options (``parallel`` refuses another method's option by name); empty:
    #: not declared, any option is passed on
    options: tuple[str, ...] = ()


def own_options(fn: Callable[..., Result]) -> tuple[str, ...]:
    """The keyword options of a method function, less those ``parallel`` sets (``cores``, ``window``,
    ``executor``, ``progress``) and the solver's catch-all."""
    skip = {"cores", "window", "executor", "progress"}
    return tuple(n for n in call.keyword_only(fn) if n not in skip)


METHODS: dict[str, Method] = {}

#: The method ``parallel`` runs when none is named.
RECOMMENDED = "cascade"


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to overwrite a name); returns it."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be a Method, got {type(method).__name__}")
    if not isinstance(method.name, str) or not method.name:  # (another type broke unrelated errors' sorting)
        raise TypeError(f"method: its name must be a non-empty string, got {method.name!r}")
    if not callable(method.run):
        raise TypeError(f"method {method.name!r}: run must be callable, got {type(method.run).__name__}")
    _check_run_signature(method)
    opts = method.options
    if not isinstance(opts, (tuple, list)) or not all(isinstance(o, str) for o in opts):
        # (("stop_tol") is a str: read letter by letter into other methods' errors)
        raise TypeError(f"method {method.name!r}: options must be a tuple of option names, got {opts!r}")
    if not replace and method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered (pass replace=True to overwrite it)")
    if type(opts) is not tuple:
        method = replace_fields(method, options=tuple(opts))
    taken = set(opts) | set(call.keyword_only(method.run))
    for sname, spec in SOLVERS.items():  # (the other direction of _not_a_method_argument: solvers registered first)
        clash = sorted(taken & set(spec.option_names()))
        if clash:
            raise ValueError(f"method {method.name!r}: {clash[0]!r} is an option of solver {sname!r}, which the method "
                             "would take from it; name the method's argument otherwise")
    METHODS[method.name] = method
    return method


def _check_run_signature(method: Method) -> None:
    """Refuse a ``run`` that cannot take the call ``parallel`` makes, ``run(model, x, grid, solver, *,
    cores, executor, progress, **options)``, at registration, naming the method (it registered, and
    failed at first use with Python's "unexpected keyword argument 'cores'": a researcher's trial). A
    ``run`` without ``**options`` takes only the options it names (no solver's). A callable without an
    inspectable signature is taken as it is."""
    try:
        sig = inspect.signature(method.run, follow_wrapped=False)  # (a functools.wraps wrapper's own)
    except (TypeError, ValueError):
        return
    try:  # (partial: a required option of the method's own, blocks=..., comes with the call, a review)
        sig.bind_partial(None, None, None, None, cores=1, executor=None, progress=False)
    except TypeError as err:
        raise TypeError(f"method {method.name!r}: run{sig} cannot take the call parallel makes, run(model, x, grid, "
                        f"solver, *, cores, executor, progress, **options) ({err})") from None


def _windowed(fn: Callable[..., Result]) -> Callable[..., Result]:
    """A window method's ``run``: the window is ``cores``."""

    def run(model, x, grid, solver, *, cores, executor, progress, **options):
        if "window" in options:
            raise ValueError(f"window: parallel() sets the window to cores; call {fn.__name__}() for another window")
        return fn(model, x, grid, solver, window=cores, executor=executor, progress=progress, **options)

    return run


def _run_srds(model, x, grid, solver, *, cores, executor, progress, **options):
    blocks = options.get("blocks")
    if blocks is None:  # (None too: srds' own default, round(sqrt(T)), could exceed cores)
        options["blocks"] = cores
    elif check_int("blocks", blocks, 1) > cores:  # (numpy integers too: they ran unchecked, wider than cores)
        raise ValueError(f"blocks: parallel() evaluates at most cores={cores} points a round, got blocks="
                         f"{blocks}; call srds() for more blocks than cores")
    return srds(model, x, grid, solver, executor=executor, progress=progress, **options)


#: the functions a user calls directly, where ``Method.run`` wraps one for ``parallel``
_FUNCTIONS: dict[str, Callable[..., Result]] = {"paradigms": paradigms, "parasolver": parasolver, "parataa": parataa,
                                                "srds": srds}

register_method(Method("cascade", cascade,
                       "cascade: seeded window, noise-level or local-error acceptance (recommended)",
                       own_options(cascade)))
register_method(Method("chords", chords, "CHORDS: cores started by coarse jumps, rectified by slower cores",
                       own_options(chords)))
register_method(Method("paradigms", _windowed(paradigms), "ParaDiGMS: sliding-window Picard iteration, window = cores",
                       own_options(paradigms)))
register_method(Method("parasolver", _windowed(parasolver), "ParaSolver: ParaDiGMS with x0-prediction seeds",
                       own_options(parasolver)))
register_method(Method("parataa", _windowed(parataa), "ParaTAA: window iteration with triangular Anderson mixing",
                       own_options(parataa)))
register_method(Method("srds", _run_srds, "SRDS: pipelined parareal over blocks (default blocks = cores)",
                       own_options(srds)))


def check_options(name: str, options: dict, solver: Any = None, *, any_solver: bool = False) -> None:
    """Refuse, naming it, an option of another registered method given to method ``name`` (which
    would otherwise reach the solver and be blamed on it), or one neither the method nor the solver
    (a name in ``SOLVERS`` that lists its options) takes; with ``any_solver`` (the solver is not
    known yet: a pipeline's, mapped from its scheduler when it runs), one neither the method nor any
    registered solver takes, where every solver lists its options. Nothing for a method that
    declares no ``options``."""
    mine = METHODS[name].options
    if not mine:
        return
    spec = SOLVERS.get(solver) if isinstance(solver, str) else None
    declared = [s.options for s in SOLVERS.values()] if any_solver else []
    taken = None if not any_solver or any(d is None for d in declared) else {k for d in declared for k in d or ()}
    for key in options:
        if declared_option(solver, key):
            continue
        owners = sorted(m.name for m in METHODS.values() if key in m.options and key not in mine)
        if owners:
            raise ValueError(f"{key}: an option of {', '.join(owners)}, not of method {name!r} "
                             f"(its options: {', '.join(mine)})")
        if key in mine or call.method_arguments(key) and not any_solver:  # (an argument such as window= has its
            continue  # own words later, in parallel; the loop with_chords runs passes it there when the pipeline runs)
        if spec is not None and spec.options is not None and key not in spec.options:
            raise ValueError(f"{key}: unknown option, not of method {name!r} (its options: {', '.join(mine)}) nor of "
                             f"solver {solver!r} ({spec.takes()})")
        if taken is not None and key not in taken:
            raise ValueError(f"{key}: unknown option, not of method {name!r} (its options: {', '.join(mine)}) nor of "
                             "any solver")


def parallel(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    cores: int,
    method: str | None = None,
    executor: Executor | None = None,
    progress: bool = False,
    **options: Any,
) -> Result:
    """Solve from ``x`` at ``grid[0]`` to ``grid[-1]`` with a parallel method on ``cores`` devices.

    Args:
        model: a ``DiffusionModel`` or ``VectorField``.
        x: the initial state.
        grid: the T + 1 times.
        solver: a solver name (its options in ``options``) or a bound ``Solver``.
        cores: the devices (parallel evaluations per round) the method may use, 1 to the grid's steps.
        method: a name in ``METHODS``; ``None`` takes ``RECOMMENDED``.
        executor: evaluates each round (default ``BatchedExecutor``).
        progress: show a progress bar (needs tqdm).
        options: the method's own options (e.g. ``stop``, ``init`` for CHORDS; ``tol``, where
            ``tol=None`` is the method's default, as in ``chords_jax.parallel``) and the solver's.

    Returns:
        The method's ``Result``. With ``cores=1`` every shipped method equals ``solve`` bit for bit
        (the window methods with their default ``multistep="chain"``; ``"restart"``, the official
        convention, restarts a multistep solver at first order at each window start: DDIM at window 1).
    """
    name = RECOMMENDED if method is None else method
    if not isinstance(name, str) or name not in METHODS:  # (a list was "unhashable type: 'list'", naming nothing)
        raise ValueError(f"method must be one of {sorted(METHODS)} or None, got {method!r}")
    cores = check_cores(cores, len(check_grid(grid)) - 1)
    if "tol" in options and options["tol"] is None:
        del options["tol"]  # the method's own default
    check_options(name, options, solver)
    res = METHODS[name].run(model, x, grid, solver, cores=cores, executor=executor, progress=progress, **options)
    if not isinstance(res, Result):  # (a registered method's: an AttributeError on .rounds later, naming nothing)
        raise TypeError(f"method {name!r}: its run returned {type(res).__name__}, not a chords_core Result")
    return res


def _not_a_method_argument(solver: str, key: str) -> None:
    """``register_solver``'s check of a declared option ``key`` (``solvers.OPTION_CHECKS``): not an
    argument of a method, which would take it from the solver (a user trial's option "tol": paradigms,
    cascade and srds kept tol=0.5 as theirs and built the solver with its default, silently)."""
    owners = ["every method"] if key in ("model", "x", "grid", "solver") else call.method_arguments(key)
    if owners:
        raise ValueError(f"solver {solver!r}: its option {key!r} is an argument of {', '.join(owners)}, which would "
                         "take it from the solver; name the option otherwise")


solvers.OPTION_CHECKS.append(_not_a_method_argument)

# a direct call's error names another method's argument and the methods that take it (``call.begin``)
call.METHODS = METHODS
call.FUNCTIONS = {**_FUNCTIONS, "parallel": parallel}
