"""Shared pieces of the torch executors: the point -> worker map, model shells, errors.

Point -> worker map. The engine hands an executor a round's points in core order, and in every
round the active cores are a prefix 0..n-1: core c starts in round c and finishes after
R_c = c + (its ticks) rounds, which does not increase with c (a faster core has fewer ticks left),
so cores leave from the top. Point k of a round is therefore core k, and the round-robin map
``point k -> worker k mod W`` is a *stable* core -> worker map: core c always runs on worker
c mod W, for every round, and every worker gets ceil(n / W) or floor(n / W) points.

Model shells. The engine's ``model`` object (a ``DiffusionModel`` or ``VectorField``) carries the
parametrisation and the output check; only its network ``fn`` (``f``) is replaced per worker.
A *shell* is a shallow copy with the network removed; it is cheap to pickle and is bound to the
worker's replica, so the worker evaluates with the core's own ``Model.evaluate`` (same calling
convention, same shape / finiteness check) and nothing is re-implemented here.
"""

from __future__ import annotations

import copy
import io
import pickle
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from chords_core.models import Model
from chords_core.schedules import Schedule

__all__ = ["assign", "shell_of", "bind", "dump_shell", "load_shell", "round_timeout_of", "WorkerError", "WorkerDied",
           "WorkerTimeout", "ExecutorClosed"]

_FN_ATTRS = ("fn", "f")  # DiffusionModel.fn, VectorField.f


class WorkerError(RuntimeError):
    """A worker failed other than by a bad model output (its exception, with the remote traceback).

    ``rank``: the torch.distributed rank involved, where known (``DistributedExecutor``); else ``None``.
    """

    rank: int | None = None


class WorkerDied(WorkerError):
    """A worker process / rank exited while the caller waited for it."""


class WorkerTimeout(WorkerError, TimeoutError):
    """A worker did not answer within the executor's timeout."""


class ExecutorClosed(RuntimeError):
    """The executor was closed (or broken by a dead / hung worker) and cannot evaluate."""


def assign(n: int, workers: int) -> list[list[int]]:
    """Point indices per worker for a round of ``n`` points: point k goes to worker k mod ``workers``.

    Args:
        n: the round's number of points.
        workers: W, the number of workers.

    Returns:
        W lists of point indices (some empty when n < W).
    """
    return [list(range(w, n, workers)) for w in range(workers)]


def fn_attr(model: Model) -> str:
    """The attribute of ``model`` that holds its network (``fn`` or ``f``)."""
    for name in _FN_ATTRS:
        if hasattr(model, name):
            return name
    raise TypeError(
        f"cannot replace the network of a {type(model).__name__}: it has no 'fn' or 'f' attribute; "
        "let the factory return a complete chords_core Model instead"
    )


def shell_of(model: Model) -> Model:
    """A shallow copy of ``model`` without its network (picklable if the schedule is).

    Args:
        model: a chords_core ``Model`` with an ``fn`` or ``f`` attribute.

    Returns:
        The shell (its network ``None``).
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a chords_core Model, got {type(model).__name__}")
    shell = copy.copy(model)
    setattr(shell, fn_attr(model), None)
    return shell


#: numpy's array and scalar reconstructors: a schedule may hold arrays (``numpy._core`` is numpy 2's name)
_NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
                  for n in ("_reconstruct", "scalar", "ndarray", "dtype")} | {
                  ("numpy", "dtype"), ("numpy", "ndarray")}


class _ShellUnpickler(pickle.Unpickler):
    """Loads a model shell and nothing else: the only globals it resolves are subclasses of the
    library's ``Model`` and ``Schedule`` (from modules already imported: resolving never imports,
    since an import runs code) and numpy's array reconstructors. A pickle that names anything else
    (``os.system``, ``builtins.eval``, ...) is refused before it can call it."""

    def find_class(self, module: str, name: str) -> Any:
        mod = sys.modules.get(module)
        obj = getattr(mod, name, None) if mod is not None and "." not in name else None
        if isinstance(obj, type) and issubclass(obj, (Model, Schedule)):
            return obj
        if (module, name) in _NUMPY_GLOBALS and obj is not None:
            return obj
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: a model shell may only contain chords_core Model / Schedule "
            "classes (from modules this process has imported) and numpy arrays")


def dump_shell(model: Model) -> bytes:
    """The shell of ``model`` (``shell_of``) as bytes for ``load_shell``.

    Args:
        model: a chords_core ``Model``.

    Returns:
        The pickled shell.
    """
    return pickle.dumps(shell_of(model))


def load_shell(data: bytes) -> Model:
    """A model shell from ``dump_shell``'s bytes, through an unpickler that admits only the library's
    model and schedule classes and numpy arrays: bytes from the network cannot run code here.

    Args:
        data: the bytes received.

    Returns:
        The shell (a ``Model`` without its network).

    Raises:
        pickle.UnpicklingError: the bytes name anything else, or do not hold a ``Model``.
    """
    shell = _ShellUnpickler(io.BytesIO(data)).load()
    if not isinstance(shell, Model):
        raise pickle.UnpicklingError(f"a model shell must be a chords_core Model, got {type(shell).__name__}")
    return shell


def bind(shell: Model, replica: Callable | Model) -> Model:
    """The model a worker evaluates: ``replica`` itself if it is a Model, else ``shell`` with network ``replica``.

    Args:
        shell: the driver's model without its network (``shell_of``).
        replica: the worker's network, or a complete ``Model``.

    Returns:
        The bound ``Model``.
    """
    if isinstance(replica, Model):
        return replica
    if not callable(replica):
        raise TypeError(f"a worker's model must be callable or a chords_core Model, got {type(replica).__name__}")
    model = copy.copy(shell)
    setattr(model, fn_attr(shell), replica)
    return model


def check_points(xs: Sequence[Any], ts: Sequence[float]) -> None:
    """Check a round's points: one time per point, all tensors of one shape and dtype (as the engine's states are).

    Args:
        xs: the points.
        ts: their times.

    Raises ``ValueError`` / ``TypeError`` naming the offending point.
    """
    import torch

    if len(xs) != len(ts):
        raise ValueError(f"xs and ts must have the same length, got {len(xs)} and {len(ts)}")
    if not xs:
        return
    x0 = xs[0]
    for k, x in enumerate(xs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"xs[{k}] must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != x0.shape or x.dtype != x0.dtype:
            raise ValueError(
                f"xs[{k}] has shape {tuple(x.shape)} {x.dtype}, expected {tuple(x0.shape)} {x0.dtype} like xs[0]")


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """An executor's timeout: a positive number of seconds or ``None`` (no limit).

    Args:
        timeout: the value to check.
        name: the argument's name, for the error.

    Returns:
        ``float(timeout)`` or ``None``; ``ValueError`` otherwise.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


#: the default of the deprecated ``timeout`` keyword: "not given"
UNSET: Any = object()


def round_timeout_of(round_timeout: float | None, timeout: Any, owner: str) -> float | None:
    """An executor's ``round_timeout`` (seconds one round may take, from sending its points to the last
    answer), or the value of the deprecated ``timeout`` keyword that it replaces (with a warning).

    Args:
        round_timeout: the value given (or the default).
        timeout: the deprecated keyword's value, ``UNSET`` if not given.
        owner: the executor's class name, for the messages.

    Returns:
        The checked value (``check_timeout``).
    """
    if timeout is not UNSET:
        warnings.warn(f"{owner}(timeout=...) is deprecated: use round_timeout= (the same meaning: seconds one round "
                      "may take, from sending its points to the last answer)", DeprecationWarning, stacklevel=3)
        round_timeout = timeout
    return check_timeout(round_timeout, "round_timeout")
