"""UniPC (Zhao et al. 2023): the UniP-p predictor and UniC corrector, data prediction, B(h) variants.

Step s -> t, h = lambda_t - lambda_s, hh = -h, phi1 = e^{hh} - 1, B(h) = hh ("bh1") or phi1 ("bh2").
With earlier points s_k: r_k = (lambda_{s_k} - lambda_s)/h, D1_k = (D_{s_k} - D_s)/r_k, r_p = 1.
R[i] = (r_1..r_p)^i and b_i = g_i i!/B(h) (g_1 = phi1/hh - 1, g_{i+1} = g_i/hh - 1/(i+1)!), i < p.

    base      x~_t = (sigma_t/sigma_s) x_s - alpha_t phi1 D_s
    UniP-p    x_t  = x~_t - alpha_t B(h) sum_{k<p} rho^p_k D1_k,    rho^p = R[:p-1,:p-1]^{-1} b  ([1/2] for p = 2)
    UniC-p    x^c_t = x~_t - alpha_t B(h) (sum_{k<p} rho^c_k D1_k + rho^c_p (D_t - D_s)),
              rho^c = R^{-1} b ([1/2] for p = 1)

where D_t is evaluated at the predicted x_t and is kept as the model value of the corrected point
(no extra evaluation). Both share x~_t, so the corrector is applied here as an *increment*
x^c_t = x_t + alpha_t B(h) (sum_k (rho^p_k - rho^c_k) D1_k - rho^c_p (D_t - D_s)) to whatever point
was evaluated at t. In a plain solve that point is x_t (the two forms agree to rounding); in CHORDS
it is the rectified point, and the increment keeps the rectification. The corrector of the step
into t is applied at the start of the step out of t, as in diffusers. Order: min(p, points seen,
steps left with ``lower_order_final``), first order on a final step to sigma = 0.
``lower_order_final`` (the default, diffusers' UniPC: at every step count, not only below 15 steps as
its DPM-Solver does) makes the last step first order, so the global order tends to 2 however high p
is (UniPC-2 with the corrector: about 3 from 8 to 32 steps, 1.8 from 256 to 512); ``False`` keeps p
to the last step (about 3 from 64 to 512 steps there; a grid starting at pure noise, lambda = -inf,
still warms up at first order, which bounds the order by 2 from a few thousand steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._backend import lincomb, lincomb_into
from ..checks import check_bool, check_choice, check_int
from ..models import Model
from .base import Array, DataSolver, State


class UniPC(DataSolver):
    """UniPC: the UniP-p predictor with (``corrector=True``) or without the UniC corrector.

    ``name`` is "unipc" or "unip"; ``history_size`` = order (the corrector of an order-p step looks
    p - 1 points behind its start). The pending corrector travels in ``State.aux``.

    Args:
        model: a ``DiffusionModel``.
        times: (T + 1,) grid times, noise -> data.
        order: the predictor order p, 1 to 3 (UniPC-p with the corrector has order p + 1).
        variant: B(h) = hh ("bh1") or phi1 ("bh2").
        corrector: apply UniC (no extra evaluation).
        lower_order_final: cap the order by the steps left, at every step count (diffusers' UniPC
            default); ``False``: order p up to the last step.
    """

    def __init__(self, model: Model, times: np.ndarray, order: int = 2, variant: str = "bh2",
                 corrector: bool = True, lower_order_final: bool = True) -> None:
        order = check_int("order", order, 1, 3)
        variant = check_choice("variant", variant, ("bh1", "bh2"))
        self.order, self.variant, self.corrector = order, variant, check_bool("corrector", corrector)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.name = "unipc" if corrector else "unip"
        self.history_size = order  # the corrector of an order-p step looks p - 1 points behind its start
        super().__init__(model, times)
        self._cache: dict = {}

    @property
    def accuracy(self) -> int:
        """Order of accuracy: the predictor's order, plus one with the corrector (UniC)."""
        return self.order + 1 if self.corrector else self.order

    def step(self, state: State, qs: Sequence[Array], i: int, j: int) -> State:
        """Correct the point at ``i`` (the pending UniC of the step into it), then predict x_j.

        Args:
            state: the trajectory's state at ``i``; ``state.aux`` is the pending corrector
                (start index, earlier indices) or ``None``.
            qs: the data prediction D(x_i, t_i), shape S (one stage).
            i: the start grid index.
            j: the end grid index.

        Returns:
            The ``State`` at ``j`` (the predicted point), with D_i pushed onto the history and the
            corrector of this step pending in ``aux`` (none on a final step to sigma = 0).
        """
        return self._step_out(state, qs, i, j, None)

    _step_out_of = step

    def _step_out(self, state: State, qs: Sequence[Array], i: int, j: int, out: Array | None) -> State:
        """``step`` written into ``out`` (a new array for ``None``; see ``Solver._step_into``)."""
        x, d = state.x, qs[0]
        if state.aux is not None:  # UniC for the step (s -> i) that produced x
            s, prev_c = state.aux
            cc = self._corrector(s, i, prev_c)
            hist_q = tuple(q for _, q in state.hist[: len(prev_c) + 1])
            x = lincomb((1.0,) + cc, (x, d) + hist_q)
        p = self.order_at(state, i, j, self.order, self.lower_order_final)
        prev = tuple(k for k, _ in state.hist[: p - 1])
        cp = self._predictor(i, j, prev)
        arrays = (x, d) + tuple(q for _, q in state.hist[: p - 1])
        x_next = lincomb(cp, arrays) if out is None else lincomb_into(cp, arrays, out)
        correct = self.corrector and self.sigma[j] > 0.0 and j < self.steps and self.lam[i] > -math.inf
        aux = (i, prev) if correct else None
        return State(x_next, self._push(state, i, d), aux)

    # -- coefficients -------------------------------------------------------------------------
    def _predictor(self, i, j, prev):
        key = ("p", i, j, prev)
        c = self._cache.get(key)
        if c is None:
            if self.sigma[j] == 0.0:
                c = (0.0, self.alpha[j]) + (0.0,) * len(prev)
            else:
                base, rho_p, _, ab, d1 = self._terms(i, j, prev)
                cD = base - ab * (rho_p @ d1) if len(prev) else base
                c = (self.sigma[j] / self.sigma[i],) + tuple(float(v) for v in cD)
            self._cache[key] = c
        return c

    def _corrector(self, s, t, prev):
        """Increment coefficients over (D_t, D_s, D_prev...) for correcting the step s -> t."""
        key = ("c", s, t, prev)
        c = self._cache.get(key)
        if c is None:
            _, rho_p, rho_c, ab, d1 = self._terms(s, t, prev)
            n = 1 + len(prev)
            inc = np.zeros(1 + n)  # over (D_t, D_s, D_prev...)
            if len(prev):
                inc[1:] += ab * ((rho_p - rho_c[:-1]) @ d1)
            inc[0] -= ab * rho_c[-1]
            inc[1] += ab * rho_c[-1]
            c = self._cache[key] = tuple(float(v) for v in inc)
        return c

    def _terms(self, i, j, prev):
        """Shared pieces: base D-coefficients, rho^p, rho^c, alpha_t B(h), and D1_k as rows over (D_i, D_prev...)."""
        lam = self.lam
        h = lam[j] - lam[i]
        hh = -h
        phi1 = math.expm1(hh)
        bh = hh if self.variant == "bh1" else phi1
        p = len(prev) + 1
        rks = np.array([(lam[k] - lam[i]) / h for k in prev] + [1.0])
        R = np.stack([rks**n for n in range(p)])
        g, fact, bs = phi1 / hh - 1.0, 1.0, []
        for n in range(1, p + 1):
            bs.append(g * fact / bh)
            fact *= n + 1
            g = g / hh - 1.0 / fact
        b = np.array(bs)
        rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
        if p == 1:
            rho_p = np.zeros(0)
        elif p == 2:
            rho_p = np.array([0.5])
        else:
            rho_p = np.linalg.solve(R[:-1, :-1], b[:-1])
        d1 = np.zeros((len(prev), p))  # D1_k = (D_{prev k} - D_i)/r_k over (D_i, D_prev...)
        for k in range(len(prev)):
            d1[k, 0], d1[k, k + 1] = -1.0 / rks[k], 1.0 / rks[k]
        base = np.zeros(p)
        base[0] = -self.alpha[j] * phi1
        return base, rho_p, rho_c, self.alpha[j] * bh, d1
