"""Euler and Heun on the ODE dx/dt = f(x, t) in the grid's own time variable.

For a rectified-flow model this is the flow-matching Euler step x_j = x_i + (t_j - t_i) v and for
EDM (t = sigma) it is k-diffusion's Euler/Heun. Heun (trapezoid, order 2) evaluates f at x_i and
at the Euler predictor x_i + h f_i. A step of a diffusion model to sigma = 0 is first order and
exact there: it returns the data prediction D(x_i) (for rectified flow and EDM that *is* the Euler
step; for VP it replaces Euler in t, whose velocity is singular at t = 0). Heun takes one
evaluation for it, so N Heun steps cost 2N - 1 evaluations, as in diffusers.
"""

from __future__ import annotations

from .._backend import add_into, lincomb
from ..models import DiffusionModel
from .base import Solver, State


class Euler(Solver):
    name = "euler"

    def __init__(self, model, times):
        super().__init__(model, times)
        m = self.model
        self._final_zero = isinstance(m, DiffusionModel) and float(m.schedule.sigma(self.times[-1])) == 0.0

    def jump_coeffs(self, i, j):
        if self._final_zero and j == self.steps:
            return self._to_data(i)
        return (1.0, self.t[j] - self.t[i])

    def _to_data(self, i):
        """(c_x, c_q) with D(x, t_i) = c_x x + c_q f(x, t_i): a step to sigma = 0 returns the data prediction."""
        c = self._jumps.get(i)
        if c is None:
            (a_d, b_d), _ = self.model.data_eps_coefficients(self.t[i])
            a_v, b_v = (0.0, 1.0) if self._coef is None else self._coef[i]
            c = self._jumps[i] = (a_d - b_d * a_v / b_v, b_d / b_v)
        return c

    def step(self, state, qs, i, j):
        if self._final_zero and j == self.steps:
            return State(lincomb(self._to_data(i), (state.x, qs[0])))
        return State(add_into((self.t[j] - self.t[i]) * qs[0], state.x))  # x + h f, as lincomb forms it


class Heun(Euler):
    name = "heun"

    def evals(self, i, j):
        return 1 if (self._final_zero and j == self.steps) else 2

    def stage_point(self, state, qs, i, j, k):
        return lincomb((1.0, self.t[j] - self.t[i]), (state.x, qs[0])), j

    def step(self, state, qs, i, j):
        if len(qs) == 1:
            return super().step(state, qs, i, j)
        h = self.t[j] - self.t[i]
        return State(lincomb((1.0, 0.5 * h, 0.5 * h), (state.x, qs[0], qs[1])))
