"""``chords_jax.parallel``: the core's sliding-window methods (cascade, ParaDiGMS, ParaSolver) compiled.

The core runs them (``chords_core.methods.window.sliding_window``) with its control flow on the
host: each sweep evaluates the window, then Python scores the points, slides the window and seeds
the new points. Here one call is one jitted ``jax.lax.while_loop`` whose iterations are the sweeps,
in fixed shapes (W = ``cores`` lanes):

- the loop carries the window only: the points x_b .. x_{b+W} (W + 1 rows), for the ``"error"``
  scale the quantity at b - 1 (first-order solvers), the window start b, the counts, each sweep's new start
  and the first bad output (a dynamic update of a T-row buffer copies the whole buffer per
  iteration on XLA:CPU, so the accepted points are not kept: each is final once passed);
- a sweep evaluates the W lanes b .. b + W - 1 in one batched model call; the lanes past
  e = min(b + W, T) are masked (evaluated at a valid time, their outputs zeroed and unused);
- the fine steps Phi_m = a_m x_m + b_m q_m, and the update from the left
  x_{m+1}^new = Phi_m + (x_m^new - x_m^old), written as d_k = sum_{l <= k} (Phi_l - x_{b+l+1}^old)
  (how far point b + k + 1 moves: one product with a triangle of ones) and
  x_{b+k+1}^new = Phi_k + d_{k-1}, exactly Phi_k where no earlier point moved, as in the core;
- the scores (``"noise"``: change^2 / (D var) per sample; ``"level"`` (the cascade sampler's
  default for a diffusion model): change^2 / (D max(level_floor, sigma_j)^2); ``"error"``: change^2 against
  min(e_j^2, e_{j-1}^2) of the solver's local error estimate from the latest quantity at each
  index, ``_PointErrors``), the first point over tolerance and the slide are array operations;
- the next window (the new points up to x_e, then the seeds: ``"copy"``, ``"jump"``, ``"jump2"``
  from coefficient tables per window end) is one product of a small matrix with the rows
  [new; d; d2] (d, d2: the data predictions the seeds hold fixed; a new point is picked by a
  one-hot row: exact);
- the non-finite check of the outputs runs on the device and stops the loop at the first bad round.

The per-step coefficients (solver steps, output conversions, data predictions, seeds, local-error
coefficients, noise variances) are computed on the host once by the core's own objects (the
solver's ``step``, ``quantity_of`` and the ``Seeder`` probed with unit vectors: exact) and passed
as arrays, so another grid of the same length does not recompile. After the loop one transfer
brings the counts and each sweep's new window start; the sweep ``log`` and ``trace`` are rebuilt
from those (each sweep is one round: the solvers compiled here take one evaluation per step).

The arithmetic is the core's up to rounding (XLA contracts multiply-adds into FMAs and sums the
moves as a product), so in float64 the runs agree to about 1e-15 and every acceptance decision
with them, except at ``tol=0``: there a point is accepted only when its change is exactly zero,
i.e. when the Picard iterate reached a bitwise fixed point, which depends on the last bit of every
operation (the core itself accepts at different sweeps on numpy and on jax arrays); the answer is
the sequential solution either way.

Compiled: single-evaluation solvers without history (``"euler"``, ``"ddim"``). Not compiled:
multi-stage solvers (Heun: one round per stage per sweep, the stage points made from the first
stage's values), multistep solvers (DPM-Solver++(2M/3M), UniPC: the history chains through the
window and the accepted prefix), ParaTAA (triangular Anderson mixing: a ridge least-squares solve
per point from a residual history of varying length) and Anderson mixing in the cascade sampler.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chords_core import _backend as B
from chords_core.call import begin
from chords_core.checks import check_bool, check_choice, check_cores, check_grid
from chords_core.local_error import LocalError
from chords_core.methods import METHODS, RECOMMENDED, check_options
from chords_core.methods.cascade import LEVEL_FLOOR as CASCADE_FLOOR
from chords_core.methods.cascade import RIDGE as CASCADE_RIDGE
from chords_core.methods.cascade import check_applies
from chords_core.methods.cascade import default_tol as cascade_tol
from chords_core.methods.cascade import default_tol_for as cascade_tol_for
from chords_core.methods.cascade import resolve_scale as cascade_scale
from chords_core.methods.cascade import tol_steps as cascade_tol_steps
from chords_core.methods.paradigms import DEFAULT_TOL as PEER_TOL
from chords_core.methods.window import (
    MULTISTEP,
    VARIANCES,
    Seeder,
    Sweep,
    _inverse_scales,
    absolute_tol,
    point_where,
    row_size,
    tolerance_sq,
)
from chords_core.models import ModelOutputError, is_plain_ode
from chords_core.plan import Eval, Round
from chords_core.results import Hit, Result
from chords_core.solvers import DPMSolverPP, Euler, Solver, State

from .api import CACHES, _as_state, _model_key, check_alive, inside_transformation, options_key, solver_key
from .multihost import check_args_devices
from .run import (
    NO_BAD,
    PROGRAM_CACHES,
    _evaluator,
    _function,
    after_run,
    cached_program,
    check_signature,
    lru_get,
    lru_put,
    time_dtype,
    traced,
)

__all__ = ["parallel", "WINDOW_METHODS", "WINDOW_SOLVERS", "clear_cache"]

#: The methods of ``chords_core.parallel`` compiled here: (seed, scale, default tol (a number, or a
#: function of the steps), own options).
WINDOW_METHODS: dict[str, tuple[str, str, float | Callable[[int], float], tuple[str, ...]]] = {
    "cascade": ("solver", "auto", cascade_tol, ("anderson", "history_gain", "level_floor", "ridge", "scale")),
    "paradigms": ("copy", "noise", PEER_TOL, ("variance", "multistep")),
    "parasolver": ("jump", "noise", PEER_TOL, ("variance", "multistep")),
}

#: The solvers compiled here: one model evaluation per step, no history.
WINDOW_SOLVERS = ("ddim", "euler")

_NOT_COMPILED = {
    "chords": "CHORDS has a static schedule and is compiled by chords_jax.chords",
    "srds": "SRDS has a static schedule and is compiled by chords_jax.srds",
    "parataa": ("ParaTAA is not compiled: its triangular Anderson mixing solves a ridge least-squares problem per "
                "point from a residual history of varying length; run chords_core.parataa on jax arrays"),
}

_UNSUPPORTED_SOLVER = {
    "heun": "two model evaluations per step (a sweep takes one round per stage, the second stage's points made "
            "from the first's values)",
    "dpmpp_2m": "a multistep solver (its history chains through the window and the accepted prefix)",
    "dpmpp_3m": "a multistep solver (its history chains through the window and the accepted prefix)",
    "unipc": "a multistep predictor-corrector (history and a pending corrector chain through the window)",
    "unip": "a multistep solver (its history chains through the window and the accepted prefix)",
}

_JITTED: OrderedDict[tuple, Callable] = OrderedDict()
PROGRAM_CACHES.append(_JITTED)  # (a function's programs dropped where what it reads changed: run.check_reads)
_SETUPS: OrderedDict[tuple, Any] = OrderedDict()
_TRACES: OrderedDict[tuple, tuple] = OrderedDict()
_ZEROS: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_SIZE = 32


def clear_cache() -> None:
    """Drop the cached window executables, coefficient tables and traces (and the models they hold)."""
    for cache in (_JITTED, _SETUPS, _TRACES, _ZEROS):
        cache.clear()


CACHES.append(clear_cache)  # chords_jax.clear_cache empties these too


def _put(cache: OrderedDict, key: tuple, value: Any) -> Any:
    return lru_put(cache, key, value, _CACHE_SIZE)


# ---------------------------------------------------------------------------------------------------
# host side: checks and the coefficient tables


class _Setup:
    """What a call needs besides x: the static shape of the program and its coefficient tables
    (host arrays, float64; cast to the state's dtype and put on the device once per dtype)."""

    def __init__(self, sol: Solver, model: Any, times: np.ndarray, W: int, seed: str, scale: str, variance: str,
                 numel_row: int, level_floor: float = 1.0) -> None:
        T = sol.steps
        self.T, self.W, self.seed, self.scale = T, W, seed, scale
        e2, e3 = np.eye(2), np.eye(3)
        # the fine step Phi_m(x, q) = a x + b q and the output conversion q = qa x + qb out, probed
        # with unit vectors through the solver's own methods (exact: one nonzero term per element)
        step = np.array([sol.step(State(e2[0]), [e2[1]], m, m + 1).x for m in range(T)])
        conv = np.array([sol.quantity_of(e2[0], e2[1], i) for i in range(T)])
        data = np.array([c if (c := sol.data_coeffs(i)) is not None else (0.0, 1.0) for i in range(T)])
        self.converts = bool(sol.converts)
        tabs: dict[str, np.ndarray] = {
            "t": np.asarray(times, np.float64), "a": step[:, 0], "b": step[:, 1],
            "qa": conv[:, 0], "qb": conv[:, 1], "da": data[:, 0], "dq": data[:, 1],
        }
        if scale != "error":  # "noise" / "level": a weight per point on its squared change
            tabs["w"] = _inverse_scales(model, times, scale, variance, level_floor) / numel_row
        else:  # "error": |e_j|^2 = row_sq(q_j - q_{j-1}) * coef_j^2 (first-order solvers: p = 1)
            local = LocalError(sol)
            assert local.p == 1, "the compiled solvers are first order"
            tabs["c2"] = np.array([0.0] + [local.coefficient(j) * local.coefficient(j) for j in range(1, T + 1)])
        if seed != "copy":
            seeder = Seeder(sol, model, 2 if seed in ("jump2", "solver") else 1)
            first = np.zeros((T + 1, W, 3))
            first[:, :, 0] = 1.0  # past T: copies (rows never read)
            second = first.copy()
            for e in range(1, T + 1):
                # "solver": the solver's own steps with the extrapolated data prediction (no history
                # here: linear in (x_e, d, d2), probed with unit vectors; None: the jump's)
                chain = (seeder.chain(State(e3[0]), e3[1], e - 1, e3[2], e - 2, min(e + W, T))
                         if seed == "solver" and e >= 2 else None)
                for k in range(W):
                    j = e + 1 + k
                    if j > T:
                        break
                    first[e, k] = seeder.seed(e3[0], e3[1], e, e - 1, j)
                    if chain is not None:
                        second[e, k] = chain[k]
                    elif e >= 2 and seeder.order > 1:
                        second[e, k] = seeder.seed(e3[0], e3[1], e, e - 1, j, e3[2], e - 2)
                    else:
                        second[e, k] = first[e, k]
            tabs["s1"], tabs["s2"] = first, second
        self.tabs = tabs
        self.device: dict[tuple, dict] = {}

    def arrays(self, dtype: Any, tdtype: Any) -> dict:
        """The tables on the default device, floats in ``dtype`` (as the core's Python-float
        coefficients act on arrays of that dtype), the times in ``tdtype`` (``run.time_dtype``); cached
        per both."""
        key = (np.dtype(dtype), np.dtype(tdtype))
        got = self.device.get(key)
        if got is None:
            with jax.ensure_compile_time_eval():  # concrete, as ``_zeros``
                got = self.device[key] = jax.device_put(
                    {k: (v.astype(key[1] if k == "t" else dtype) if v.dtype == np.float64 else v)
                     for k, v in self.tabs.items()})
        return got


def _check_solver(sol: Solver) -> None:
    """``ValueError`` naming ``solver`` unless it is compiled here (one evaluation per step, no history)."""
    ok = (type(sol) is Euler or (type(sol) is DPMSolverPP and sol.order == 1)) and sol.history_size == 0 \
        and all(v == 1 for v in sol.evals_per_step())
    if not ok:
        why = _UNSUPPORTED_SOLVER.get(sol.name, "not one of the compiled solvers")
        raise ValueError(f"solver: {sol.name!r} is not compiled by chords_jax.parallel: {why}; the compiled solvers "
                         f"are {WINDOW_SOLVERS} (run the others with chords_core.parallel on jax arrays)")


def _times(a: Any, b: Any) -> Any:
    """a * b in the dtype jax's standard promotion gives, made explicit: under
    ``jax_numpy_dtype_promotion="strict"`` the window methods failed on their own float32 x float64
    (x64) and float16 x float32 products (a user trial; ``jnp.promote_types`` is strict there too)."""
    with jax.numpy_dtype_promotion("standard"):
        dt = jnp.result_type(a, b)
    return a.astype(dt) * b.astype(dt)


_WIDE = np.empty(0)  # (``tolerance_sq``'s ``like``: a numpy array)


def _threshold(tol2: float, dtype: Any) -> np.ndarray:
    """tol^2 as [mantissa, exponent] in the scores' dtype (float64 for float64 states, else float32):
    the run compares a score with ``ldexp(mantissa, exponent + 2 ue)``, where 2^ue scales the changes
    before they are squared (``unit`` in the program: near 1 / tol, or on the local-error ratio 1 for
    the threshold), so that ``score > threshold`` there is the core's ``float(score) > tol2``; the
    mantissa is rounded down (for a score s in the dtype: s > t <=> s > rd(t)), and a mantissa of -1
    is tol 0, where a point is accepted only when it did not move at all.

    (Passed as a float, a tol^2 below the dtype's normal range was flushed to 0 by XLA on the CPU and
    ran as tol 0: 23 rounds where the core took 15, float32 states of 1e-18 at tol 1e-21, a trial.)"""
    cmp = np.float64 if dtype == np.float64 else np.float32
    if tol2 <= 0:
        return np.asarray([-1, 0], cmp)
    m, e = np.frexp(min(tol2, np.finfo(np.longdouble).max))  # (m in [0.5, 1): a normal number either way)
    t = cmp(m)
    if t > m:
        t = np.nextafter(t, cmp(0))
    return np.asarray([t, e], cmp)


# ---------------------------------------------------------------------------------------------------
# the compiled program


def _program(model: Any, setup: _Setup, check: bool, with_args: bool) -> Callable:
    """The jitted ``run(x, tabs, tol2, zeros, args) -> (x_T, counts)``, ``counts`` = [rounds, nfe, width,
    bad, each sweep's new window start (T entries)]; cached per (model function, T, W, seed, scale,
    conversion, check, args); jax retraces it per shape and dtype of x."""
    key_model, evaluate = _evaluator(model, with_args)
    T, W, seed, scale, converts = setup.T, setup.W, setup.seed, setup.scale, setup.converts
    p = 1  # the local error estimate's order (``LocalError.p``): the compiled solvers are first order
    key = (key_model, T, W, seed, scale, converts, check)
    fn = cached_program(_JITTED, key, model, _CACHE_SIZE)
    if fn is not None:
        return fn
    check_signature(model, with_args)

    def run(x, tabs, tol2, zeros, args):
        S, N, dt = x.shape, x.size, x.dtype
        cmp = tol2.dtype
        R = S[0] if len(S) > 1 else 1  # samples scored separately (``_backend.row_sq``)

        # the changes are squared as unit * d, unit = 2^ue a power of two (exact: the same decisions), summed in
        # float32 or wider (``wide``: float16 changes halved first rounded to 0, a review), so that the scores near
        # the threshold stay inside the sums' range (before, float32 states of 1e-18 at tol 1e-21 ran as tol 0, 23
        # rounds where the core took 15, and float64 states beyond 1e154 overflowed: T rounds, a trial):
        # - "noise", "level": by the tolerance, the same for every sample, tol^2 unit^2 in [0.5, 2); a change
        #   far below it may underflow to 0 and one far above overflow to inf, on the side the core decides
        #   them (by x_0 instead, a state growing from 1e-200 or a sample of one large still component ran
        #   near sequentially, a review);
        # - "error": a ratio of two sums of squares, per sample and per sweep: the changes by a power of two
        #   near 1 / the window's largest |x|, the solver's quantities by one near 1 / their largest, and the
        #   second sum brought to the first's unit by that power of two's ratio (float32 squares underflowed
        #   from states of about 1e-17: 1.3x the sequential error at 1e-20; scaled once by x_0, a state
        #   growing from 1e-200 overflowed: 23 rounds where the core took 13, session 55's note).
        wide = cmp  # (float32 or wider: the threshold's dtype, ``_threshold``)
        lo, hi = 2 - jnp.finfo(wide).maxexp, jnp.finfo(wide).maxexp - 2

        def exponent(v):  # (L, N) -> (R,): ue per sample, 2^ue |v| below 1 and near it (0 for a zero or empty v)
            if N == 0:
                return jnp.zeros(R, jnp.int32)
            m = jnp.max(jnp.abs(v.reshape(-1, R, N // R)), axis=(0, 2))
            return jnp.where(m > 0, jnp.clip(-jnp.frexp(m)[1], lo, hi), 0).astype(jnp.int32)  # (a subnormal m too)

        ue = jnp.broadcast_to(jnp.where(tol2[0] > 0, jnp.clip(-(tol2[1].astype(jnp.int32) // 2), lo, hi), 0), (R,))

        def row_sq(d, ue):  # (L, N) -> (L, R): per lane, per sample sum of squares of 2^ue d (the core's, on L R rows)
            if N == 0:  # (an empty batch: no sample; a reshape to (L, 0, -1) divided by zero)
                return jnp.zeros((d.shape[0], R), cmp)
            unit = jnp.ldexp(jnp.ones((), wide), ue)
            rows_ = d.reshape(d.shape[0], R, -1).astype(wide) * unit[None, :, None]  # (fused into the reduction)
            return B.row_sq(rows_.reshape(d.shape[0] * R, -1)).reshape(d.shape[0], R)

        # the threshold per sample, below the largest finite value (a score that overflowed to inf stays over
        # it); tol 0 (mantissa -1), or a threshold below the normal range (a local-error ratio under about 1e-19
        # in float32), which XLA on the CPU flushes to 0 as it does the scores there: a point is accepted only
        # when it did not move at all (tol 0, the safe side, as ``_backend.square`` for jax arrays)
        thr = jnp.minimum(jnp.ldexp(tol2[0], tol2[1].astype(jnp.int32) + (0 if scale == "error" else 2 * ue)),
                          jnp.finfo(cmp).max)
        exact = jnp.broadcast_to(thr < jnp.finfo(cmp).tiny, (R,))

        lane = jnp.arange(W, dtype=jnp.int32)
        rows = jnp.arange(W + 1, dtype=jnp.int32)
        tri = jnp.tril(jnp.ones((W, W), dt))
        # the carry holds the window only (x_b .. x_{b+W}; the quantity at b - 1): a
        # dynamic update of a T-row buffer copies the whole buffer per iteration on XLA:CPU
        Xw = jnp.broadcast_to(x.reshape(1, N), (W + 1, N))
        Qh = None
        if scale == "error":  # |x_0|^2 per sample (1, R), by 2^ue0: ``_PointErrors.tiny`` in each sweep's unit
            ue0 = exponent(x.reshape(1, N))
            sq0 = row_sq(x.reshape(1, N), ue0)
            Qh = jnp.zeros((1, N), dt)
        carry0 = (Xw, Qh, jnp.int32(0), jnp.int32(0), jnp.int32(0), jnp.int32(0), jnp.zeros(T, jnp.int32),
                  jnp.int32(NO_BAD))

        def cond(c):
            return (c[2] < T) & (c[7] == NO_BAD)

        def body(c):
            Xw, Qh, b, rounds, nfe, width, starts, bad = c
            e = jnp.minimum(b + W, T)
            n = e - b
            active = lane < n
            P, Pn = Xw[:W], Xw[1:]  # the window's points; x_{b+1} .. x_{b+W} before the sweep
            ti = jnp.minimum(b + lane, T - 1)  # masked lanes (past T): a valid time, outputs unused
            out = evaluate(P.reshape((W,) + S), tabs["t"][ti], args).reshape(W, N)
            if check:  # out @ 0: 0 for a finite row, nan for a row with a nan or an inf (see run.py)
                ok = jnp.isfinite(out @ zeros) | ~active
                bad = jnp.where(ok.all(), NO_BAD, rounds * W + jnp.argmin(ok).astype(jnp.int32))
            out = jnp.where(active[:, None], out, 0)  # masked lanes: nothing reaches the products below
            Q = tabs["qa"][ti][:, None] * P + tabs["qb"][ti][:, None] * out if converts else out
            Phi = tabs["a"][ti][:, None] * P + tabs["b"][ti][:, None] * Q

            # the update from the left, x_{m+1}^new = Phi_m + (x_m^new - x_m^old), m = b + k: how far point
            # b + k + 1 moves is d_k = sum_{l <= k} (Phi_l - x_{b+l+1}^old) (one product with a triangle of
            # ones, a single pass; a lane-by-lane chain is recomputed in every later lane's kernel by XLA)
            # and x_{b+k+1}^new = Phi_k + d_{k-1}: exactly Phi_k where no earlier point moved, as in the core
            moved = jnp.matmul(tri, jnp.where(active[:, None], Phi - Pn, 0), precision=jax.lax.Precision.HIGHEST)
            new = Phi + jnp.concatenate([jnp.zeros((1, N), dt), moved[:-1]])
            uw = exponent(Xw) if scale == "error" else ue  # (the window before the sweep: x_b .. x_{b+W})
            csq = row_sq(moved, uw)  # (W, R): the change of point b + k + 1
            # whether point b + k + 1 moved (W, R), where tol 0 makes a point exact: unmoved, as in the core (not
            # when the squares of its change underflow to 0, nor when it never blocks: variance "out", T - 1);
            # the points compared, not their change, which XLA on the CPU flushes to 0 where it is subnormal
            # (states of 1e-300 in float64, 1e-36 in float32 were accepted moving: 1.4e-6 and 1.5 off, a trial)
            changed = jnp.any((new != Pn).reshape(W, R, N // max(R, 1)), axis=2)
            if scale != "error":
                w = tabs["w"][jnp.minimum(b + lane + 1, T)]
                # as the core: a point that never blocks (w = 0) scores 0 unless its change is nan or
                # inf, and a nan score is over tolerance (a diverged iterate is never accepted); one that
                # blocks unless unmoved (an infinite w, variance "out" where it is 0, ``window._weighted``):
                # the points compared, not the squares of their change, which may underflow to 0
                score = jnp.where(csq == 0, 0, _times(csq, w[:, None]))
                over = jnp.where(jnp.isinf(w)[:, None], changed, ~(score.astype(cmp) <= thr))  # (W, R)
            else:
                delta = Q - jnp.concatenate([Qh, Q[:-1]])  # q_j - q_{j-1}, j = b + k (``LocalError``, p = 1)
                uq = exponent(jnp.where(active[:, None], delta, 0))  # (lanes past T: not in any estimate)
                # (a floor beyond the sums' range, of a state 1e-154 times x_0's or smaller, capped: finite, as
                # the core's longdouble one, under which every change of the window's size is accepted)
                fs = jnp.finfo(sq0.dtype)
                tiny = jnp.minimum(fs.tiny + 1e-24 * jnp.ldexp(sq0, 2 * (uw - ue0)), fs.max / 4)
                E = _times(jnp.ldexp(row_sq(delta, uq), 2 * (uw - uq)),
                           tabs["c2"][jnp.minimum(b + lane, T)][:, None]) + tiny
                bound = E[jnp.minimum(rows, n - 1)]  # of point b + row (``_PointErrors._bound``)
                has = ((rows < n) & (b + rows >= p)) | ((rows == n) & (n - 1 > 0) & (b + n - 1 >= p))
                # an estimate that overflowed is none, as the core's; the core sums squares in longdouble where
                # the platform has it, so its estimates stay finite further (where one here leaves the sums'
                # range in the window's unit, 2^1024 times the window's size in float64, the two differ: this
                # path then accepts less, never on an infinite estimate)
                has = has & jnp.all(jnp.isfinite(bound), axis=1)
                est = jnp.where(has[:-1, None], jnp.minimum(bound[1:], bound[:-1]), bound[1:])
                over = jnp.where(has[1:, None], ~((csq / est).astype(cmp) <= thr), changed)  # (W, R)
            over = jnp.any(jnp.where(exact[None, :], changed, over), axis=1)  # (no sample: none over)
            hit = over & active
            nb = jnp.where(hit.any(), b + 1 + jnp.argmax(hit).astype(jnp.int32), e)
            # the next window x_nb .. x_{nb+W}: the new points x_{b+1} .. x_e, then the seeds x_{e+1} ..
            # (when e < b + W, e = T and what follows x_T is never used), as one product of a small
            # matrix with the rows [new; d; d2]: a new point is picked (one term: exact), a seed combines
            # x_e = new[n - 1] with the data predictions d = da x + dq q of the last evaluated point(s)
            # (XLA:CPU emits a dynamic slice of joined rows, or a gather, as a slow per-element loop)
            at = nb + rows  # the grid index of each row of the next window
            col = jnp.arange(W + (0 if seed == "copy" else 2), dtype=jnp.int32)[None, :]
            fresh = (col == jnp.where(at <= e, at - b - 1, n - 1)[:, None]).astype(dt)  # new x_at, or x_e
            if seed == "copy":
                pick, pool = fresh, new
            else:  # x_e = new[n - 1] and the data predictions d (of point e - 1) and d2 (of point e - 2)
                def prediction(k):
                    j = b + k
                    pt, q = (jax.lax.dynamic_index_in_dim(v, k, keepdims=False) for v in (P, Q))
                    return tabs["da"][j] * pt + tabs["dq"][j] * q

                two = n >= 2
                pool = jnp.concatenate([new, prediction(n - 1)[None], prediction(jnp.maximum(n - 2, 0))[None]])
                co = tabs["s1"][e] if seed == "jump" else jnp.where(two, tabs["s2"][e], tabs["s1"][e])
                co = co[jnp.minimum(jnp.maximum(at - e - 1, 0), W - 1)]  # (W + 1, 3): on x_e, d, d2 (0 in "s1")
                seeds = co[:, 0:1] * fresh + co[:, 1:2] * (col == W).astype(co.dtype) + co[:, 2:3] * (
                    col == W + 1).astype(co.dtype)  # (bool cast: "strict" promotion refuses it implicitly)
                pick = jnp.where((at > e)[:, None], seeds, fresh)
            Xw = jnp.matmul(pick, pool, precision=jax.lax.Precision.HIGHEST)
            if scale == "error":
                Qh = jax.lax.dynamic_slice_in_dim(Q, nb - b - 1, 1)  # q at nb - 1 (>= b: a row of Q)
            starts = starts.at[rounds].set(nb)
            return Xw, Qh, nb, rounds + 1, nfe + n, jnp.maximum(width, n), starts, bad

        Xw, _, _, rounds, nfe, width, starts, bad = jax.lax.while_loop(cond, body, carry0)
        # the counts in one array (one transfer): rounds, nfe, width, bad, then the sweeps' new starts
        return Xw[0].reshape(S), jnp.concatenate([jnp.stack([rounds, nfe, width, bad]), starts])

    return _put(_JITTED, key, jax.jit(traced(run, key_model[1], _function(model), True)))


# ---------------------------------------------------------------------------------------------------
# the public entry point


def parallel(
    model: Any,
    x: Any,
    grid: Any,
    solver: str | Solver = "euler",
    *,
    cores: int,
    method: str | None = None,
    tol: float | None = None,
    args: Any = None,
    executor: None = None,
    progress: bool = False,
    **options: Any,
) -> Result:
    """``chords_core.parallel`` for its sliding-window methods, compiled: one ``lax.while_loop`` per call.

    Runs the cascade sampler, ParaDiGMS or ParaSolver on a window of ``cores`` lanes as the core
    does (``chords_core.methods.window.sliding_window``) and returns the same ``Result``: the
    same ``x`` (to rounding), ``rounds``, ``nfe``, ``width``, ``log`` (a ``Sweep`` per sweep) and
    ``trace``, with ``x`` a jax array. Each sweep is one batched model call and nothing returns to
    the host until the run is over (then one transfer: the counts and the sweeps' window starts).

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` whose function jax can trace.
        x: the initial state (shape (B, ...) for a ``DiffusionModel``), floating.
        grid: the T + 1 times.
        solver: ``"euler"`` or ``"ddim"`` (``WINDOW_SOLVERS``; or such a bound ``Solver``): one
            evaluation per step, no history. Others raise ``ValueError`` naming ``solver``.
        cores: the window's lanes, 1 <= cores <= T.
        method: ``"cascade"`` (``None``: the core's ``RECOMMENDED``), ``"paradigms"`` or
            ``"parasolver"``. ``"chords"`` and ``"srds"`` are ``chords_jax.chords`` /
            ``chords_jax.srds``; ``"parataa"`` is not compiled (``ValueError``).
        tol: the acceptance tolerance (``None``: the method's own default, as its core function has it:
            cascade ``default_tol(T)`` times the local error estimate (1.0 from 20 steps up, 0.05 for a
            plain ODE; 1e-4 of the noise level, floored at 0.1, with ``scale="level"``, the default for a
            ``DiffusionModel``); ParaDiGMS and ParaSolver 0.1 of the noise level).
        args: a pytree passed to the model function as a traced third argument (``fn(x, t, args)``,
            ``f(t, y, args)``): new values without recompiling.
        executor: must be ``None``.
        progress: accepted and ignored.
        options: the method's own options (cascade: ``scale``, ``level_floor``, ``anderson`` (0 only), ``ridge`` and
            ``history_gain`` (no compiled solver has a history: it changes nothing);
            ParaDiGMS / ParaSolver: ``variance``, ``multistep``) and the solver's.

    Returns:
        The core's ``Result`` (``hits`` one output, ``coarse`` ``None``).

    In float64 the result equals the core's (every count, the log and the trace; ``x`` to ~1e-15)
    for ``tol > 0`` (a score within rounding of tol^2 can flip, docs/jax.md). At ``tol=0`` a point is accepted only when
    its change is exactly zero (the iterate reached a bitwise fixed point), which depends on the last
    bit of every operation; the
    sweeps may then differ from the core's (as the core's own do between numpy and jax arrays),
    and ``x`` is the sequential solution either way.

    It cannot run inside ``jax.jit``, ``vmap`` or ``grad`` (``TypeError``): it runs a compiled
    program of its own and reads its round counts on the host.
    """
    if executor is not None:
        raise ValueError("executor: chords_jax compiles the model evaluation itself; pass executor=None")
    inside_transformation(x, args, None, "chords_jax.parallel")  # (TypeError: it reads its rounds on the host)
    check_alive(x)  # (before the core's checks read its values)
    name = RECOMMENDED if method is None else method
    if not isinstance(name, str) or name not in WINDOW_METHODS:  # (a list: "unhashable type", naming nothing)
        if isinstance(name, str) and name in _NOT_COMPILED:
            raise ValueError(f"method: {_NOT_COMPILED[name]}")
        raise ValueError(f"method must be one of {sorted(WINDOW_METHODS)} or None (compiled here; "
                         f"chords_core.parallel has {sorted(METHODS)}), got {method!r}")
    cores = check_cores(cores, len(check_grid(grid)) - 1)  # (before the method's options, as the core's parallel)
    seed, scale, default_tol, own = WINDOW_METHODS[name]
    if "devices" in options:
        raise ValueError("devices: chords_jax.parallel runs its window on one device (chords_jax.chords and "
                         "chords_jax.srds shard over devices)")
    if name != "cascade" and "window" in options:  # as the core's parallel (cascade: a solver option)
        raise ValueError(f"window: parallel() sets the window to cores; call {name}() for another window")
    check_options(name, options, solver)  # another method's option (or nobody's), named as the core names it
    mine = {k: options.pop(k) for k in own if k in options}
    # (only the cascade takes these options; each refused where it would do nothing, as the core's, in its order)
    level_floor, anderson = CASCADE_FLOOR, 0
    if name == "cascade":  # its scale, decided for the model (as the core's, checked before the solver)
        scale = cascade_scale(mine.get("scale", scale), model)
        default_tol = partial(cascade_tol_for, model, scale=scale)
        level_floor, anderson, _ = check_applies(scale, is_plain_ode(model), mine.get("level_floor", CASCADE_FLOOR),
                                                 mine.get("anderson", 0), mine.get("ridge", CASCADE_RIDGE))
        check_bool("history_gain", mine.get("history_gain", True))  # (no compiled solver has a history: no gain)
    call = begin(model, x, grid, solver, None, options)
    sol, model = call.solver, call.model
    T = sol.steps
    W = cores  # (checked against the grid's steps above)
    if tol is None:
        tol = default_tol(T) if callable(default_tol) else absolute_tol(default_tol, model, name)
    # (formed as for sums of squares formed wide, np.longdouble where it leaves float64's range: the threshold is
    # scaled back into range on the device)
    tol2 = tolerance_sq(tol, sol, cascade_tol_steps(scale) if name == "cascade" else None, like=_WIDE)
    variance = check_choice("variance", mine.get("variance", "into"), VARIANCES)
    check_choice("multistep", mine.get("multistep", "chain"), MULTISTEP)
    if anderson:
        raise ValueError("anderson: triangular Anderson mixing is not compiled (a ridge least-squares solve per "
                         "point from a residual history of varying length); use anderson=0 or chords_core.cascade")
    _check_solver(sol)
    x = _as_state(x)
    check_args_devices(x, args)
    shape = tuple(x.shape)
    numel_row = max(1, row_size(shape))  # (as the core's: a sample of no elements never moves)
    # (a bound solver by identity: ``solver_key``)
    key = (_model_key(model, call.times), call.times.tobytes(), solver_key(solver), options_key(options), W, seed,
           scale, variance, numel_row, level_floor)
    setup: _Setup | None = lru_get(_SETUPS, key)
    if setup is None:
        setup = _put(_SETUPS, key, _Setup(sol, model, call.times, W, seed, scale, variance, numel_row, level_floor))
    check = bool(model.check_outputs)  # "auto" and "deferred" too: checked on the device
    run = _program(model, setup, check, args is not None)
    threshold = _threshold(tol2, x.dtype)
    if not isinstance(x, jax.core.Tracer):  # (put where x is, explicitly: jax.transfer_guard("disallow") refused
        # the implicit transfer of a warm call, a user trial; replicated: a 0-d value on x's own sharding
        # failed for an x sharded over a mesh, a review)
        where = x.sharding
        if not where.is_fully_replicated and isinstance(where, jax.sharding.NamedSharding):
            where = jax.sharding.NamedSharding(where.mesh, jax.sharding.PartitionSpec())
        if where.is_fully_replicated:  # (another sharding of x: the value goes as jax places it)
            threshold = jax.device_put(threshold, where)
    x_T, counts = run(x, setup.arrays(x.dtype, time_dtype(model, x.dtype)), threshold, _zeros(x.size, x.dtype), args)
    counts = np.asarray(counts)
    after_run(model)
    rounds, nfe, width, bad = (int(v) for v in counts[:4])
    starts = counts[4:]
    if bad != NO_BAD:
        r, k = divmod(bad, W)
        b = int(starts[r - 1]) if r else 0
        err = ModelOutputError.nonfinite(k, f"round {r + 1}, {point_where(b + k, 0, float(call.times[b + k]))}")
        if k > 0:  # (a user trial could not tell a run-off iterate from a broken model; another found the round
            # named on a diffusion model earlier than the core's, with nothing to say why)
            why = ", which on a plain ODE may have run off to where the field overflows" if is_plain_ode(model) else ""
            raise err.relabel(k, f"{err}; window point {b + k} lies past the window start {b} (an iterate not yet "
                              f"converged{why}): chords_core.parallel cuts the sweep there and goes on, and raises "
                              "where the window start reaches it; the compiled loop stops at it")
        raise err
    log, trace = _records(W, T, tuple(int(v) for v in starts[:rounds]))
    return Result(x=x_T, rounds=rounds, nfe=nfe, hits=(Hit(0, rounds, nfe, x_T),), coarse=None,
                  stopped_by=f"window reached T after {len(log)} sweeps", method=name, sequential_rounds=T,
                  width=width, trace=trace, log=log)


def _zeros(size: int, dtype: Any) -> Any:
    """The output check's operand: ``size`` zeros on the device (an argument, so never folded)."""
    key = (size, np.dtype(dtype))
    z = lru_get(_ZEROS, key)
    if z is None:
        with jax.ensure_compile_time_eval():  # a concrete array, even under a caller's trace: never a cached tracer
            z = _put(_ZEROS, key, jnp.zeros(size, dtype))
    return z


def _records(W: int, T: int, starts: tuple[int, ...]) -> tuple[tuple, tuple]:
    """(log, trace) of the sweeps whose new window starts are ``starts``: sweep r evaluates the
    points b .. e - 1 in round r (lane m - b, stage 0); cached."""
    key = (W, T, starts)
    got = lru_get(_TRACES, key)
    if got is not None:
        return got
    log, trace, b = [], [], 0
    for r, nb in enumerate(starts, 1):
        e = min(b + W, T)
        log.append(Sweep(r, b, e, nb))
        trace.append(Round(r, tuple(Eval(m - b, m, 0, m) for m in range(b, e))))
        b = nb
    return _put(_TRACES, key, (tuple(log), tuple(trace)))
