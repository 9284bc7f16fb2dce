"""Euler and Heun on the ODE dx/dt = f(x, t) in the grid's own time variable.

For a rectified-flow model this is the flow-matching Euler step x_j = x_i + (t_j - t_i) v and for
EDM (t = sigma) it is k-diffusion's Euler/Heun. Heun (trapezoid, order 2) evaluates f at x_i and
at the Euler predictor x_i + h f_i; a final step to sigma = 0 of a diffusion model is a plain
Euler step (f is singular there), so N Heun steps cost 2N - 1 evaluations, as in diffusers.
"""

from __future__ import annotations

from .._backend import lincomb
from ..models import DiffusionModel
from .base import Solver, State


class Euler(Solver):
    name = "euler"

    def jump_coeffs(self, i, j):
        return (1.0, self.t[j] - self.t[i])

    def step(self, state, qs, i, j):
        return State(lincomb((1.0, self.t[j] - self.t[i]), (state.x, qs[0])))


class Heun(Euler):
    name = "heun"

    def __init__(self, model, times):
        super().__init__(model, times)
        m = self.model
        self._final_zero = isinstance(m, DiffusionModel) and float(m.schedule.sigma(self.times[-1])) == 0.0

    def evals(self, i, j):
        return 1 if (self._final_zero and j == self.steps) else 2

    def stage_point(self, state, qs, i, j, k):
        return lincomb((1.0, self.t[j] - self.t[i]), (state.x, qs[0])), j

    def step(self, state, qs, i, j):
        h = self.t[j] - self.t[i]
        if len(qs) == 1:
            return State(lincomb((1.0, h), (state.x, qs[0])))
        return State(lincomb((1.0, 0.5 * h, 0.5 * h), (state.x, qs[0], qs[1])))
