"""Euler and Heun on the ODE dx/dt = f(x, t) in the grid's own time variable.

For a rectified-flow model this is the flow-matching Euler step x_j = x_i + (t_j - t_i) v and for
EDM (t = sigma) it is k-diffusion's Euler/Heun. Heun (trapezoid, order 2) evaluates f at x_i and
at the Euler predictor x_i + h f_i. A step of a diffusion model to sigma = 0 is first order and
exact there: it returns the data prediction D(x_i) (for rectified flow and EDM that *is* the Euler
step; for VP it replaces Euler in t, whose velocity is singular at t = 0). Heun takes one
evaluation for it, so N Heun steps cost 2N - 1 evaluations, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._backend import axpy, axpy_into, lincomb, lincomb_into
from ..models import DiffusionModel, Model
from .base import Array, Solver, State


class Euler(Solver):
    """Explicit Euler on dx/dt = f(x, t): x_j = x_i + (t_j - t_i) f(x_i, t_i); one evaluation a step.

    A step of a diffusion model to sigma = 0 returns the data prediction D(x_i) instead (exact
    there). Works on any model (``quantity = "velocity"``).

    Args:
        model: a ``DiffusionModel`` or ``VectorField``.
        times: (T + 1,) grid times.
    """

    name = "euler"

    def __init__(self, model: Model, times: np.ndarray) -> None:
        super().__init__(model, times)
        m = self.model
        self._final_zero = isinstance(m, DiffusionModel) and float(m.schedule.sigma(self.times[-1])) == 0.0

    def jump_coeffs(self, i: int, j: int) -> tuple[float, float]:
        """(1, t_j - t_i): the Euler step over i -> j; the data prediction's coefficients on a final step to sigma = 0.

        Args:
            i: the start grid index.
            j: the end grid index.

        Returns:
            (a, b) of G(x, f; i -> j) = a x + b f.
        """
        if self._final_zero and j == self.steps:
            return self._final(i)  # a step to sigma = 0 returns the data prediction
        return (1.0, self.t[j] - self.t[i])

    def _final(self, i: int) -> tuple[float, float]:
        c = self.data_coeffs(i)
        assert c is not None  # _final_zero: a DiffusionModel, which has a data prediction
        return c

    def step(self, state: State, qs: Sequence[Array], i: int, j: int) -> State:
        """x_j = x_i + (t_j - t_i) qs[0], or the data prediction on a final step to sigma = 0.

        Args:
            state: the trajectory's state at ``i``.
            qs: the velocity f(x_i, t_i) (one stage), shape S.
            i: the start grid index.
            j: the end grid index.

        Returns:
            The ``State`` at ``j`` (no history).
        """
        if self._final_zero and j == self.steps:
            return State(lincomb(self._final(i), (state.x, qs[0])))
        return State(axpy(self.t[j] - self.t[i], qs[0], state.x))  # x + h f, as lincomb forms it

    _step_out_of = step

    def _step_out(self, state: State, qs: Sequence[Array], i: int, j: int, out: Array) -> State:
        """``step`` written into ``out`` (see ``Solver._step_into``)."""
        if self._final_zero and j == self.steps:
            return State(lincomb_into(self._final(i), (state.x, qs[0]), out))
        return State(axpy_into(self.t[j] - self.t[i], qs[0], state.x, out))


class Heun(Euler):
    """Heun (explicit trapezoid, order 2): f at x_i and at the Euler predictor x_i + h f_i.

    Two evaluations a step; a final step of a diffusion model to sigma = 0 takes one (it returns
    the data prediction), so N steps cost 2N - 1 evaluations, as in diffusers.

    Args:
        model: a ``DiffusionModel`` or ``VectorField``.
        times: (T + 1,) grid times.
    """

    name = "heun"
    order = 2  # the local error estimate (``local_error``) is then the second difference's: the error is O(h^3)

    def evals(self, i: int, j: int) -> int:
        """2, or 1 on a final step of a diffusion model to sigma = 0.

        Args:
            i: the start grid index.
            j: the end grid index.

        Returns:
            The stage count of the step i -> j.
        """
        return 1 if (self._final_zero and j == self.steps) else 2

    def stage_point(self, state: State, qs: Sequence[Array], i: int, j: int, k: int) -> tuple[Array, int]:
        """The Euler predictor x_i + (t_j - t_i) qs[0], evaluated at t_j.

        Args:
            state: the trajectory's state at ``i``.
            qs: stage 0's velocity, shape S.
            i: the start grid index.
            j: the end grid index.
            k: the stage (1).

        Returns:
            (predictor of shape S, ``j``).
        """
        return lincomb((1.0, self.t[j] - self.t[i]), (state.x, qs[0])), j

    def step(self, state: State, qs: Sequence[Array], i: int, j: int) -> State:
        """x_j = x_i + h/2 (qs[0] + qs[1]); with one stage (final step to sigma = 0) as ``Euler.step``.

        Args:
            state: the trajectory's state at ``i``.
            qs: the velocities at x_i and at the predictor, shape S each.
            i: the start grid index.
            j: the end grid index.

        Returns:
            The ``State`` at ``j``.
        """
        if len(qs) == 1:
            return super().step(state, qs, i, j)
        h = self.t[j] - self.t[i]
        return State(lincomb((1.0, 0.5 * h, 0.5 * h), (state.x, qs[0], qs[1])))

    _step_out_of = step

    def _step_out(self, state: State, qs: Sequence[Array], i: int, j: int, out: Array) -> State:
        """``step`` written into ``out`` (see ``Solver._step_into``)."""
        if len(qs) == 1:
            return super()._step_out(state, qs, i, j, out)
        h = self.t[j] - self.t[i]
        return State(lincomb_into((1.0, 0.5 * h, 0.5 * h), (state.x, qs[0], qs[1]), out))
