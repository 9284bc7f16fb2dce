"""What a solver written outside the library is held to (``Solver.__init_subclass__`` wraps its methods).

The library's own solvers keep these by construction and are not wrapped (no cost in the hot loops).
A solver of one's own is checked at each call, with the solver named in the error:

- ``step`` returns a ``State`` whose point has the state's array library, shape and dtype (a float64
  point for a float32 state, say from a numpy float64 coefficient, changed the run's dtype; a point of
  another shape failed later inside numpy, naming nothing);
- ``step`` leaves its inputs as they are: the state's point, its history and the stage quantities are
  read-only during the call (numpy) or their version counters are compared (torch). A step that wrote
  ``state.x += h * q`` overwrote the caller's initial state and put every parallel method off (a user
  trial: the cascade sampler 0.807 off ``solve`` at ``tol=0``, silently);
- the point ``step`` returns is a new array: one that is, or shares memory with, its inputs is copied
  (the engine adds a rectification into a step's point in place: a user trial's step that returned
  ``State(state.x)`` put CHORDS' faster cores off by 6.6e-3, differently with each executor);
- ``begin`` returns a ``State``; ``jump_coeffs`` two real numbers.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import _backend as B

__all__ = ["checked_step", "checked_begin", "checked_jump_coeffs"]


def _label(solver: Any) -> str:
    return f"{type(solver).__name__}.{{}} (solver {solver.name!r})"


class _Inputs:
    """A step's input arrays made read-only (numpy) or their versions noted (torch) for the call."""

    def __init__(self, arrays: Sequence[Any]) -> None:
        self.frozen: list[np.ndarray] = []
        self.versions: list[tuple[Any, int]] = []
        seen: set[int] = set()
        for a in arrays:
            if id(a) in seen:
                continue
            seen.add(id(a))
            if type(a) is np.ndarray:
                if a.flags.writeable and _restorable(a):
                    a.flags.writeable = False
                    self.frozen.append(a)
            elif B.library(a) == "torch":
                try:
                    self.versions.append((a, a._version))
                except (AttributeError, RuntimeError):  # (an inference-mode tensor keeps no version)
                    pass

    def release(self) -> None:
        for a in self.frozen:
            with contextlib.suppress(ValueError):  # (restorable, checked before it was frozen)
                a.flags.writeable = True

    def written(self) -> bool:
        """Whether a torch input's version moved (an in-place operation on it)."""
        return any(a._version != v for a, v in self.versions)


def _restorable(a: np.ndarray) -> bool:
    """Whether ``a`` can be made writeable again once made read-only: not where its memory belongs to
    another library (``tensor.numpy()``: numpy refuses "cannot set WRITEABLE flag to True", a review),
    which is then left unprotected rather than left read-only."""
    base = a.base
    if base is None or (type(base) is np.ndarray and base.base is None):
        return True  # (its own memory, or a view of an array that owns its memory: the common cases)
    probe = a.view()
    try:
        probe.flags.writeable = False
        probe.flags.writeable = True
    except ValueError:
        return False
    return True


def _inputs(state: Any, qs: Sequence[Any]) -> list:
    """The arrays a step must leave as they are: the state's point, the stage quantities and the
    quantities of its history (entries ``(index, q)``; others are not looked into)."""
    hist = getattr(state, "hist", ())
    kept = [h[1] for h in hist if isinstance(h, tuple) and len(h) == 2] if isinstance(hist, tuple) else []
    return [state.x, *qs, *kept]


def _in_place(solver: Any, i: int, j: int) -> TypeError:
    return TypeError(f"solver: {_label(solver).format('step')} wrote in place into its input for the step {i} -> {j} "
                     "(the state's point, its history or a stage quantity, read-only during the call, or a view of "
                     "one; see the error above); a step must leave them as they are (they may be the caller's "
                     "initial state or another core's values): compute out of place, e.g. x = state.x + h * qs[0]")


def checked_step(step: Callable[..., Any], state_type: Any) -> Callable[..., Any]:
    """``step`` held to the contract of the module docstring."""

    def checked(self: Any, state: Any, qs: Sequence[Any], i: int, j: int, *args: Any, **kwargs: Any) -> Any:
        arrays = _inputs(state, qs)
        inputs = _Inputs(arrays)
        try:
            new = step(self, state, qs, i, j, *args, **kwargs)
        except ValueError as err:
            if inputs.frozen and "read-only" in str(err):
                raise _in_place(self, i, j) from err
            raise
        finally:
            inputs.release()
        if inputs.written():
            raise _in_place(self, i, j)
        if not isinstance(new, state_type):
            raise TypeError(f"solver: {_label(self).format('step')} returned a {type(new).__name__} for the step "
                            f"{i} -> {j}, not a State; return State(x, hist, aux) (solvers.base.State)")
        x, like = new.x, state.x
        if not hasattr(x, "shape") or not hasattr(x, "dtype") or B.library(x) != B.library(like):
            raise TypeError(f"solver: {_label(self).format('step')} returned a point of type {type(x).__name__} for "
                            f"the step {i} -> {j}, for a state of type {type(like).__name__}; return an array of the "
                            "state's kind")
        if tuple(x.shape) != tuple(like.shape) or x.dtype != like.dtype:
            raise TypeError(f"solver: {_label(self).format('step')} returned a point of shape {tuple(x.shape)} and "
                            f"dtype {x.dtype} for the step {i} -> {j}, for a state of shape {tuple(like.shape)} and "
                            f"dtype {like.dtype}; keep the state's (coefficients as Python floats: a numpy float64 "
                            "one turns a float32 state into float64)")
        if type(x) is not np.ndarray and B.library(x) != "torch":
            return new  # (immutable arrays: jax's, chords_jax's symbolic states)
        owned = x
        for a in arrays:
            owned = B.unshared(owned, a)
        return new if owned is x else state_type(owned, new.hist, new.aux)

    return checked


def checked_begin(begin: Callable[..., Any], state_type: Any) -> Callable[..., Any]:
    """``begin`` returning a ``State`` (``TypeError`` naming the solver otherwise)."""

    def checked(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        st = begin(self, x, *args, **kwargs)
        if not isinstance(st, state_type):
            raise TypeError(f"solver: {_label(self).format('begin')} returned a {type(st).__name__}, not a State; "
                            "return State(x) (solvers.base.State), with the history and aux the solver starts from")
        return st

    return checked


def checked_jump_coeffs(jump_coeffs: Callable[..., Any]) -> Callable[..., Any]:
    """``jump_coeffs`` returning two real numbers, as floats (``TypeError`` naming the solver otherwise)."""

    def checked(self: Any, i: int, j: int) -> tuple[float, float]:
        c = jump_coeffs(self, i, j)
        if not (isinstance(c, (tuple, list)) and len(c) == 2 and all(isinstance(v, numbers.Real) for v in c)
                and all(math.isfinite(v) for v in c)):  # (a nan retired CHORDS' cores as if their starts ran
            # off, blaming the start, not the solver: a researcher's trial)
            raise TypeError(f"solver: {_label(self).format('jump_coeffs')} returned {c!r} for the jump {i} -> {j}; "
                            "it returns (a, b), two finite real numbers: the coarse jump a x + b q")
        return float(c[0]), float(c[1])

    return checked
