"""Input validation: bad model outputs, grids that do not suit the model, numpy integers, bad options,
plain functions where a model is expected, and float32 states kept float32 by every executor.

Every check raises a ``ValueError`` / ``TypeError`` / ``ModelOutputError`` whose message names the
argument (or says what the model returned); float64 and small analytic problems throughout.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

import chords_core as cc
from chords_core.models import ModelOutputError
from chords_core.problems import GaussianMixture, LinearODE
from chords_core.solvers import DPMSolverPP

RF = cc.RectifiedFlow()
GMM = GaussianMixture.random(4, 2, seed=0)
FLOW = GMM.model(RF, "flow")
GRID = cc.time_grid(RF, 8)
GRID_ODE = np.linspace(0.0, 2.0, 21)
X = np.random.default_rng(0).standard_normal((3, 4))
LIN = LinearODE.random(3, seed=0)
Y = np.array([1.0, -0.5, 0.25])


def run(method, model, x, grid, solver="euler", **kw):
    """``solve`` or ``chords`` (cores=2, every core run) on the same arguments."""
    if method == "solve":
        return cc.solve(model, x, grid, solver, **kw)
    return cc.chords(model, x, grid, solver, cores=2, stop=None, **kw)


# -- 1. non-finite outputs of an unbatched VectorField --------------------------------------------

def _nan_at_2(t, y):
    out = -y
    out[2] = np.nan
    return out


@pytest.mark.parametrize("method", ["solve", "chords"])
def test_nan_at_any_element_of_an_unbatched_vector_field_raises(method):
    with pytest.raises(ModelOutputError, match="non-finite"):
        run(method, cc.VectorField(_nan_at_2), np.ones(4), np.linspace(0.0, 1.0, 5))


@pytest.mark.parametrize("method", ["solve", "chords"])
def test_nan_output_for_a_0d_state_raises(method):
    y0 = np.array(1.0)  # np.float64 array of shape ()
    with pytest.raises(ModelOutputError, match="non-finite"):
        run(method, cc.VectorField(lambda t, y: y * np.inf if t > 0.3 else -y), y0, np.linspace(0.0, 1.0, 5))
    # the same 0-d state with a finite field solves dy/dt = -y
    got = run(method, cc.VectorField(lambda t, y: -y), y0, np.linspace(0.0, 1.0, 41), "heun")
    got = got if method == "solve" else got.x
    assert np.shape(got) == () and abs(float(got) - math.exp(-1.0)) < 1e-4


@pytest.mark.filterwarnings("ignore:.*its default tol=.* is absolute:UserWarning")  # (documented)
@pytest.mark.parametrize("method", [None, "chords", "paradigms", "parasolver", "parataa", "srds", "cascade"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_0d_state_reaches_the_function_as_a_0d_array_at_every_call(method, solver):
    """A trial: a VectorField's f got a 0-d ndarray at its first call and an np.float64 scalar at every
    later one (arithmetic on 0-d arrays returns scalars), so an f on torch.from_numpy(y) worked at step
    0 and failed at step 1. Every call gets a 0-d ndarray now, and the answer is unchanged, bit for bit."""
    import torch

    seen = []

    def f(t, y):
        seen.append(type(y))
        return torch.from_numpy(y).neg().numpy()

    grid = np.linspace(0.0, 1.0, 9)
    got = cc.parallel(cc.VectorField(f), np.array(1.0), grid, solver, cores=3, method=method)
    ref = cc.parallel(cc.VectorField(lambda t, y: -y), np.array(1.0), grid, solver, cores=3, method=method)
    assert set(seen) == {np.ndarray} and len(seen) == got.nfe
    assert np.asarray(got.x).tobytes() == np.asarray(ref.x).tobytes()


def test_nan_in_one_point_of_a_batched_vector_field_names_that_point():
    vf = cc.VectorField(lambda t, y: np.where(t[:, None] > 0.3, np.nan, -y), batched=True)
    with pytest.raises(ModelOutputError, match="non-finite") as e:
        cc.chords(vf, np.ones(3), np.linspace(0.0, 1.0, 9), cores=2, stop=None)
    assert "core" in str(e.value)


def test_a_wrong_shape_from_a_stacked_call_says_the_call_was_on_several_points():
    """One call on a round's points stacked returned the wrong shape: the error names the call's first
    point, and says so (it read as if core 0 alone had failed)."""
    model = cc.DiffusionModel(lambda x, t: x[:, :-1] if len(x) > 2 else -x, RF, "flow")  # wrong when stacked
    with pytest.raises(ModelOutputError, match=r"^round 2, core 0 .*model returned shape \(4, 2\), expected "
                       r"\(4, 3\) \(one call on 2 points stacked, 2 rows each: named by its first point\)$"):
        cc.chords(model, np.ones((2, 3)), GRID, cores=2, stop=None, executor=cc.BatchedExecutor())
    one = cc.DiffusionModel(lambda x, t: x[:, :-1], RF, "flow")  # wrong in a call on one point
    with pytest.raises(ModelOutputError, match=r"^round 1, core 0 .*returned shape \(2, 2\), expected \(2, 3\)$"):
        cc.chords(one, np.ones((2, 3)), GRID, cores=2, stop=None, executor=cc.BatchedExecutor())


# -- 2. outputs that are not floating arrays -------------------------------------------------------

BAD_OUTPUTS = {
    "None": (lambda y: None, "NoneType"),
    "list": (lambda y: [0.0] * len(y), "list"),
    "scalar": (lambda y: 1.0, "float"),
    "int array": (lambda y: np.zeros(y.shape, dtype=np.int64), "int64"),
}


@pytest.mark.parametrize("method", ["solve", "chords"])
@pytest.mark.parametrize("kind", ["diffusion", "vector field"])
@pytest.mark.parametrize("bad", list(BAD_OUTPUTS))
def test_a_model_returning_a_non_array_or_integers_raises_saying_what(bad, kind, method):
    ret, what = BAD_OUTPUTS[bad]
    if kind == "diffusion":
        model, x, grid = cc.DiffusionModel(lambda x, t: ret(x), RF, "flow"), X, GRID
    else:
        model, x, grid = cc.VectorField(lambda t, y: ret(y)), Y, np.linspace(0.0, 1.0, 5)
    with pytest.raises((ModelOutputError, TypeError), match=f"returned.*{what}"):
        run(method, model, x, grid)


# -- 3. grids checked against the schedule ---------------------------------------------------------

@pytest.mark.parametrize("method", ["solve", "chords"])
def test_grid_outside_the_schedule_domain_raises_naming_the_grid(method):
    with pytest.raises(ValueError, match=r"grid\[0\]=1.5.*outside"):
        run(method, FLOW, X, [1.5, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("method", ["solve", "chords"])
@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "heun"])
def test_grid_running_from_data_to_noise_raises_for_a_diffusion_model(method, solver):
    with pytest.raises(ValueError, match="grid must run from noise to data"):
        run(method, FLOW, X, np.linspace(0.0, 1.0, 11), solver)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_grid_starting_where_eps_cannot_be_converted_blames_the_grid(solver):
    eps = GMM.model(RF, "eps")
    for method in ("solve", "chords"):
        with pytest.raises(ValueError, match=r"grid\[0\]=1\b") as e:
            run(method, eps, X, GRID, solver)
        assert not isinstance(e.value, ModelOutputError)
    # starting just inside the schedule is fine
    inside = cc.time_grid(RF, 8, t_max=0.999)
    assert np.all(np.isfinite(cc.solve(eps, X, inside, solver)))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_vector_field_accepts_any_monotone_grid_in_either_direction(solver):
    vf = LIN.vector_field()
    fwd = np.linspace(-1.0, 2.0, 121) ** 3 / 4  # increasing, non-uniform, through negative times
    tol = 5e-2 if solver == "euler" else 5e-3
    for grid in (fwd, fwd[::-1]):
        got = cc.solve(vf, Y, grid, solver)
        want = LIN.exact(Y, grid[0], grid[-1])
        assert np.max(np.abs(got - want)) < tol * np.max(np.abs(want))
        res = cc.chords(vf, Y, grid, solver, cores=2, stop=None)
        np.testing.assert_allclose(res.x, got, rtol=1e-12, atol=1e-12)  # core 0: the sequential solution
    with pytest.raises(ValueError, match="grid must be strictly monotone"):
        cc.solve(vf, Y, [0.0, 0.5, 0.4, 1.0], solver)


# -- 4. numpy integers and bad numbers ------------------------------------------------------------

I = np.int64
GRID16 = cc.time_grid(RF, 16)


def same_result(a, b):
    return (a.rounds, a.nfe, a.stopped_by) == (b.rounds, b.nfe, b.stopped_by) and np.array_equal(a.x, b.x)


def test_numpy_integers_are_accepted_and_give_the_python_int_results():
    assert same_result(cc.chords(FLOW, X, GRID16, cores=I(4)), cc.chords(FLOW, X, GRID16, cores=4))
    assert same_result(cc.parallel(FLOW, X, GRID16, cores=I(4)), cc.parallel(FLOW, X, GRID16, cores=4))
    assert same_result(cc.paradigms(FLOW, X, GRID16, window=I(3)), cc.paradigms(FLOW, X, GRID16, window=3))
    assert same_result(cc.srds(FLOW, X, GRID16, blocks=I(2)), cc.srds(FLOW, X, GRID16, blocks=2))
    np.testing.assert_array_equal(cc.time_grid(RF, I(8)), cc.time_grid(RF, 8))
    stop = cc.StopAtCore(I(2))
    assert stop == cc.StopAtCore(2) and type(stop.n) is int
    assert cc.default_init(I(50), I(4)) == cc.default_init(50, 4) == (0, 8, 16, 32)
    got = cc.solve(FLOW, X, GRID, "unipc", order=I(3))
    np.testing.assert_array_equal(got, cc.solve(FLOW, X, GRID, "unipc", order=3))


def test_a_torch_integer_without_a_value_is_refused_naming_the_argument():
    """A 0-d torch integer is an integer (``cores=torch.tensor(4)`` runs as 4); one on the meta device has no
    value: its ``int()`` raised torch's own RuntimeError, naming nothing. Refused, naming ``cores``."""
    torch = pytest.importorskip("torch")
    assert same_result(cc.parallel(FLOW, X, GRID16, cores=torch.tensor(4)), cc.parallel(FLOW, X, GRID16, cores=4))
    with pytest.raises(ValueError, match=r"^cores must be an integer with a value, got tensor\(\.\.\., device='meta'"):
        cc.parallel(FLOW, X, GRID16, cores=torch.tensor(4, device="meta"))


@pytest.mark.parametrize("init", [[0, math.inf], "0,8", [0, True], [False, 8], [0, 8.5], [0, float("nan")]])
def test_bad_init_entries_raise_naming_init(init):
    with pytest.raises(ValueError, match="init"):
        cc.chords(FLOW, X, GRID16, init=init)


def test_integral_float_init_is_accepted():
    ref = cc.chords(FLOW, X, GRID16, init=[0, 8])
    assert same_result(cc.chords(FLOW, X, GRID16, init=[0, 8.0]), ref)
    assert same_result(cc.chords(FLOW, X, GRID16, init=np.array([0.0, 8.0])), ref)


@pytest.mark.parametrize("order", [2.0, True, 0, 4, "2"])
def test_solver_order_must_be_an_integer_in_range(order):
    with pytest.raises(ValueError, match="order"):
        cc.make_solver("unipc", FLOW, GRID, order=order)
    with pytest.raises(ValueError, match="order"):
        DPMSolverPP(FLOW, GRID, order=order)
    with pytest.raises(ValueError, match="order"):
        cc.solve(FLOW, X, GRID, "unip", order=order)


def test_dpmpp_names_fix_the_order():
    with pytest.raises(ValueError, match="order"):
        cc.solve(FLOW, X, GRID, "dpmpp_2m", order=2.0)


@pytest.mark.parametrize("solver, key, takes", [("heun", "order", "it takes none"),
                                                ("dpmpp_2m", "order", "its options: lower_order_final"),
                                                ("euler", "tolerance", "it takes none"),
                                                ("unipc", "tolerance",
                                                 "its options: order, variant, corrector, lower_order_final"),
                                                ("unip", "corrector", "its options: order, variant, lower_order_final")])
def test_an_option_the_solver_does_not_take_is_named_with_the_ones_it_does(solver, key, takes):
    """Named as the caller wrote it (it was "Euler.__init__() got an unexpected keyword argument" for
    "heun", and "got multiple values for keyword argument 'order'" for an order given once)."""
    for call in (lambda: cc.solve(FLOW, X, GRID, solver, **{key: 2}),
                 lambda: cc.make_solver(solver, FLOW, GRID, **{key: 2})):
        with pytest.raises(ValueError, match=rf"^{key}: unknown option \(not an option of solver '{solver}': {takes}\)$"):
            call()
    with pytest.raises(ValueError, match=rf"^{key}: unknown option, not of method 'cascade' \(its options: tol, .*\) "
                                         rf"nor of solver '{solver}' \({takes}\)$"):  # parallel: the method too
        cc.parallel(FLOW, X, GRID, solver, cores=2, **{key: 2})


@pytest.mark.parametrize("value", ["False", 0, 1.0, None])
def test_boolean_solver_options_must_be_booleans(value):
    """``lower_order_final="False"`` was truthy: the same result as True, silently."""
    with pytest.raises(ValueError, match="^lower_order_final must be True or False"):
        cc.solve(FLOW, X, GRID, "dpmpp_3m", lower_order_final=value)
    from chords_core.solvers import UniPC
    with pytest.raises(ValueError, match="^corrector must be True or False"):
        UniPC(FLOW, GRID, corrector=value)
    assert np.array_equal(cc.solve(FLOW, X, GRID, "dpmpp_3m", lower_order_final=np.bool_(False)),
                          cc.solve(FLOW, X, GRID, "dpmpp_3m", lower_order_final=False))
    assert np.array_equal(cc.solve(FLOW, X, GRID, "unipc", corrector=False), cc.solve(FLOW, X, GRID, "unip"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_a_non_finite_initial_state_is_refused_naming_x(bad, lib):
    """It ran, and returned nan silently (or blamed the model for passing it through)."""
    x = X.copy()
    x[1, 2] = bad
    grid = np.linspace(0.0, 1.0, 5)
    field_ = cc.VectorField(lambda t, y: np.ones_like(y) if isinstance(y, np.ndarray) else y * 0 + 1, batched=True)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        x = torch.from_numpy(x)
    for call in (lambda: cc.solve(FLOW, x, GRID), lambda: cc.solve(field_, x, grid),
                 lambda: cc.parallel(FLOW, x, GRID, cores=2), lambda: cc.chords(FLOW, x, GRID, cores=2),
                 lambda: cc.parallel(field_, x, grid, cores=2, method="srds")):
        with pytest.raises(ValueError, match=r"^x: the initial state has non-finite values \(nan or inf\)$"):
            call()


def test_an_executor_class_instead_of_an_instance_is_named():
    with pytest.raises(TypeError, match=r"^executor: pass an instance, e.g. SerialExecutor\(\), not the class"):
        cc.parallel(FLOW, X, GRID, cores=2, executor=cc.SerialExecutor)
    with pytest.raises(TypeError, match=r"^executor: pass an instance"):
        cc.chords(FLOW, X, GRID, cores=2, executor=cc.BatchedExecutor)

    class NeedsAFactory(cc.Executor):  # (a user trial was told ProcessExecutor(), which needs its factory)
        def __init__(self, factory, workers=2):
            self.factory = factory

    with pytest.raises(TypeError, match=r"^executor: pass an instance, e.g. NeedsAFactory\(\.\.\.\), not the class"):
        cc.chords(FLOW, X, GRID, cores=2, executor=NeedsAFactory)


def test_unipc_variant_is_checked():
    with pytest.raises(ValueError, match="variant"):
        cc.make_solver("unipc", FLOW, GRID, variant="bh3")


@pytest.mark.parametrize("rho", [0, 0.0, -1.0, float("nan"), math.inf, "7", True])
def test_karras_rho_must_be_a_positive_number(rho):
    with pytest.raises(ValueError, match="rho"):
        cc.time_grid(cc.EDM(), 8, "karras", rho=rho)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_rho_with_another_spacing_is_refused(spacing):
    """A user trial: ``rho`` was ignored, silently, unless ``spacing="karras"`` (the library refuses
    other options that would be ignored: ``level_floor`` with ``scale="error"``, ``ridge`` without
    ``anderson``)."""
    with pytest.raises(ValueError, match=rf"^rho: the Karras exponent applies to spacing='karras' only, got "
                                         rf"spacing='{spacing}'"):
        cc.time_grid(cc.EDM(), 4, spacing, rho=3)
    assert not np.array_equal(cc.time_grid(cc.EDM(), 4, "karras", rho=3), cc.time_grid(cc.EDM(), 4, "karras"))


def test_time_grid_numbers_are_checked_by_name():
    edm = cc.EDM()
    np.testing.assert_array_equal(cc.time_grid(edm, 8, "karras", rho=np.float64(7.0)), cc.time_grid(edm, 8, "karras"))
    np.testing.assert_array_equal(cc.time_grid(RF, 8, shift=np.float32(3.0)), cc.time_grid(RF, 8, shift=3.0))
    for kw, name in [(dict(shift=0.0), "shift"), (dict(shift=True), "shift"), (dict(t_max="1"), "t_max"),
                     (dict(t_min=float("nan")), "t_min"), (dict(spacing="cosine"), "spacing")]:
        with pytest.raises(ValueError, match=name):
            cc.time_grid(cc.VP.linear() if name == "t_min" else RF, 8, **kw)
    for steps in (0, 8.0, True, "8"):
        with pytest.raises(ValueError, match="steps"):
            cc.time_grid(RF, steps)


# -- 5. a float32 state stays float32 whatever precision the model computes in ---------------------

def _gmm32(x, t):
    return GMM.prediction_fn(RF, "flow")(x, t).astype(np.float32)


def _check_float32(res, ref, dtype):
    assert res.x.dtype == dtype and all(h.x.dtype == dtype for h in res.hits)
    assert np.max(np.abs(np.asarray(res.x, np.float64) - np.asarray(ref.x, np.float64))) < 1e-5


@pytest.mark.parametrize("executor", [cc.SerialExecutor, cc.BatchedExecutor])
def test_float32_state_stays_float32_with_a_float64_model_numpy(executor):
    x = X.astype(np.float32)
    assert FLOW.fn(x, np.ones(3, np.float32)).dtype == np.float64  # the model computes in float64
    model32 = cc.DiffusionModel(_gmm32, RF, "flow")
    for solver in ("euler", "dpmpp_2m"):
        ref = cc.chords(model32, x, GRID, solver, cores=3, stop=None, executor=executor())
        _check_float32(cc.chords(FLOW, x, GRID, solver, cores=3, stop=None, executor=executor()), ref, np.float32)
        for method in ("paradigms", "srds"):
            got = cc.parallel(FLOW, x, GRID, solver, cores=3, method=method, executor=executor())
            _check_float32(got, cc.parallel(model32, x, GRID, solver, cores=3, method=method, executor=executor()),
                           np.float32)
        assert cc.solve(FLOW, x, GRID, solver).dtype == np.float32


def test_float32_state_stays_float32_with_a_float64_model_torch():
    torch = pytest.importorskip("torch")
    from chords_torch import DeviceExecutor, ProcessExecutor
    from chords_torch.testing import gmm_problem, seeded_state

    model, factory = gmm_problem(dim=4, modes=3, seed=0, schedule="rf", prediction="x0")
    x = seeded_state().float()
    assert model.fn(x, torch.ones(3)).dtype == torch.float64  # the network returns float64 tensors
    model32 = cc.DiffusionModel(lambda x, t: model.fn(x, t).float(), model.schedule, "x0")
    grid = cc.time_grid(model.schedule, 6)
    ref = cc.chords(model32, x, grid, cores=3, stop=None, executor=cc.SerialExecutor())
    executors = [cc.SerialExecutor(), cc.BatchedExecutor(), DeviceExecutor(["cpu", "cpu"]),
                 ProcessExecutor(factory, workers=2, round_timeout=60)]
    try:
        for ex in executors:
            _check_float32(cc.chords(model, x, grid, cores=3, stop=None, executor=ex), ref, torch.float32)
    finally:
        for ex in executors:
            ex.close()


def test_float32_state_stays_float32_with_a_float64_model_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # as test_jax_chords does
    import jax.numpy as jnp
    cj = pytest.importorskip("chords_jax")

    w = np.random.default_rng(1).standard_normal((4, 4)) / 2

    def f64(x, t):
        x = x.astype(jnp.float64)
        return jnp.tanh(x @ w + t.astype(jnp.float64)[:, None]) * 0.5 + 0.2 * x

    def f32(x, t):
        return f64(x, t).astype(jnp.float32)

    x = jnp.asarray(X, jnp.float32)
    assert f64(x, jnp.ones(3, jnp.float32)).dtype == jnp.float64
    m64, m32 = cc.DiffusionModel(f64, RF, "flow"), cc.DiffusionModel(f32, RF, "flow")
    grid = cc.time_grid(RF, 6)
    ref = cc.chords(m32, x, grid, cores=3, stop=None)
    _check_float32(cc.chords(m64, x, grid, cores=3, stop=None), ref, jnp.float32)
    _check_float32(cj.chords(m64, x, grid, cores=3, stop=None), ref, jnp.float32)


# -- 6. a plain function where a model is expected -------------------------------------------------

@pytest.mark.parametrize("method", ["solve", "chords", "paradigms", "srds", "parallel"])
def test_a_plain_function_is_rejected_with_how_to_wrap_it(method):
    kw = {"chords": dict(cores=2), "parallel": dict(cores=2)}.get(method, {})
    with pytest.raises(TypeError, match="VectorField.*DiffusionModel"):
        getattr(cc, method)(lambda t, y: -y, Y, np.linspace(0.0, 1.0, 5), **kw)


# -- 7. method names and tolerances ----------------------------------------------------------------

def test_unknown_method_raises_naming_method():
    with pytest.raises(ValueError, match="method.*'nope'"):
        cc.parallel(FLOW, X, GRID, cores=2, method="nope")


@pytest.mark.parametrize("method", sorted(cc.METHODS))
def test_more_cores_than_steps_raise_naming_cores_for_every_method(method):
    """``parallel`` bounds every method alike (SRDS used to clamp its blocks silently, the window
    methods named ``window``, which the caller never passed)."""
    steps = len(GRID) - 1
    with pytest.raises(ValueError, match=f"cores={steps + 1} .*{steps} steps"):
        cc.parallel(FLOW, X, GRID, cores=steps + 1, method=method)
    assert cc.parallel(FLOW, X, GRID, cores=steps, method=method).rounds >= 1


@pytest.mark.parametrize("tol", [-1, float("nan"), math.inf, "0.1"])
def test_bad_tolerances_raise_naming_tol(tol):
    with pytest.raises(ValueError, match="tol"):
        cc.paradigms(FLOW, X, GRID, tol=tol)
    with pytest.raises(ValueError, match="tol"):
        cc.srds(FLOW, X, GRID, tol=tol)
    with pytest.raises(ValueError, match="tol"):
        cc.StopOnResidual(tol)


def test_a_negative_zero_tolerance_is_zero():
    """A user trial: ``tol=-0.0`` was kept as given, and a run said "residual never below -0"."""
    rule = cc.StopOnResidual(-0.0)
    assert math.copysign(1.0, rule.tol) == 1.0
    res = cc.srds(FLOW, X, GRID, blocks=3, stop=rule)
    assert "-0" not in res.stopped_by and np.array_equal(res.x, cc.solve(FLOW, X, GRID))


def test_a_window_larger_than_the_grid_is_named():
    assert cc.paradigms(FLOW, X, GRID, window=len(GRID) - 1).width <= len(GRID) - 1
    for fn in (cc.paradigms, cc.parasolver, cc.parataa):
        with pytest.raises(ValueError, match=r"window must be an integer in \[1, "):
            fn(FLOW, X, GRID, window=100)
    with pytest.raises(ValueError, match=r"^cores must be an integer in \[1, "):  # its own argument's name
        cc.cascade(FLOW, X, GRID, cores=100)


def test_parallel_names_an_option_of_another_method():
    """An option that belongs to another method is refused by name (not passed on to the solver, whose
    error would blame it); ``tol=None`` is the method's own default; SRDS through ``parallel`` keeps
    its blocks within ``cores``."""
    for method, key, value in (("cascade", "stop", cc.StopAtCore(1)), ("cascade", "init", (0, 2)),
                               ("chords", "tol", 0.1), ("paradigms", "memory", 2), ("srds", "history", "keep")):
        with pytest.raises(ValueError, match=rf"^{key}: an option of .*not of method '{method}'"):
            cc.parallel(FLOW, X, GRID, cores=2, method=method, **{key: value})
    for method in ("cascade", "paradigms", "parasolver", "parataa", "srds"):
        default = cc.parallel(FLOW, X, GRID, cores=2, method=method)
        assert np.array_equal(cc.parallel(FLOW, X, GRID, cores=2, method=method, tol=None).x, default.x)
    for method in ("cascade", "paradigms", "srds", "chords"):  # (named the solver alone, as if the method took it)
        with pytest.raises(ValueError, match=rf"^bogus: unknown option, not of method '{method}' \(its options: .*\) "
                                             r"nor of solver 'euler' \(it takes none\)"):
            cc.parallel(FLOW, X, GRID, cores=2, method=method, bogus=1)
    # a tol that is a 0-d array (computed with the state's library) is a number (it was refused as not one)
    ref = cc.parallel(FLOW, X, GRID, cores=2, tol=0.01)
    for tol in (np.array(0.01), np.float32(0.01)):
        assert cc.parallel(FLOW, X, GRID, cores=2, tol=tol).rounds == ref.rounds
    with pytest.raises(ValueError, match=r"^tol must be a finite number >= 0, got array\(\[0.01\]\)"):
        cc.parallel(FLOW, X, GRID, cores=2, tol=np.array([0.01]))
    for blocks in (4, np.int64(4)):  # (a numpy integer ran unchecked, 4 points a round on 2 cores)
        with pytest.raises(ValueError, match="blocks: parallel.. evaluates at most cores=2"):
            cc.parallel(FLOW, X, GRID, cores=2, method="srds", blocks=blocks)
    assert cc.parallel(FLOW, X, GRID, cores=4, method="srds", blocks=2).width <= 4
    # blocks=None is the default, cores (srds' own round(sqrt(T)) ran 3 points a round on 2 cores here)
    none = cc.parallel(FLOW, X, GRID, cores=2, method="srds", blocks=None)
    assert none.width <= 2 and np.array_equal(none.x, cc.parallel(FLOW, X, GRID, cores=2, method="srds").x)
    with pytest.raises(ValueError, match="blocks"):
        cc.parallel(FLOW, X, GRID, cores=2, method="srds", blocks=0)


def test_a_direct_call_names_another_methods_argument():
    """Called directly, a method passes unknown keywords to the solver; one that is another method's
    argument (``cores=`` to a window method, ``window=`` to the cascade sampler) is named with the
    methods that take it, not blamed on the solver; a true solver option keeps the solver's error."""
    for fn, key, owners in ((cc.parasolver, "cores", "cascade(), chords(), parallel()"),
                            (cc.srds, "cores", "cascade(), chords(), parallel()"),
                            (cc.cascade, "window", "paradigms(), parasolver(), parataa()"),
                            (cc.chords, "tol", "cascade(), paradigms(), parasolver(), parataa(), srds()")):
        kw = {"cores": 2} if fn is cc.chords else {}
        with pytest.raises(ValueError, match=rf"^{key}: not an argument of this method nor an option of solver "
                                             rf"'euler'; {key}= is an argument of {re.escape(owners)}$"):
            fn(FLOW, X, GRID, **kw, **{key: 2})
    with pytest.raises(ValueError, match=r"^order: unknown option \(not an option of solver 'euler': it takes none\)"):
        cc.cascade(FLOW, X, GRID, order=2)
    with pytest.raises(ValueError, match="^solver: unknown solver 'nope'"):  # that error first
        cc.parasolver(FLOW, X, GRID, "nope", cores=2)


def test_method_options_are_named_as_the_caller_wrote_them():
    with pytest.raises(ValueError, match=r"^cores must be an integer in \[1, 8\], got 9"):
        cc.cascade(FLOW, X, GRID, cores=9)
    with pytest.raises(ValueError, match="^memory must be an integer >= 0"):
        cc.parataa(FLOW, X, GRID, window=2, memory=-1)


def test_a_solver_bound_elsewhere_is_refused():
    """A pre-built ``Solver`` carries its own grid and model: passed with other ones it would silently
    solve the problem it was built for."""
    fine = cc.time_grid(RF, 16)
    sol = cc.make_solver("euler", FLOW, fine)
    assert np.array_equal(cc.solve(FLOW, X, fine, sol), cc.solve(FLOW, X, fine, "euler"))
    with pytest.raises(ValueError, match="solver: a Solver bound to another grid"):
        cc.solve(FLOW, X, GRID, sol)
    with pytest.raises(ValueError, match="solver: a Solver bound to another model"):
        cc.parallel(GMM.model(RF, "x0"), X, fine, sol, cores=2)


def test_a_0d_state_comes_back_an_array():
    """numpy arithmetic on 0-d arrays returns scalars; the results are 0-d arrays, as the input was."""
    field = cc.VectorField(lambda t, y: -y)
    grid, y = np.linspace(0.0, 1.0, 11), np.array(1.0)
    seq = cc.solve(field, y, grid)
    assert type(seq) is np.ndarray and seq.shape == ()
    for name in sorted(cc.METHODS):
        kw = {"stop": None} if name == "chords" else {"stop": cc.RunAll()} if name == "srds" else {"tol": 0.0}
        res = cc.parallel(field, y, grid, cores=2, method=name, **kw)
        assert type(res.x) is np.ndarray and res.x.shape == () and all(type(h.x) is np.ndarray for h in res.hits)
        assert np.array_equal(res.x, seq), name


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
@pytest.mark.parametrize("method", ["chords", "paradigms", "srds"])
@pytest.mark.parametrize("kind", [RuntimeError, KeyboardInterrupt])
def test_a_model_exception_carries_the_round_and_points_it_was_raised_in(method, kind):
    """The model's own exception passes through unchanged, with a note naming the round and its
    points (an executor's ``WorkerError`` named neither; a Ctrl-C during the call had none, a user trial)."""
    def fn(x, t):
        if np.any(t < 0.5):
            raise kind("the model failed")
        return -x

    model = cc.DiffusionModel(fn, RF, "flow")
    with pytest.raises(kind, match="^the model failed") as e:
        cc.parallel(model, X, GRID, cores=2, method=method, **({} if method != "paradigms" else {"tol": 0.0}))
    (note,) = e.value.__notes__
    assert re.match(r"\(chords_core: raised while evaluating round \d+, \d point\(s\): (core|window point|block) ", note), note


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
def test_a_model_exception_names_the_point_whose_call_raised_it_where_the_call_was_on_it_alone():
    """A trial: every executor's note listed the round's points (and a worker's error its share), where a
    call on one point knows which raised. One call a point names it; a batched call, or an executor of
    one's own calling the model on a share of the round, lists the round's points (a share's index is
    not the round's: nothing is named from it)."""
    bad = float(GRID[3])

    def fn(x, t):
        if np.any(t == bad):
            raise RuntimeError("the model failed")
        return -x

    class Halves(cc.Executor):  # one call a point, on each half of the round in turn
        def __call__(self, model, xs, ts):
            h = len(xs) // 2
            return model.evaluate(list(xs[:h]), ts[:h], batched=False) + model.evaluate(list(xs[h:]), ts[h:],
                                                                                         batched=False)

    model = cc.DiffusionModel(fn, RF, "flow")
    notes = {}
    for name, ex in (("serial", cc.SerialExecutor()), ("batched", cc.BatchedExecutor()), ("halves", Halves())):
        with pytest.raises(RuntimeError, match="^the model failed") as e:
            cc.chords(model, X, GRID, cores=4, stop=None, executor=ex)
        (notes[name],) = e.value.__notes__
    assert re.fullmatch(r"\(chords_core: raised by the model's call on core \d \(step 3, stage 0, t=0\.625\), in round \d+ of "
                        r"\d point\(s\)\)", notes["serial"]), notes
    assert notes["batched"].startswith("(chords_core: raised while evaluating round "), notes
    assert notes["halves"] == notes["batched"], notes
    # (one exception object raised again: its mark is not carried into the next call, whose list of points
    # may take the old one's id)
    error = RuntimeError("the same error")

    def again(x, t):
        if np.any(t == bad):
            raise error
        return -x

    model = cc.DiffusionModel(again, RF, "flow")
    for ex, names in ((cc.SerialExecutor(), True), (cc.BatchedExecutor(), False), (cc.SerialExecutor(), True)):
        error.__notes__ = []
        with pytest.raises(RuntimeError, match="^the same error"):
            cc.chords(model, X, GRID, cores=4, stop=None, executor=ex)
        assert error.__notes__[-1].startswith("(chords_core: raised by the model's call on " if names else
                                              "(chords_core: raised while evaluating round "), error.__notes__
        assert getattr(error, "chords_point", None) is None  # (read once)


def test_an_output_count_beyond_the_run_is_named_in_the_methods_terms():
    with pytest.raises(ValueError, match=r"StopAtCore\(3\) asks for more outputs than the run makes, 2 \(CHORDS: one a core"):
        cc.chords(FLOW, X, GRID, cores=2, stop=cc.StopAtCore(3))
    with pytest.raises(ValueError, match=r"StopAtCore\(2\) asks for more outputs than the run makes, 1 .*SRDS: one an "
                                         r"iteration, at most its blocks"):
        cc.parallel(FLOW, X, GRID, cores=1, method="srds", stop=cc.StopAtCore(2))


# -- user trial 7: contracts at the edges ----------------------------------------------------------

def _slow_batched(x, t):
    """A model that releases the GIL mid-call, as a real network does."""
    import time

    time.sleep(0.002)
    return np.tanh(x) * 0.5 - x * t[:, None]


def test_one_batched_executor_shared_by_two_threads_gives_each_its_own_answer():
    """(One stacking buffer for all threads: a thread's round overwrote the points another thread's
    model was still reading; 0.6-1.2 off, silently, for states above the buffer's 256 KiB.)"""
    import threading

    model = cc.DiffusionModel(_slow_batched, RF, "flow")
    grid = cc.time_grid(RF, 10)
    xs = [np.random.default_rng(s).standard_normal((4, 8000)) for s in (1, 2)]
    refs = [cc.parallel(model, x, grid, cores=4, method=m, executor=cc.BatchedExecutor())
            for x in xs for m in ("cascade", "chords")]
    shared = cc.BatchedExecutor()
    got = [None] * 4

    def run_one(k):
        got[k] = cc.parallel(model, xs[k // 2], grid, cores=4, method=("cascade", "chords")[k % 2], executor=shared)

    threads = [threading.Thread(target=run_one, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for ref, res in zip(refs, got):
        assert np.array_equal(ref.x, res.x)


class _DropLast(cc.Executor):
    def __call__(self, model, xs, ts):
        outs = cc.SerialExecutor()(model, xs, ts)
        return outs[:-1] if len(outs) > 1 else outs


class _Stacked(cc.Executor):
    def __call__(self, model, xs, ts):
        return np.stack(cc.SerialExecutor()(model, xs, ts))


@pytest.mark.parametrize("method", ["chords", "cascade", "paradigms", "srds"])
def test_an_executor_returning_the_wrong_number_of_outputs_is_named(method):
    """(chords: AttributeError; the window methods: IndexError; SRDS returned after more rounds.)"""
    with pytest.raises(ValueError, match=r"executor: _DropLast returned 1 outputs for the 2 point\(s\) of round"):
        cc.parallel(FLOW, X, GRID, cores=2, method=method, executor=_DropLast())
    with pytest.raises(ValueError, match=r"executor: _Stacked returned a ndarray for the"):
        cc.parallel(FLOW, X, GRID, cores=2, method=method, executor=_Stacked())


def test_a_jax_initial_state_with_nan_is_refused_by_the_core():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.asarray(X).at[0, 1].set(jnp.nan)
    for call in (lambda: cc.solve(FLOW, x, GRID), lambda: cc.parallel(FLOW, x, GRID, cores=2)):
        with pytest.raises(ValueError, match=r"x: the initial state has non-finite values"):
            call()


@pytest.mark.parametrize("kw", [{"t_max": 2.0}, {"t_max": -0.5}, {"t_min": 1.5}])
def test_a_time_grid_outside_the_schedule_domain_names_its_argument(kw):
    """(It returned the grid, refused later as ``grid[0]=2 ...``.)"""
    name = next(iter(kw))
    for sch in (RF, cc.VP.linear(), cc.VP.cosine()):
        with pytest.raises(ValueError, match=rf"{name}=.* lies outside the schedule's time domain \[0, 1\]"):
            cc.time_grid(sch, 5, **kw)


class _Needs(cc.RunAll):
    """A rule of one's own whose ``outputs_needed`` answers out of range."""

    def __init__(self, n):
        self.n = n

    def outputs_needed(self, available):
        return self.n(available)


@pytest.mark.parametrize("method", ["chords", "srds"])
def test_stop_rule_mistakes_are_named(method):
    call = cc.chords if method == "chords" else cc.srds
    kw = {"cores": 3} if method == "chords" else {}
    with pytest.raises(TypeError, match=r"stop: StopAtCore is a class; pass an instance"):
        call(FLOW, X, GRID, stop=cc.StopAtCore, **kw)
    for bad in (lambda a: a + 1, lambda a: -1, lambda a: 0, lambda a: 1.5):
        with pytest.raises(ValueError, match=r"stop: _Needs.outputs_needed\(\d+\) returned .*; it must be an integer in"):
            call(FLOW, X, GRID, stop=_Needs(bad), **kw)


def test_a_numpy_integer_batch_cap_is_accepted():
    ex = cc.BatchedExecutor(max_batch_bytes=np.int64(1 << 20))
    assert ex.max_batch_bytes == 1 << 20 and type(ex.max_batch_bytes) is int
    for bad in (0, np.int64(-1), 1.5, True):
        with pytest.raises(ValueError, match="max_batch_bytes must be a positive int"):
            cc.BatchedExecutor(max_batch_bytes=bad)


def test_results_and_hits_compare_and_hash_by_identity():
    """(The dataclasses compared their arrays: ``hit in res.hits`` and ``r1 == r2`` raised.)"""
    a = cc.chords(FLOW, X, GRID, cores=3, stop=None)
    b = cc.chords(FLOW, X, GRID, cores=3, stop=None)
    assert a == a and a != b and a.hits[1] in a.hits and a.hits[1] not in b.hits
    assert len({a, b, *a.hits}) == 2 + len(a.hits)


@pytest.mark.parametrize("method", ["cascade", "paradigms", "parataa", "parasolver"])
def test_a_state_without_elements_raises_no_warning(method):
    import warnings

    x = np.zeros((2, 0))
    model = cc.DiffusionModel(lambda x, t: -x, RF, "flow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cc.parallel(model, x, GRID, cores=3, method=method, tol=0.1)
    assert res.x.shape == (2, 0)


def test_the_default_window_fits_a_short_grid():
    """(The default 8 was refused on grids of fewer steps, naming a value the caller never gave.)"""
    grid = cc.time_grid(RF, 5)
    for call in (cc.cascade, cc.paradigms, cc.parasolver, cc.parataa):
        assert call(FLOW, X, grid).width == 5
    assert cc.cascade(FLOW, X, cc.time_grid(RF, 20)).width == 8


def test_model_outputs_are_only_read():
    """Every method with every solver on a model whose outputs are read-only equals the same model
    returning writable arrays: no output is written to (so a model may return a constant array)."""
    def frozen(x, t):
        out = FLOW.fn(x, t)
        out.setflags(write=False)
        return out

    ro = cc.DiffusionModel(frozen, RF, "flow")
    for solver in ("euler", "heun", "dpmpp_2m", "unipc"):
        for method in ("chords", "cascade", "paradigms", "parataa", "parasolver", "srds"):
            want = cc.parallel(FLOW, X, GRID, solver, cores=3, method=method)
            got = cc.parallel(ro, X, GRID, solver, cores=3, method=method)
            assert np.array_equal(want.x, got.x), (solver, method)


def test_a_used_batched_executor_pickles_and_copies_without_its_buffers():
    """(The per-thread buffers' holder, a ``threading.local``, cannot be pickled.)"""
    import copy
    import pickle

    ex = cc.BatchedExecutor(max_batch_bytes=1 << 20)
    want = cc.parallel(FLOW, X, GRID, cores=3, executor=ex).x
    for clone in (pickle.loads(pickle.dumps(ex)), copy.deepcopy(ex)):
        assert clone.max_batch_bytes == 1 << 20 and np.array_equal(cc.parallel(FLOW, X, GRID, cores=3, executor=clone).x, want)
    mine = cc._backend.Workspace()
    ex.workspace = mine  # a subclass may set its own (this thread's)
    assert ex.workspace is mine


def test_what_a_user_trial_found_loose_is_named():
    """Grids of strings, booleans or complex numbers ran as times; ``progress="no"`` showed a bar;
    ``time_grid`` clamped a ``t_max`` beyond a bisected schedule's ``t_noise`` (a "logsnr" grid not even in
    log-SNR, a "karras" one blamed on the steps); absurd steps and Anderson memories raised numpy's
    unnamed "Maximum allowed ..." errors."""
    field = LIN.vector_field()
    for grid, kind in ((["0", "0.5", "1"], "<U3"), ([False, True], "bool"), ([0j, 1 + 0j], "complex128"),
                       (np.array(["0", "1"], dtype=object), r"object \(str, bool or complex\)"),
                       (np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"), r"datetime64\[D\]")):
        with pytest.raises(ValueError, match=f"^grid must hold real numbers \\(times\\), got {kind} values"):
            cc.solve(field, Y, grid)
    from fractions import Fraction  # objects that are numbers still run
    assert np.array_equal(cc.solve(field, Y, np.array([Fraction(0), Fraction(1, 2)], dtype=object)),
                          cc.solve(field, Y, [0.0, 0.5]))
    with pytest.raises(ValueError, match="^progress must be True or False, got 'no'"):
        cc.parallel(field, Y, np.linspace(0, 1, 5), cores=2, progress="no")
    cosine = cc.VP.cosine()
    for spacing in ("logsnr", "karras"):
        with pytest.raises(ValueError, match=r"^t_max=0.999 lies beyond the schedule's t_noise=0.9946"):
            cc.time_grid(cosine, 9, spacing, t_max=0.999)
        assert cc.time_grid(cosine, 9, spacing, t_max=0.99)[0] == 0.99
    assert cc.time_grid(cosine, 9, "uniform", t_max=0.999)[0] == 0.999  # no inverse needed
    assert cc.time_grid(cc.EDM(), 5, "karras", t_max=120.0)[0] == 120.0  # EDM inverts lambda in closed form
    with pytest.raises(ValueError, match=r"^steps must be an integer in \[1, 2147483647\]"):
        cc.time_grid(RF, 10**30)
    with pytest.raises(ValueError, match=r"not strictly monotone \(times repeat in float64: steps=10, spacing "
                                         r"'karras', rho=1e\+30"):
        cc.time_grid(cc.EDM(), 10, "karras", rho=1e30)
    huge, full = (cc.cascade(FLOW, X, GRID, cores=3, anderson=m) for m in (10**30, 8))
    assert np.array_equal(huge.x, full.x) and huge.rounds == full.rounds  # a memory past T mixes the same
    assert np.array_equal(cc.parataa(FLOW, X, GRID, window=3, memory=10**30).x,
                          cc.parataa(FLOW, X, GRID, window=3, memory=8).x)


def test_data_prediction_coefficients_follow_a_schedule_changed_in_place():
    """``DiffusionModel.data_eps_coefficients`` is kept across calls per schedule (by value); a schedule
    held by identity (an array in it) may change in place, so it is not kept (a review found the cache
    returning the old coefficients after ``schedule.c[0] = 2``)."""
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Scaled(cc.VP):
        c: np.ndarray = field(default_factory=lambda: np.ones(1))

        def sigma(self, t):
            return super().sigma(t) * float(self.c[0])

    sched = Scaled()
    model = cc.DiffusionModel(lambda x, t: x, sched, "eps")
    before = model.data_eps_coefficients(0.5)
    sched.c[0] = 2.0
    after = model.data_eps_coefficients(0.5)
    assert after != before and after == cc.DiffusionModel(lambda x, t: x, Scaled(c=np.array([2.0])),
                                                          "eps").data_eps_coefficients(0.5)
    vp = cc.DiffusionModel(lambda x, t: x, cc.VP.linear(), "v")
    assert vp.data_eps_coefficients(0.25) == vp._data_eps(0.25) == vp.data_eps_coefficients(np.float64(0.25))


def test_a_run_forms_the_schedules_cache_key_once_and_honours_a_models_own_coefficients(monkeypatch):
    """The data-prediction coefficients of a whole grid are looked up under one schedule key
    (``DiffusionModel.data_eps_table``): the key, about 3 µs, was formed per grid time, 52 times a
    DPM-Solver++ call at 50 steps and 82 a cascade call. A subclass's own ``data_eps_coefficients``
    is still what the solvers use."""
    import chords_core.models as models

    made = []
    real = models.schedule_key
    monkeypatch.setattr(models, "schedule_key", lambda s: made.append(s) or real(s))
    vp = cc.VP()
    grid = cc.time_grid(vp, 50)
    x = np.random.default_rng(0).standard_normal((1, 4))
    model = cc.DiffusionModel(lambda x, t: 0.5 * x, vp, "eps")
    for run in (lambda: cc.solve(model, x, grid, "dpmpp_2m"), lambda: cc.cascade(model, x, grid, "dpmpp_2m", cores=4),
                lambda: cc.chords(model, x, grid, "dpmpp_2m", cores=4, stop=None)):
        made.clear()
        run()
        assert 1 <= len(made) <= 3

    class Halved(cc.DiffusionModel):  # its own data prediction: half the usual one
        def data_eps_coefficients(self, t):
            (ad, bd), eps = super().data_eps_coefficients(t)
            return (0.5 * ad, 0.5 * bd), eps

    own = Halved(lambda x, t: 0.5 * x, vp, "eps")
    assert [c for c, _ in own.data_eps_table([0.5, 0.25])] == [
        tuple(0.5 * v for v in model.data_eps_coefficients(t)[0]) for t in (0.5, 0.25)]
    assert cc.solve(own, x, grid, "dpmpp_2m").tolist() != cc.solve(model, x, grid, "dpmpp_2m").tolist()



def test_a_subclass_with_its_own_data_eps_is_not_served_anothers_cached_values():
    """A review: the data-prediction coefficients are kept per (schedule, prediction) and t, computed by
    the model's ``_data_eps``; a subclass with its own got whichever model filled the cache first
    (5.6 off in a DPM-Solver++ solve). Such a subclass is not kept in the shared cache."""
    vp = cc.VP.linear()
    grid = cc.time_grid(vp, 20)
    x = np.random.default_rng(0).standard_normal((1, 4))

    class Halved(cc.DiffusionModel):
        def _data_eps(self, t):
            (ad, bd), eps = super()._data_eps(t)
            return (0.5 * ad, 0.5 * bd), eps

    own = Halved(lambda x, t: 0.5 * x, vp, "eps")
    cc.models._DATA_EPS.clear()
    alone = cc.solve(own, x, grid, "dpmpp_2m")
    cc.models._DATA_EPS.clear()
    cc.solve(cc.DiffusionModel(lambda x, t: 0.5 * x, vp, "eps"), x, grid, "dpmpp_2m")  # the plain model's first
    assert np.array_equal(cc.solve(own, x, grid, "dpmpp_2m"), alone)


def test_extension_points_refuse_bad_registrations_and_keep_the_extensions_own_errors(monkeypatch):
    """An extension trial: ``register_solver(None, ...)`` and ``Method(5, ...)`` were accepted and then
    broke unrelated "unknown solver / method" messages (sorting names of mixed types), ``Method(run=42)``
    failed in an unrelated call; a TypeError inside a custom solver read "bad options for solver" (no
    options given) without its traceback; a build returning no Solver failed on ``accuracy``; the base
    classes' missing methods raised a bare NotImplementedError."""
    from chords_core.methods import METHODS, Method, register_method
    from chords_core.solvers import SOLVERS, Euler, SolverSpec

    spec = SolverSpec(lambda m, t, **o: Euler(m, t, **o), 1, 1, "Euler again", options=())
    with pytest.raises(TypeError, match="^name must be a non-empty string, got None"):
        cc.register_solver(None, spec)
    with pytest.raises(TypeError, match="^method: its name must be a non-empty string, got 5"):
        register_method(Method(5, METHODS["chords"].run))
    with pytest.raises(TypeError, match="^method 'm1': run must be callable, got int"):
        register_method(Method("m1", 42))

    class Buggy(Euler):
        def __init__(self, model, times):
            super().__init__(model, times)
            self.bug = [] + None  # the solver's own bug

    monkeypatch.setitem(SOLVERS, "buggy", SolverSpec(Buggy, 1, 1, "raises in its own code", options=()))
    with pytest.raises(TypeError, match="can only concatenate list"):
        cc.solve(FLOW, X, GRID, "buggy")
    monkeypatch.setitem(SOLVERS, "object", SolverSpec(lambda m, t: object(), 1, 1, "not a solver", options=()))
    with pytest.raises(TypeError, match="^solver 'object': its SolverSpec's build returned a object, not a Solver"):
        cc.solve(FLOW, X, GRID, "object")
    with pytest.raises(NotImplementedError, match="^Executor does not define __call__"):
        cc.Executor()(FLOW, [X], [0.5])
    # (a later trial: with options given to a spec that lists none, a TypeError inside read "bad options")
    monkeypatch.setitem(SOLVERS, "buggy_o", SolverSpec(lambda m, t, **o: Buggy(m, t), 1, 1, "raises"))
    with pytest.raises(TypeError, match="can only concatenate list"):
        cc.solve(FLOW, X, GRID, "buggy_o", factor=2.0)
    monkeypatch.setitem(SOLVERS, "euler_o", SolverSpec(lambda m, t, **o: Euler(m, t, **o), 1, 1, "no options"))
    with pytest.raises(ValueError, match="^bad options for solver 'euler_o': .*unexpected keyword argument 'factor'"):
        cc.solve(FLOW, X, GRID, "euler_o", factor=2.0)


def test_a_bad_stage_count_and_a_schedule_without_derivatives_are_named(monkeypatch):
    """An extension trial: a custom solver whose ``evals`` gave 0 failed with an IndexError in ``solve``
    and an UnboundLocalError in the window methods; a schedule without ``d_sigma`` raised an empty
    NotImplementedError."""
    from chords_core.solvers import SOLVERS, Euler, SolverSpec

    class Zero(Euler):
        name = "zero"

        def evals(self, i, j):
            return 0 if i == 3 else 1

    monkeypatch.setitem(SOLVERS, "zero", SolverSpec(Zero, 1, 1, "no evaluations at step 3", options=()))
    for call in (lambda: cc.solve(FLOW, X, GRID, "zero"), lambda: cc.chords(FLOW, X, GRID, "zero", cores=2),
                 lambda: cc.parallel(FLOW, X, GRID, "zero", cores=2, method="paradigms")):
        with pytest.raises(ValueError, match=r"^solver 'zero': evals\(3, 4\) must be an int >= 1 .*got 0"):
            call()

    class Bare(cc.Schedule):
        def alpha(self, t):
            return 1.0 - np.asarray(t, np.float64)

        def sigma(self, t):
            return np.asarray(t, np.float64)

    with pytest.raises(NotImplementedError, match="^Bare does not define d_alpha"):
        Bare(1.0, 0.0, None).d_alpha(0.5)


def test_a_custom_solvers_option_named_as_another_methods_argument_is_the_solvers(monkeypatch):
    """An extension trial: a solver option ``scale`` (also a cascade argument) was refused by
    ``parallel(method="chords")`` as "an option of cascade", and a bad value of it lost the solver's
    own message to "not an option of solver"."""
    from chords_core.solvers import SOLVERS, Euler, SolverSpec, State

    class ScaledEuler(Euler):
        def __init__(self, model, times, scale=1.0):
            if not scale > 0:
                raise ValueError(f"scale must be > 0, got {scale}")
            super().__init__(model, times)
            self.scale = float(scale)

        def step(self, state, qs, i, j):
            return State(state.x + (self.scale * (self.t[j] - self.t[i])) * qs[0])

    monkeypatch.setitem(SOLVERS, "scaled", SolverSpec(ScaledEuler, 1, 1, "Euler, scaled", options=("scale",)))
    vf, y0, g = cc.VectorField(lambda t, y: -y), np.ones(2), np.linspace(0, 1, 5)
    want = cc.chords(vf, y0, g, "scaled", cores=2, scale=0.5).x
    assert np.array_equal(cc.parallel(vf, y0, g, "scaled", cores=2, method="chords", scale=0.5).x, want)
    for call in (lambda: cc.solve(vf, y0, g, "scaled", scale=-1.0),
                 lambda: cc.chords(vf, y0, g, "scaled", cores=2, scale=-1.0)):
        with pytest.raises(ValueError, match="^scale must be > 0, got -1.0"):
            call()


def test_a_stop_rule_answering_an_array_is_named():
    """A user's rule whose ``accept`` returned an array got numpy's "truth value of an array is
    ambiguous", naming nothing."""
    class ArrayAccept(cc.StopRule):
        def accept(self, outputs, coarse):
            return outputs[-1] > 0

        def describe(self, n, core, accepted):
            return "x"

    sched = cc.VP.linear()
    model = GaussianMixture.random(16, 4, seed=0).model(sched, "eps")
    x = np.random.default_rng(0).standard_normal((2, 16))
    for run in (lambda: cc.chords(model, x, cc.time_grid(sched, 12), cores=4, stop=ArrayAccept()),
                lambda: cc.srds(model, x, cc.time_grid(sched, 12), blocks=4, stop=ArrayAccept())):
        with pytest.raises(TypeError, match=r"^stop: ArrayAccept.accept returned ndarray, not a bool \(output 1\)"):
            run()


def test_a_stop_rule_answering_a_number_is_refused():
    """A rule that forgot to compare its distance with a tolerance answered a numpy scalar or a 0-d
    array or tensor of floats, and any nonzero one (nan too) was taken as True: the fastest core came
    back unchecked (a user trial). A 0-d boolean array is one answer, taken."""
    import torch

    class Answer(cc.StopRule):
        def __init__(self, make):
            self.make = make

        def accept(self, outputs, coarse):
            return self.make(float(np.sqrt(np.mean(np.square(outputs[-1] - coarse)))))

        def describe(self, n, core, accepted):
            return f"output {n} accepted={accepted}"

    sched = cc.RectifiedFlow()
    model = GaussianMixture.random(8, 3, seed=1).model(sched, "flow")
    x = np.random.default_rng(0).standard_normal((2, 8))
    grid = cc.time_grid(sched, 16)
    for make, shown in ((np.float64, "0-d float64 of dtype float64"), (np.asarray, "0-d ndarray of dtype float64"),
                        (lambda d: torch.tensor(d), "0-d Tensor of dtype torch.float32"),
                        (lambda d: np.float64(np.nan), "0-d float64 of dtype float64"),
                        (float, "float")):
        for method, size in ((cc.chords, {"cores": 4}), (cc.srds, {"blocks": 4})):
            with pytest.raises(TypeError, match=rf"^stop: Answer.accept returned a {shown}, not a bool \(output 1\); "
                                                "compare it with a tolerance"):  # (a float was told to reduce an array)
                method(model, x, grid, stop=Answer(make), **size)
    res = cc.chords(model, x, grid, cores=4, stop=Answer(lambda d: np.asarray(d < 1e-30)))
    assert res.stopped_by.startswith("output 4") and np.array_equal(res.x, cc.solve(model, x, grid))


def test_a_stop_rule_answering_a_0d_tensor_is_taken():
    """A rule ending in ``(a - b).abs().max() < tol`` answers a 0-d tensor: one answer, taken as before."""
    import torch

    from chords_torch.testing import gmm_problem

    class Close(cc.StopRule):
        def accept(self, outputs, coarse):
            return len(outputs) > 1 and (outputs[-1] - outputs[-2]).abs().max() < 1e-3

        def describe(self, n, core, accepted):
            return f"close at {n}" if accepted else "not close"

    model, _ = gmm_problem()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = cc.chords(model, x, cc.time_grid(model.schedule, 12), cores=4, stop=Close())
    assert res.stopped_by == "close at 3" and res.rounds < 12  # (it accepted either outcome: a review)


def test_srds_refuses_a_rule_that_needs_the_error_estimate():
    """SRDS computes no sequential-error estimate: ``StopWhenConverged`` ran every iteration whatever
    its level (1e6 included) and said "not converged within 1e+06 x the estimated sequential error"."""
    sched = cc.VP.linear()
    model = GaussianMixture.random(16, 4, seed=0).model(sched, "eps")
    x = np.random.default_rng(0).standard_normal((2, 16))
    with pytest.raises(ValueError, match=r"^stop: StopWhenConverged reads the estimated sequential error"):
        cc.srds(model, x, cc.time_grid(sched, 12), blocks=4, stop=cc.StopWhenConverged(1e6))
    with pytest.raises(ValueError, match=r"^stop: StopWhenConverged"):
        cc.parallel(model, x, cc.time_grid(sched, 12), cores=4, method="srds", stop=cc.StopWhenConverged(0.1))


@pytest.mark.parametrize("call, name", [(lambda: cc.VP.linear("a"), "beta_min"), (lambda: cc.VP.linear(0.1, None), "beta_max"),
                                        (lambda: cc.VP.cosine(s="x"), "s"), (lambda: cc.VP.cosine(t_max="x"), "t_max"),
                                        # (a negative offset was taken: nan sigmas, a math domain error or a
                                        # ZeroDivisionError later, a user trial)
                                        (lambda: cc.VP.cosine(s=-0.5), "s"), (lambda: cc.VP.cosine(s=-1), "s")])
def test_schedule_parameters_are_checked_by_name(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: cc.VP(kind="Linear"), r"^kind must be 'linear' or 'cosine'"),  # (it ran the cosine formula: 1e15)
    (lambda: cc.VP(kind="cosine"), r"^t_noise must lie below 1 for the cosine schedule"),
    (lambda: cc.RectifiedFlow("1"), r"^t_noise must be a finite number > 0 and <= 1, got '1'"),
    (lambda: cc.RectifiedFlow(t_noise=2.0), r"^t_noise must be a finite number > 0 and <= 1"),
    (lambda: cc.VP.linear(t_min="0.001"), r"^t_min must be a finite number >= 0, got '0.001'"),
    (lambda: cc.EDM(t_min=100.0), r"^t_min must lie below t_noise=80"),
    (lambda: cc.EDM(t_data=1.0), r"^t_data must be 0 for EDM"),  # (time_grid said t_max lay within t_min of it)
    (lambda: cc.VP(beta_min=2.0, beta_max=1.0), r"^beta_min and beta_max must satisfy"),
    (lambda: cc.time_grid(None, 5), r"^schedule must be a chords_core Schedule, got NoneType"),
    (lambda: cc.time_grid(cc.RectifiedFlow, 5), r"^schedule: pass an instance, e.g. RectifiedFlow\(\)"),
    (lambda: cc.make_solver("euler", None, [1.0, 0.0]), r"^model must be a chords_core Model"),
    (lambda: cc.make_solver("euler", cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow"), "abc"),
     r"^times must be a 1-D sequence"),
    (lambda: cc.make_solver("euler", cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow"), [1.0, 2.0]),
     r"^grid\[1\]=2 lies outside the schedule's time domain"),  # (it was bound; solve refused it later)
    (lambda: cc.VectorField(lambda t, y: -y, batched="False"), r"^batched must be True or False"),
    (lambda: cc.parallel(cc.VectorField(lambda t, y: -y), np.ones((1, 2)), np.linspace(0, 1, 5), cores=2,
                         tol=10**400), r"^tol must be a finite number >= 0"),  # (a bare OverflowError)
])
def test_schedule_fields_and_other_arguments_are_named(call, message):
    """A user trial: ``VP(kind=...)`` took any string, a typo as the cosine schedule (1e15 from t = 1);
    the schedules' own fields were unchecked (a string failed later naming nothing); ``time_grid`` and
    ``make_solver`` failed on an attribute for None or a class; ``VectorField(batched="False")`` ran
    batched (a silent wrong answer); an int beyond float's range raised a bare OverflowError."""
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def test_an_eps_model_from_the_cosine_schedules_t_1_is_refused_and_fields_are_floats():
    """``np.linspace(1, 0, n)`` on ``VP.cosine()`` ran an eps model from alpha(1) = 6e-17 (cos(pi/2) in
    float64, 0 in exact arithmetic): its data prediction 1e16 times its output, 8.5e11 for a network 0.1%
    off, a trial. It is refused as at alpha = 0; a v model runs from t = 1 (its data prediction exists
    there). The fields are floats, so equal schedules made from ints and floats are equal."""
    vc = cc.VP.cosine()
    x, grid = np.ones((1, 2)), np.linspace(1.0, 0.0, 5)
    with pytest.raises(ValueError, match=r"^grid\[0\]=1: the model's output cannot be converted .*within rounding"):
        cc.solve(cc.DiffusionModel(lambda x, t: 0.5 * x, vc, "eps"), x, grid, "ddim")
    assert np.isfinite(cc.solve(cc.DiffusionModel(lambda x, t: 0.5 * x, vc, "v"), x, grid, "ddim")).all()
    assert cc.EDM(t_noise=10) == cc.EDM(t_noise=10.0) and type(cc.EDM(t_noise=10).t_noise) is float


def test_deferred_output_checks_cost_window_methods_no_round():
    """A trial: with ``check_outputs="deferred"`` a window method's non-finite output was raised without
    the round's outputs before it, so the stage was evaluated again (parataa 40 rounds against 36, the
    cascade 57 against 56, ParaSolver 41 against 40); now the same rounds and bits as the check at once."""
    g, y0 = np.linspace(0, 1, 41), np.array([[0.5], [0.9]])

    def f(t, y):
        return np.where(np.abs(y) > 50, np.inf, -30 * y ** 3 + np.sin(3 * t))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("parataa", "cascade", "parasolver"):
            now, later = (cc.parallel(cc.VectorField(f, check_outputs=mode), y0, g, "heun", cores=8, method=method,
                                      tol=1e-3) for mode in (True, "deferred"))
            assert (later.rounds, later.nfe) == (now.rounds, now.nfe) and np.array_equal(later.x, now.x), method


def test_an_init_set_and_a_negative_round_count_are_refused():
    """A user trial: a set was taken as an init (its order is not the cores'), and ``Plan.nfe(-1)``
    answered for all but the last round."""
    vf = cc.VectorField(lambda t, y: -y)
    with pytest.raises(ValueError, match="^init must be a sequence of integers"):
        cc.chords(vf, np.ones(2), np.linspace(0, 1, 11), init={0, 2, 4})
    with pytest.raises(ValueError, match="^init must be a sequence of integers"):  # (one iterating in order too)
        cc.make_plan(10, {0, 1, 2, 3})
    with pytest.raises(ValueError, match="^rounds must be an integer >= 0, got -1"):
        cc.make_plan(10, [0, 2, 4]).nfe(-1)


def test_grids_of_tensors_ml_dtypes_and_masked_arrays():
    """A user trial: a torch grid that requires grad raised torch's own RuntimeError, a bfloat16 grid
    (torch or ml_dtypes, as jax gives it) was refused as not holding real numbers, and a masked array's
    masked time was used as it lay. Tensors' times (any dtype, grad or not) are read as float64 on the
    host; masked times are refused by name; a mask with nothing masked is a grid like any other."""
    import ml_dtypes
    import torch

    from chords_core.checks import check_grid

    g = np.linspace(1.0, 0.0, 5)  # (exact in bfloat16)
    for grid in (torch.tensor(g, requires_grad=True), torch.tensor(g).to(torch.bfloat16), g.astype(ml_dtypes.bfloat16),
                 np.ma.masked_array(g)):
        got = check_grid(grid)
        assert got.dtype == np.float64 and np.array_equal(got, g)
    with pytest.raises(ValueError, match=r"^grid: a masked array with masked times"):
        check_grid(np.ma.masked_array(g, mask=[0, 0, 1, 0, 0]))
    # (a review: bool and complex tensors were converted to float64 before the kind check, and taken)
    for bad in (torch.tensor([False, True]), torch.tensor([0j, 0.5 + 3j, 1 - 1j])):
        with pytest.raises(ValueError, match=r"^grid must hold real numbers \(times\)"):
            check_grid(bad)
    with pytest.raises(ValueError, match=r"^grid: a tensor whose times cannot be read on the host"):
        check_grid(torch.empty(5, device="meta"))
    model = cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow")
    x = np.ones((1, 2))
    assert np.array_equal(cc.solve(model, x, torch.tensor(g, requires_grad=True)), cc.solve(model, x, g))


# -- extension contracts (a user trial of docs/extending.md) ---------------------------------------

def _every_method(model, x, grid, sol):
    """Calls of ``sol`` through every method on two cores: solve, chords, srds, the cascade sampler and
    ParaDiGMS."""
    runs = [lambda: cc.solve(model, x, grid, sol), lambda: cc.chords(model, x, grid, sol, cores=2, stop=None),
            lambda: cc.srds(model, x, grid, sol, blocks=2)]
    return runs + [lambda m=m: cc.parallel(model, x, grid, sol, cores=2, method=m) for m in ("cascade", "paradigms")]


class _StageAt(cc.solvers.Heun):
    """Heun whose second stage claims another grid index."""

    def __init__(self, model, times, shift):
        super().__init__(model, times)
        self.shift = shift

    def stage_point(self, state, qs, i, j, k):
        x, _ = super().stage_point(state, qs, i, j, k)
        return x, self.shift(i, j)


@pytest.mark.parametrize("shift, match", [(lambda i, j: i - 1, r"at grid index -1, outside the grid \(0 \.\. 8\)"),
                                          (lambda i, j: j + 9, r"at grid index 10, outside the grid"),
                                          (lambda i, j: i + 0.5, r"returned grid index 0\.5 .* a grid index is an integer"),
                                          (lambda i, j: j == 1, r"returned grid index True .* a grid index is an integer")])
def test_a_solvers_stage_index_off_the_grid_is_named_by_every_method(shift, match):
    """A user trial: a stage at i - 1 (-1 at step 0) was evaluated at the grid's last time by solve,
    the window methods and SRDS, silently (0.18 off Heun); i + 0.5 and j + 9 failed as indexing errors.
    Only CHORDS checked it."""
    sol = _StageAt(FLOW, np.asarray(GRID), shift)
    for run in _every_method(FLOW, X, GRID, sol):
        with pytest.raises(ValueError, match=r"^solver: 'heun'( evaluates stage 1 of the step|\.stage_point) .*" + match):
            run()


class _TwoStagesAlways(cc.solvers.Heun):
    """Heun that takes its second stage on the last step too, at the final time."""

    def evals(self, i, j):
        return 2


def test_a_stage_at_the_final_time_without_a_conversion_there_is_named_by_every_method():
    """A user trial: a two-stage solver evaluating its last step's second stage at sigma = 0, where a v
    prediction has no velocity (the conversion is (nan, -inf) there), returned nan from every method,
    silently: the solver checks the conversion at the times before the last only."""
    sched = cc.VP.cosine()
    grid = cc.time_grid(sched, 6)
    model = cc.DiffusionModel(lambda x, t: 0.3 * np.tanh(x), sched, "v")
    x = np.random.default_rng(0).standard_normal((2, 3))
    sol = _TwoStagesAlways(model, np.asarray(grid))
    for run in _every_method(model, x, grid, sol):
        with pytest.raises(ValueError, match=r"^solver: 'heun' evaluates stage 1 of the step 5 -> 6 at the grid's "
                                             r"final time \(grid\[6\]=0\), where the model's output cannot be "
                                             "converted to the velocity it needs"):
            run()
    assert np.isfinite(cc.solve(model, x, grid, "heun")).all()  # (the library's Heun takes one evaluation there)


class _PointNotState(cc.solvers.Euler):
    """Euler whose step returns the new point itself, not a State."""

    def step(self, state, qs, i, j):
        return super().step(state, qs, i, j).x


class _StateAfter(_PointNotState):
    """A subclass that mends it: its own step, wrapped over the parent's (checked), returns a State."""

    def step(self, state, qs, i, j):
        from chords_core.solvers.base import State

        try:
            return super().step(state, qs, i, j)
        except TypeError:
            return State(cc.solvers.Euler.step(self, state, qs, i, j).x)


def test_a_solvers_step_that_returns_no_state_is_named_by_every_method():
    """An extension trial: a step returning the new point itself failed in every method as "'numpy.ndarray'
    object has no attribute 'x'", naming no solver. A step written outside the library is checked (the
    library's own are not wrapped: no cost on their hot path)."""
    sol = _PointNotState(FLOW, np.asarray(GRID))
    for run in _every_method(FLOW, X, GRID, sol):
        with pytest.raises(TypeError, match=r"^solver: _PointNotState\.step \(solver 'euler'\) returned a ndarray for the "
                                            r"step 0 -> 1, not a State"):
            run()
    assert np.array_equal(cc.solve(FLOW, X, GRID, _StateAfter(FLOW, np.asarray(GRID))), cc.solve(FLOW, X, GRID))
    assert cc.solvers.Euler.step is cc.solvers.Euler.__dict__["step"]  # (the library's own: not wrapped)


class _Contract(cc.solvers.Euler):
    """Euler with a step that breaks the contract as ``kind`` says (an extension trial's solvers)."""

    def __init__(self, model, times, kind="copy"):
        super().__init__(model, times)
        self.kind = kind

    def step(self, state, qs, i, j):
        from chords_core.solvers.base import State

        new = super().step(state, qs, i, j)
        if self.kind == "hold" and i == 3:  # an identity step, returning its input itself
            return State(state.x)
        if self.kind == "view" and i == 3:
            return State(state.x[:])
        if self.kind == "copy" and i == 3:
            return State(state.x.copy())
        if self.kind == "in place":
            state.x += (self.t[j] - self.t[i]) * qs[0]
            return State(state.x)
        if self.kind == "q in place":
            qs[0] *= 1.0
        if self.kind == "narrow":
            return State(new.x[..., :2])
        if self.kind == "float32":
            return State(new.x.astype(np.float32) if isinstance(new.x, np.ndarray) else new.x.float())
        if self.kind == "list":
            return State(new.x.tolist())
        return new

    def begin(self, x):
        from chords_core.solvers.base import State

        return x if self.kind == "begin" else State(x)

    def jump_coeffs(self, i, j):
        a, b = super().jump_coeffs(i, j)
        return (a, b, 0.0) if self.kind == "jump" else (np.float64(a), np.float64(b))


def test_a_solver_of_ones_own_is_held_to_the_step_contract():
    """An extension trial. A step that returned its input itself (or a view of it) put CHORDS' faster
    cores off by 6.6e-3, differently with each executor (the engine adds a rectification into a step's
    point in place): now copied, every core as with a step that copies. A step that wrote into its input
    overwrote the caller's x and put the cascade sampler 0.807 off ``solve`` at tol=0, silently; a
    point of another shape, dtype or kind, a ``begin`` that returns no State, three jump coefficients:
    each failed later naming nothing, or not at all. Now a ``TypeError`` naming the solver."""
    import torch

    times = np.asarray(GRID)
    copy = cc.chords(FLOW, X, GRID, _Contract(FLOW, times, "copy"), cores=4, stop=None)
    for kind in ("hold", "view"):
        for executor in (None, cc.SerialExecutor()):
            got = cc.chords(FLOW, X, GRID, _Contract(FLOW, times, kind), cores=4, stop=None, executor=executor)
            assert all(np.array_equal(h.x, c.x) for h, c in zip(got.hits, copy.hits)), (kind, executor)
    step = r"^solver: _Contract\.step \(solver 'euler'\) "
    half = cc.DiffusionModel(lambda x, t: 0.5 * x, RF, "flow")  # (numpy and torch alike)
    for state in (X.copy(), torch.from_numpy(X.copy())):
        before = state.clone() if isinstance(state, torch.Tensor) else state.copy()
        for kind in ("in place", "q in place"):
            runs = [lambda s=kind, x=state: cc.solve(half, x, GRID, _Contract(half, times, s)),
                    lambda s=kind, x=state: cc.parallel(half, x, GRID, _Contract(half, times, s), cores=4, tol=0),
                    lambda s=kind, x=state: cc.chords(half, x, GRID, _Contract(half, times, s), cores=4)]
            for run in runs:
                with pytest.raises(TypeError, match=step + r"wrote in place into its input for the step 0 -> 1"):
                    run()
                if isinstance(state, np.ndarray):
                    assert (state == before).all()  # (read-only during the step: the caller's x as it was)
                else:  # (a tensor's write is found after the step, by its version counter: undone here)
                    state.copy_(before)
        assert state.flags.writeable if isinstance(state, np.ndarray) else True  # (made writeable again)
    for kind, match in (("narrow", r"returned a point of shape \(3, 2\) and dtype float64 for the step 0 -> 1, for "
                                   r"a state of shape \(3, 4\) and dtype float64"),
                        ("float32", r"returned a point of shape \(3, 4\) and dtype float32"),
                        ("list", r"returned a point of type list for the step 0 -> 1, for a state of type ndarray")):
        for run in (lambda k=kind: cc.solve(FLOW, X, GRID, _Contract(FLOW, times, k)),
                    lambda k=kind: cc.parallel(FLOW, X, GRID, _Contract(FLOW, times, k), cores=2)):
            with pytest.raises(TypeError, match=step + match):
                run()
    with pytest.raises(TypeError, match=r"^solver: _Contract\.begin \(solver 'euler'\) returned a ndarray, not a State"):
        cc.solve(FLOW, X, GRID, _Contract(FLOW, times, "begin"))
    with pytest.raises(TypeError, match=r"^solver: _Contract\.jump_coeffs \(solver 'euler'\) returned \(1\.0, "):
        cc.chords(FLOW, X, GRID, _Contract(FLOW, times, "jump"), cores=2)
    # (numpy float64 coefficients are taken as floats: a float32 state stays float32)
    x32 = X.astype(np.float32)
    assert cc.chords(FLOW, x32, GRID, _Contract(FLOW, times, "copy"), cores=4, stop=None).x.dtype == np.float32


class _HeunAux(cc.solvers.Heun):
    """Heun whose predictor's factor travels in ``State.aux``, set by ``begin`` (an extension trial)."""

    def begin(self, x):
        from chords_core.solvers.base import State

        return State(x, (), 1.0)

    def stage_point(self, state, qs, i, j, k):
        return state.x + (state.aux * (self.t[j] - self.t[i])) * qs[0], j

    def step(self, state, qs, i, j):
        from chords_core.solvers.base import State

        return State(super().step(state, qs, i, j).x, (), state.aux)


class _Counting(cc.solvers.Euler):
    """Euler with a step counter in ``State.aux``, set by ``begin``."""

    def begin(self, x):
        from chords_core.solvers.base import State

        return State(x, (), 0)

    def step(self, state, qs, i, j):
        from chords_core.solvers.base import State

        return State(super().step(state, qs, i, j).x, (), state.aux + 1)


def test_the_step_contract_leaves_ordinary_solvers_of_ones_own_alone():
    """A review of the contract: a point whose memory belongs to torch (``tensor.numpy()``, a network
    wrapped in numpy) could be made read-only but not writeable again, and the step failed ("cannot set
    WRITEABLE flag"); a history of entries other than (index, q) failed to unpack before the step; a
    ``functools.partial`` build whose bound keyword is named like a method's argument was refused."""
    import functools

    import torch

    from chords_core.solvers import SolverSpec, State, register_solver

    class Plain(cc.solvers.Euler):
        def step(self, state, qs, i, j):
            return State(state.x + (self.t[j] - self.t[i]) * qs[0])

    w = torch.from_numpy(np.random.default_rng(3).standard_normal((4, 4)) * 0.3)
    field = cc.VectorField(lambda t, y: (torch.from_numpy(np.ascontiguousarray(y)) @ w).numpy())
    y0, ts = np.random.default_rng(4).standard_normal((2, 4)), np.linspace(0.0, 1.0, 9)
    sol = Plain(field, ts)
    assert np.array_equal(cc.solve(field, y0, ts, sol), cc.solve(field, y0, ts))
    assert np.array_equal(cc.chords(field, y0, ts, sol, cores=3, stop=None).x, cc.solve(field, y0, ts))

    class Triples(cc.solvers.Euler):
        history_size = 1

        def step(self, state, qs, i, j):
            return State(state.x + (self.t[j] - self.t[i]) * qs[0], ((i, qs[0], "tag"),))

    assert np.array_equal(cc.solve(FLOW, X, GRID, Triples(FLOW, np.asarray(GRID))), cc.solve(FLOW, X, GRID))

    def build(model, times, cores=1):
        return cc.solvers.Euler(model, times)

    try:
        register_solver("partial_euler", SolverSpec(functools.partial(build, cores=4), 1, 1, ""))
        assert np.array_equal(cc.solve(FLOW, X, GRID, "partial_euler"), cc.solve(FLOW, X, GRID))
    finally:
        cc.SOLVERS.pop("partial_euler", None)


def test_a_solvers_own_begin_state_survives_restarts_and_stage_points():
    """An extension trial: the window methods' later stages started from ``State(x)`` and the restarts
    (``multistep="restart"``, ``history="restart"``) dropped what ``begin`` sets, so a solver reading
    ``aux`` failed on a None (``TypeError``) where ``solve`` ran, breaking "cores=1 equals solve"."""
    times = np.asarray(GRID)
    heun, counting = _HeunAux(FLOW, times), _Counting(FLOW, times)
    want = cc.solve(FLOW, X, GRID, heun)
    for method in ("cascade", "paradigms", "parasolver", "parataa", "chords", "srds"):
        assert np.array_equal(cc.parallel(FLOW, X, GRID, heun, cores=1, method=method,
                                          **({} if method in ("chords", "srds") else {"tol": 0})).x, want), method
    want = cc.solve(FLOW, X, GRID, counting)
    assert np.array_equal(cc.paradigms(FLOW, X, GRID, counting, window=1, tol=0, multistep="restart").x, want)
    got = cc.chords(FLOW, X, GRID, counting, cores=4, stop=None, history="restart")
    assert np.array_equal(got.x, want) and len(got.hits) == 4


class _HeunWithHistory(cc.solvers.Heun):
    """Heun that keeps its last velocity in the history: multistep and multi-stage at once."""

    history_size = 1

    def step(self, state, qs, i, j):
        from chords_core.solvers.base import State

        return State(super().step(state, qs, i, j).x, self._push(state, i, qs[0]))


def test_a_multistep_multistage_solver_is_refused_by_the_window_methods_naming_the_others():
    """An extension trial: such a solver failed in every window method, the default among them, with
    no word of which methods take it; chords and srds do, equal to solve at one core."""
    sol = _HeunWithHistory(FLOW, np.asarray(GRID))
    for method in ("cascade", "paradigms", "parasolver", "parataa", None):
        with pytest.raises(ValueError, match=r"^solver 'heun' is both multistep and multi-stage; a sliding window "
                                             r"\(\w+\) supports one or the other: use method='chords' or "):
            cc.parallel(FLOW, X, GRID, sol, cores=2, method=method)
    want = cc.solve(FLOW, X, GRID, sol)
    for method in ("chords", "srds"):
        assert np.array_equal(cc.parallel(FLOW, X, GRID, sol, cores=1, method=method).x, want)


def _broken(base):
    """An executor of one's own, derived from ``base``, that breaks the contract as ``kind`` says."""
    class Broken(base):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def __call__(self, model, xs, ts):
            outs = super().__call__(model, xs, ts)
            if self.kind == "shape":
                return [o[0] for o in outs]  # (8,) for (2, 8): numpy broadcast it
            if self.kind == "list":
                return [o.tolist() for o in outs]
            if self.kind == "integers":
                return [np.rint(o).astype(np.int64) for o in outs]
            if self.kind == "tensors":
                import torch

                return [torch.from_numpy(o) for o in outs]
            if self.kind == "float64":
                return [o.astype(np.float64) for o in outs]
            raise ModelOutputError(99 if self.kind == "point 99" else -1, "a bad output")

    Broken.__name__ = Broken.__qualname__ = f"Broken{base.__name__}"
    return Broken


@pytest.mark.parametrize("kind", ["shape", "list", "point 99", "point -1", "integers", "tensors"])
@pytest.mark.parametrize("method", ["chords", "cascade", "paradigms", "srds"])
@pytest.mark.parametrize("broken", [_broken(cc.SerialExecutor), _broken(cc.BatchedExecutor)])
def test_an_executor_breaking_its_contract_is_named(broken, kind, method):
    """A user trial: an executor's outputs of another shape were broadcast (387 off the sequential
    result, silently), a list failed as "can't multiply sequence"; a ModelOutputError for a point
    outside the round became an IndexError (99) or was blamed on the round's last point (-1). A
    subclass of the core's executors (which declare ``outputs_checked``) is checked too: it may return
    arrays of its own."""
    x = np.broadcast_to(X[:1], (2, X.shape[1])).copy()
    at = r"returned, for point 0 of round 1 \(.*\), "
    match = {"integers": at + r"dtype int64, expected a floating dtype \(evaluate with model.evaluate",
             "tensors": at + r"a torch array \(Tensor\) for numpy points; return the points' array type \("}.get(
        kind, at + r"(shape \(\d+,\)|a list), expected (an array of shape )?\(2, \d+\) \(evaluate with model\.evaluate, "
                   r"which checks each output\)$" if kind in ("shape", "list")
        else r"raised a ModelOutputError for point -?\d+, outside the \d+ point\(s\) of round 1")
    with pytest.raises(ValueError, match=rf"^executor: {broken.__name__} " + match):
        cc.parallel(FLOW, x, GRID, cores=2, method=method, executor=broken(kind))


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_an_executors_tensors_on_another_device_or_layout_are_named(kind):
    """A review: the executor's outputs were checked for shape, library and dtype but not, as a model's
    are, for the tensor's device and layout (one check now, ``models.output_problem``): a meta tensor
    failed in the engine's arithmetic naming nothing."""
    torch = pytest.importorskip("torch")

    class Elsewhere(cc.SerialExecutor):
        def __call__(self, model, xs, ts):
            outs = super().__call__(model, xs, ts)
            return [o.to("meta") if kind == "meta" else o.to_sparse() for o in outs]

    x = torch.from_numpy(np.broadcast_to(X[:1], (2, X.shape[1])).copy())
    model = cc.DiffusionModel(lambda x, t: -x, cc.RectifiedFlow(), "flow")
    want = r"a tensor on device meta, expected cpu" if kind == "meta" else r"a tensor of layout torch.sparse_coo"
    with pytest.raises(ValueError, match=rf"^executor: Elsewhere returned, for point 0 of round 1 \(.*\), {want}"):
        cc.chords(model, x, GRID, cores=2, stop=None, executor=Elsewhere())


@pytest.mark.parametrize("method", ["chords", "cascade", "paradigms", "srds"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_nan_from_an_executor_calling_the_network_itself_is_named_at_its_round(method, solver):
    """A trial: an executor calling the network itself (no model.evaluate, so no finiteness check)
    returning nan in round R had it named at round R + 1, at another point, as the model's; in the last
    round the nan was returned as the result, silently. The engine checks such an executor's outputs as
    ``model.check_outputs`` says, unless its class declares ``values_checked``."""
    fn = FLOW.fn
    opts = {"stop": None} if method in ("chords", "srds") else {"tol": 0.0}

    def network(bad_round=None, declares=False):
        class Remote(cc.Executor):
            values_checked = declares

            def __init__(self):
                self.calls = 0

            def __call__(self, model, xs, ts):
                self.calls += 1
                outs = [fn(x, np.full(len(x), t)) for x, t in zip(xs, ts)]
                return [o * np.nan for o in outs] if self.calls == bad_round else outs
        return Remote()

    clean = network()
    ref = cc.parallel(FLOW, X, GRID, solver, cores=3, method=method, executor=clean, **opts)
    assert np.array_equal(ref.x, cc.parallel(FLOW, X, GRID, solver, cores=3, method=method, **opts).x)
    for bad in (1, clean.calls):
        with pytest.raises(ModelOutputError, match=rf"^round {bad}, .*model returned non-finite values"):
            cc.parallel(FLOW, X, GRID, solver, cores=3, method=method, executor=network(bad), **opts)
    unchecked = cc.DiffusionModel(fn, FLOW.schedule, "flow", check_outputs=False)  # (as the model says)
    got = cc.parallel(unchecked, X, GRID, solver, cores=3, method=method, executor=network(clean.calls), **opts)
    assert np.isnan(got.x).all()
    got = cc.parallel(FLOW, X, GRID, solver, cores=3, method=method, executor=network(clean.calls, True), **opts)
    assert np.isnan(got.x).all()  # (an executor that declares its values checked is taken at its word)


@pytest.mark.parametrize("method", ["chords", "cascade", "paradigms", "srds"])
@pytest.mark.parametrize("broken", [_broken(cc.SerialExecutor), _broken(cc.BatchedExecutor)])
def test_an_executors_wider_outputs_are_cast_to_the_states_dtype(broken, method):
    """A user trial: an executor returning float64 outputs for a float32 state made the whole run float64,
    where the README promises the state's dtype on every executor; they are cast back, as the model's."""
    x = X.astype(np.float32)
    got = cc.parallel(FLOW, x, GRID, cores=2, method=method, executor=broken("float64"))
    want = cc.parallel(FLOW, x, GRID, cores=2, method=method, executor=cc.SerialExecutor())
    assert got.x.dtype == np.float32 and np.array_equal(got.x, want.x)


@pytest.mark.parametrize("executor", [None, cc.SerialExecutor(), cc.BatchedExecutor(max_batch_bytes=None)])
def test_a_model_with_its_own_call_is_shape_checked_by_the_engine(executor):
    """A review: a Model subclass with a ``_call`` of its own (which checks nothing) returning (4,) for
    (2, 4) points was broadcast under the core's executors (6.09 off), since they declare their outputs
    checked; they are, by the library's own ``_call`` only (``models.own_call``). ``Model.evaluate``
    checks such outputs now (a researcher's trial: their nan went through silently), naming the round
    and core; an executor of one's own that calls ``_call`` directly meets the engine's check."""
    class Raw(cc.DiffusionModel):
        def _call(self, xs, ts):
            return [self.fn(x, None)[0] for x in xs]

    class Direct(cc.SerialExecutor):
        def __call__(self, model, xs, ts):
            return model._call(xs, ts)

    model = Raw(lambda x, t: -x, cc.RectifiedFlow(), "flow")
    x = np.arange(8.0).reshape(2, 4)
    grid = cc.time_grid(model.schedule, 6)
    with pytest.raises(cc.ModelOutputError, match=r"^round 1, core 0 \(.*\): model returned shape \(4,\), "
                                                  r"expected \(2, 4\)$"):
        cc.chords(model, x, grid, cores=2, stop=None, executor=executor)
    with pytest.raises(ValueError, match=r"returned, for point 0 of round 1 \(.*\), shape \(4,\), expected \(2, 4\) \(Raw's own "
                                         r"_call returned it; model.evaluate checks each output\)$"):
        cc.chords(model, x, grid, cores=2, stop=None, executor=Direct())


@pytest.mark.parametrize("run", ["solve", "chords", "cascade", "srds"])
def test_a_raw_models_nan_and_wrong_outputs_are_refused(run):
    """A researcher's trial: a ``Model`` subclassed directly, with its own ``_call``, got no finiteness
    check (nan from ``solve`` and every method, silently) and ``solve`` no shape check (numpy's
    broadcasting error). ``Model.evaluate`` checks such a model's outputs as the library's ``_call`` does."""
    class Raw(cc.models.Model):
        def __init__(self, f):
            self.f = f

        def _call(self, xs, ts):
            return [self.f(t, x) for x, t in zip(xs, ts)]

        def coefficients(self, times, quantity):
            return None

    calls = {"solve": lambda m: cc.solve(m, np.ones(4), GRID_ODE),
             "chords": lambda m: cc.chords(m, np.ones(4), GRID_ODE, cores=3, stop=None),
             "cascade": lambda m: cc.parallel(m, np.ones(4), GRID_ODE, cores=3),
             "srds": lambda m: cc.parallel(m, np.ones(4), GRID_ODE, cores=3, method="srds")}
    with np.errstate(invalid="ignore"), pytest.raises(cc.ModelOutputError, match="non-finite values"):
        calls[run](Raw(lambda t, y: y * np.nan))
    with pytest.raises(cc.ModelOutputError, match=r"model returned shape \(2,\), expected \(4,\)$"):
        calls[run](Raw(lambda t, y: y[:2]))
    with pytest.raises(cc.ModelOutputError, match=r"model returned a list, expected an array of shape \(4,\)$"):
        calls[run](Raw(lambda t, y: list(y)))
    good = calls[run](Raw(lambda t, y: (-y).astype(np.float32)))  # (another float dtype: cast to the state's)
    want = calls[run](cc.VectorField(lambda t, y: -y))  # (the same run on the library's model)
    got, want = (good, want) if run == "solve" else (good.x, want.x)
    assert got.dtype == np.float64 and np.allclose(got, want, rtol=1e-6)


def test_a_rule_of_ones_own_that_is_never_met_warns_where_a_faster_core_is_returned():
    """A user trial: a rule of one's own that reads the outputs, needs fewer of them than the cores make
    and accepts none returned a faster core's unconverged output with no warning (``warns_if_unmet`` was
    False unless a rule set it); the library's rules without a tolerance stay quiet."""
    class Never(cc.StopRule):
        def outputs_needed(self, available):
            return min(1, available)

        def accept(self, outputs, coarse):
            return False

    class Quiet(Never):
        warns_if_unmet = False

    model = cc.DiffusionModel(lambda x, t: -x, cc.RectifiedFlow(), "flow")
    grid, x = cc.time_grid(cc.RectifiedFlow(), 8), np.ones((2, 3))
    with pytest.warns(cc.stopping.StopNotMet, match=r"stop rule not met \(Never not met; last output\)"):
        res = cc.chords(model, x, grid, cores=4, init=[0, 3, 5, 6], stop=Never())
    assert res.hits[-1].core != 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rule in (Quiet(), cc.StopAtCore(2), None, cc.StopOnResidual(0)):
            cc.chords(model, x, grid, cores=4, init=[0, 3, 5, 6], stop=rule)


def test_a_stop_rules_description_must_be_a_string():
    """A user trial: ``describe`` returning a tuple became CHORDS' ``stopped_by`` and failed inside SRDS
    as a ``re`` TypeError naming nothing."""
    class Rule(cc.StopAtCore):
        def describe(self, n, core, accepted):
            return ("two", 2)

    for run in (lambda: cc.chords(FLOW, X, GRID, cores=2, stop=Rule(1)),
                lambda: cc.srds(FLOW, X, GRID, blocks=2, stop=Rule(1))):
        with pytest.raises(TypeError, match=r"^stop: Rule\.describe returned tuple, not a str"):
            run()


def test_srds_takes_a_rule_of_ones_own_description_as_it_is():
    """An extension trial: SRDS rewrote "core 3" in a rule's own text to "iteration 3"; the library's
    rules, which say "core", still read as iterations under SRDS."""
    class Says(cc.StopRule):
        def outputs_needed(self, available):
            return available

        def accept(self, outputs, coarse):
            return len(outputs) == 2

        def describe(self, n, core, accepted):
            return f"my rule at core {core}"

    assert cc.srds(FLOW, X, GRID, blocks=4, stop=Says()).stopped_by.startswith("my rule at core 2")
    assert "iteration 2" in cc.srds(FLOW, X, GRID, blocks=4, stop=cc.StopAtCore(2)).stopped_by


def test_registrations_that_would_misread_are_refused():
    """A user trial: ``Method(options=("stop_tol"))`` (a str) was read letter by letter, corrupting other
    methods' errors; a solver option named ``tol`` was taken by paradigms, cascade and srds as theirs,
    the solver built with its default, silently; a method whose run returns no Result came back as is."""
    from chords_core.methods import Method, register_method
    from chords_core.solvers import SolverSpec, register_solver

    with pytest.raises(TypeError, match=r"^method 'mine': options must be a tuple of option names, got 'stop_tol'"):
        register_method(Method("mine", cc.chords, options=("stop_tol")))
    assert "mine" not in cc.METHODS
    with pytest.raises(ValueError, match=r"^solver 'mine': its option 'tol' is an argument of cascade\(\), "):
        register_solver("mine", SolverSpec(lambda m, t, tol=0.0: cc.solvers.Euler(m, t), 1, 1, "", options=("tol",)))
    assert "mine" not in cc.SOLVERS
    # the same where the spec declares no options and its build names them (a user trial: an implicit solver's
    # tol, and one named scale, which every method refused as its own)
    class Implicit(cc.solvers.Euler):
        def __init__(self, model, times, tol=1e-2):
            super().__init__(model, times)

    for build, key in ((Implicit, "tol"), (lambda m, t, *, scale=1.0: cc.solvers.Euler(m, t), "scale")):
        with pytest.raises(ValueError, match=rf"^solver 'mine': its option '{key}' is an argument of "):
            register_solver("mine", SolverSpec(build, 1, 1, ""))
        assert "mine" not in cc.SOLVERS
    with pytest.raises(TypeError, match=r"^solver 'mine': options must be a tuple of option names or None, got 'tol'"):
        register_solver("mine", SolverSpec(lambda m, t, tol=0.0: cc.solvers.Euler(m, t), 1, 1, "", options=("tol")))
    for bad in (None, 5, (o for o in ("a",))):  # (a generator was consumed by the check and stored empty)
        with pytest.raises(TypeError, match=r"^method 'mine': options must be a tuple of option names"):
            register_method(Method("mine", cc.chords, options=bad))
    # the other order: a method registered after a solver whose option it would take (a review)
    register_solver("mine", SolverSpec(lambda m, t, foo=0.0: cc.solvers.Euler(m, t), 1, 1, "", options=("foo",)))
    try:
        def run(model, x, grid, solver, *, cores, executor, progress, foo=0.0):
            return cc.chords(model, x, grid, solver, cores=cores)

        with pytest.raises(ValueError, match=r"^method 'mine': 'foo' is an option of solver 'mine'"):
            register_method(Method("mine", run, options=("foo",)))
        register_solver("mine", SolverSpec(lambda m, t, foo=0.0: cc.solvers.Euler(m, t), 1, 1, ""), replace=True)
        with pytest.raises(ValueError, match=r"^method 'mine': 'foo' is an option of solver 'mine'"):
            register_method(Method("mine", run, options=("foo",)))  # (declared by its build alone)
    finally:
        cc.SOLVERS.pop("mine", None)
    assert "mine" not in cc.METHODS
    try:
        got = register_method(Method("mine", lambda *a, **k: np.zeros(3), options=["tol"]))
        assert got.options == ("tol",) and cc.METHODS["mine"].options == ("tol",)
        with pytest.raises(TypeError, match=r"^method 'mine': its run returned ndarray, not a chords_core Result"):
            cc.parallel(FLOW, X, GRID, cores=2, method="mine")
    finally:
        cc.METHODS.pop("mine", None)


def test_an_option_beyond_float32s_range_is_compared_without_a_warning():
    """A user trial: ``level_floor=1e300`` printed numpy's "overflow encountered in cast" (the option is
    compared with its default at float32 precision), then ran."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cc.cascade(FLOW, X, GRID, cores=3, level_floor=1e300)
        with pytest.raises(ValueError, match=r"^ridge: the regularisation of the Anderson mixing, which is off"):
            cc.cascade(FLOW, X, GRID, cores=3, ridge=1e300)
    assert res.rounds <= len(GRID) - 1


def test_a_nan_jump_coefficient_and_a_data_solver_on_a_plain_ode_are_named():
    """A researcher's trial: ``jump_coeffs`` returning nan passed the contract check, and CHORDS then
    retired its cores as if their starts ran off, blaming the start; a data solver on a ``VectorField``
    said only 'euler' and 'heun' were taken, where every registered velocity solver is."""
    from chords_core.solvers import Euler, SolverSpec

    class NanJump(Euler):
        def jump_coeffs(self, i, j):
            return 1.0, float("nan")

    cc.register_solver("nan_jump", SolverSpec(NanJump, 1, 1, "Euler with a nan jump"))
    try:
        with pytest.raises(TypeError, match=r"jump_coeffs \(solver 'nan_jump'\) returned \(1.0, nan\) .*two finite real"):
            cc.chords(FLOW, X, GRID, "nan_jump", cores=3)
        with pytest.raises(ValueError, match=r"^solver 'ddim' needs a DiffusionModel; a VectorField takes a solver of "
                                             r"the velocity: euler, heun, nan_jump$"):
            cc.solve(cc.VectorField(lambda t, y: -y), Y, GRID_ODE, "ddim")
    finally:
        del cc.SOLVERS["nan_jump"]
