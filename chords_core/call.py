"""The start of every call: the checks ``solve``, each parallel method and the backends share.

``begin(model, x, grid, solver, executor, solver_options)`` checks the model, the initial state and
the grid (also against the model's schedule), binds the solver and picks the default executor.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from collections.abc import Callable
from inspect import Parameter, signature
from types import FrameType
from typing import Any

import numpy as np

from . import _backend as B
from .checks import LIBRARY_PACKAGES, _is_int, check_grid
from .executors import BatchedExecutor, Executor
from .models import DiffusionModel, Model, check_model
from .solvers import SOLVERS, Solver, bind_solver, declared_option

__all__ = ["check_model", "check_state", "begin", "Call", "warn_caller", "method_arguments", "training_layers",
           "warn_training"]


def _held(obj: Any) -> list:
    """What ``obj`` may call a network through, one level down, read without running any of its code:
    a bound method's object, a partial's function and arguments, a Python function's closure values
    and the globals its code names (``lambda x, t: unet(x, t)`` at a script's top level), a plain
    object's attributes (a wrapper's ``self.net``; chords_diffusers' ``Denoiser``). A review's config
    object whose ``__getattr__`` raised KeyError broke every call when attributes were read instead."""
    if isinstance(obj, types.MethodType):
        return [obj.__self__]
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if isinstance(obj, types.FunctionType):
        held = []
        for cell in obj.__closure__ or ():
            try:
                held.append(cell.cell_contents)
            except ValueError:  # (an empty cell)
                pass
        return held + [obj.__globals__[n] for n in obj.__code__.co_names if n in obj.__globals__]
    if isinstance(obj, (type, types.ModuleType)):
        return []
    try:
        return list(object.__getattribute__(obj, "__dict__").values())
    except Exception:  # (no instance dictionary: slots, builtins; a dead weak proxy)
        return []


def _networks(fn: Any, depth: int = 3) -> list:
    """The torch modules ``fn`` is or holds, ``depth`` levels down (``_held``), each once."""
    torch = sys.modules.get("torch")
    found: dict[int, Any] = {}
    level = [fn]
    for _ in range(depth + 1):
        nxt = []
        for obj in level:
            try:
                module = torch is not None and isinstance(obj, torch.nn.Module)
            except Exception:  # (an object whose __class__ raises)
                continue
            if module:
                found.setdefault(id(obj), obj)  # (its submodules: named_modules)
            else:
                nxt += _held(obj)
        level = nxt
    return list(found.values())


def warn_training(model: Any, who: str = "model") -> None:
    """Warn (``UserWarning`` starting ``who:``, ``training_layers``) where the model's network (the network
    itself, or one it holds: a closure, a global its code names, a bound method, a partial, a wrapper
    object's attribute) has a layer whose calls depend on more than their input: a batch-norm layer that
    normalises over each call's batch, a dropout layer in training mode."""
    text = training_layers(model)
    if text is not None:
        warn_caller(f"{who}: {text}", UserWarning)


def training_layers(net: Any) -> str | None:
    """What is wrong, as a warning's text, where ``net`` (a network, a callable holding one, a ``Model``)
    has a layer whose calls depend on more than their input, else ``None``: a batch-norm layer in
    training mode or without running statistics normalises over each call's batch, so a result depends
    on which points are evaluated together (a user trial: CHORDS' stacked rounds 0.047 off ``solve``,
    silently), and in training mode its statistics change at every call; a dropout layer in training
    mode zeroes a random part of its input at every call (a user trial: 0.56-0.77 between executors,
    silently). Also read by executors whose workers build their own network (``chords_torch``). Not
    seen: a ``torch.jit.script``ed network's layers, randomness a network draws itself."""
    torch = sys.modules.get("torch")
    if torch is None:  # (no torch module can exist)
        return None
    if isinstance(net, Model):
        net = getattr(net, "fn", None) if isinstance(net, DiffusionModel) else getattr(net, "f", None)
    found: list[str] = []  # every such layer's text (the first alone named a dropout layer and hid a
    # batch-norm one, the batch-dependent problem: a torch trial)
    for module in _networks(net):
        for name, m in module.named_modules():
            label = repr(name or type(m).__name__)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats):
                why = "is in training mode" if m.training else "keeps no running statistics"
                found.append(f"the network's batch-norm layer {label} {why}: it normalises over each call's "
                             "batch, so a result depends on which points are evaluated together (the parallel "
                             "methods stack several cores' states into one call), and in training mode its running "
                             "statistics change at every call")
            if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
                found.append(f"the network's dropout layer {label} is in training mode: it zeroes a random part "
                             "of its input at every call, so the result is random (no method reproduces the "
                             "sequential solver's, nor one run another's)")
    if not found:
        return None
    more = f"; and {len(found) - 3} more such layers" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more + "; call net.eval() before sampling"


def check_state(model: Model, x: Any, name: str = "x") -> None:
    """Check the initial state: an array with a floating dtype (a batch axis for a ``DiffusionModel``),
    finite (numpy arrays, torch tensors, jax arrays outside a trace).

    Args:
        model: the checked model.
        x: the initial state.
        name: the argument's name, for the message.

    Raises ``TypeError`` / ``ValueError`` naming ``name``.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: the initial state must be an array (numpy, torch or jax), got {type(x).__name__}")
    if not B.is_floating(x):
        raise not_floating(name, x.dtype)
    if getattr(x.dtype, "itemsize", 2) < 2:  # (float8: torch lacks the arithmetic of a step, "isfinite" first)
        raise TypeError(f"{name}: an 8-bit float state ({x.dtype}) has no arithmetic for the solver's steps; "
                        "use bfloat16, float16 or wider")
    if str(getattr(x, "layout", "torch.strided")) != "torch.strided":
        raise TypeError(f"{name}: a tensor of layout {x.layout}; pass a dense (strided) tensor: {name}.to_dense()")
    if isinstance(x, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(f"{name}: a {type(x).__name__} state does not do an array's arithmetic (a matrix's * is a "
                        f"matrix product, a masked array skips its masked values); pass a plain array: "
                        f"np.asarray({name}) for a matrix, {name}.filled(value) for a masked array")
    if isinstance(model, DiffusionModel) and len(x.shape) < 1:
        raise ValueError(f"{name}: a DiffusionModel's state must have a batch axis: shape (B, ...)")
    # (numpy and torch: one pass; a jax array with values, not a tracer; a symbolic state has none)
    lib = B.library(x)
    if lib == "torch" and x.is_meta:  # (its finiteness check failed inside torch: Tensor.item() on meta)
        raise TypeError(f"{name}: a tensor on the meta device has shapes but no values to solve from")
    valued = (isinstance(x, np.ndarray) or lib == "torch"
              or (lib == "jax" and not isinstance(x, sys.modules["jax"].core.Tracer)))
    if valued and not B.all_finite(x):
        raise nonfinite_state(name)


def not_floating(name: str, dtype: Any) -> TypeError:
    """The refusal of an initial state without a floating dtype (``check_state``, ``chords_jax``)."""
    return TypeError(f"{name}: the initial state must have a floating dtype, got {dtype}")


def nonfinite_state(name: str = "x") -> ValueError:
    """The refusal of an initial state with nan or inf (``check_state``, ``chords_jax``)."""
    return ValueError(f"{name}: the initial state has non-finite values (nan or inf)")


class Call:
    """What ``begin`` returns: the checked model, the float64 grid, the bound solver and the executor.

    Args:
        model: the checked ``Model``.
        times: (T + 1,) float64 grid times.
        solver: the ``Solver`` bound to model and grid.
        executor: the executor of the rounds.

    ``evals``: the model evaluations of each step i -> i + 1 (``check_evals``).
    """

    __slots__ = ("model", "times", "solver", "executor", "evals")

    def __init__(self, model: Model, times: np.ndarray, solver: Solver, executor: Executor) -> None:
        self.model, self.times, self.solver, self.executor = model, times, solver, executor
        self.evals = check_evals(solver)

    @property
    def steps(self) -> int:
        """T, the grid's number of steps."""
        return len(self.times) - 1


def check_evals(sol: Solver) -> list[int]:
    """``sol.evals_per_step()``, each a positive int, else a ``ValueError`` naming the solver and the
    step (a custom solver's ``evals`` of 0 gave an IndexError in ``solve``, an UnboundLocalError in
    the window methods)."""
    evals = sol.evals_per_step()
    for i, n in enumerate(evals):
        if not _is_int(n) or n < 1:
            raise ValueError(f"solver {sol.name!r}: evals({i}, {i + 1}) must be an int >= 1 (the step's model "
                             f"evaluations), got {n!r}")
    return [int(n) for n in evals]


def begin(model: Any, x: Any, grid: Any, solver: str | Solver, executor: Executor | None = None,
          solver_options: dict | None = None) -> Call:
    """The start-of-call checks every method shares.

    Args:
        model: must be a chords_core ``Model``.
        x: the initial state (a floating array; shape (B, ...) for a ``DiffusionModel``).
        grid: the T + 1 times, checked and checked against the model's schedule.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        executor: an ``Executor`` or a callable ``executor(model, xs, ts)`` (default
            ``BatchedExecutor()``).
        solver_options: the solver's options (with a solver name only).

    Returns:
        The ``Call``. Raises ``TypeError`` / ``ValueError`` naming the offending argument.
    """
    model = check_model(model)
    warn_training(model)
    check_state(model, x)
    times = check_grid(grid)
    model.check_times(times)
    try:
        sol = bind_solver(solver, model, times, **(solver_options or {}))
    except ValueError as err:
        if not (isinstance(solver, str) and solver not in SOLVERS):  # (an unknown solver: that error)
            _method_argument(solver_options or {}, solver)
        raise err from None
    if executor is None:
        executor = BatchedExecutor()
    elif isinstance(executor, type):  # (a class is callable too: it would fail at the first round)
        name = executor.__name__
        raise TypeError(f"executor: pass an instance, e.g. {name}{_call_example(executor)}, not the class {name}")
    elif not isinstance(executor, Executor) and not callable(executor):
        raise TypeError(
            f"executor must be an Executor (a callable executor(model, xs, ts)), got {type(executor).__name__}")
    return Call(model, times, sol, executor)


def _call_example(cls: type) -> str:
    """How an error shows a call of ``cls``: ``()`` where it needs no argument, else ``(...)`` (a user
    trial was told ``ProcessExecutor()``, which needs a factory)."""
    try:
        params = signature(cls).parameters.values()
    except (TypeError, ValueError):
        return "(...)"
    needed = [p for p in params if p.default is Parameter.empty and p.kind not in (Parameter.VAR_POSITIONAL,
                                                                                   Parameter.VAR_KEYWORD)]
    return "(...)" if needed else "()"


#: the methods a user calls by name: ``methods.METHODS`` (the registry itself, so that what is
#: registered later counts) and the functions where its entry wraps one (``parallel`` among them), set
#: by ``methods``, which imports this module (no import back)
METHODS: dict[str, Any] = {}
FUNCTIONS: dict[str, Callable[..., Any]] = {}


def keyword_only(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only arguments of ``fn``, in order (none where its signature cannot be read): what a
    method takes by name (``method_arguments``, ``methods.own_options``, ``methods.register_method``)."""
    try:
        params = signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind is Parameter.KEYWORD_ONLY)


def method_arguments(key: str) -> list[str]:
    """The methods with a keyword argument ``key``, as "name()"."""
    fns = {**{name: FUNCTIONS.get(name, m.run) for name, m in METHODS.items()}, **FUNCTIONS}
    return [f"{name}()" for name, fn in fns.items() if key in keyword_only(fn)]


def solver_label(solver: Any) -> str:
    """How a message names ``solver``: its name as given, or a bound solver's class."""
    return solver if isinstance(solver, str) else type(solver).__name__


def _method_argument(options: dict, solver: Any) -> None:
    """An option the solver refused that is an argument of some method (``cores=`` to a window method,
    ``window=`` to the cascade sampler): a ``ValueError`` naming it and the methods that take it, where
    the solver's own error would blame the solver."""
    for key in options:
        if declared_option(solver, key):
            continue  # the solver's own option: its own error stands
        owners = method_arguments(key)
        if owners:
            name = solver_label(solver)
            raise ValueError(f"{key}: not an argument of this method nor an option of solver {name!r}; "
                             f"{key}= is an argument of {', '.join(owners)}")



def warn_caller(message: str, category: type[Warning]) -> None:
    """Issue a warning that points at the first frame outside the library's packages
    (``LIBRARY_PACKAGES``): the user's call, whether through ``parallel``, a backend or neither (a run
    that went on past a non-finite output, a default tolerance in the state's units)."""
    frame: FrameType | None = sys._getframe(0)
    level = 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] in LIBRARY_PACKAGES:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
