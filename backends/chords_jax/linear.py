"""Symbolic replay of the core engine: every state CHORDS computes is a linear combination.

Between model calls the core only forms linear combinations of arrays with float coefficients
(fine steps, coarse jumps, rectifications, quantity conversions, history shifts). Running
``chords_core.chords`` on a symbolic state ``Sym`` with an executor that answers each model call with
fresh symbols therefore records the whole computation as a DAG

    leaves:  x0 (the initial state) and out[r, j] (the j-th model output of round r),
    nodes:   y = sum_m c_m y_m   (float64 c_m, y_m earlier nodes or leaves),

together with the points evaluated each round. Nothing of the engine is re-implemented: the plan,
the solvers' step / jump / conversion coefficients, ``rectify`` and the history policy all run as
they do on numpy arrays. ``lower.py`` turns the DAG into per-round index/coefficient arrays.

Each node carries its *phase*: the number of model calls made before it was created; the outputs
of round r have phase r, and so has everything computed from them before the next call.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from chords_core.executors import Executor
from chords_core.models import Model

__all__ = ["Sym", "LinearRecorder", "NonLinearOperation"]


class NonLinearOperation(TypeError):
    """The engine or solver did something to a state other than a linear combination."""


def _fail(op: str, other: Any) -> NonLinearOperation:
    return NonLinearOperation(
        f"chords_jax can only compile solvers whose updates are linear combinations of states with float "
        f"coefficients; got the operation {op!r} with {type(other).__name__}"
    )


def _scalar(c: Any) -> bool:
    """A real number, or a 0-d real numpy array (``np.asarray(h)``): a coefficient."""
    if isinstance(c, np.ndarray):
        return c.ndim == 0 and c.dtype.kind in "fiu"
    return isinstance(c, numbers.Real) and not isinstance(c, bool)


class Sym:
    """A symbolic state: a leaf (``terms`` None) or ``sum(c * y for c, y in terms)``. Immutable."""

    __slots__ = ("rec", "id", "phase", "terms", "shape", "dtype", "leaf")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """numpy's arithmetic on a Sym: the linear operations (a numpy scalar times a state, say) as
        the operators do them; any other ufunc (``np.tanh``, ``np.abs``) ``NonLinearOperation``."""
        if method == "__call__" and not kwargs:
            if ufunc is np.negative and len(inputs) == 1:
                return -self
            ops = {np.multiply: ("__mul__", "__rmul__"), np.add: ("__add__", "__radd__"),
                   np.subtract: ("__sub__", "__rsub__")}
            if ufunc in ops and len(inputs) == 2:
                a, b = inputs
                return getattr(a, ops[ufunc][0])(b) if isinstance(a, Sym) else getattr(b, ops[ufunc][1])(a)
        raise _fail(f"numpy.{ufunc.__name__}", self)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        """Any other numpy function on a Sym (``np.clip``, ``np.where``): ``NonLinearOperation``."""
        raise _fail(f"numpy.{func.__name__}", self)

    def __init__(self, rec: LinearRecorder, terms: tuple[tuple[float, Sym], ...] | None,
                 leaf: Any = None) -> None:
        self.rec, self.terms, self.leaf = rec, terms, leaf
        self.shape, self.dtype = rec.shape, rec.dtype
        self.phase = rec.phase
        self.id = len(rec.nodes)
        rec.nodes.append(self)

    def _lin(self, terms: Iterable[tuple[float, Sym]]) -> Sym:
        return Sym(self.rec, tuple(terms))

    def __add__(self, other: Any) -> Sym:
        if isinstance(other, Sym):
            return self._lin(((1.0, self), (1.0, other)))
        if _scalar(other) and other == 0:
            return self  # ``a + 0.0``: the core's copy
        raise _fail("+", other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Sym:
        if isinstance(other, Sym):
            return self._lin(((1.0, self), (-1.0, other)))
        if _scalar(other) and other == 0:
            return self
        raise _fail("-", other)

    def __rsub__(self, other: Any) -> Sym:
        if _scalar(other) and other == 0:
            return -self
        raise _fail("-", other)

    def __mul__(self, c: Any) -> Sym:
        if _scalar(c):
            return self._lin(((float(c), self),))
        raise _fail("*", c)

    __rmul__ = __mul__

    def __neg__(self) -> Sym:
        return self._lin(((-1.0, self),))

    def __truediv__(self, c: Any) -> Sym:
        if _scalar(c):  # linear, but x / c rounds otherwise than x * (1 / c), the only form a DAG node holds
            raise NonLinearOperation(
                "chords_jax compiles a state divided by a number as no linear combination it can hold (x / c "
                "rounds otherwise than x * (1 / c), so the compiled run would not be the core's): write the "
                "solver's step as x * (1.0 / c)")
        raise _fail("/", c)

    def __rtruediv__(self, c: Any) -> Sym:
        raise _fail("/", c)

    def __pow__(self, c: Any) -> Sym:
        raise _fail("**", c)

    def __rpow__(self, c: Any) -> Sym:
        raise _fail("**", c)

    def __matmul__(self, c: Any) -> Sym:
        raise _fail("@", c)

    __rmatmul__ = __matmul__

    def __abs__(self) -> Sym:
        raise _fail("abs()", self)

    def __bool__(self) -> bool:
        raise _fail("bool()", self)

    def __repr__(self) -> str:
        what = "leaf " + str(self.leaf) if self.terms is None else len(self.terms)
        return f"Sym(#{self.id}, phase {self.phase}, {what})"


class LinearRecorder(Executor):
    """The recorder, and the executor handed to ``chords_core.chords``.

    ``rounds[r - 1] = (points, times)`` for round r; output j of round r is the leaf ``("out", r, j)``.

    Args:
        shape: the state's shape S.
        dtype: the state's dtype (carried by every ``Sym``).
    """

    values_checked = True  # (its outputs are symbols: the compiled run checks the values, on the device)

    def __init__(self, shape: tuple, dtype: Any = None) -> None:
        self.shape, self.dtype = tuple(shape), dtype
        self.nodes: list[Sym] = []
        self.phase = 0
        self.rounds: list[tuple[list[Sym], list[float]]] = []
        self.x0 = Sym(self, None, ("x0",))

    def __call__(self, model: Model, xs: Sequence[Sym], ts: Sequence[float]) -> list[Sym]:
        """Record one round: its points and times; answer with fresh output leaves.

        Args:
            model: the call's model (not evaluated).
            xs: the round's points, ``Sym`` nodes (``NonLinearOperation`` otherwise).
            ts: their times.

        Returns:
            One leaf ``("out", r, j)`` per point j of this round r.
        """
        r = len(self.rounds) + 1
        for x in xs:
            if not isinstance(x, Sym):
                raise _fail("evaluate", x)
        self.rounds.append((list(xs), [float(t) for t in ts]))
        self.phase = r
        return [Sym(self, None, ("out", r, j)) for j in range(len(xs))]

    def close(self) -> None:
        """Nothing to release."""
