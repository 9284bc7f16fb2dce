"""Predictions of the CHORDS theory (see theory/derivations.md): schedule, contraction, hierarchy.

Notation: grid indices 0..T, steps h_n = |t_{n+1} - t_n|, cores c = 0..K-1 with starts
``init = (t_0 = 0 < t_1 < ... < t_{K-1} < T)`` and gaps delta_c = t_c - t_{c-1}. A rectification
window [b, j] has H = sum_{n=b}^{j-1} h_n. L bounds the Jacobian of the field (||A||_2 for
dy/dt = A y).

Schedule (exact, any field):
    R_c = sum_{i >= t_c} e_i + c           (e_i evaluations of step i; T - t_c + c for e = 1)
    windows of core c: [t_c + (m-1) delta_c, t_c + m delta_c], m = 1..floor((T - t_c)/delta_c)
    NFE after R rounds = sum_c max(0, min(R, R_c) - c)

Contraction per rectification (fine one-step method of order p <= 4 whose stability function is
the Taylor polynomial P_p(z) = sum_{k<=p} z^k/k!, coarse jump = one Euler step over H):
    linear field:   rho <= prod_n P_p(h_n L) - 1 - H L  <=  e^{HL} - 1 - HL  ~  (HL)^2 / 2
    smooth field:   add Lam H^2 / 2 with Lam = L_xx V + L_xt (Jacobian variation along the window)

Hierarchy (linear field, rigorous): with u_c(n) a bound on |x_c(n) - s(n)| (s = sequential)
    u_c(t_c) = g(t_{c-1}, t_c) u_{c-1}(t_{c-1}) + rho(t_{c-1}, t_c) |s(t_{c-1})|     (coarse spawn)
    u_c(j)   = rho(b, j) u_c(b) + g(b, j) u_{c-1}(b)                                   (rectification)
    u_c(n+1) = P_p(h_n L) u_c(n)                                                        (fine step)
with g(b, j) = 1 + H L the Lipschitz constant of the jump. For dy/dt = L y, y0 > 0 every inequality
is an equality, so the bound is attained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from chords_core.inits import recipe_init, recipe_times, validate_init  # recipe_*: re-exported, the K-core recipe
from chords_core.models import Model

__all__ = [
    "output_rounds", "rectification_windows", "rectification_counts", "nfe_at", "ladder", "taylor_growth",
    "contraction_bound", "contraction_smooth", "measured_contraction", "deviation_bounds", "three_core_middle",
    "continuous_speedup", "fit_slope", "recipe_init", "recipe_times",
]


# ------------------------------------------------------------------------------------------ schedule
def output_rounds(steps: int, init: Sequence[int], evals_per_step: Sequence[int] | None = None) -> tuple[int, ...]:
    """R_c = (evaluations of steps t_c..T-1) + c: the round after which core c outputs."""
    init = validate_init(init, steps)
    e = [1] * steps if evals_per_step is None else [int(v) for v in evals_per_step]
    if len(e) != steps or min(e) < 1:
        raise ValueError("evals_per_step needs one positive count per step")
    return tuple(sum(e[t:]) + c for c, t in enumerate(init))


def rectification_windows(steps: int, init: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per core the windows (b, j) of its rectifications (same evaluations per step for every step)."""
    init = validate_init(init, steps)
    out: list[tuple[tuple[int, int], ...]] = [()]
    for c in range(1, len(init)):
        t, d = init[c], init[c] - init[c - 1]
        out.append(tuple((t + (m - 1) * d, t + m * d) for m in range(1, (steps - t) // d + 1)))
    return tuple(out)


def rectification_counts(steps: int, init: Sequence[int]) -> tuple[int, ...]:
    """floor((T - t_c) / delta_c) per core (0 for core 0)."""
    return tuple(len(w) for w in rectification_windows(steps, init))


def nfe_at(steps: int, init: Sequence[int], rounds: int, evals_per_step: Sequence[int] | None = None) -> int:
    """Model evaluations in the first ``rounds`` rounds: core c evaluates once a round in rounds c+1..R_c."""
    R = output_rounds(steps, init, evals_per_step)
    return sum(max(0, min(rounds, r) - c) for c, r in enumerate(R))


def ladder(steps: int, init: Sequence[int], evals_per_step: Sequence[int] | None = None) -> list[dict]:
    """The outputs in arrival order (fastest core first): core, round, speedup, NFE, rectifications."""
    R = output_rounds(steps, init, evals_per_step)
    seq = R[0]
    rect = rectification_counts(steps, init) if evals_per_step is None or len(set(evals_per_step)) == 1 else None
    order = sorted(range(len(R)), key=lambda c: (R[c], -c))
    return [dict(core=c, round=R[c], speedup=seq / R[c], nfe=nfe_at(steps, init, R[c], evals_per_step),
                 rectifications=None if rect is None else rect[c]) for c in order]


# --------------------------------------------------------------------------------------- contraction
def taylor_growth(z: float, order: int = 1) -> float:
    """P_p(z) = sum_{k<=p} z^k / k!: the bound ||P_p(hA)|| <= P_p(h ||A||) of one fine step."""
    if not 1 <= order <= 4:
        raise ValueError(f"order must be 1..4, got {order!r}")
    return sum(z**k / math.factorial(k) for k in range(order + 1))


def contraction_bound(hs: Sequence[float], L: float, order: int = 1) -> float:
    """Bound on the rectification's contraction for a linear field with ||A|| <= L.

    After one rectification over the window with fine steps ``hs`` (total H), the fast core's
    deviation from its slower neighbour's fine continuation is M (x_fast - x_slow) with
    M = prod_n P_p(h_n A) - I - H A; ||M|| <= prod_n P_p(h_n L) - 1 - H L <= e^{HL} - 1 - HL.
    """
    steps = np.abs(np.asarray(hs, dtype=np.float64))
    if L < 0 or steps.size == 0:
        raise ValueError("need L >= 0 and at least one step")
    prod = math.prod(taylor_growth(float(h) * L, order) for h in steps)
    return max(prod - 1.0 - float(steps.sum()) * L, 0.0)


def contraction_smooth(H: float, L: float, Lam: float = 0.0) -> float:
    """Bound e^{HL} - 1 - HL + Lam H^2 / 2 for a nonlinear field (Euler fine steps, any step sizes).

    ``Lam`` bounds how fast the Jacobian changes along a fine trajectory per unit time
    (||d/dt J|| <= L_xx ||f|| + L_xt). Leading order: (L^2 + Lam) H^2 / 2, slope 2 in H.
    """
    if H < 0 or L < 0 or Lam < 0:
        raise ValueError("H, L and Lam must be >= 0")
    return math.expm1(H * L) - H * L + 0.5 * Lam * H * H


def measured_contraction(model: Model, times: Sequence[float], x_slow: Any, x_fast: Any,
                         solver: str = "euler") -> float:
    """|x_new - F(x_slow)| / |x_fast - x_slow| for one rectification over the window ``times``.

    F is the fine propagator (``solver`` over every grid point of ``times``, via ``chords_core.solve``);
    x_new = F(x_fast) - G(x_fast) + G(x_slow) is the engine's ``rectify`` with the solver's jump
    over the whole window. This is the per-rectification contraction factor in that direction.

    Args:
        model: the model (any ``Model``).
        times: the window's grid times (its first is where both points are).
        x_slow: the slower core's point at ``times[0]``.
        x_fast: the faster core's point there (same shape).
        solver: the fine solver's name.

    Returns:
        The ratio of norms (flattened 2-norms).
    """
    import chords_core as cc

    grid = np.asarray(times, dtype=np.float64)
    sol = cc.make_solver(solver, model, grid)
    q_fast, q_slow = (sol.quantity_of(x, model.evaluate([x], [sol.t[0]])[0], 0) for x in (x_fast, x_slow))
    a, b = sol.jump_coeffs(0, len(grid) - 1)
    fine_slow = cc.solve(model, x_slow, grid, solver)
    new = cc.rectify(cc.solve(model, x_fast, grid, solver), x_fast, q_fast, x_slow, q_slow, a, b)
    return float(np.linalg.norm(np.ravel(new - fine_slow)) / np.linalg.norm(np.ravel(x_fast - x_slow)))


# -------------------------------------------------------------------------------------- hierarchy
def deviation_bounds(times: Sequence[float], init: Sequence[int], L: float, y0_norm: float = 1.0,
                     order: int = 1, seq_norms: Sequence[float] | None = None) -> np.ndarray:
    """u[c, n] >= |x_c(n) - s(n)| for a linear field dy/dt = A y, ||A||_2 <= L (shape (K, T+1)).

    Fine method: one-step of order ``order`` with Taylor stability polynomial (1: Euler, 2: Heun);
    coarse jump: Euler. ``seq_norms[n]`` bounds |s(n)|; by default |s(n)| <= |y0| prod_{k<n} P_p(h_k L).
    Entries before a core's start are NaN. u[0] = 0 (core 0 is the sequential solver).
    """
    t = np.asarray(times, dtype=np.float64)
    h = np.abs(np.diff(t))
    T = len(h)
    init = validate_init(init, T)
    K = len(init)
    grow = np.array([taylor_growth(float(x) * L, order) for x in h])
    norms = y0_norm * np.concatenate([[1.0], np.cumprod(grow)]) if seq_norms is None else seq_norms
    cum = np.concatenate([[0.0], np.cumsum(h)])

    def rho(b: int, j: int) -> float:
        return max(float(np.prod(grow[b:j])) - 1.0 - L * (cum[j] - cum[b]), 0.0)

    def g(b: int, j: int) -> float:
        return 1.0 + L * (cum[j] - cum[b])

    u = np.full((K, T + 1), np.nan)
    u[0] = 0.0
    for c in range(1, K):
        p, tc = init[c - 1], init[c]
        d = tc - p
        u[c, tc] = g(p, tc) * u[c - 1, p] + rho(p, tc) * norms[p]
        anchor = tc
        for n in range(tc, T):
            if n + 1 == anchor + d:
                u[c, n + 1] = rho(anchor, n + 1) * u[c, anchor] + g(anchor, n + 1) * u[c - 1, anchor]
                anchor = n + 1
            else:
                u[c, n + 1] = grow[n] * u[c, n]
    return u


# ------------------------------------------------------------------------------ initialisation [2nd]
def three_core_middle(t3: float) -> float:
    """Theorem 2.5 as reported [2nd], continuous time in [0, 1): the middle start t2 for fastest start t3.

    s = 1 / (1 - t3); t2 = t3 / 2 if s <= 3 (equal gaps), else 2 t3 - 1 (middle gap = 1 - t3).
    """
    if not 0 <= t3 < 1:
        raise ValueError(f"t3 must lie in [0, 1), got {t3!r}")
    return t3 / 2 if 1 / (1 - t3) <= 3 else 2 * t3 - 1


def continuous_speedup(steps: int, init: Sequence[int]) -> float:
    """The paper's continuous speedup S(I) = 1 / (1 - t_{K-1}/T) [2nd]; ignores the +c stagger."""
    init = validate_init(init, steps)
    return steps / (steps - init[-1])


# ------------------------------------------------------------------------------------------ fitting
def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the order of a power law y ~ C x^p)."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if lx.size < 2 or not (np.all(np.isfinite(lx)) and np.all(np.isfinite(ly))):
        raise ValueError("fit_slope needs at least two positive, finite (x, y) pairs")
    return float(np.polyfit(lx, ly, 1)[0])
