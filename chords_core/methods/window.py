"""Sliding-window fixed-point iteration: the machinery behind ParaDiGMS and the cascade sampler.

The sequential solve is the fixed point x_{m+1} = Phi_m(x_m) (Phi_m: the solver's step m -> m+1,
with the multistep history of the points before m). A window of ``window`` grid points b .. e-1
(e = min(b + window, T)) is swept at once: every point is evaluated in the same round (one round
per stage), each one's fine step Phi_m(x_m) is taken, and the iterate is updated from the left:

    x_{m+1} <- Phi_m(x_m) + c_m (x_m^new - x_m^old),    m = b .. e-1,   x_b^new = x_b,

so that a point whose predecessor did not move is *exactly* Phi of it (window 1 and ``tol=0`` are
the sequential solver bit for bit). ``correction`` picks c_m:

- ``"picard"`` (ParaDiGMS): c_m = 1, the cumulative Picard sum x_b + sum_{l<=m} (Phi_l(x_l) - x_l);
- ``"jump"``: c_m = a_m, the x-coefficient of the solver's coarse jump G(x, q; m -> m+1) = a x + b q
  (1 for Euler, sigma_{m+1} / sigma_m for the data-prediction solvers): the parareal correction
  G(x_m^new) - G(x_m^old) with the model value held fixed.

Each updated point is scored by its change against a ``scale`` and the window slides to the first
point whose score exceeds tol^2 (the points before it accepted), by at least 1 and at most ``window``:
that point, the new window start, is Phi of its accepted predecessor's previous iterate plus the
correction, exact at ``tol=0`` and otherwise off by -N_m (x_m^new - x_m^old) (N_m = dPhi_m/dx - I:
the step's stretch of the accepted change, of the order of the residual the accepted points keep
themselves; it can compound where h L >~ 1, as for the stiff or barely stable grids of a plain ODE).
Scales: ``"noise"`` (ParaDiGMS), |x^new - x^old|^2 / (D var) per sample (D elements per sample; var the DDPM posterior
variance of a step, see ``noise_variances``; 1 for a plain ODE),
where ``variance`` picks which step's variance scores point j: ``"into"`` (the step j-1 -> j, this
library's choice; a zero variance never blocks) or ``"out"`` (the step j -> j+1, the official
ParaDiGMS code; a zero variance weighs infinitely, as the official 1 / 0, so points T - 1 and T block
unless unmoved); ``"level"`` (ParaTAA), the mean square change against max(f, sigma_j)^2 (``level_floor``
f: ParaTAA's 1, the cascade sampler's 0.1); ``"error"``
(the cascade sampler), the change against the solver's local error estimate at j
(``local_error``).

New window points beyond the old iterate are *seeded* (``seed``):

- ``"copy"`` (ParaDiGMS): a copy of the window's new end point x_e;
- ``"jump"``: the free coarse jump from x_e with the data prediction of the last evaluated point
  (DDIM / x0-prediction jump; for a plain ODE the solver's own jump with the last value), CHORDS'
  coarse propagator and ParaSolver's initialisation. Zero evaluations;
- ``"jump2"``: the same with the data prediction extrapolated linearly in log-SNR from the last two
  evaluated points and integrated exactly (second order);
- ``"solver"`` (the cascade sampler's): the same extrapolated data prediction, fed to the solver's own
  steps from the new x_e (with its multistep history) instead of integrated exactly: the seeds aim at
  the solver's trajectory, the fixed point, not at the exact ODE's (for Euler they differ by its
  local error, O(h^2) a step, which the exact integral's O(h^3) seed pays in full). For a
  one-stage solver on a ``DiffusionModel`` with finite log-SNRs; ``"jump2"`` elsewhere.

Optionally (``anderson=m``) the not-yet-accepted points are mixed by triangular Anderson
acceleration (ParaTAA).

Multistep solvers (``multistep``): ``"chain"`` carries the history through the window (the step of
point m uses the quantities of points m-1, ... of the same sweep and the accepted ones before b), so
the fixed point is the sequential multistep solution (this library's extension); ``"restart"``
starts every sweep's first point without history (first order), as the official ParaDiGMS
DPM-Solver code does; its fixed point then differs from the sequential solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from ..call import begin, warn_caller
from ..checks import check_choice, check_float, check_int
from ..engine import evaluate_round
from ..executors import Executor
from ..history import move
from ..host import host_route
from ..local_error import LocalError
from ..models import DiffusionModel, Model, ModelOutputError, is_plain_ode
from ..plan import Eval, Round
from ..progress import progress_bar
from ..results import Hit, Result
from ..solvers import Solver, State

__all__ = ["sliding_window", "tolerance_sq", "absolute_tol", "Sweep", "Seeder", "noise_variances", "SEEDS",
           "CORRECTIONS", "VARIANCES", "MULTISTEP", "DEFAULT_WINDOW"]

SEEDS = ("copy", "jump", "jump2", "solver")
CORRECTIONS = ("picard", "jump")
VARIANCES = ("into", "out")
SCALES = ("noise", "level", "error")
MULTISTEP = ("chain", "restart")
#: the window (or the cascade sampler's lanes) where none is given, or the grid's steps where fewer
DEFAULT_WINDOW = 8
#: The default relative ridge of the Anderson mixing's least squares (ParaTAA's 1e-3).
RIDGE = 1e-3


def same_at_float32(a: float, b: float) -> bool:
    """Whether two option values are one at float32 precision (a float32 copy of a default is the
    default: ``np.float32(0.1)`` was refused as another value, a review); a value beyond float32's range
    is inf there, without numpy's overflow warning (a user trial's ``level_floor=1e300`` printed one)."""
    with np.errstate(over="ignore"):
        return bool(np.float32(a) == np.float32(b))


def check_ridge(ridge: Any, mixing: int, memory_name: str) -> float:
    """``ridge`` checked (a number >= 0, named), and refused where it does nothing: a value other
    than ``RIDGE`` with the mixing off (``mixing`` 0; ``memory_name``: the option that turns it on,
    ``anderson`` or ParaTAA's ``memory``), where it was accepted and ignored."""
    ridge = check_float("ridge", ridge, 0.0)
    if mixing == 0 and not same_at_float32(ridge, RIDGE):
        raise ValueError(f"ridge: the regularisation of the Anderson mixing, which is off ({memory_name}=0), so it "
                         f"does nothing: pass {memory_name} >= 1 with it, or leave it out")
    return ridge


class Sweep(NamedTuple):
    """One sweep: rounds after it, window [start, end), the new window start."""

    round: int
    start: int
    end: int
    accepted_to: int


def noise_variances(model: Model, times: np.ndarray) -> np.ndarray:
    """var[m] (m = 0..T): DDPM posterior variance of the step t_{m-1} -> t_m; var[0] = 1.

    var_m = sigma_m^2 (1 - exp(2 (lambda_{m-1} - lambda_m))), 0 where sigma_m = 0; all ones for a model
    without a noise schedule.
    """
    var = np.ones(len(times))
    if isinstance(model, DiffusionModel):
        sch = model.schedule
        sig = np.asarray(sch.sigma(times), np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.asarray(sch.lam(times), np.float64)
            ratio = np.exp(2.0 * (lam[:-1] - lam[1:]))
        var[1:] = np.where(sig[1:] == 0.0, 0.0, sig[1:] ** 2 * (1.0 - np.nan_to_num(ratio, nan=0.0)))
    return var


def _inverse_variances(model: Model, times: np.ndarray, variance: str) -> np.ndarray:
    """inv[j]: 1 / the variance that scores point j. A zero variance: ``"into"`` (this library's
    default) 0, the point never blocks; ``"out"`` (the official code's) infinity, as the official
    ``1 / variance`` (its list of variances ends in 0 for the step out of T, and the step out of T - 1
    into sigma = 0 has none either): the point blocks unless it did not move at all (``_weighted``),
    and the window slides to it as the first point over tolerance, one round more than ``"into"``."""
    var = noise_variances(model, times)
    if variance == "out":
        var = np.append(var[1:], 0.0)  # the step out of j; none out of T
        return np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), np.inf)
    return np.where(var > 0, 1.0 / np.where(var > 0, var, 1.0), 0.0)


#: where a multistep solver weighs a point's quantity more than this many times a first-order step
#: (``Solver.history_gains``), the cascade sampler divides the point's tolerance by the excess: over the
#: standard grids DPM-Solver++(2M) and UniPC reach 8.1 and keep their tolerances, (3M) reaches 115 on
#: uniform EDM grids (15 of 306 above); one step of 1e-5 among steps of 0.03 weighs 1,713 (a trial's
#: 2.16x the sequential error, silently)
HISTORY_GAIN_FREE = 16.0


def history_gain_sq(sol: Solver) -> list[float] | None:
    """Per grid point j (0 .. T), the factor on its squared change: (max(1, rho_j / ``HISTORY_GAIN_FREE``))^2,
    rho_j the steps' weight of the quantity at x_j (``Solver.history_gains``; 1 at T, which has none);
    ``None`` where it is 1 everywhere."""
    try:
        gains = sol.history_gains()
    except Exception as err:  # (a solver of one's own that steps no (T,) float64 vector: as without the gain)
        warn_caller(f"history_gain: solver {sol.name!r}'s steps could not be probed on float64 vectors ({err!r}); "
                    "its points keep the whole tolerance (pass history_gain=False to silence this)", RuntimeWarning)
        return None
    if gains is None or not (gains > HISTORY_GAIN_FREE).any():
        return None
    # (a gain clamped at 1e12: an infinite one scored an unmoved point 0 x inf = nan, never accepted)
    return [max(1.0, min(float(g), 1e12) / HISTORY_GAIN_FREE) ** 2 for g in gains] + [1.0]


def _weighted(change: Any, factor: float) -> Any:
    """A point's squared change (per sample) times its ``factor`` (``_inverse_scales``), what
    ``_worst`` reads; for an infinite factor the worst sample's score as a float: 0 where no sample
    moved (the official 0 x inf, which does not block), else infinity, or nan where a change is nan (a
    diverged iterate: over tolerance either way). (A float, not an elementwise choice: the changes of
    a torch state on an accelerator are tensors there.)"""
    if factor != math.inf:
        return change * factor
    worst = _worst(change)
    return worst if worst == 0 or worst != worst else math.inf


def _inverse_scales(model: Model, times: np.ndarray, scale: str, variance: str, floor: float = 1.0) -> np.ndarray:
    """inv[j]: the factor on point j's mean square change (0: never blocks; inf: blocks unless
    unmoved, ``_inverse_variances``); none for ``"error"``,
    which scores against the local error estimates instead. ``"level"``: 1 / max(``floor``, sigma_j)^2
    (ParaTAA's floor is 1)."""
    if scale == "level":  # ParaTAA: RMS(change) <= tol max(1, sigma_j); ``floor`` for 1
        sig = (np.asarray(model.schedule.sigma(times), np.float64) if isinstance(model, DiffusionModel)
               else np.ones(len(times)))
        with np.errstate(over="ignore", divide="ignore"):  # (a floor below 1e-154: an infinite factor, unmoved only)
            return 1.0 / np.maximum(floor, sig) ** 2
    return _inverse_variances(model, times, variance) if scale == "noise" else np.zeros(0)


def absolute_tol(default: float, model: Any, method: str) -> float:
    """A peer's ``default`` tolerance (ParaDiGMS, ParaSolver, ParaTAA: in the state's units, the
    diffusion convention of data of about unit size), with a ``UserWarning`` for a model that is not a
    ``DiffusionModel``: on the plain ODEs of ``benchmarks/plain_odes.py`` these defaults missed the
    no-degradation criterion in 4 (ParaTAA) to 73 (ParaDiGMS) of 105 runs, by up to 1291x."""
    if is_plain_ode(model):
        warn_caller(f"{method}: its default tol={default:g} is absolute, in the state's units (the diffusion "
                    "convention: data of about unit size); on a plain ODE it can return an output far less "
                    "accurate than the sequential solver's (benchmarks/plain_odes.py --peers); pass tol, or use "
                    "the cascade sampler (cc.parallel's default method), which measures a change against the "
                    "solver's local error", UserWarning)
    return default


def tolerance_sq(tol: Any, sol: Solver, tol_steps: int | None = None, like: Any = None) -> Any:
    """tol^2 of a window run: ``tol`` checked (a finite float >= 0), and with ``tol_steps`` scaled like
    the solver's global error from a grid of ``tol_steps`` steps to one of T: by
    min(1, (tol_steps / T)^order), order ``Solver.accuracy`` (shrunk on finer grids, never loosened
    on coarser ones); where tol^2 leaves float64's range, as ``_backend.square`` forms it for states
    like ``like``."""
    tol = check_float("tol", tol, 0.0)
    if tol_steps is not None:
        tol = tol * min(1.0, (tol_steps / sol.steps) ** sol.accuracy)
    return B.square(tol, like)


def point_where(m: int, stage: int, time: float) -> str:
    """How an error names window point ``m`` evaluated (at ``stage``) at ``time``."""
    return f"window point {m} (stage {stage}, t={time:.6g})"


def row_size(shape: tuple) -> int:
    """Elements per sample of a state of ``shape`` (its leading axis the batch; a 0-d or 1-d state
    is one sample)."""
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape))


def _worst(score: Any) -> Any:
    """The largest per-sample score (a 0-d score for a state without a batch axis), as a Python float,
    or a ``np.longdouble`` for sums of squares formed wider than float64 (``_backend.row_sq``), whose
    values a float would round to 0 or inf."""
    tp = type(score)
    if tp is np.float32 or tp is np.float64 or tp is float:
        return float(score)  # one sample: its score (the cheap hot cases)
    if tp is np.ndarray and score.size == 1:
        return score.item()
    if hasattr(score, "detach"):  # a torch tensor, maybe one that needs gradients
        score = score.detach()
    if B._numel(score) == 0:
        return 0.0  # (an empty batch: no sample over anything)
    worst = score.max() if hasattr(score, "max") else score
    return worst if type(worst) is np.longdouble else float(worst)


#: states of at least this many bytes get scratch arrays for their temporaries (``_backend.subtract_into``); below
#: it a fresh array costs less than the checks
SCRATCH_MIN_BYTES = 1 << 16


def _scratch(x: Any, n: int) -> list | None:
    """``n`` scratch arrays like ``x`` for its temporaries, for a numpy array with at least one axis of
    at least ``SCRATCH_MIN_BYTES`` (``None`` otherwise: temporaries are new arrays)."""
    if type(x) is np.ndarray and x.ndim >= 1 and x.nbytes >= SCRATCH_MIN_BYTES:
        return [np.empty_like(x) for _ in range(n)]
    return None


_UNSET: Any = object()  # a value not computed yet


def _cut_note(cuts: list[tuple[int, int]], method: str, plain: bool) -> str:
    """What ``stopped_by`` adds for sweeps cut at a non-finite output (``diverged_at``), which a
    ``RuntimeWarning`` reports too: the run went on, but a model that returns nan now and then (not an
    iterate that ran off) shows up here, not in an error; on a diffusion model (not ``plain``) the
    warning says so first (it spoke of a plain ODE only: a broken worker's nan read as a numerics
    quirk, a torch trial)."""
    if not cuts:
        return ""
    note = (f"; {len(cuts)} sweep(s) cut where the model returned non-finite values past the window start "
            f"(first: round {cuts[0][0]}, window point {cuts[0][1]})")
    why = ("taken for an iterate that ran off (a plain ODE seeded far ahead)" if plain else
           "taken for a seeded point that ran off; on a diffusion model more likely the model's own fault (a "
           "broken worker, an overflow in half precision): check it, each cut costs a sweep")
    warn_caller(f"{method}:{note[1:]}: {why}; the run went on from the accepted points", RuntimeWarning)
    return note


def diverged_at(err: ModelOutputError, idx: Sequence[int], b: int) -> int:
    """Where a sweep whose round ``err`` failed is cut: the grid index of the failing point, when the
    model returned non-finite values there and it lies past the window start ``b``. The window start
    is an accepted point (its output is on the sequential trajectory, to the tolerance); a later
    point is an iterate not yet converged, which with large steps can run off to where the model
    overflows (a plain ODE seeded several steps ahead, say), and the sweep goes on up to the point
    before it (at least the window start: each sweep still accepts a point), with the outputs before
    it that ``err.done`` holds, or evaluated again where the executor gave none. Anything else (a bad
    shape or dtype, a non-finite output at the window start) is re-raised."""
    m = idx[err.point] if err.is_nonfinite and 0 <= err.point < len(idx) else b
    if m <= b:
        raise err
    return m


def _to_data(sol: Solver, i: int) -> tuple[float, float] | None:
    """The data prediction's coefficients on (x, quantity) at grid index ``i`` (``Solver.data_coeffs``),
    or ``None`` where the seeds take the solver's quantity as it is: it is the data prediction
    ((0, 1)), or a plain ODE has none."""
    c = sol.data_coeffs(i)
    return None if c is None or c == (0.0, 1.0) else c


class Seeder:
    """Seeds for new window points: x_j from x_e with the data prediction d of the last evaluated point."""

    def __init__(self, sol: Solver, model: Model, order: int = 1):
        self.sol, self.order = sol, order
        self.path: tuple[list[float], list[float], list[float]] | None = None  # alpha, sigma, lambda per index
        self.finite: list[bool] = []  # per index: lambda finite
        self._data_steps: dict[int, tuple[float, float]] = {}  # j -> the step j -> j + 1 on (x_j, D_j)
        if isinstance(model, DiffusionModel):
            sch = model.schedule
            with np.errstate(divide="ignore"):
                alpha, sigma, lam = (np.asarray(f(sol.times), np.float64).tolist()
                                     for f in (sch.alpha, sch.sigma, sch.lam))
            self.path = (alpha, sigma, lam)
            self.finite = [math.isfinite(v) for v in lam]

    def prediction(self, x: Any, q: Any, i: int) -> Any:
        """What the seeds hold fixed: the data prediction at grid index i (the quantity for a plain ODE)."""
        c = _to_data(self.sol, i)
        return q if c is None else B.lincomb(c, (x, q))

    def chain(self, st: State, d: Any, i: int, d_prev: Any, i_prev: int, end: int) -> list | None:
        """Seeds x_{e+1} .. x_end (e = i + 1) by the solver's own steps from the state ``st`` at e (its
        multistep history included), each step's data prediction extrapolated linearly in lambda from
        ``d`` (index i) and ``d_prev`` (index ``i_prev``) and converted to the solver's quantity at the
        seeded point (``data_coeffs``). ``None`` without a noise schedule or where a lambda is not
        finite or two coincide (the caller takes the jump then)."""
        if self.path is None:
            return None
        lam, fin, sol = self.path[2], self.finite, self.sol
        e = i + 1
        if not (fin[i] and fin[i_prev] and all(fin[e:end])) or lam[i] == lam[i_prev]:
            return None
        if not sol.history_size:
            return B.lincombs(self._chain_rows(i, i_prev, end), (st.x, d, d_prev))
        slope = B.lincomb((1.0 / (lam[i] - lam[i_prev]), -1.0 / (lam[i] - lam[i_prev])), (d, d_prev))
        out = []
        for j in range(e, end):
            dj = B.lincomb((1.0, lam[j] - lam[i]), (d, slope))
            c = _to_data(sol, j)
            q = dj if c is None else B.lincomb((1.0 / c[1], -c[0] / c[1]), (dj, st.x))
            st = sol.step(st, [q], j, j + 1)
            out.append(st.x)
        return out

    def _chain_rows(self, i: int, i_prev: int, end: int) -> list[tuple[float, float, float]]:
        """``chain``'s seeds for a one-step solver without history as coefficients on (x_e, d, d_prev),
        formed in float64 by the recurrence of its steps x_(j+1) = a_j x_j + b_j q_j (``jump_coeffs``),
        q_j = (D_j - c0_j x_j) / c1_j (``data_coeffs``), D_j = (1 + r_j) d - r_j d_prev with
        r_j = (lam_j - lam_i) / (lam_i - lam_prev): every seed one combination of three states, formed
        in one block (``_backend.lincombs``), where stepping them costs two combinations and a step each."""
        lam = self.path[2]  # type: ignore[index]
        inv = 1.0 / (lam[i] - lam[i_prev])
        al, be, ga = 1.0, 0.0, 0.0  # x_j = al x_e + be d + ga d_prev
        rows = []
        for j in range(i + 1, end):
            r = (lam[j] - lam[i]) * inv
            ax, bd = self._on_data(j)
            al, be, ga = ax * al, ax * be + bd * (1.0 + r), ax * ga - bd * r
            rows.append((al, be, ga))
        return rows

    def _on_data(self, j: int) -> tuple[float, float]:
        """The step j -> j + 1 of a one-step solver as coefficients on (x_j, D_j), D_j the data prediction
        it is fed (cached per j: the solver's coefficients cost microseconds a call)."""
        got = self._data_steps.get(j)
        if got is None:
            sol = self.sol
            a, b = sol.jump_coeffs(j, j + 1)
            c = _to_data(sol, j)
            got = self._data_steps[j] = (a, b) if c is None else (a - b * c[0] / c[1], b / c[1])
        return got

    def seed(self, x_e: Any, d: Any, e: int, i: int, j: int, d_prev: Any = None, i_prev: int | None = None) -> Any:
        """x_j from x_e: the DDIM jump e -> j with data prediction ``d`` (from index i), or the solver's
        jump. With ``d_prev`` (from index ``i_prev``) and ``order=2``, the data prediction is
        extrapolated linearly in lambda and integrated exactly (a DPM-Solver++(2)-type jump)."""
        return self.seeds(x_e, d, e, i, (j,), d_prev, i_prev)[0]

    def seeds(self, x_e: Any, d: Any, e: int, i: int, js: Sequence[int], d_prev: Any = None,
              i_prev: int | None = None) -> list:
        """``seed`` at each index of ``js``, formed together (``_backend.lincombs``: the same values)."""
        if self.path is None:
            return B.lincombs([self.sol.jump_coeffs(e, j) for j in js], (x_e, d))
        second = self.order >= 2 and d_prev is not None and i_prev is not None
        rows = self._coefficients(e, i, js, i_prev if second else None)
        n = len(rows[0])
        if all(len(c) == n for c in rows):
            return B.lincombs(rows, (x_e, d, d_prev) if n == 3 else (x_e, d))
        return [B.lincomb(c, (x_e, d, d_prev) if len(c) == 3 else (x_e, d)) for c in rows]

    def _coefficients(self, e: int, i: int, js: Sequence[int], i_prev: int | None) -> list[tuple[float, ...]]:
        """Each seed's coefficients on (x_e, d) or, second order (from ``i_prev``), on (x_e, d, d_prev),
        for j in ``js``. (What does not depend on j is formed once: the same operations per seed.)"""
        assert self.path is not None
        a, s, lam = self.path
        s_e, a_e = s[e], a[e]
        if s_e == 0.0:
            return [(0.0, 1.0)] * len(js)
        finite = self.finite
        # the second-order term, where both predictions' lambdas are finite and apart (and j's, below)
        second = (i_prev is not None and finite[i] and finite[i_prev] and finite[e]
                  and lam[i] != lam[i_prev])
        if second:
            assert i_prev is not None
            lam_i = lam[i]
            over_e = lam[e] - lam_i - 1.0
            apart = lam_i - lam[i_prev]
        rows: list[tuple[float, ...]] = []
        for j in js:
            r = s[j] / s_e
            b = a[j] - r * a_e
            if not second or s[j] == 0.0 or not finite[j]:
                rows.append((r, b))
                continue
            # D(lambda) = d + (lambda - lam_i) S, S = (d - d_prev) / (lam_i - lam_prev):
            # sigma_j int_{lam_e}^{lam_j} e^l (l - lam_i) dl = a_j (lam_j - lam_i - 1) - r a_e (lam_e - lam_i - 1)
            c = (a[j] * (lam[j] - lam_i - 1.0) - r * a_e * over_e) / apart
            rows.append((r, b + c, -c))
        return rows


class _PointErrors:
    """The solver's local error e_j (``local_error.LocalError``) at window points, from the window's
    own model values, computed only for the points that get scored; a point's change is scored
    against it, per sample: change^2 / (|e_j|^2 + tiny), tiny = 1e-24 |x_0|^2 of the sample (a local
    error at rounding level relative to the sample's initial size) plus the squares' dtype's smallest
    normal number (no division by zero). Relative, so the rule does not depend on the state's units
    (an absolute 1e-30 here accepted any change of a state of about 1e-14 or smaller: a linear ODE,
    Heun, 60 steps, 4 lanes, 22x the sequential error at 1e-15, 1.001x at 1), nor on the other
    samples' (the largest sample's floor for all accepted a sample 1e-14 times smaller unconverged),
    within the range of the sums' dtype (float32 states' are float64, ``_backend.row_sq``; a jax
    float32 state with x64 off loses precision below about 1e-16, whose squares leave float32's range).

    For a numpy state of one sample (``one``) the per-sample values are numpy scalars (``sq_at``):
    the same arithmetic as on one-element arrays, without an array operation each."""

    def __init__(self, sol: Solver, x0: Any, one: bool):
        self.local = LocalError(sol)
        self.needs = self.local.needs
        self.q: list = [None] * (sol.steps + 1)  # the latest quantity evaluated at each index (stage 0)
        self.bound: list = []  # j - b -> |e_j|^2 + tiny of this sweep (None: no estimate; _UNSET: not yet known)
        self.b = 0
        self.one = one
        x0 = x0.detach() if hasattr(x0, "detach") else x0  # (no graph through the floor)
        sq = B.row_sq_one(x0) if one else B.row_sq_read(x0)
        self.tiny = B.smallest_normal(sq) + 1e-24 * sq  # per sample
        self.scratch = _scratch(x0, self.local.p)  # for the differences (reused every estimate)

    def observe(self, qs: list, b: int, e: int) -> None:
        """Take the sweep's quantities (``qs[m - b]``: point m's stage quantities, window b .. e-1);
        estimates are recomputed on demand. (What an earlier sweep no longer needs, ``release`` dropped.)"""
        q = self.q
        for m in range(b, e):
            q[m] = qs[m - b][0]
        self.bound = [_UNSET] * (e - b + 1)
        self.b = b

    def release(self, nb: int, e: int) -> None:
        """The next sweep starts at ``nb``: of this sweep's quantities (window b .. e-1) it needs the p
        before nb, which are copied out of the round's output where they pin a large one
        (``_backend.own``); the earlier ones are out of every estimate's reach, and those from nb on
        are evaluated again before they are read: both dropped, so that the round's output is freed
        before the next round's."""
        q, p = self.q, self.local.p
        for m in range(max(0, self.b - p), nb - p):
            q[m] = None
        for m in range(max(0, nb - p), nb):
            if q[m] is not None:
                q[m] = B.own(q[m])
        for m in range(nb, e):
            q[m] = None

    def _bound(self, j: int) -> Any:
        """|e_j|^2 + tiny per sample (the window's end point, not yet evaluated, takes its
        predecessor's); None without an estimate."""
        val = self.bound[j - self.b]
        if val is not _UNSET:
            return val
        needs = self.needs
        back = self.q[j - needs + 1 : j + 1][::-1] if j + 1 >= needs else [None]
        if all(v is not None for v in back):
            val = self.local.sq_at(j, back, self.scratch, self.one) + self.tiny
            if not _worst(val) < math.inf:  # (a nan anywhere too: _worst propagates it)
                # an estimate that overflowed is none (a user trial: on a grid to 1.7e308 an infinite one
                # scored every change 0 and accepted a finite output where the sequential one is inf); a
                # longdouble sum finite above float64's range stays (_worst keeps it wide: a review found
                # math.isfinite taking it for an overflow, one sample running unlike a batch)
                val = None
        else:
            val = self._bound(j - 1) if j - 1 > self.b else None
        self.bound[j - self.b] = val
        return val

    def score(self, change_sq: Any, j: int) -> Any:
        """change^2 / min(e_j^2, e_{j-1}^2) per sample; with no estimate yet, infinite unless the change
        is zero. The smaller of two neighbouring estimates: e_j comes from model values at points not
        yet converged, which can inflate it without bound (the terrain network at 10 steps: an e_j
        from a wild iterate accepted outputs 3-309x the output's RMS away from the sequential one),
        while e_{j-1} leans on the point just accepted. (The minimum is taken after adding tiny:
        rounding is monotonic, so min(a, b) + tiny = min(a + tiny, b + tiny) exactly.)"""
        bound, i = self.bound, j - self.b
        est = bound[i] if bound[i] is not _UNSET else self._bound(j)
        if est is None:
            return 0.0 if _worst(change_sq) == 0 else math.inf  # (a nan change too is over tolerance)
        prev = (bound[i - 1] if bound[i - 1] is not _UNSET else self._bound(j - 1)) if j > 0 else None
        if prev is not None:
            if self.one:  # numpy scalars: np.minimum's result (nan propagates), without its call
                est = est if est <= prev or est != est else prev
            else:
                est = B.minimum(est, prev)
        return change_sq / est


def _add_normal_terms(A: Any, c: Any, dR: list, R: Any, k: int, inner: Callable[[Any, Any], Any]) -> None:
    """Add point j's terms to the mixing's normal equations A gamma = c (``A[p][q]``, ``c[p]`` for p,
    q < k; a numpy array or nested lists of tensors): A_pq += <dR_p, dR_q>, c_p += <dR_p, R>."""
    for p in range(k):
        c[p] += inner(dR[p], R)
        for q in range(p, k):
            v = inner(dR[p], dR[q])
            A[p][q] += v
            if q != p:
                A[q][p] += v


def _needs_graph(cur: dict) -> bool:
    """Whether the mixing's weights must carry their derivative: torch tensors that require
    gradients, with gradients enabled (the weights are formed from inner products read as floats)."""
    for x_old, R in cur.values():
        if getattr(R, "requires_grad", False) or getattr(x_old, "requires_grad", False):
            import torch

            return torch.is_grad_enabled()
    return False


class _Graph:
    """The mixing's normal equations formed again in torch, in the autograd graph, beside the float
    ones: the weights then carry their derivative (autograd took them as constants, a 1e-5 relative
    error of the gradient in a user trial) while their values stay the float solution's bit for bit
    (``weights``: the value of one plus the zero-valued difference of the other)."""

    def __init__(self, k: int) -> None:
        self.A: list = [[0.0] * k for _ in range(k)]
        self.c: list = [0.0] * k
        self.device: Any = None
        self.dtype: Any = None

    def reset(self) -> None:
        k = len(self.c)
        self.A, self.c = [[0.0] * k for _ in range(k)], [0.0] * k

    def add(self, dR: list, R: Any, k: int) -> None:
        """Add point j's terms (as the float ``A``, ``c``), in float64 where the device has it (not MPS)."""
        import torch

        wide = torch.float32 if R.device.type == "mps" else torch.float64
        self.device, self.dtype = R.device, wide
        _add_normal_terms(self.A, self.c, dR, R, k, lambda a, b: (a.to(wide) * b.to(wide)).sum())

    def weights(self, gamma: np.ndarray, k: int, ridge: float) -> list:
        """``gamma`` (the float solution) as 0-d tensors with the torch solution's derivative."""
        import torch

        on = dict(dtype=self.dtype, device=self.device)  # (the state's device: a CPU eye beside CUDA sums failed)
        A = torch.stack([torch.stack([torch.as_tensor(v, **on) for v in row[:k]]) for row in self.A[:k]])
        c = torch.stack([torch.as_tensor(v, **on) for v in self.c[:k]])
        lam = ridge * (torch.trace(A) / k + (1e-300 if self.dtype == torch.float64 else 1e-30))
        g = torch.linalg.solve(A + lam * torch.eye(k, **on), c)
        g = torch.as_tensor(gamma, **on) + (g - g.detach())
        return list(g.unbind())


class _Anderson:
    """Triangular Anderson mixing (after ParaTAA) of the window points after the first one over
    tolerance: point j's mixing weights come from the residual history of the points nb+1 .. j only
    (prefix sums), so it never uses information from later points. The accepted points and the
    first point over tolerance keep their fixed-point update. The memory used at point j is the
    smallest of ``memory``, the longest history in the window and every history met from nb+1 to j:
    once a point without history is met (one that entered the window this sweep), the rest of the
    sweep is not mixed."""

    def __init__(self, memory: int, ridge: float):
        self.memory, self.ridge = memory, ridge
        self.hist: dict[int, list] = {}  # grid index -> [(x_old, residual), ...] of earlier sweeps, oldest first

    def mix(self, xs: list, new: list, b: int, nb: int, e: int) -> None:
        """Record this sweep's (x_old, residual) per point and mix ``new[j - b]`` for j in (nb, e]."""
        m = self.memory
        for j in list(self.hist):
            if j <= nb:
                del self.hist[j]  # accepted: no longer iterated
        cur = {j: (xs[j], new[j - b] - xs[j]) for j in range(nb + 1, e + 1)}
        made = new[nb + 1 - b : e + 1 - b]  # the sweep's points (the mixing replaces them, never writes into them)
        try:
            self._mix(cur, new, b, None)
        except _Overflow as o:  # inner products out of float64's range (residuals beyond about 1e150 or 1e-140)
            new[nb + 1 - b : e + 1 - b] = made  # (a point the scaled pass leaves unmixed: as the sweep made it)
            self._mix(cur, new, b, o.scale)
        for j in range(nb + 1, e + 1):
            self.hist[j] = (self.hist.get(j, []) + [cur[j]])[-m:]

    def _scale(self, cur: dict) -> float | None:
        """A power of two that brings the largest RMS of the residuals of ``cur`` and the history to
        between 1/8 and 1/4 (the weights solve A gamma = c, homogeneous in the residuals' scale), where
        it lies beyond ``_RESIDUAL_RANGE`` (float64 states only: a float32 residual's products are
        summed in float64, and a scale applied in a narrower dtype would overflow it); else None
        (residuals that are all zero, or not finite: a diverged iterate, which scaling cannot help)."""
        top = max(B.rms(R) for R in [R for _, R in cur.values()] + [R for seq in self.hist.values() for _, R in seq])
        lo, hi = _RESIDUAL_RANGE
        if not (math.isfinite(top) and (top > hi or 0 < top < lo)):
            return None
        return math.ldexp(1.0, min(1000, -math.frexp(top)[1] - 2))

    def _mix(self, cur: dict, new: list, b: int, scale: float | None) -> None:
        """Mix ``new[j - b]`` for the points j of ``cur``: the normal equations formed from the residuals
        times ``scale`` (None: as they are; an ``_Overflow`` carrying a scale if they overflow)."""
        m = self.memory
        # the longest history present (a memory past it mixes the same: an m x m system allocated
        # every sweep cost 27 s at T = 4000 with m = T)
        k = min(m, max((len(self.hist.get(j, ())) for j in cur), default=0))
        scaled_out = False  # whether _scale said no this sweep
        A = np.zeros((k, k))
        c = np.zeros(k)
        graph = _Graph(k) if _needs_graph(cur) else None
        for j, (x_old, R) in cur.items():
            seq = self.hist.get(j, []) + [cur[j]]
            k = min(k, len(seq) - 1)
            if k == 0:
                A[:] = 0.0
                c[:] = 0.0
                if graph is not None:
                    graph.reset()
                continue
            # the last k residual differences, newest first, formed point by point (for all points at
            # once, with the iterates' differences, they were 2 m K fresh arrays at the sweep's peak)
            dR = [seq[-1 - p][1] - seq[-2 - p][1] for p in range(k)]
            # (B.inner: float32 at least; float16 products overflowed to a nan iterate)
            sdR, sR = (dR, R) if scale is None else ([d * scale for d in dR], R * scale)
            with np.errstate(over="ignore", invalid="ignore"):  # (an overflow is found below, and scaled)
                _add_normal_terms(A, c, sdR, sR, k, B.inner)
            if graph is not None:
                graph.add(sdR, sR, k)
            Ak = A[:k, :k]
            if scale is None and not scaled_out and not (np.isfinite(Ak).all() and np.isfinite(c[:k]).all()
                                                         and np.trace(Ak) >= _GRAM_LO):
                scale = self._scale(cur)
                if scale is not None:
                    raise _Overflow(scale)
                scaled_out = True  # (residuals in range, all zero or not finite: asked once a sweep)
            lam = self.ridge * (np.trace(Ak) / k + 1e-300)
            try:
                gamma = np.linalg.solve(Ak + lam * np.eye(k), c[:k])
            except np.linalg.LinAlgError:
                continue
            weights = gamma.tolist() if graph is None else graph.weights(gamma, k, self.ridge)
            x = x_old + R
            for p in range(k):
                if gamma[p] != 0.0:
                    x = x - weights[p] * ((seq[-1 - p][0] - seq[-2 - p][0]) + dR[p])
            new[j - b] = x


#: a trace of the mixing's normal equations below this (residuals below about 1e-140: their products
#: lose digits as subnormals) has them formed again on scaled residuals, as an overflow does, where the
#: residuals' largest RMS lies outside ``_RESIDUAL_RANGE`` (a trace of 0 from residuals that did not
#: change is left as it is)
_GRAM_LO = 1e-280
_RESIDUAL_RANGE = (1e-140, 1e150)


class _Overflow(Exception):
    """The mixing's normal equations left float64's range (overflowed, or their trace is below
    ``_GRAM_LO``): formed again on residuals times ``scale``."""

    def __init__(self, scale: float) -> None:
        super().__init__(scale)
        self.scale = scale


@host_route
def sliding_window(
    model: Model,
    x: Any,
    grid: Any,
    solver: str | Solver,
    *,
    window: int | None,
    tol: float | None,
    seed: str,
    correction: str,
    variance: str = "into",
    scale: str = "noise",
    multistep: str = "chain",
    anderson: int = 0,
    ridge: float = RIDGE,
    tol_steps: int | None = None,
    level_floor: float = 1.0,
    history_gain: bool = False,
    executor: Executor | None = None,
    progress: bool = False,
    method: str = "window",
    solver_options: dict | None = None,
    default_tol: float | None = None,
) -> Result:
    """Sliding-window fixed-point iteration (see the module docstring for every option).

    Args:
        model, x, grid, solver, executor: as for ``chords``.
        window: parallel points per sweep (the devices kept busy), >= 1; ``None``: ``DEFAULT_WINDOW``,
            or the grid's steps where fewer.
        tol: the per-point tolerance on the ``scale`` (>= 0; 0: every point exact); ``None``: a peer's
            ``default_tol``, in the state's units (``absolute_tol``: a ``UserWarning`` on a plain ODE).
        seed: ``"copy"``, ``"jump"``, ``"jump2"`` or ``"solver"``: how new window points start.
        correction: ``"picard"`` or ``"jump"``: the update's coefficient c_m.
        variance: ``"into"`` or ``"out"``: which step's noise variance scores a point (``scale="noise"``).
        scale: what a point's change is measured against: ``"noise"`` (the step's noise variance,
            ParaDiGMS), ``"level"`` (the RMS change against max(``level_floor``, sigma_j), ParaTAA's
            tol1 = tol2 rule) or ``"error"`` (the solver's local error estimate at the point).
        multistep: ``"chain"`` or ``"restart"``: a multistep solver's history at a window start.
        anderson: memory m of triangular Anderson mixing of the not-yet-accepted points (0: none).
        ridge: its relative ridge regularisation.
        tol_steps: ``tol`` refers to a grid of this many steps and is scaled like the solver's
            global error on finer grids (``tolerance_sq``); ``None``: as given.
        level_floor: ``scale="level"`` measures a change against ``tol`` max(``level_floor``,
            sigma_j); > 0 (1: ParaTAA's rule).
        history_gain: divide point j's tolerance by max(1, rho_j / ``HISTORY_GAIN_FREE``)
            (``history_gain_sq``; the cascade sampler's: the peers' rules as published take no such
            factor).
        progress: show a progress bar over grid steps (needs tqdm).
        method: the ``Result.method`` name.
        solver_options: the solver's options.
        default_tol: the method's default for ``tol=None``.

    Returns:
        A ``Result`` with one output; ``log`` holds a ``Sweep`` per sweep.
    """
    call = begin(model, x, grid, solver, executor, solver_options)
    sol, evals, executor, model = call.solver, call.evals, call.executor, call.model
    T = sol.steps
    window = min(DEFAULT_WINDOW, T) if window is None else check_int("window", window, 1, T)
    if tol is None and default_tol is not None:
        tol = absolute_tol(default_tol, model, method)
    tol2 = tolerance_sq(tol, sol, tol_steps, x)
    seed, correction = check_choice("seed", seed, SEEDS), check_choice("correction", correction, CORRECTIONS)
    variance, multistep = check_choice("variance", variance, VARIANCES), check_choice("multistep", multistep, MULTISTEP)
    scale = check_choice("scale", scale, SCALES)
    anderson, ridge = check_int("anderson", anderson, 0), check_float("ridge", ridge, 0.0)
    level_floor = check_float("level_floor", level_floor, 0.0, low_open=True)
    # a numpy state of one sample: per-sample values (squared changes, scores) as numpy scalars
    one = type(x) is np.ndarray and x.ndim >= 2 and x.shape[0] == 1
    local = _PointErrors(sol, x, one) if scale == "error" else None
    # (a point's history never outgrows the sweeps, at most T: a larger memory mixes the same;
    # anderson=10**30 raised numpy's "Maximum allowed dimension exceeded")
    mixer = _Anderson(min(anderson, T), ridge) if anderson else None
    # steps whose x-coefficient is 1 and that do not depend on x beyond it (explicit, single point)
    a = [sol.jump_coeffs(m, m + 1)[0] for m in range(T)]  # each step's x-coefficient
    unit = [sol.history_size == 0 and a[m] == 1.0 for m in range(T)]
    if sol.history_size and max(evals) > 1:
        raise ValueError(f"solver {sol.name!r} is both multistep and multi-stage; a sliding window ({method}) "
                         "supports one or the other: use method='chords' or method='srds' (cc.parallel), which take "
                         "both")
    # "noise" / "level": the factor on point j's squared change (0: never blocks)
    per_row = max(1, row_size(x.shape))  # (once: np.prod costs microseconds; a state of no elements never moves)
    factor = [v / per_row for v in _inverse_scales(model, sol.times, scale, variance, level_floor)]
    gain2 = history_gain_sq(sol) if history_gain else None  # (None: 1 at every point)
    seeder = Seeder(sol, model, 2 if seed in ("jump2", "solver") else 1) if seed != "copy" else None
    chain_seeds = seed == "solver" and max(evals) == 1  # (a multi-stage solver's seeds: the jump2 ones)
    convert = sol.quantity_of if sol.converts else None
    picard = correction == "picard"
    scratch = (_scratch(x, 1) or [None])[0]  # how far a point moved, reused point after point
    t = sol.t

    def where(p: int, idx: Sequence[int], k: int, ti: Sequence[int]) -> str:
        return point_where(idx[p], k, t[ti[p]])

    xs: list = [x] * (min(window, T) + 1)  # the iterate x_0 .. x_e (later points start as copies)
    base = sol.begin(x)  # accepted state at the window start b (with its multistep history)
    b, rounds, nfe, width, log, trace = 0, 0, 0, 0, [], []
    cuts: list[tuple[int, int]] = []  # (round, grid index) of each sweep cut at a non-finite output
    with progress_bar(progress, T, f"{method} {sol.name} w{window}", "step") as bar:
        while b < T:
            e = min(b + window, T)
            cuts_before = len(cuts)
            qs: list = [[] for _ in range(b, e)]  # point m's stage quantities at m - b
            idx: Sequence[int]  # the round's points (grid indices) and their time indices
            ti: Sequence[int]
            k = 0
            while k < max(evals[b:e]):  # a round per stage
                pts = range(b, e)
                if k == 0:
                    idx, px, ti = pts, xs[b:e], pts
                else:
                    idx = [m for m in pts if evals[m] > k]
                    # (a later stage's point from the state at m: the window start's solver data, exact at
                    # the start, where a solver of one's own read aux=None)
                    staged = [sol.staged(move(base, xs[m]), qs[m - b], m, m + 1, k) for m in idx]
                    px, ti = [p for p, _ in staged], [j for _, j in staged]
                rounds += 1
                nfe, width = nfe + len(idx), max(width, len(idx))
                trace.append(Round(rounds, tuple(map(Eval, [m - b for m in idx], idx, [k] * len(idx), ti))))
                try:
                    outs = evaluate_round(executor, model, px, [t[j] for j in ti], rounds, where, idx, k, ti)
                except ModelOutputError as err:
                    # the iterate ran off at a point past b: the sweep is cut before it (the earlier stages'
                    # quantities of the points kept stay valid), and this stage's outputs of the points
                    # before it taken where the call made them, else the stage evaluated again
                    e = diverged_at(err, idx, b)
                    cuts.append((rounds, e))
                    del qs[e - b:]
                    if err.done is None or len(err.done) < err.point:
                        continue
                    idx, px, ti, outs = idx[:err.point], px[:err.point], ti[:err.point], err.done[:err.point]
                    pts = range(b, e)
                for m, xp, j, out in zip(idx, px, ti, outs):
                    qs[m - b].append(out if convert is None else convert(xp, out, j))
                del outs, px  # the quantities hold what is needed of the round
                out = xp = None  # (the loop's last, not pinned past the round; unbound after an empty one)
                k += 1
            st = base if multistep == "chain" else sol.begin(base.x)  # (restart: as the solver starts)
            new, states, accepted = [xs[b]], [base], None  # states[m - b]: the state at m
            if local is not None:
                local.observe(qs, b, e)
            moved: Any = None  # how far the previous point moved this sweep: x_m^new - x_m^old
            for m in pts:
                if m > b and unit[m]:
                    # a step affine in x with coefficient 1 (Euler, Heun): Phi_m(x_old) + (x_new - x_old)
                    # is the step from x_new with the same model values, at the cost of the step alone
                    st = sol.step(move(st, new[-1]), qs[m - b], m, m + 1)
                    xn = st.x
                else:
                    st = sol.step(move(st, xs[m]), qs[m - b], m, m + 1)
                    if m == b:
                        xn = st.x
                    else:  # Phi_m + c_m times how far x_m moved (st.x is a fresh array: in place)
                        c = 1.0 if picard else a[m]
                        xn = B.add_into(st.x, moved if c == 1.0 else c * moved)
                new.append(xn)
                states.append(st)
                if accepted is not None and (m + 1 >= e or unit[m + 1]):
                    continue  # neither a score nor the next point's correction needs how far this one moved
                moved = B.subtract_into(xn, xs[m + 1], scratch)
                if accepted is None and tol2 == 0.0:
                    # tol 0: exact means unmoved (not a change whose squares underflow to 0, nor a point
                    # that never blocks, variance "out" at T - 1), compared, not subtracted: XLA on the
                    # CPU flushes a subnormal difference to 0 (states of 1e-300 were accepted unequal);
                    # a nan is unequal
                    if bool((xn != xs[m + 1]).any()):
                        accepted = m + 1
                elif accepted is None:
                    change = B.row_sq_one(moved) if one else B.row_sq_read(moved)
                    if gain2 is not None and gain2[m + 1] != 1.0:
                        change = change * gain2[m + 1]
                    # (a point that never blocks has factor 0: a finite change scores 0, a nan or inf one nan)
                    score = local.score(change, m + 1) if local is not None else _weighted(change, factor[m + 1])
                    if not _worst(score) <= tol2:  # a nan score (a diverged iterate) is over tolerance too
                        accepted = m + 1  # the first point over tolerance: exact, as Phi of an accepted point
            nb = e if accepted is None else accepted
            if mixer is not None:
                mixer.mix(xs, new, b, nb, e)
            evaluated_last = xs[e - 1]  # where the window's last points were evaluated this sweep
            evaluated_prev = xs[e - 2] if e - 2 >= b else None
            xs[b + 1 : e + 1] = new[1:]
            if len(cuts) > cuts_before:  # this sweep was cut at e: what lies past it is the run-off iterate
                del xs[e + 1:]  # (seeded anew below, copies included)
            end = min(nb + window, T)
            if seeder is None:
                xs.extend([xs[e]] * (end + 1 - len(xs)))
            elif end > e:  # never-evaluated points: the free coarse jump from the new x_e with the
                # data prediction of the window's last evaluated point (fresh every sweep)
                d = seeder.prediction(evaluated_last, qs[e - 1 - b][0], e - 1)
                d2 = (seeder.prediction(evaluated_prev, qs[e - 2 - b][0], e - 2)
                      if e - 2 >= b and seeder.order > 1 else None)
                del xs[e + 1:]
                chained = (seeder.chain(move(states[e - b], xs[e]), d, e - 1, d2, e - 2, end)
                           if chain_seeds and d2 is not None else None)
                xs.extend(chained if chained is not None else
                          seeder.seeds(xs[e], d, e, e - 1, range(e + 1, end + 1), d2, e - 2))
            if local is not None:
                local.release(nb, e)
            base = move(states[nb - b], xs[nb])
            del states, new, st, qs  # nor do this sweep's states pin its outputs during the next round
            xs[b:nb] = [None] * (nb - b)  # accepted points before the new start are not used again: freed
            log.append(Sweep(rounds, b, e, nb))
            bar.update(nb - b)
            b = nb
    hit = Hit(0, rounds, nfe, xs[T])
    return Result(x=xs[T], rounds=rounds, nfe=nfe, hits=(hit,), coarse=None,
                  stopped_by=f"window reached T after {len(log)} sweeps{_cut_note(cuts, method, is_plain_ode(model))}",
                  method=method,
                  sequential_rounds=sum(evals), width=width, trace=tuple(trace), log=tuple(log))
