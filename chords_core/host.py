"""Torch tensors on the CPU, computed on as numpy arrays (``host_route``).

A run's own arithmetic (steps, rectifications, window updates, scores) is a few array operations a
round. On a small CPU tensor each torch operation costs several microseconds of dispatch, numpy's
about one: at 64 float32 elements the torch engine took 1.4-2x the numpy engine's time a round, most
of it there. Where nothing outside the library would see the difference, ``host_route`` runs the
whole call on numpy's views of the tensors (``_backend.numpy_view``: the same memory, no copy) and
hands the network torch tensors on the same memory (``torch.from_numpy``), so that the network and
its checks see what they see on the torch path; the result comes back as tensors of their own.

Taken (``route``) where all of these hold, and otherwise the call runs on the tensors as given:

- the state is a plain ``torch.Tensor`` (no subclass) on the CPU, float32 or float64, strided, with at
  least one axis and one element, that numpy can view (no conjugate or negative bit), not inside a
  ``torch.func`` transform;
- no derivative is recorded: gradients off (``torch.no_grad()`` or ``torch.inference_mode()``, as
  samplers run) and no forward-mode level open (``torch.autograd.forward_ad``, which ``no_grad``
  leaves on): numpy carries neither a graph back to the network's parameters nor a tangent;
- torch would run the arithmetic on one thread anyway: ``torch.get_num_threads() == 1``, or a state
  below ``GRAIN`` elements (torch's own grain for splitting an operation over threads);
- everything that meets the arrays is the library's own: the model a ``DiffusionModel`` or
  ``VectorField`` (no subclass), the solver a name registered by the library, the executor the
  default or a ``BatchedExecutor`` / ``SerialExecutor``, a stop rule one of ``stopping``'s classes.

The values are the same either way: on CPU tensors the library forms its combinations with numpy's
operations in numpy's order (no fused multiply-add, ``_backend.axpy``) and sums on numpy's views
(``_backend.row_sq``, ``inner``), so a run on CPU tensors, routed or not (gradients on, a state that
requires them), is the numpy engine's run bit for bit (tested for every method, the Anderson
mixing's too). What differs: a routed run raises no numpy floating-point warning (none, as torch
raises none; ``np.errstate``), and the network's input is a tensor of its own on the state's memory,
so an in-place write into a state that is a view of the caller's buffer is caught at its first step
(the torch path, which cannot tell such a write from another view's, caught it a step later).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from . import _backend as B
from .executors import BatchedExecutor, SerialExecutor
from .models import DiffusionModel, ModelOutputError, VectorField
from .results import Result
from .solvers import SOLVERS
from .stopping import library_rule

__all__ = ["host_route", "route", "GRAIN"]

#: torch splits an elementwise operation over threads from this many elements (``at::internal::GRAIN_SIZE``);
#: numpy does not: a larger state stays on torch unless torch runs on one thread
GRAIN = 32768

_BUILT_IN_SOLVERS = dict(SOLVERS)  # the library's own solver entries, by identity
_EXECUTORS = (BatchedExecutor, SerialExecutor)
_MODELS = (DiffusionModel, VectorField)

F = TypeVar("F", bound=Callable[..., Any])


def _state_view(x: Any) -> np.ndarray | None:
    """numpy's view of the state ``x`` where the route takes it (the tensor and the modes: see the module
    docstring), else ``None``."""
    if B.library(x) != "torch":  # (which also has ``_backend`` hold the torch module)
        return None
    torch = B._torch
    if (type(x) is not torch.Tensor or x.layout != torch.strided or x.dim() == 0 or x.numel() == 0 or x.is_neg()
            or torch.is_grad_enabled() or x.requires_grad or torch.autograd.forward_ad._current_level >= 0
            or B.in_torch_func(x) or (x.numel() >= GRAIN and torch.get_num_threads() != 1)):
        return None
    return B.numpy_view(x)  # (None: another device or dtype)


def _library_solver(solver: Any) -> bool:
    """Whether ``solver`` names a solver the library registered (a bound ``Solver`` or one registered
    from outside may run its own torch code on the states)."""
    return isinstance(solver, str) and solver in _BUILT_IN_SOLVERS and SOLVERS.get(solver) is _BUILT_IN_SOLVERS[solver]


def _library_rule(stop: Any) -> bool:
    """Whether a stop rule is ``None`` or one of the library's rule classes (a user's rule reads the outputs)."""
    return stop is None or library_rule(stop)


def route(model: Any, x: Any, solver: Any, options: dict) -> tuple[Any, np.ndarray] | None:
    """(the model to run with, numpy's view of ``x``) where the call can run on the host (the module
    docstring), else ``None``. ``options``: the call's keyword arguments (its executor, stop rule)."""
    if type(model) not in _MODELS or not _library_solver(solver):
        return None
    executor = options.get("executor")
    if (executor is not None and type(executor) not in _EXECUTORS) or not _library_rule(options.get("stop")):
        return None
    view = _state_view(x)
    if view is None:
        return None
    numpy_model = object.__new__(type(model))  # (a copy: the caller's model may serve other threads' calls)
    numpy_model.__dict__.update(model.__dict__)
    numpy_model.numpy_engine = True
    return numpy_model, view


def _tensor(a: Any) -> Any:
    """A numpy array a routed run returns, as a tensor of its own memory (a view of numpy's could not be
    resized, as a tensor the torch path returns can)."""
    return B._torch.from_numpy(a).clone() if type(a) is np.ndarray else a


def _back(out: Any) -> Any:
    """A routed call's return value with its arrays as tensors: a ``Result`` (its output, coarse
    prediction and every hit's output: one tensor per array, so that ``x is hits[-1].x`` where it
    was), or an array (``solve``)."""
    if not isinstance(out, Result):
        return _tensor(out)
    made: dict[int, Any] = {}

    def tensor(a: Any) -> Any:
        got = made.get(id(a))
        if got is None:
            got = made[id(a)] = _tensor(a)
        return got

    hits = tuple(dataclasses.replace(h, x=tensor(h.x)) for h in out.hits)
    return dataclasses.replace(out, x=tensor(out.x), coarse=tensor(out.coarse), hits=hits)


def host_route(fn: F) -> F:
    """``fn(model, x, grid, solver, ...)``, a run, routed through numpy where ``route`` takes it: the
    model and state replaced by their numpy forms, the result's arrays returned as tensors (and those of
    a ``ModelOutputError``'s ``done``)."""
    default_solver = inspect.signature(fn).parameters["solver"].default

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if len(args) < 2 or kwargs.keys() & {"model", "x"}:
            return fn(*args, **kwargs)
        solver = args[3] if len(args) > 3 else kwargs.get("solver", default_solver)
        taken = route(args[0], args[1], solver, kwargs)
        if taken is None:
            return fn(*args, **kwargs)
        try:
            with np.errstate(all="ignore"):  # (as torch: an overflow is the output check's, no warning)
                out = fn(*taken, *args[2:], **kwargs)
        except ModelOutputError as err:
            if err.done:
                err.done = [_tensor(d) for d in err.done]
            raise
        return _back(out)

    return run  # type: ignore[return-value]
