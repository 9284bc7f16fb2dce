"""Theory predictions (theory/chords_theory.py) against the engine: ladder, contraction, hierarchy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chords_core as cc
from chords_core.problems import LinearODE
from theory import chords_theory as th

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def inits(draw, max_steps=40, max_cores=8):
    steps = draw(st.integers(2, max_steps))
    cores = draw(st.integers(1, min(steps, max_cores)))
    rest = draw(st.lists(st.integers(1, steps - 1), min_size=cores - 1, max_size=cores - 1, unique=True))
    return steps, (0,) + tuple(sorted(rest))


def _grid(data, steps):
    h = data.draw(st.lists(st.floats(0.2, 1.0), min_size=steps, max_size=steps))
    span = data.draw(st.floats(0.3, 2.0))
    return np.concatenate([[0.0], np.cumsum(h)]) * span / sum(h)


# ------------------------------------------------------------------------------------ the schedule
def test_paper_ladder_t50():
    init = (0, 2, 4, 8, 16, 24, 32, 40)
    lad = th.ladder(50, init)
    assert [d["round"] for d in lad] == [17, 24, 31, 38, 45, 48, 49, 50]
    assert [d["core"] for d in lad] == [7, 6, 5, 4, 3, 2, 1, 0]
    assert lad[0]["nfe"] == 108 and lad[1]["nfe"] == 157
    assert th.rectification_counts(50, init)[1:] == (24, 23, 10, 4, 3, 2, 1)
    assert th.rectification_windows(50, init)[7] == ((40, 48),)
    assert th.continuous_speedup(50, init) == pytest.approx(5.0)


@FAST
@given(inits(), st.data())
def test_ladder_formula_matches_plan(case, data):
    steps, init = case
    evals = data.draw(st.sampled_from([None, "const", "random"]))
    eps = None if evals is None else ([data.draw(st.integers(1, 3))] * steps if evals == "const" else
                                      data.draw(st.lists(st.integers(1, 3), min_size=steps, max_size=steps)))
    plan = cc.make_plan(steps, init, eps)
    R = th.output_rounds(steps, init, eps)
    assert plan.finish_round == R
    assert plan.hit_order == tuple(d["core"] for d in th.ladder(steps, init, eps))
    for r in {1, min(R), max(R), (min(R) + max(R)) // 2}:
        assert plan.nfe(r) == th.nfe_at(steps, init, r, eps)
    if eps is None or len(set(eps)) == 1:  # windows are in grid indices when every step costs the same
        got = [tuple((b, j) for rd in plan.rounds for (c2, b, j) in rd.rectified if c2 == c) for c in range(len(init))]
        assert tuple(got) == th.rectification_windows(steps, init)


def test_engine_hit_rounds_match_formula():
    ode = LinearODE.random(3, seed=1)
    init = (0, 3, 6, 12)
    res = cc.chords(ode.vector_field(), np.ones(3), np.linspace(0, 1, 21), "euler", init=init, stop=None)
    assert [(h.core, h.round) for h in res.hits] == [(d["core"], d["round"]) for d in th.ladder(20, init)]
    assert res.hits[0].nfe == th.nfe_at(20, init, res.hits[0].round)


# ----------------------------------------------------------------------------------- contraction
@FAST
@given(st.data())
def test_measured_contraction_within_bound(data):
    dim = data.draw(st.integers(1, 5))
    ode = LinearODE.random(dim, seed=data.draw(st.integers(0, 10**6)), scale=data.draw(st.floats(0.2, 3.0)))
    delta = data.draw(st.integers(1, 8))
    order = data.draw(st.sampled_from([1, 2]))
    times = _grid(data, delta)
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    x_slow, x_fast = rng.standard_normal(dim), rng.standard_normal(dim)
    measured = th.measured_contraction(ode.vector_field(), times, x_slow, x_fast, "euler" if order == 1 else "heun")
    bound = th.contraction_bound(np.diff(times), ode.lipschitz, order)
    assert measured <= bound * (1 + 1e-9) + 1e-14
    assert bound <= th.contraction_smooth(times[-1], ode.lipschitz) * (1 + 1e-12)
    if delta == 1 and order == 1:
        assert measured < 1e-12  # one Euler step: F = G, the fast core lands on the slow one


def test_contraction_slope_two_for_euler():
    """Nonlinear toy field: the measured contraction scales as delta^2 (fitted log-log slope ~ 2)."""
    field = cc.VectorField(lambda t, y: np.sin(2 * y) * np.cos(t) - 0.5 * y)
    rng = np.random.default_rng(0)
    x_slow = rng.standard_normal(6)
    x_fast = x_slow + 1e-3 * rng.standard_normal(6)
    h, deltas = 0.0025, [8, 16, 32, 64]
    rho = [th.measured_contraction(field, np.arange(d + 1) * h, x_slow, x_fast) for d in deltas]
    assert th.fit_slope(deltas, rho) == pytest.approx(2.0, abs=0.15)
    assert all(a < b for a, b in zip(rho, rho[1:]))
    # within the smooth-field bound with L = sup|df/dy| = 2 + 0.5 and Lam = sup|dJ/dt| + sup|d2f/dy2| sup|f| =
    # 2 + 4 * 1.5 = 8, sup|f| <= 1 + 0.5 |y| with |y| < 1 (seed 0's starts are below 0.65 and move by under
    # 0.2 over the longest span, 0.16); 9 leaves a margin
    assert all(r <= th.contraction_smooth(d * h, 2.5, 9.0) for d, r in zip(deltas, rho))


# ------------------------------------------------------------------------------------- hierarchy
@FAST
@given(st.data())
def test_core_deviation_within_hierarchy_bound(data):
    steps, init = data.draw(inits(max_steps=24, max_cores=6))
    dim = data.draw(st.integers(1, 4))
    ode = LinearODE.random(dim, seed=data.draw(st.integers(0, 10**6)), scale=data.draw(st.floats(0.2, 2.0)))
    order = data.draw(st.sampled_from([1, 2]))
    times = _grid(data, steps)
    y0 = np.random.default_rng(data.draw(st.integers(0, 10**6))).standard_normal(dim)
    name = "euler" if order == 1 else "heun"
    field = cc.VectorField(ode, batched=False)  # per-point calls: batch-invariant, so core 0 is bitwise sequential
    res = cc.chords(field, y0, times, name, init=init, stop=None)
    seq = cc.solve(field, y0, times, name)
    u = th.deviation_bounds(times, init, ode.lipschitz, np.linalg.norm(y0), order)
    for hit in res.hits:
        dev = np.linalg.norm(hit.x - seq)
        assert dev <= u[hit.core, -1] * (1 + 1e-9) + 1e-12 * np.linalg.norm(seq), (hit.core, dev, u[hit.core, -1])
    assert np.array_equal(res.hits[-1].x, seq)  # core 0 is the sequential solver bit for bit


@pytest.mark.parametrize("init", [(0, 2, 4, 8, 16, 24, 32, 40), (0, 5, 10, 15), (0, 1, 7, 9, 19)])
def test_hierarchy_bound_is_attained_for_growth_ode(init):
    L, steps = 1.3, 50
    times = np.linspace(0.0, 1.0, steps + 1)
    ode = LinearODE(np.array([[L]]))
    res = cc.chords(ode.vector_field(), np.array([1.0]), times, "euler", init=init, stop=None)
    seq = cc.solve(ode.vector_field(), np.array([1.0]), times, "euler")
    u = th.deviation_bounds(times, init, L)
    for hit in res.hits:
        assert abs(hit.x[0] - seq[0]) == pytest.approx(u[hit.core, -1], rel=1e-6, abs=1e-14)
    devs = [abs(h.x[0] - seq[0]) for h in res.hits]
    assert all(a >= b for a, b in zip(devs, devs[1:]))  # the ladder: faster cores deviate more


# --------------------------------------------------------------------------------- initialisation
def test_a_stiff_plain_ode_grows_the_deviation_by_rho_per_rectification():
    """docs/theory.md and theory/derivations.md: dy/dt = -80 y, 50 Euler steps on [0, 1] (h lambda = -1.6,
    stable sequentially): windows of 2 steps grow a deviation by rho = |(1 + h lambda)^2 - 1 - 2 h lambda|
    = 2.56 each, and core 1 (its spawn and 24 rectifications) ends 2.56^25 = 1.6e10 away from a sequential
    answer of 8e-12 (the docs said "16": a researcher's check of the theory found the exponent dropped)."""
    field = LinearODE(np.array([[-80.0]])).vector_field()
    grid, y0 = np.linspace(0.0, 1.0, 51), np.array([1.0])
    seq = cc.solve(field, y0, grid, "euler")
    res = cc.chords(field, y0, grid, "euler", init=(0, 2), stop=None)
    (core1,) = [h for h in res.hits if h.core == 1]
    assert abs(float(seq[0]) - 8.08e-12) < 1e-14
    assert float(abs(core1.x - seq)[0]) == pytest.approx(2.56 ** 25, rel=1e-6)


def test_the_local_error_estimate_against_the_true_local_error():
    """theory/cascade.md section 5 (``theory.local_error_check``): the estimate is the true local error
    for Euler and Heun on rectified flow, about a fifth of it for DPM-Solver++(2M), 1.5x for Heun on VP,
    and for DPM-Solver++(3M) an order above it, halving as T doubles."""
    from theory.local_error_check import ratios

    assert 0.99 < ratios("rf", "euler", 50)[0] < 1.02 and 0.99 < ratios("vp", "euler", 50)[0] < 1.02
    assert 0.98 < ratios("rf", "heun", 50)[0] < 1.01 and 1.45 < ratios("vp", "heun", 50)[0] < 1.55
    assert 0.2 < ratios("rf", "dpmpp_2m", 50)[0] < 0.23 and 0.16 < ratios("vp", "dpmpp_2m", 50)[0] < 0.19
    for setting in ("rf", "vp"):
        a, b = ratios(setting, "dpmpp_3m", 50)[0], ratios(setting, "dpmpp_3m", 100)[0]
        assert a < 0.1 and 0.4 < b / a < 0.65


def test_three_core_theorem_branches():
    assert th.three_core_middle(0.5) == 0.25
    assert th.three_core_middle(0.8) == pytest.approx(0.6)
    assert th.three_core_middle(2 / 3) == pytest.approx(1 / 3)  # the branches meet at s = 3
    with pytest.raises(ValueError, match="t3"):
        th.three_core_middle(1.0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="order"):
        th.taylor_growth(0.1, order=7)
    with pytest.raises(ValueError, match="init"):
        th.output_rounds(10, (1, 2))
    with pytest.raises(ValueError, match="evals_per_step"):
        th.output_rounds(10, (0, 2), [1, 1])
    with pytest.raises(ValueError, match="fit_slope"):
        th.fit_slope([1.0], [2.0])
