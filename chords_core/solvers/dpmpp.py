"""DPM-Solver++ (multistep, data prediction) of orders 1 (= DDIM), 2 and 3.

Step s -> t with h = lambda_t - lambda_s, phi1 = e^{-h} - 1, phi2 = phi1/h + 1, phi3 = phi2/h - 1/2,
D_s the data prediction at s and D_{s'}, D_{s''} at the trajectory's earlier points
(r0 = (lambda_s - lambda_{s'})/h, r1 = (lambda_{s'} - lambda_{s''})/h):

    order 1:  x_t = (sigma_t/sigma_s) x_s - alpha_t phi1 D_s
    order 2:  ... - (1/2) alpha_t phi1 D1,                 D1 = (D_s - D_{s'}) / r0  ("midpoint")
    order 3:  ... + alpha_t phi2 D1 - alpha_t phi3 D2,     D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1),
                                                           D2 = (D1_0 - D1_1)/(r0+r1)

Order schedule (as diffusers' DPMSolverMultistepScheduler): warm-up min(order, points seen);
first order on a final step to sigma = 0 (it returns D_s exactly); with ``lower_order_final``
and fewer than 15 steps the order is also capped by the number of steps left.

The order-3 step is the reference multistep formula (the DPM-Solver++ code, diffusers and
k-diffusion), kept so that a pipeline's own sampler is reproduced; it converges at order 2: D2
estimates h^2 D''/2 where the phi3 term needs h^2 D'' (D2 doubled, the step is exact on a quadratic
D(lambda), and the same trajectories converge at order 3-4). Its ``accuracy``, the order its local
error estimates and tolerances use, stays 3 (third differences): the rules built on them were
validated so (``benchmarks/safety_sweep.py``), and with second differences, the estimate of its true
order (2.2x larger at 20 steps, 9.9x at 160), CHORDS' default stop missed "no degradation" in 1 of
1,120 sweep runs of it (1.20x) and the cascade's error scale in 18 (up to 2.15x), against 0 and 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._backend import lincomb, lincomb_into
from ..checks import check_bool, check_int
from ..models import Model
from .base import Array, DataSolver, State


class DPMSolverPP(DataSolver):
    """DPM-Solver++ (multistep, data prediction) of order 1 (DDIM), 2 (2M) or 3 (3M).

    ``name`` is "ddim", "dpmpp_2m" or "dpmpp_3m" after the order; ``history_size`` = order - 1.

    Args:
        model: a ``DiffusionModel``.
        times: (T + 1,) grid times, noise -> data.
        order: 1, 2 or 3.
        lower_order_final: with fewer than 15 steps, cap the order by the steps left (diffusers'
            default).
    """

    def __init__(self, model: Model, times: np.ndarray, order: int = 2, lower_order_final: bool = True) -> None:
        self.order = order = check_int("order", order, 1, 3)
        self.name = {1: "ddim", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order]
        self.history_size = order - 1
        super().__init__(model, times)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final) and self.steps < 15
        self._cache: dict = {}

    def step(self, state: State, qs: Sequence[Array], i: int, j: int) -> State:
        """One DPM-Solver++ step i -> j of order ``order_at(...)`` (see the module docstring).

        Args:
            state: the trajectory's state at ``i``; its history holds earlier data predictions.
            qs: the data prediction D(x_i, t_i), shape S (one stage).
            i: the start grid index.
            j: the end grid index.

        Returns:
            The ``State`` at ``j`` with D_i pushed onto the history.
        """
        return self._step_out(state, qs, i, j, None)

    _step_out_of = step

    def _step_out(self, state: State, qs: Sequence[Array], i: int, j: int, out: Array | None) -> State:
        """``step`` written into ``out`` (a new array for ``None``; see ``Solver._step_into``)."""
        p = self.order_at(state, i, j, self.order, self.lower_order_final)
        prev = tuple(k for k, _ in state.hist[: p - 1])
        c = self._coeffs(i, j, prev)
        arrays = (state.x, qs[0]) + tuple(q for _, q in state.hist[: p - 1])
        x = lincomb(c, arrays) if out is None else lincomb_into(c, arrays, out)
        return State(x, self._push(state, i, qs[0]))

    def _coeffs(self, i, j, prev):
        key = (i, j, prev)
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = dpmpp_coefficients(self.alpha, self.sigma, self.lam, i, j, prev)
        return c


def dpmpp_coefficients(alpha: Sequence[float], sigma: Sequence[float], lam: Sequence[float], i: int, j: int,
                       prev: Sequence[int]) -> tuple[float, ...]:
    """Coefficients of one DPM-Solver++ step i -> j of order len(prev) + 1.

    Args:
        alpha: alpha at every grid index.
        sigma: sigma at every grid index.
        lam: the half log-SNR lambda at every grid index.
        i: the start grid index.
        j: the end grid index.
        prev: grid indices of the earlier data predictions used, newest first (0 to 2 of them).

    Returns:
        Coefficients over (x_i, D_i, D_prev[0], ...): x_j = c_0 x_i + c_1 D_i + ...
    """
    if sigma[j] == 0.0:
        return (0.0, alpha[j]) + (0.0,) * len(prev)
    h = lam[j] - lam[i]
    phi1 = float(np.expm1(-h))
    a = alpha[j]
    cD = np.zeros(1 + len(prev))  # over (D_i, D_prev...)
    cD[0] = -a * phi1
    if len(prev) >= 1:
        r0 = (lam[i] - lam[prev[0]]) / h
        d10 = np.array([1.0, -1.0] + [0.0] * (len(prev) - 1)) / r0
        if len(prev) == 1:
            cD += -0.5 * a * phi1 * d10
        else:
            r1 = (lam[prev[0]] - lam[prev[1]]) / h
            d11 = np.array([0.0, 1.0, -1.0]) / r1
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            d1 = d10 + r0 / (r0 + r1) * (d10 - d11)
            d2 = (d10 - d11) / (r0 + r1)
            cD += a * phi2 * d1 - a * phi3 * d2
    return (sigma[j] / sigma[i],) + tuple(float(v) for v in cD)
