"""Tests for chords_core.problems: exact GMM diffusion targets and the linear ODE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.special import logsumexp
from scipy.stats import norm

from chords_core.problems import PREDICTIONS, GaussianMixture, LinearODE
from chords_core.schedules import EDM, VP, RectifiedFlow

SCHEDULES = {
    "rf": RectifiedFlow(),
    "vp_linear": VP.linear(),
    "vp_cosine": VP.cosine(),
    "edm": EDM(),
}

# (schedule, t_start, t_end) spans for the exact-trajectory check.
SPANS = [
    ("rf", 1.0, 0.0),
    ("vp_linear", 1.0, 1e-3),
    ("vp_linear", 1.0, 0.0),
    ("vp_cosine", VP.cosine().t_noise, 1e-3),
    ("vp_cosine", VP.cosine().t_noise, 0.0),
    ("edm", 80.0, 0.002),
    ("edm", 80.0, 0.0),
]


def _x_T(schedule, t, n, dim, seed=1):
    """Noise-end states with the right scale: alpha * (data-ish) + sigma * N(0, I)."""
    rng = np.random.default_rng(seed)
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    return a * rng.standard_normal((n, dim)) + s * rng.standard_normal((n, dim))


def _log_p_t(gmm, x, t, schedule):
    """log p_t computed independently, with scipy.stats.norm per dimension."""
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    std = np.sqrt(a * a * gmm.variances + s * s)  # (K, D)
    logpdf = norm.logpdf(x[:, None, :], loc=a * gmm.means, scale=std).sum(-1)  # (N, K)
    return logsumexp(np.log(gmm.weights) + logpdf, axis=1)


# ---------------------------------------------------------------- single Gaussian: exact trajectory


@pytest.mark.parametrize("name,t_start,t_end", SPANS)
def test_single_gaussian_exact_trajectory_matches_reference(name, t_start, t_end):
    schedule = SCHEDULES[name]
    gmm = GaussianMixture.single([0.7, -1.2, 0.3], [0.25, 0.5, 1.3])
    x_T = _x_T(schedule, t_start, n=6, dim=3)
    exact = gmm.exact_trajectory(x_T, t_start, t_end, schedule)
    ref = gmm.reference_solve(x_T, t_start, t_end, schedule)
    np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-8)


def test_exact_trajectory_endpoints_and_per_sample_times():
    schedule = VP.linear()
    gmm = GaussianMixture.single([1.0, 2.0], 0.3)
    x_T = _x_T(schedule, 1.0, n=4, dim=2)
    np.testing.assert_allclose(gmm.exact_trajectory(x_T, 1.0, 1.0, schedule), x_T, atol=1e-14)
    t = np.array([0.9, 0.5, 0.1, 0.0])
    per_sample = gmm.exact_trajectory(x_T, 1.0, t, schedule)
    for i, ti in enumerate(t):
        np.testing.assert_allclose(per_sample[i], gmm.exact_trajectory(x_T, 1.0, ti, schedule)[i], atol=1e-14)
    # Velocity is the time derivative of the exact trajectory.
    h = 1e-6
    x_mid = gmm.exact_trajectory(x_T, 1.0, 0.5, schedule)
    fd = (gmm.exact_trajectory(x_T, 1.0, 0.5 + h, schedule) - gmm.exact_trajectory(x_T, 1.0, 0.5 - h, schedule)) / (2 * h)
    np.testing.assert_allclose(gmm.velocity(x_mid, 0.5, schedule), fd, rtol=1e-6, atol=1e-8)


def test_exact_trajectory_rejects_mixtures():
    gmm = GaussianMixture.random(dim=2, modes=3)
    with pytest.raises(ValueError, match="K = 1"):
        gmm.exact_trajectory(np.zeros((1, 2)), 1.0, 0.0, RectifiedFlow())


# ---------------------------------------------------------------- GMM predictions


@pytest.mark.parametrize("name", SCHEDULES)
def test_predictions_are_mutually_consistent(name):
    schedule = SCHEDULES[name]
    gmm = GaussianMixture.random(dim=4, modes=5, seed=3)
    rng = np.random.default_rng(0)
    t = rng.uniform(0.05, 0.95, size=16) * schedule.t_noise
    x = schedule.alpha(t)[:, None] * gmm.sample(16, seed=2) + schedule.sigma(t)[:, None] * rng.standard_normal((16, 4))
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    out = {p: gmm.prediction_fn(schedule, p)(x, t) for p in PREDICTIONS}
    np.testing.assert_allclose(a * out["x0"] + s * out["eps"], x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["v"], a * out["eps"] - s * out["x0"], atol=1e-12)
    np.testing.assert_allclose(out["flow"], out["eps"] - out["x0"], atol=1e-12)
    # Per-sample times agree with one scalar time at a time.
    np.testing.assert_allclose(out["x0"][3], gmm.prediction_fn(schedule, "x0")(x[3:4], float(t[3]))[0], atol=1e-14)


def test_flow_prediction_is_the_rectified_flow_velocity():
    schedule = RectifiedFlow()
    gmm = GaussianMixture.random(dim=3, modes=4)
    x = np.random.default_rng(5).standard_normal((8, 3))
    t = np.linspace(0.0, 1.0, 8)
    np.testing.assert_allclose(gmm.prediction_fn(schedule, "flow")(x, t), gmm.velocity(x, t, schedule), atol=1e-13)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("frac", [1.0, 0.5, 0.05])
def test_posterior_matches_tweedie_via_finite_difference_score(name, frac):
    """E[eps|x] = -sigma grad log p_t and E[x0|x] = (x + sigma^2 grad log p_t)/alpha, grad by central differences."""
    schedule = SCHEDULES[name]
    t = frac * schedule.t_noise
    gmm = GaussianMixture.random(dim=3, modes=4, seed=7)
    x = _x_T(schedule, t, n=5, dim=3, seed=11)
    a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
    h = 1e-4 * max(s, a * np.sqrt(gmm.variances.min()))
    score = np.stack(
        [(_log_p_t(gmm, x + h * e, t, schedule) - _log_p_t(gmm, x - h * e, t, schedule)) / (2 * h) for e in np.eye(3)],
        axis=1,
    )
    x0_hat, eps_hat = gmm.posterior(x, t, schedule)
    np.testing.assert_allclose(eps_hat, -s * score, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gmm.score(x, t, schedule), score, rtol=1e-6, atol=1e-7 / s)
    if a > 0.1:  # dividing by alpha amplifies the finite-difference error
        np.testing.assert_allclose(x0_hat, (x + s * s * score) / a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gmm.marginal_log_density(x, t, schedule), _log_p_t(gmm, x, t, schedule), rtol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_velocity_matches_score_form_of_pf_ode(name):
    """dx/dt = (alpha'/alpha) x - (1/2) g^2 grad log p_t with g^2 = d(sigma^2)/dt - 2 (alpha'/alpha) sigma^2."""
    schedule = SCHEDULES[name]
    gmm = GaussianMixture.random(dim=3, modes=4, seed=2)
    t = np.linspace(0.1, 0.9, 6) * schedule.t_noise
    x = np.random.default_rng(0).standard_normal((6, 3))
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    da, ds = schedule.d_alpha(t)[:, None], schedule.d_sigma(t)[:, None]
    g2 = 2 * s * ds - 2 * da / a * s * s
    expected = da / a * x - 0.5 * g2 * gmm.score(x, t, schedule)
    np.testing.assert_allclose(gmm.velocity(x, t, schedule), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
def test_regular_at_data_end_and_noise_end(name):
    schedule = SCHEDULES[name]
    gmm = GaussianMixture.random(dim=3, modes=4, seed=4)
    x = np.random.default_rng(1).standard_normal((5, 3))
    x0_hat, eps_hat = gmm.posterior(x, 0.0, schedule)
    np.testing.assert_array_equal(eps_hat, 0.0)
    np.testing.assert_allclose(x0_hat, x, atol=1e-14)
    for t in (0.0, schedule.t_noise):
        with np.errstate(all="raise"):
            v = gmm.velocity(x, t, schedule)
        assert np.all(np.isfinite(v))


def test_alpha_zero_gives_data_mean():
    schedule = RectifiedFlow()  # alpha(1) = 0
    gmm = GaussianMixture.random(dim=2, modes=3, seed=9)
    x = np.random.default_rng(2).standard_normal((4, 2))
    x0_hat, eps_hat = gmm.posterior(x, 1.0, schedule)
    np.testing.assert_allclose(x0_hat, np.broadcast_to(gmm.weights @ gmm.means, x.shape), atol=1e-14)
    np.testing.assert_allclose(eps_hat, x, atol=1e-14)


def test_posterior_is_stable_for_far_points_and_sharp_modes():
    gmm = GaussianMixture.random(dim=8, modes=6, seed=0, scale=0.01)
    x = 1e3 * np.random.default_rng(3).standard_normal((4, 8))
    x0_hat, eps_hat = gmm.posterior(x, 1e-3, VP.linear())
    assert np.all(np.isfinite(x0_hat)) and np.all(np.isfinite(eps_hat))


def test_gmm_reference_solve_matches_loose_solve_and_reverses():
    schedule = RectifiedFlow()
    gmm = GaussianMixture.random(dim=2, modes=8, seed=0)
    x_T = np.random.default_rng(0).standard_normal((5, 2))
    x_0 = gmm.reference_solve(x_T, 1.0, 0.0, schedule)
    x_loose = gmm.reference_solve(x_T, 1.0, 0.0, schedule, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(x_loose, x_0, atol=1e-5)
    back = gmm.reference_solve(x_0, 0.0, 1.0, schedule)
    np.testing.assert_allclose(back, x_T, atol=1e-6)


def test_gmm_reference_solve_lands_on_modes():
    """With sharp, well-separated modes every PF-ODE endpoint lies within a few std of some mode."""
    gmm = GaussianMixture.random(dim=3, modes=4, seed=1, spread=4.0, scale=0.1)
    x_T = np.random.default_rng(0).standard_normal((20, 3))
    x_0 = gmm.reference_solve(x_T, 1.0, 0.0, VP.linear())
    z2 = ((x_0[:, None, :] - gmm.means) ** 2 / gmm.variances).sum(-1)  # (N, K)
    assert np.all(np.sqrt(z2.min(axis=1)) < 5.0)
    assert np.all(np.sqrt(z2.min(axis=1)) > 1e-3)  # not collapsed onto the means


# ---------------------------------------------------------------- data distribution


def test_sample_and_log_density():
    gmm = GaussianMixture.random(dim=2, modes=3, seed=5)
    x = gmm.sample(20000, seed=1)
    assert x.shape == (20000, 2)
    np.testing.assert_allclose(x.mean(0), gmm.weights @ gmm.means, atol=0.05)
    np.testing.assert_array_equal(gmm.sample(10, seed=4), gmm.sample(10, seed=4))
    # log_density integrates to one on a grid and equals the independent formula.
    g = np.linspace(-6, 6, 401)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    dens = np.exp(gmm.log_density(xx)).reshape(401, 401)
    assert abs(np.trapezoid(np.trapezoid(dens, g, axis=1), g) - 1.0) < 1e-6
    np.testing.assert_allclose(gmm.log_density(x[:50]), _log_p_t(gmm, x[:50], 0.0, EDM()), rtol=1e-12)


def test_random_and_single_constructors():
    gmm = GaussianMixture.random(dim=5, modes=4, seed=0)
    assert (gmm.dim, gmm.n_modes) == (5, 4)
    assert gmm.weights.shape == (4,) and abs(gmm.weights.sum() - 1) < 1e-15
    assert np.all(gmm.variances > 0)
    np.testing.assert_array_equal(gmm.means, GaussianMixture.random(dim=5, modes=4, seed=0).means)
    assert not np.array_equal(gmm.means, GaussianMixture.random(dim=5, modes=4, seed=1).means)
    one = GaussianMixture.single([1.0, 2.0], 0.5)
    assert one.n_modes == 1
    np.testing.assert_array_equal(one.variances, [[0.5, 0.5]])


@pytest.mark.parametrize(
    "args,match",
    [
        (([1.0], [[0.0]], [[0.0]]), "variances"),
        (([1.0], [[0.0]], [[-1.0]]), "variances"),
        (([1.0], [[0.0, 1.0]], [[1.0]]), "variances"),
        (([1.0, 1.0], [[0.0]], [[1.0]]), "means"),
        (([1.0], [0.0], [1.0]), "means"),
        (([0.0], [[0.0]], [[1.0]]), "weights"),
        (([-1.0, 2.0], [[0.0], [1.0]], [[1.0], [1.0]]), "weights"),
        (([[1.0]], [[0.0]], [[1.0]]), "weights"),
        (([1.0], [[np.nan]], [[1.0]]), "means"),
    ],
)
def test_gaussian_mixture_rejects_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_bad_call_arguments_raise():
    gmm = GaussianMixture.random(dim=3, modes=2)
    schedule = RectifiedFlow()
    with pytest.raises(ValueError, match="prediction"):
        gmm.prediction_fn(schedule, "score")
    with pytest.raises(ValueError, match="x0"):  # the message lists the allowed names
        gmm.prediction_fn(schedule, "epsilon")
    with pytest.raises(ValueError, match="x must"):
        gmm.posterior(np.zeros((4, 2)), 0.5, schedule)
    with pytest.raises(ValueError, match="t must"):
        gmm.posterior(np.zeros((4, 3)), np.full(3, 0.5), schedule)
    with pytest.raises(ValueError, match="x_T"):
        gmm.reference_solve(np.zeros(3), 1.0, 0.0, schedule)
    with pytest.raises(ValueError, match="variance"):
        GaussianMixture.single([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="variance"):
        GaussianMixture.single([0.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="mean"):
        GaussianMixture.single(0.0, 1.0)


# ---------------------------------------------------------------- linear ODE


def test_linear_ode_exact_matches_solve_ivp():
    ode = LinearODE.random(dim=5, seed=1)
    y0 = np.random.default_rng(0).standard_normal(5)
    sol = solve_ivp(ode, (0.3, 2.1), y0, method="DOP853", rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ode.exact(y0, 0.3, 2.1), sol.y[:, -1], rtol=0, atol=1e-10)
    # Backwards in time too, and batched states.
    Y0 = np.random.default_rng(1).standard_normal((3, 5))
    back = ode.exact(ode.exact(Y0, 0.0, 1.5), 1.5, 0.0)
    np.testing.assert_allclose(back, Y0, atol=1e-12)
    np.testing.assert_allclose(ode.exact(Y0, 0.0, 1.0)[1], ode.exact(Y0[1], 0.0, 1.0), atol=1e-15)
    np.testing.assert_allclose(ode(0.0, Y0), Y0 @ ode.A.T)


def test_linear_ode_random_is_stable_and_lipschitz_is_spectral_norm():
    ode = LinearODE.random(dim=6, seed=2, scale=3.0)
    assert np.all(np.linalg.eigvals(ode.A).real < 0)
    assert np.all(np.linalg.eigvalsh(ode.A + ode.A.T) < 0)  # |y| strictly decreases
    assert np.linalg.cond(ode.A) < 10
    assert ode.lipschitz == pytest.approx(np.linalg.svd(ode.A, compute_uv=False)[0], rel=1e-12)
    assert LinearODE([[0.0, 2.0], [-2.0, 0.0]]).lipschitz == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[1.0, 2.0]], [[np.inf]], np.zeros((0, 0))])
def test_linear_ode_rejects_bad_matrix(bad):
    with pytest.raises(ValueError, match="A"):
        LinearODE(bad)


def test_linear_ode_rejects_bad_state():
    with pytest.raises(ValueError, match="y0"):
        LinearODE(np.eye(2)).exact(np.zeros(3), 0.0, 1.0)


def test_model_and_vector_field_wrappers():
    import chords_core.models as models
    gmm = GaussianMixture.random(dim=2, modes=3)
    model = gmm.model(VP.linear(), "v")
    assert isinstance(model, models.DiffusionModel) and model.prediction == "v"
    ode = LinearODE.random(dim=3)
    assert isinstance(ode.vector_field(), models.VectorField)
    y = np.random.default_rng(0).standard_normal((4, 2, 3))  # (N points, batch, D)
    np.testing.assert_allclose(ode(np.zeros(4), y)[2, 1], ode.A @ y[2, 1])
    np.testing.assert_allclose(ode.exact(y, 0.0, 0.7)[2, 1], ode.exact(y[2, 1], 0.0, 0.7), atol=1e-15)
