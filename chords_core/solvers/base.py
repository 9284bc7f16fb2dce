"""The solver interface: small objects bound to (model, grid), stepping between grid indices.

A solver never holds per-trajectory state. A trajectory's state is a ``State``:

- ``x``: the point whose model output is needed next (at the current grid index i);
- ``hist``: earlier model quantities of the same trajectory, ``((index, q), ...)`` newest first;
- ``aux``: solver specific data carried between steps (UniPC's pending corrector).

Stepping i -> j takes ``evals(i, j)`` model evaluations. Stage 0 is at (state.x, t_i); further
stages are at the points ``stage_point`` gives. ``step`` combines the stage quantities ``qs`` into
the state at j. ``jump_coeffs(i, j)`` = (a, b) define the zero-cost first-order jump
G(x, q; i -> j) = a x + b q from one point and its quantity; it is the coarse propagator of
CHORDS and is exact at a final step to sigma = 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .._backend import lincomb
from ..models import DiffusionModel, Model

Array = Any


class State:
    """A trajectory's state at a grid index: ``x``, ``hist`` and ``aux`` (see the module docstring).

    Moving a trajectory to another point (a rectification) is ``history.move``.
    """

    __slots__ = ("x", "hist", "aux")

    def __init__(self, x: Array, hist: tuple = (), aux: Any = None):
        self.x, self.hist, self.aux = x, hist, aux


class Solver:
    """Base class. ``quantity`` is what the solver consumes: "velocity" or "data"."""

    name = "solver"
    quantity = "velocity"
    history_size = 0  # how many earlier quantities a step may use (multistep solvers: > 0)

    def __init__(self, model: Model, times: np.ndarray):
        self.model = model
        self.times = np.asarray(times, dtype=np.float64)
        self.t = [float(v) for v in self.times]
        self.steps = len(self.t) - 1
        self._coef = model.coefficients(self.times, self.quantity)
        self._jumps: dict = {}
        if self._coef is not None:
            for i, (a, b) in enumerate(self._coef[:-1]):  # the final time is never evaluated
                if not (math.isfinite(a) and math.isfinite(b)):
                    raise ValueError(
                        f"grid[{i}]={self.t[i]:g}: the model's output cannot be converted to the {self.quantity} "
                        f"{self.name!r} needs there (e.g. an eps prediction where alpha = 0); start the grid "
                        f"inside the schedule (time_grid stops short of pure noise) or use another prediction")

    # -- model outputs -> solver quantity -------------------------------------------------------
    @property
    def converts(self) -> bool:
        """False when the raw model output already is the solver's quantity (no conversion needed)."""
        return self._coef is not None

    def quantity_of(self, x: Array, out: Array, index: int) -> Array:
        """The solver's quantity at grid index ``index`` from a raw model output there."""
        if self._coef is None:
            return out
        a, b = self._coef[index]
        return lincomb((a, b), (x, out))

    # -- stepping ------------------------------------------------------------------------------
    def begin(self, x: Array) -> State:
        return State(x)

    def evals(self, i: int, j: int) -> int:
        return 1

    def stage_point(self, state: State, qs: Sequence[Array], i: int, j: int, k: int) -> tuple[Array, int]:
        raise NotImplementedError(f"{self.name} has a single stage")

    def step(self, state: State, qs: Sequence[Array], i: int, j: int) -> State:
        raise NotImplementedError

    def jump_coeffs(self, i: int, j: int) -> tuple[float, float]:
        raise NotImplementedError

    def jump(self, x: Array, q: Array, i: int, j: int) -> Array:
        """The coarse first-order jump G(x, q; i -> j)."""
        return lincomb(self.jump_coeffs(i, j), (x, q))

    def _push(self, state: State, i: int, q: Array) -> tuple:
        return (((i, q),) + state.hist)[: self.history_size]


class DataSolver(Solver):
    """Base for exponential integrators in the data prediction (DPM-Solver++, UniPC, DDIM)."""

    quantity = "data"

    def __init__(self, model: Model, times: np.ndarray):
        if not isinstance(model, DiffusionModel):
            raise ValueError(f"solver {self.name!r} needs a DiffusionModel; a VectorField supports 'euler' and 'heun'")
        super().__init__(model, times)
        sch = model.schedule
        self.alpha = [float(v) for v in sch.alpha(self.times)]
        self.sigma = [float(v) for v in sch.sigma(self.times)]
        self.lam = [float(v) for v in sch.lam(self.times)]

    def jump_coeffs(self, i, j):
        c = self._jumps.get((i, j))
        if c is None:
            if self.sigma[j] == 0.0:
                c = (0.0, self.alpha[j])  # first order to sigma = 0 returns the data prediction
            else:
                h = self.lam[j] - self.lam[i]
                c = (self.sigma[j] / self.sigma[i], -self.alpha[j] * float(np.expm1(-h)))
            self._jumps[(i, j)] = c
        return c

    def order_at(self, state: State, i: int, j: int, order: int, lower_order_final: bool) -> int:
        """Order used for the step i -> j: warm-up, first order to sigma = 0, lower order at the end."""
        usable = 0  # earlier points at lambda = -inf (alpha = 0, pure noise) carry no slope information
        for k, _ in state.hist:
            if self.lam[k] == -math.inf:
                break
            usable += 1
        p = min(order, usable + 1)
        if self.sigma[j] == 0.0:
            return 1
        if lower_order_final:
            p = min(p, max(1, self.steps - i))
        return p
