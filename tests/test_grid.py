"""Schedules and time grids."""

import dataclasses

import numpy as np
import pytest

import chords_core as cc


def test_rectified_flow_uniform_and_shift():
    g = cc.time_grid(cc.RectifiedFlow(), 10)
    assert np.array_equal(g, np.linspace(1, 0, 11))
    s = cc.time_grid(cc.RectifiedFlow(), 10, shift=3.0)
    u = np.linspace(1, 0, 11)
    assert np.allclose(s, 3 * u / (1 + 2 * u), atol=0, rtol=1e-15) and s[0] == 1.0 and s[-1] == 0.0


@pytest.mark.parametrize("schedule", [cc.VP.linear(), cc.VP.cosine(), cc.EDM()])
def test_logsnr_grid_is_uniform_in_lambda_and_ends_at_sigma_zero(schedule):
    g = cc.time_grid(schedule, 12, "logsnr")
    assert g.dtype == np.float64 and len(g) == 13 and g[0] == schedule.t_noise and g[-1] == 0.0
    assert float(schedule.sigma(g[-1])) == 0.0
    lam = schedule.lam(g[:-1])
    assert np.allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-9)
    assert g[-2] == schedule.t_min


def test_karras_grid_matches_rho_ramp():
    g = cc.time_grid(cc.EDM(), 8, "karras")
    ramp = (80 ** (1 / 7) + np.linspace(0, 1, 8) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert np.allclose(g[:-1], ramp, rtol=1e-12) and g[-1] == 0.0


def test_edm_has_no_field_that_does_nothing():
    """A review: ``EDM(sigma_data=...)`` was accepted and read by nothing (the preconditioning is the
    network's); it is refused now, by Python, naming the argument."""
    with pytest.raises(TypeError, match="sigma_data"):
        cc.EDM(sigma_data=1.0)  # type: ignore[call-arg]
    assert [f.name for f in dataclasses.fields(cc.EDM())] == ["t_noise", "t_data", "t_min"]


@pytest.mark.parametrize("schedule", [cc.RectifiedFlow(), cc.VP.linear(), cc.VP.cosine(), cc.EDM()])
def test_schedule_derivatives_and_lambda(schedule):
    t = np.linspace(0.05, 0.9, 7) * schedule.t_noise
    h = 1e-6 * schedule.t_noise
    assert np.allclose(schedule.d_alpha(t), (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-9)
    assert np.allclose(schedule.d_sigma(t), (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-9)
    assert np.allclose(schedule.lam(t), np.log(schedule.alpha(t) / schedule.sigma(t)), rtol=1e-12)
    assert np.allclose(schedule.t_from_lam(schedule.lam(t)), t, rtol=1e-9)


def test_vp_is_variance_preserving():
    for s in (cc.VP.linear(), cc.VP.cosine()):
        t = np.linspace(0, s.t_noise, 50)
        assert np.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=1e-14)


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="cannot start at t_max=1"):
        cc.time_grid(cc.RectifiedFlow(), 10, "logsnr")
    with pytest.raises(ValueError, match="t_min > 0"):
        cc.time_grid(cc.RectifiedFlow(), 10, "logsnr", t_max=0.999)
    with pytest.raises(ValueError, match="shift applies"):
        cc.time_grid(cc.VP.linear(), 10, shift=3.0)
    with pytest.raises(ValueError, match="shift must"):
        cc.time_grid(cc.RectifiedFlow(), 10, shift=-1.0)
    with pytest.raises(ValueError, match="t_min"):
        cc.time_grid(cc.EDM(), 10, t_min=100.0)
    # a t_max at t_data, or within the schedule's own t_min, names t_max (it blamed the t_min the caller never
    # passed, or said the grid was not monotone)
    for schedule, t_max in ((cc.VP.linear(), 0.0), (cc.RectifiedFlow(), 0.0)):
        with pytest.raises(ValueError, match=r"^t_max: the grid would start where it ends, at t_data=0"):
            cc.time_grid(schedule, 10, t_max=t_max)
    with pytest.raises(ValueError, match=r"^t_max=0.001 lies within the schedule's smallest time t_min=0.002"):
        cc.time_grid(cc.EDM(), 10, t_max=0.001)
    with pytest.raises(ValueError, match=r"^t_min must lie between"):  # a t_min given: its own words
        cc.time_grid(cc.EDM(), 10, t_max=0.001, t_min=0.01)
    with pytest.raises(ValueError, match="beta_min"):
        cc.VP.linear(beta_min=5.0, beta_max=1.0)


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_a_spacing_that_cannot_start_at_pure_noise_says_so(spacing):
    """Rectified flow has alpha = 0 at t = 1: log-SNR and Karras coordinates are infinite there. The
    error says so and names t_max (it used to be "not strictly monotone", with RuntimeWarnings)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"spacing '{spacing}' cannot start at t_max=1.*t_max=0.999"):
            cc.time_grid(cc.RectifiedFlow(), 10, spacing)
        extra = {"t_min": 0.001} if spacing == "logsnr" else {}  # (log-SNR cannot reach sigma = 0 either)
        grid = cc.time_grid(cc.RectifiedFlow(), 10, spacing, t_max=0.999, **extra)
    assert grid[0] == 0.999 and grid[-1] == 0.0 and np.all(np.diff(grid) < 0)


def test_a_schedule_with_an_array_field_or_its_own_parameter_is_checked_as_itself():
    """(The grid check was cached by the schedule's dataclass hash: a schedule with an array field
    failed with a bare "unhashable type: 'numpy.ndarray'", and two schedules equal as dataclasses but
    with different parameters of their own shared one cached verdict.)"""
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Tabled(cc.RectifiedFlow):
        table: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 5))

    model = cc.DiffusionModel(lambda x, t: 0.5 * x, Tabled(), "flow")
    x = np.ones((2, 3))
    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    assert np.array_equal(cc.solve(model, x, grid), cc.solve(cc.DiffusionModel(lambda x, t: 0.5 * x,
                                                                                 cc.RectifiedFlow(), "flow"), x, grid))

    class Limited(cc.RectifiedFlow):  # a parameter of its own: the domain ends at `top`
        def __init__(self, top: float) -> None:
            super().__init__()
            object.__setattr__(self, "top", top)

        def domain(self):
            return 0.0, self.top

    assert Limited(1.0) == Limited(0.5)  # (the dataclass's equality sees neither parameter)
    cc.DiffusionModel(lambda x, t: x, Limited(1.0), "flow").check_times(grid)
    with pytest.raises(ValueError, match=r"grid\[0\]"):
        cc.DiffusionModel(lambda x, t: x, Limited(0.5), "flow").check_times(grid)


def test_the_generic_inverse_of_lambda_on_a_schedule_running_up_in_time():
    """``Schedule.t_from_lam``'s bisection took lambda as decreasing in t for every schedule (its test
    compared lambda at t_noise and the midpoint only): a schedule from t_noise = 0 to t_data = 1 got
    [1, 1, 3e-61] for [0.1, 0.3, 0.7], and its log-SNR grids failed with misleading messages."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Rising(cc.Schedule):  # rectified flow with time reversed: noise at 0, data at 1
        t_noise: float = 0.001
        t_data: float = 1.0
        t_min: float | None = 0.99

        def alpha(self, t):
            return np.asarray(t, dtype=np.float64)

        def sigma(self, t):
            return 1.0 - np.asarray(t, dtype=np.float64)

    s, t = Rising(), np.array([0.1, 0.3, 0.7])
    assert np.allclose(s.t_from_lam(s.lam(t)), t, rtol=1e-12, atol=0)
    grid = cc.time_grid(s, 6, "logsnr")
    assert np.all(np.diff(grid) > 0) and np.allclose(np.diff(s.lam(grid[:-1])), np.diff(s.lam(grid[:-1]))[0])


def test_a_small_shift_keeps_the_grid_ends_exactly():
    """A user trial: for shift = 0.1, 0.2, 1/3 or 0.45 the shifted grid started at 1.0000000000000002
    (s / (1 + (s - 1)) rounds), and every solver refused it as outside the schedule's domain [0, 1]; 954 of
    2009 shifts below 0.5 moved an end."""
    rf = cc.RectifiedFlow()
    for s in (0.1, 0.2, 1 / 3, 0.45, *np.linspace(0.01, 0.5, 200)):
        g = cc.time_grid(rf, 20, shift=float(s))
        assert g[0] == 1.0 and g[-1] == 0.0 and np.all(np.diff(g) < 0)
    model = cc.DiffusionModel(lambda x, t: 0.5 * x, rf, "flow")
    assert np.isfinite(cc.solve(model, np.ones((1, 2)), cc.time_grid(rf, 8, shift=0.1))).all()


def test_a_karras_rho_that_overflows_the_coordinate_is_named():
    """A user trial: rho=1e-3 raised a raw OverflowError (34, 'Numerical result out of range')."""
    with pytest.raises(ValueError, match=r"^rho=0.001: the Karras coordinate sigma\^\(1/rho\) overflows"):
        cc.time_grid(cc.EDM(), 10, "karras", rho=1e-3)


def test_one_step_grids_start_at_the_schedules_noise_end():
    """A mutation review: with one step the grid [t_max, t_data] lost t_max to t_min (a schedule with a
    t_min) with no test failing; and ``VP.cosine(t_max=...)`` is where its grids start."""
    assert cc.time_grid(cc.VP.linear(), 1).tolist() == [1.0, 0.0]
    assert cc.time_grid(cc.EDM(), 1).tolist() == [80.0, 0.0]
    cos = cc.VP.cosine(t_max=0.98)
    assert cos.t_noise == 0.98 and cc.time_grid(cos, 10)[0] == 0.98 and cc.time_grid(cos, 1)[0] == 0.98
