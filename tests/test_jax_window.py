"""chords_jax.parallel: the core's sliding-window methods (cascade, ParaDiGMS, ParaSolver) compiled as one
lax.while_loop, equal to chords_core.parallel in float64 (rounds, NFE, width, sweep log, trace; x to 1e-12)
for tol > 0, the sequential solution at tol 0 (where acceptance is a last-bit matter: a change exactly zero),
compiled once per shape, its errors named as the core names them.

Each distinct (model, T, cores, method, solver kind) costs a compile (~0.5-1 s here); the tolerances of a
case share one executable.
"""

import contextlib
import re

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)  # the agreement tests need float64
import jax.numpy as jnp  # noqa: E402

import chords_core as cc  # noqa: E402
import chords_jax as cj  # noqa: E402
from chords_core.models import ModelOutputError  # noqa: E402
from chords_core.problems import GaussianMixture, LinearODE  # noqa: E402

FLOW = cc.RectifiedFlow()
GMM = GaussianMixture.random(4, 3, seed=3)
XG = np.random.default_rng(4).standard_normal((3, 4))
METHODS = ("cascade", "paradigms", "parasolver")
# per method: tolerances around its default (cascade: times the local error; the others: of the noise level)
TOLS = {"cascade": (0.05, 0.3, 1.0, 3.0), "paradigms": (0.01, 0.05, 0.1, 0.3), "parasolver": (0.01, 0.05, 0.1, 0.3)}


def gmm_fn(prediction):
    """``GMM.prediction_fn(FLOW, prediction)`` in jax.numpy (alpha = 1 - t, sigma = t)."""

    def fn(x, t):
        a, s = (1.0 - t)[:, None, None], t[:, None, None]
        c = a * a * GMM.variances + s * s
        r = x[:, None, :] - a * GMM.means
        log_joint = jnp.log(GMM.weights) - 0.5 * jnp.sum(r * r / c + jnp.log(2 * jnp.pi * c), axis=-1)
        gamma = jax.nn.softmax(log_joint, axis=1)[..., None]
        x0 = jnp.sum(gamma * (GMM.means + a * GMM.variances / c * r), axis=1)
        return x0 if prediction == "x0" else (x - x0) / t[:, None]  # flow = eps - x0 = (x - x0) / t

    return fn


D = 5
_W = np.random.default_rng(1).standard_normal((D, D)) / np.sqrt(D)
XD = np.random.default_rng(0).standard_normal((3, D))


def denoiser(x, t):
    """A smooth nonlinear 'network' written for numpy and jax alike."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ _W + t[:, None]) * 0.5 + 0.2 * x


ODE = LinearODE.random(4, seed=1)
Y0 = np.random.default_rng(4).standard_normal(4)
_A = jnp.asarray(ODE.A)

# name: (numpy model, jax model, x, grid)
PROBLEMS = {
    "gmm_x0": (GMM.model(FLOW, "x0"), cc.DiffusionModel(gmm_fn("x0"), FLOW, "x0"), XG, cc.time_grid(FLOW, 30)),
    "gmm_flow": (GMM.model(FLOW, "flow"), cc.DiffusionModel(gmm_fn("flow"), FLOW, "flow"), XG, cc.time_grid(FLOW, 30)),
    "vp_v": (cc.DiffusionModel(denoiser, cc.VP.cosine(), "v"), cc.DiffusionModel(denoiser, cc.VP.cosine(), "v"), XD,
             cc.time_grid(cc.VP.cosine(), 20, "logsnr")),
    "ode": (ODE.vector_field(), cc.VectorField(lambda t, y: y @ _A.T, batched=True), Y0, np.linspace(0.0, 1.0, 25)),
    "ode_unbatched": (ODE.vector_field(), cc.VectorField(lambda t, y: _A @ y), Y0, np.linspace(0.0, 1.0, 25)),
}


def close(a, b, tol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


def same(got, ref, tol=1e-12):
    """The core's ``Result``: every count, the sweep log and trace exactly; x within ``tol`` (relative)."""
    keys = ("rounds", "nfe", "width", "method", "stopped_by", "sequential_rounds", "log", "trace")
    assert {k: getattr(got, k) for k in keys} == {k: getattr(ref, k) for k in keys}
    assert [(h.core, h.round, h.nfe) for h in got.hits] == [(h.core, h.round, h.nfe) for h in ref.hits]
    assert got.coarse is None and ref.coarse is None
    assert isinstance(got.x, jax.Array) and got.x.dtype == jnp.float64 and close(got.x, ref.x, tol)
    assert close(got.hits[0].x, ref.x, tol)


def check_case(problem, solver, method, cores):
    nmodel, jmodel, x, grid = PROBLEMS[problem]
    seq = cc.solve(nmodel, x, grid, solver)
    for tol in TOLS[method] + (None,):
        kw = {} if tol is None else {"tol": tol}  # None: the method's default, as in the core
        # (a peer's default on a plain ODE warns, on both paths)
        warns = tol is None and method != "cascade" and not isinstance(nmodel, cc.DiffusionModel)
        with pytest.warns(UserWarning, match=rf"^{method}: its default tol") if warns else contextlib.nullcontext():
            ref = cc.parallel(nmodel, x, grid, solver, cores=cores, method=method, **kw)
        with pytest.warns(UserWarning, match=rf"^{method}: its default tol") if warns else contextlib.nullcontext() as seen:
            got = cj.parallel(jmodel, x, grid, solver, cores=cores, method=method, **kw)
        if warns:  # pointing at this line, the caller's, not into chords_jax
            assert [w.filename for w in seen] == [__file__], [w.filename for w in seen]
        same(got, ref)
    # tol = 0: a point is accepted only when its change is exactly zero (the iterate reached a bitwise
    # fixed point), a last-bit matter on which backends differ; the answer is the sequential solution
    got = cj.parallel(jmodel, x, grid, solver, cores=cores, method=method, tol=0.0)
    assert close(got.x, seq) and got.rounds <= got.sequential_rounds and got.nfe >= got.rounds
    assert got.log[-1].accepted_to == len(grid) - 1
    if cores == 1:  # one lane: the sequential solver, one step per round
        same(got, cc.parallel(nmodel, x, grid, solver, cores=1, method=method, tol=0.0))
        assert got.rounds == len(grid) - 1


@pytest.mark.parametrize("cores", [1, 2, 4, 8])
@pytest.mark.parametrize("method", METHODS)
def test_euler_on_the_mixture_equals_the_core(method, cores):
    check_case("gmm_x0", "euler", method, cores)


@pytest.mark.parametrize("problem, solver, methods", [
    ("gmm_flow", "ddim", METHODS), ("vp_v", "ddim", METHODS), ("gmm_x0", "ddim", ("cascade",)),
    ("gmm_flow", "euler", ("parasolver",)), ("vp_v", "euler", ("paradigms",))])
def test_ddim_and_other_parametrisations_equal_the_core(problem, solver, methods):
    for method in methods:
        check_case(problem, solver, method, 4)


@pytest.mark.parametrize("cores, methods", [(3, METHODS), (1, ("paradigms",)), (8, ("cascade",))])
def test_a_vector_field_equals_the_core(cores, methods):
    nmodel, jmodel, x, grid = PROBLEMS["ode"]
    for method in methods:
        check_case("ode", "euler", method, cores)
        ref = cc.parallel(nmodel, x, grid, "euler", cores=cores, method=method, tol=0.0)
        # here no iterate reaches a bitwise fixed point before it is exact: tol 0 agrees sweep for sweep
        same(cj.parallel(jmodel, x, grid, "euler", cores=cores, method=method, tol=0.0), ref)


@pytest.mark.parametrize("method", ["paradigms", "cascade"])
def test_tol_0_on_states_near_the_bottom_of_the_normal_range_is_the_sequential_solve(method):
    """A trial: tol 0 accepted a point whose change was subnormal (XLA on the CPU flushes it to 0): a linear
    ODE from states of 1e-300 in float64 returned 1.4e-6 off the sequential solve (1e-36 in float32: 1.5).
    The points are compared themselves now, as the core does."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((4, 4)) / 2 - 1.5 * np.eye(4))
    model = cc.VectorField(lambda t, y: y @ a.T, batched=True)
    grid = np.linspace(0.0, 3.0, 31)
    x = jnp.asarray(rng.standard_normal((1, 4)) * 1e-300)
    seq = np.asarray(cj.solve(model, x, grid, "euler"))
    got = np.asarray(cj.parallel(model, x, grid, "euler", cores=8, method=method, tol=0.0).x)
    assert np.max(np.abs(got - seq)) <= 1e-12 * np.max(np.abs(seq)), np.max(np.abs(got - seq)) / np.max(np.abs(seq))


def _relaxing(dtype, start, target):
    """dy/dt = mask (target - y), numpy and jax alike: each component of ``start`` relaxes to ``target``'s
    where it is not 0, stays where it is (``start``, a (1, D) or (2, D) state)."""
    mask = np.asarray(target, np.float64) != 0
    def f(t, y):
        xp = jnp if isinstance(y, jax.Array) else np
        return (xp.asarray(mask, dtype) * (xp.asarray(target, dtype) - y)).astype(dtype)
    return cc.VectorField(f, batched=True), np.asarray(start, dtype)


@pytest.mark.parametrize("dtype, start, target, tol", [
    (np.float32, [[1e-18, -2e-18], [3e-18, 4e-18]], [1e-18, 1e-18], 1e-21),  # tiny states, tol below float32's range
    (np.float32, [[1e30, -2e30], [3e30, 4e30]], [1e30, 1e30], 1e27),        # squares beyond float32's range
    (np.float64, [[1e-200, -2e-200], [3e-200, 4e-200]], [1e-200, 1e-200], 1e-203),
    (np.float64, [[1e200, -2e200], [3e200, 4e200]], [1e200, 1e200], 1e197),  # squares beyond float64's range
    (np.float64, [[1e-200, -2e-200], [3e-200, 4e-200]], [1.0, 2.0], 1e-3),  # growing from 1e-200 to 1
    (np.float32, [[1e-30, -2e-30], [3e-30, 4e-30]], [1.0, 2.0], 1e-3),
    (np.float32, [[1e10, 0.0]], [0.0, 1e-12], 1e-13),  # a large still component, a small moving one
    (np.float64, [[1e150, 0.0]], [0.0, 1e-10], 1e-12),
    (np.float16, [[1.0, 0.0]], [0.0, 3e-6], 1e-8),  # float16 changes below its normal range
])
def test_tolerances_far_from_the_state_decide_as_the_core(dtype, start, target, tol):
    """Trials: tol^2 below the dtype's normal range was flushed to 0 by XLA on the CPU and ran as tol 0
    (float32 states of 1e-18 at tol 1e-21: 23 rounds where the core took 15), and the squares of the
    changes of float64 states beyond about 1e154 overflowed (every point over tolerance: T rounds); a
    review of the first fix (changes scaled by 1 / max|x_0|) found a state growing from 1e-200, a large
    still component and float16 changes halved to 0 deciding otherwise. The changes are scaled by a
    power of two near 1 / tol, in float32 or wider: the core's decisions, sweep for sweep."""
    model, x = _relaxing(dtype, start, target)
    grid = np.linspace(0.0, 3.0, 31)
    # (the local-error scale's tol is a ratio, its default here; its sums are scaled per sweep by the window's
    # states: by x_0's, a state growing from 1e-200 overflowed, 23 rounds where the core took 13)
    for method, opts in (("paradigms", {"tol": tol}), ("cascade", {"scale": "level", "tol": tol}),
                         ("parasolver", {"tol": tol}), ("cascade", {"scale": "error"})):
        ref = cc.parallel(model, x, grid, "euler", cores=8, method=method, **opts)
        got = cj.parallel(model, jnp.asarray(x), grid, "euler", cores=8, method=method, **opts)
        assert (got.rounds, got.nfe, got.log) == (ref.rounds, ref.nfe, ref.log), (method, got.rounds, ref.rounds)
        assert ref.rounds < len(grid) - 1  # (the sweeps accepted points: not the sequential rounds)
        scale = np.max(np.abs(ref.x.astype(np.float64)))
        tol_x = {np.float16: 1e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype] * scale
        assert np.max(np.abs(np.asarray(got.x, np.float64) - ref.x.astype(np.float64))) <= tol_x


def test_an_unbatched_vector_field_and_the_official_options():
    nmodel, jmodel, x, grid = PROBLEMS["ode_unbatched"]
    same(cj.parallel(jmodel, x, grid, "euler", cores=4, method="cascade", tol=0.05),
         cc.parallel(nmodel, x, grid, "euler", cores=4, method="cascade", tol=0.05))
    # (variance "out" weighs a point whose step has no variance by 1 / 0 = inf, the official rule, and an
    # unmoved one scores 0 there: at T - 1 after a sweep that accepted T - 2, as the core)
    for problem, solver in (("gmm_x0", "euler"), ("vp_v", "ddim")):
        nmodel, jmodel, x, grid = PROBLEMS[problem]
        for opts in [{"variance": "out", "tol": tol} for tol in TOLS["paradigms"]] + [
                {"variance": "out", "multistep": "restart"}]:
            same(cj.parallel(jmodel, x, grid, solver, cores=4, method="paradigms", **opts),
                 cc.parallel(nmodel, x, grid, solver, cores=4, method="paradigms", **opts))
    # an option that cannot act is refused by both, in the same words (it was accepted and ignored)
    nmodel, jmodel, x, grid = PROBLEMS["gmm_x0"]
    ode, jode, y, plain = PROBLEMS["ode_unbatched"]
    for run, args in ((cj.parallel, (jmodel, x, grid)), (cc.parallel, (nmodel, x, grid)),
                      (cj.parallel, (jode, y, plain)), (cc.parallel, (ode, y, plain))):
        with pytest.raises(ValueError, match="ridge: the regularisation of the Anderson mixing"):
            run(*args, "euler", cores=4, ridge=0.5)
    for run, args in ((cj.parallel, (jode, y, plain)), (cc.parallel, (ode, y, plain))):
        with pytest.raises(ValueError, match="level_floor: .* on the 'error' scale"):
            run(*args, "euler", cores=4, level_floor=1.0)
        same(cj.parallel(jode, y, plain, "euler", cores=4, scale="level", level_floor=2.0),
             cc.parallel(ode, y, plain, "euler", cores=4, scale="level", level_floor=2.0))
    # history_gain: taken by both (no compiled solver has a history: the same run either way), a non-bool
    # refused by both in the same words
    for value in (True, False):
        same(cj.parallel(jmodel, x, grid, "euler", cores=4, history_gain=value),
             cc.parallel(nmodel, x, grid, "euler", cores=4, history_gain=value))
    messages = []
    for run, args in ((cj.parallel, (jmodel, x, grid)), (cc.parallel, (nmodel, x, grid))):
        with pytest.raises(ValueError, match="history_gain") as info:
            run(*args, "euler", cores=4, history_gain="yes")
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    # the same argument named first by both, where several are wrong (a review: the core named ridge,
    # chords_jax the solver or the tolerance)
    for bad in ({"solver": "bogus"}, {"tol": -1.0}):
        names = []
        for run, args in ((cj.parallel, (jode, y, plain)), (cc.parallel, (ode, y, plain))):
            with pytest.raises(ValueError) as info:
                run(*args, **{"solver": "euler", **bad}, cores=4, ridge=0.5)
            names.append(str(info.value).split(":")[0])
        assert names == ["ridge", "ridge"], (bad, names)
    # and the grid and cores before the method's options, as the core's parallel (a review: after the
    # first version of the fix chords_jax named ridge / level_floor before them)
    for grid_arg, kw, first in ((plain, {"cores": 50}, "cores"), (np.array([1.0]), {"cores": 4}, "grid"),
                                (plain, {"cores": 50, "scale": "error", "level_floor": 0.5}, "cores")):
        names = []
        for run, m in ((cj.parallel, jode), (cc.parallel, ode)):
            with pytest.raises(ValueError) as info:
                run(m, y, grid_arg, "euler", ridge=0.5, **kw)
            names.append(re.split(r"[:= ]", str(info.value))[0])
        assert names == [first, first], (kw, names)


@pytest.mark.parametrize("problem, solver", [("gmm_x0", "euler"), ("vp_v", "ddim"), ("ode", "euler")])
def test_the_cascade_level_scale_equals_the_cores(problem, solver):
    """Each tolerance, at the cascade's floor of the noise level and at ParaTAA's (1), which differ
    where sigma < 1 (a diffusion model; a plain ODE's noise level is taken as 1, where no floor up to
    1 bites: refused there by both, a floor of 2 taken)."""
    nmodel, jmodel, x, grid = PROBLEMS[problem]
    high = 2.0 if problem == "ode" else 1.0
    for tol in (None, 3e-3, 0.05):
        for floor in (None, high):
            kw = {k: v for k, v in (("tol", tol), ("level_floor", floor)) if v is not None}
            same(cj.parallel(jmodel, x, grid, solver, cores=4, scale="level", **kw),
                 cc.parallel(nmodel, x, grid, solver, cores=4, scale="level", **kw))
    if problem == "ode":
        for run, model in ((cj.parallel, jmodel), (cc.parallel, nmodel)):
            with pytest.raises(ValueError, match="level_floor: 1.0 does nothing on a plain ODE"):
                run(model, x, grid, solver, cores=4, scale="level", level_floor=1.0)
    else:
        floors = [cc.parallel(nmodel, x, grid, solver, cores=4, scale="level", tol=3e-3, level_floor=f).log
                  for f in (0.1, 1)]
        assert floors[0] != floors[1]


def test_the_default_method_is_the_cores():
    nmodel, jmodel, x, grid = PROBLEMS["gmm_x0"]
    got = cj.parallel(jmodel, x, grid, cores=4)
    assert got.method == cc.methods.RECOMMENDED
    same(got, cc.parallel(nmodel, x, grid, cores=4))


def test_the_default_tolerance_follows_the_steps_as_the_cores():
    """Below 20 steps the cascade's default tolerance on the local-error scale shrinks with the steps
    (``default_tol``), on the compiled path as in the core: at 12 steps it is 0.6. The default scale
    is decided for the model as in the core: the noise level for a diffusion model."""
    nmodel, jmodel, x, _ = PROBLEMS["gmm_x0"]
    grid = cc.time_grid(FLOW, 12)
    ref = cc.parallel(nmodel, x, grid, cores=4, scale="error")
    at = cc.parallel(nmodel, x, grid, cores=4, tol=0.6, scale="error")
    assert ref.log == at.log and np.array_equal(ref.x, at.x)
    assert ref.log != cc.parallel(nmodel, x, grid, cores=4, tol=1.0, scale="error").log  # the tolerance matters
    same(cj.parallel(jmodel, x, grid, cores=4, scale="error"), ref)
    level = cc.parallel(nmodel, x, grid, cores=4, scale="level")
    assert level.log != ref.log
    same(cj.parallel(jmodel, x, grid, cores=4), level)
    same(cj.parallel(jmodel, x, grid, cores=4, scale="auto"), cc.parallel(nmodel, x, grid, cores=4))


def test_compiled_once_per_shape():
    _, jmodel, x, grid = PROBLEMS["gmm_x0"]
    cj.parallel(jmodel, x, grid, "euler", cores=4, method="parasolver")
    n = cj.compilations()
    # another x, tolerance and grid of the same length: the same executable
    other = np.linspace(0.95, 0.0, 31)
    res = cj.parallel(jmodel, x * 0.5, other, "euler", cores=4, method="parasolver", tol=0.02)
    assert cj.compilations() == n
    nmodel = PROBLEMS["gmm_x0"][0]
    same(res, cc.parallel(nmodel, x * 0.5, other, "euler", cores=4, method="parasolver", tol=0.02))
    # chords_jax.clear_cache drops the window programs with the others: the next call compiles again
    cj.clear_cache()
    cj.parallel(jmodel, x, grid, "euler", cores=4, method="parasolver")
    assert cj.compilations() == n + 1


def test_weights_as_args():
    w = {"w": jnp.asarray(_W), "c": jnp.asarray(0.2)}

    def fn(x, t, args):
        return jnp.tanh(x @ args["w"] + t[:, None]) * 0.5 + args["c"] * x

    sched = cc.VP.cosine()
    grid = cc.time_grid(sched, 20, "logsnr")
    model = cc.DiffusionModel(fn, sched, "v")
    a = cj.parallel(model, XD, grid, "ddim", cores=4, method="paradigms", args=w)
    same(a, cc.parallel(PROBLEMS["vp_v"][0], XD, grid, "ddim", cores=4, method="paradigms"))
    n = cj.compilations()
    w2 = {"w": jnp.asarray(_W * 0.5), "c": jnp.asarray(0.1)}
    b = cj.parallel(model, XD, grid, "ddim", cores=4, method="paradigms", args=w2)
    assert cj.compilations() == n
    ref = cc.parallel(cc.DiffusionModel(lambda x, t: np.tanh(x @ (_W * 0.5) + t[:, None]) * 0.5 + 0.1 * x, sched, "v"),
                      XD, grid, "ddim", cores=4, method="paradigms")
    same(b, ref)


def test_float32_stays_float32_near_the_sequential_solution():
    _, jmodel, x, grid = PROBLEMS["gmm_x0"]
    x32 = x.astype(np.float32)
    seq = cc.solve(PROBLEMS["gmm_x0"][0], x, grid, "euler")
    model32 = cc.DiffusionModel(lambda x, t: gmm_fn("x0")(x, t).astype(x.dtype), FLOW, "x0")
    for method in ("cascade", "parasolver"):
        res = cj.parallel(model32, x32, grid, "euler", cores=4, method=method, tol=0.0)
        assert res.x.dtype == jnp.float32 and close(res.x, seq, 1e-5)


def core_error(call):
    with pytest.raises((ValueError, TypeError, ModelOutputError)) as info:
        call()
    return info.value


@pytest.mark.parametrize("kwargs", [
    {"tol": -1.0}, {"tol": float("nan")}, {"tol": float("inf")}, {"tol": "0.1"}, {"cores": 0}, {"cores": 31},
    {"cores": 2.5}, {"method": "paradigms", "variance": "mid"}, {"method": "paradigms", "multistep": "keep"},
    {"ridge": -1.0}, {"method": "paradigms", "window": 3}, {"solver": "nope"}, {"grid": [1.0]}, {"scale": "noise"},
    {"scale": "noise", "solver": "nope"},
    {"solver": "euler", "order": 2},
])
def test_bad_arguments_raise_the_cores_errors(kwargs):
    nmodel, jmodel, x, grid = PROBLEMS["gmm_x0"]
    kw = {"cores": 4, "solver": "euler", "grid": grid, **kwargs}
    g, s = kw.pop("grid"), kw.pop("solver")
    ref = core_error(lambda: cc.parallel(nmodel, x, g, s, **kw))
    got = core_error(lambda: cj.parallel(jmodel, x, g, s, **kw))
    assert type(got) is type(ref) and str(got) == str(ref)


def test_what_is_not_compiled_is_named():
    _, jmodel, x, grid = PROBLEMS["gmm_x0"]
    for method, words in (("foo", "method must be one of"), (["paradigms"], r"method must be one of .*, got \['"),
                          ("parataa", "Anderson"), ("chords", "chords_jax.chords"),
                          ("srds", "chords_jax.srds")):
        with pytest.raises(ValueError, match=words):
            cj.parallel(jmodel, x, grid, cores=4, method=method)
    for solver, words in (("heun", "two model evaluations"), ("dpmpp_2m", "multistep"), ("dpmpp_3m", "multistep"),
                          ("unipc", "multistep"), ("unip", "multistep")):
        with pytest.raises(ValueError, match=rf"^solver: '{solver}' is not compiled .*{words}"):
            cj.parallel(jmodel, x, grid, solver, cores=4)
    with pytest.raises(ValueError, match="anderson: triangular Anderson mixing is not compiled"):
        cj.parallel(jmodel, x, grid, cores=4, anderson=2)
    with pytest.raises(ValueError, match="executor"):
        cj.parallel(jmodel, x, grid, cores=4, executor=cc.BatchedExecutor())
    with pytest.raises(ValueError, match="^devices: chords_jax.parallel runs its window on one device"):
        cj.parallel(jmodel, x, grid, cores=4, devices=2)
    with pytest.raises(TypeError, match="model: its function must be traceable by jax"):
        cj.parallel(cc.DiffusionModel(lambda x, t: np.asarray(x) * 0.5, FLOW, "flow"), x, grid, cores=4)


@pytest.mark.parametrize("method, bad", [("cascade", 0), ("paradigms", 7), ("parasolver", 29)])
def test_a_non_finite_output_is_named_as_the_core_names_it(method, bad):
    grid = cc.time_grid(FLOW, 30)
    model = cc.DiffusionModel(lambda x, t: jnp.where(t[:, None] == grid[bad], jnp.nan, x * 0.5), FLOW, "flow")
    ref = core_error(lambda: cc.parallel(model, jnp.asarray(XG), grid, cores=4, method=method, tol=0.05))
    got = core_error(lambda: cj.parallel(model, XG, grid, cores=4, method=method, tol=0.05))
    assert type(got) is ModelOutputError and type(ref) is ModelOutputError
    for err in (got, ref):
        assert str(err).startswith("round ") and f"window point {bad} " in str(err) and err.is_nonfinite
    # the core takes a non-finite output past the window start for a diverged iterate: it cuts the
    # sweep there and raises only once the point is the window start (an accepted point); the
    # compiled path raises at the first non-finite output, so in the same round only at the start
    rounds = [int(str(err).split(",")[0].removeprefix("round ")) for err in (got, ref)]
    assert rounds[0] <= rounds[1] and (rounds[0] == rounds[1]) == (bad == 0)
    # (a user trial: on a diffusion model nothing said why the round named was earlier than the core's)
    assert ("lies past the window start" in str(got) and "raises where the window start reaches it" in str(got)) \
        == (rounds[0] < rounds[1]), str(got)
    if method == "cascade":  # with the check off the run completes, as the core's does
        model = cc.DiffusionModel(model.fn, FLOW, "flow", check_outputs=False)
        assert not np.isfinite(np.asarray(cj.parallel(model, XG, grid, cores=4, method=method, tol=0.05).x)).all()


def test_a_nan_score_is_over_tolerance_as_in_the_core():
    """With the output check off, a model that returns nan for t < 0.5: a nan change is never
    accepted, on the compiled path as in the core: both run to T with an all-nan answer, one point a
    sweep where every output is nan (the first point over tolerance is Phi of an accepted one). (The compiled
    update forms the window's moves with a triangular product, where 0 x nan spreads a nan to the
    earlier lanes, so its sweeps can be more cautious than the core's: docs/jax.md.)"""
    grid = cc.time_grid(FLOW, 20)
    x = XG + 3.0

    def fn(x, t):
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.where((t < 0.5)[:, None], np.nan, -x)

    model = cc.DiffusionModel(fn, FLOW, "flow", check_outputs=False)
    for method in METHODS:
        got, ref = cj.parallel(model, x, grid, cores=3, method=method), cc.parallel(model, x, grid, cores=3, method=method)
        for r in (got, ref):
            assert r.log[-1].accepted_to == 20 and np.isnan(np.asarray(r.x)).all()
            # from index 11 on (t <= 0.45) every output is nan: past it, each sweep accepts one point
            assert all(s.accepted_to == s.start + 1 for s in r.log if s.start >= 12), method
        assert got.rounds >= ref.rounds


def test_another_methods_option_is_named_as_the_core_names_it():
    nmodel, jmodel, x, grid = PROBLEMS["gmm_x0"]
    for key, value in (("stop", None), ("init", (0, 2)), ("memory", 2), ("blocks", 2)):
        kw = {key: value}
        ref = core_error(lambda kw=kw: cc.parallel(nmodel, x, grid, cores=4, **kw))
        got = core_error(lambda kw=kw: cj.parallel(jmodel, x, grid, cores=4, **kw))
        assert type(got) is type(ref) is ValueError and str(got) == str(ref) and str(got).startswith(f"{key}: ")


@pytest.mark.parametrize("dtype, size", [(np.float16, 1e-2), (np.float32, 1e-18)])
def test_tol_zero_is_exact_when_squares_underflow(dtype, size):
    """The compiled window at tol 0, as the core: exact means unmoved, also where a change's squares
    underflow to 0; half-precision states are scored in float32."""
    field = cc.VectorField(lambda t, y: -3.0 * y, batched=True)
    grid = np.linspace(0.0, 1.0, 21)
    y = (np.random.default_rng(0).standard_normal((2, 64)) * size).astype(dtype)
    seq = cc.solve(field, y, grid)
    for method in METHODS:
        got = cj.parallel(field, y, grid, cores=4, method=method, tol=0.0)
        assert np.array_equal(np.asarray(got.x), seq) and got.x.dtype == dtype, method
    big = np.ones((1, 70_000), np.float16)  # a float16 sum of squares overflows; float32 does not
    assert cj.parallel(field, big, grid, cores=4).log == cc.parallel(field, big, grid, cores=4).log


def test_a_tolerance_whose_square_overflows_accepts_no_more_than_it_should():
    """The core's tol^2 overflowed to inf from tol ~1.3e154 and the compiled window's threshold with it:
    every point accepted, silently. The threshold is now capped at the largest float64, and a float64
    state's squares that overflow score inf (jax has no wider type than float64): such points wait
    (more rounds than the core, which sums them in longdouble), and the answer is no further from the
    sequential one, relative to its units, than at unit scale."""
    field, grid = cc.VectorField(lambda t, y: -y), np.linspace(0.0, 1.0, 17)
    seq = cc.solve(field, np.ones(4), grid)
    unit = cj.parallel(field, jnp.ones(4), grid, cores=4, method="paradigms", tol=0.1)
    huge = cj.parallel(field, jnp.full(4, 1e160), grid, cores=4, method="paradigms", tol=0.1 * 1e160)
    off = float(np.abs(np.asarray(unit.x) / seq - 1).max())
    assert off > 0 and float(np.abs(np.asarray(huge.x) / 1e160 / seq - 1).max()) <= off
    assert unit.rounds <= huge.rounds < huge.sequential_rounds


def test_a_call_under_a_transformation_is_refused_and_leaves_no_tracer_behind():
    """Under ``jax.jit`` the call failed inside and cached a tracer (the output check's zeros): every
    later plain call of that size raised ``UnexpectedTracerError`` until ``clear_cache()``."""
    cj.clear_cache()
    rf = cc.RectifiedFlow()
    grid = cc.time_grid(rf, 12)
    model = cc.DiffusionModel(lambda x, t: jnp.tanh(x * 1.3 + 0.2) * t[:, None] - 0.3 * x, rf, "flow")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5)), jnp.float32)
    fresh = np.asarray(cj.parallel(model, x, grid, cores=4).x)
    cj.clear_cache()
    with pytest.raises(TypeError, match="x: a traced value: chords_jax.parallel inside jax.jit, vmap or grad is not supported"):
        jax.jit(lambda xx: cj.parallel(model, xx, grid, cores=4).x)(x)
    with pytest.raises(TypeError, match="x: a traced value"):
        jax.vmap(lambda xx: cj.parallel(model, xx[None], grid, cores=4).x)(x)
    with pytest.raises(TypeError):  # concrete inputs, a caller's trace around: jax refuses a conversion
        jax.jit(lambda a: cj.parallel(model, x, grid, cores=4).x * a)(1.0)
    plain = cj.parallel(model, x, grid, cores=4)
    assert np.array_equal(np.asarray(plain.x), fresh)
    # a concrete state with traced args: refused too; the caches built meanwhile hold arrays, not tracers
    fn = lambda x, t, a: jnp.tanh(x * a + 0.2) * t[:, None] - 0.3 * x  # noqa: E731
    with_args = cc.DiffusionModel(fn, rf, "flow")
    with pytest.raises(TypeError, match="args: a traced value"):
        jax.jit(lambda a: cj.parallel(with_args, x, grid, cores=4, args=a).x)(1.3)
    assert np.array_equal(np.asarray(cj.parallel(with_args, x, grid, cores=4, args=1.3).x), np.asarray(plain.x))


def test_a_wrong_shape_names_the_stacked_call():
    """The shapes checked are those of a round's points stacked (lanes x batch), not the user's state:
    the message says so (it read as if the state itself had that shape)."""
    rf = cc.RectifiedFlow()
    model = cc.DiffusionModel(lambda x, t: x[:, :-1], rf, "flow")
    with pytest.raises(ModelOutputError, match=r"model returned shape \(4, 2\), expected \(4, 3\) \(one call on 2 points "
                       r"stacked, 2 rows each; checked when the program is compiled\)"):
        cj.parallel(model, jnp.ones((2, 3)), cc.time_grid(rf, 8), cores=2)


@pytest.mark.parametrize("dtype, scale, x64", [("float64", 2.0 ** -60, True), ("float64", 2.0 ** -520, True),
                                               ("float64", 2.0 ** 520, True), ("float32", 2.0 ** -70, False),
                                               ("float32", 2.0 ** 66, False), ("float32", 2.0 ** -70, True)])
def test_the_error_scale_does_not_depend_on_the_states_units(dtype, scale, x64):
    """As the core's (``test_window_methods``): a state of about 1e-18 gets the same sweeps, scaled; also
    where the squares leave the sums' range (float32 with x64 off from about 1e-17 and 1e19: 1.3x the
    sequential error at 1e-20; float64 from about 1e-151 and 1e155)."""
    def f(t, y):
        return jnp.stack([y[..., 1], -4.0 * y[..., 0] - 0.3 * y[..., 1]], -1)

    with jax.enable_x64(x64):
        model, grid, y0 = cc.VectorField(f), np.linspace(0, 3, 61), jnp.asarray(np.array([1.0, 0.0]), dtype)
        one = cj.parallel(model, y0, grid, "euler", cores=4)
        scaled = cj.parallel(model, y0 * jnp.asarray(scale, dtype), grid, "euler", cores=4)
        assert scaled.rounds == one.rounds and scaled.log == one.log
        assert np.array_equal(np.asarray(scaled.x), np.asarray(one.x) * np.asarray(scale, dtype))


@pytest.mark.parametrize("scale", [2.0 ** -70, 2.0 ** 66, 1e-25])
@pytest.mark.parametrize("method", ["cascade", "paradigms"])
def test_the_core_on_jax_float32_states_scores_as_on_numpys(scale, method):
    """A user trial: the core's window methods on jax float32 arrays with x64 off (jax's default) summed a
    point's squared change in float32, where a state of 1e-20 underflowed to 0: the cascade accepted moved
    points and returned 0.74 of the sequential answer (a batch 42% off). The scores are now read on the
    host as numpy's are (``_backend.row_sq_read``): the same sweeps as the numpy core's, and as unscaled."""
    def f(t, y):
        return np.stack([y[..., 1], -4.0 * y[..., 0] - 0.3 * y[..., 1]], -1)

    def fj(t, y):
        return jnp.stack([y[..., 1], -4.0 * y[..., 0] - 0.3 * y[..., 1]], -1)

    grid = np.linspace(0, 3, 61)
    y0 = np.array([[1.0, 0.0], [0.3, -2.0]], np.float32)
    tol = {} if method == "cascade" else {"tol": 1e-3 * scale}
    with jax.enable_x64(False):
        ref = cc.parallel(cc.VectorField(f, batched=True), y0 * np.float32(scale), grid, cores=4, method=method, **tol)
        got = cc.parallel(cc.VectorField(fj, batched=True), jnp.asarray(y0 * np.float32(scale)), grid, cores=4,
                          method=method, **tol)
        assert isinstance(got.x, jax.Array) and got.x.dtype == jnp.float32
    assert (got.rounds, got.log) == (ref.rounds, ref.log)
    np.testing.assert_allclose(np.asarray(got.x, np.float64), np.asarray(ref.x, np.float64), rtol=1e-5)
    if method == "cascade":  # (the error scale does not depend on the units)
        one = cc.parallel(cc.VectorField(f, batched=True), y0, grid, cores=4)
        assert one.rounds == got.rounds


def test_a_user_trials_errors_name_the_model_and_a_warm_call_needs_no_implicit_transfer():
    """A user trial: a model function of three arguments called without ``args=`` failed with Python's
    "missing 1 required positional argument"; an unbatched field's wrong shape was reported in the
    vmapped shapes ("(4, 2), expected (4, 3)"); a ``pure_callback`` without ``vmap_method`` escaped
    as a bare ``NotImplementedError``; under ``jax.transfer_guard("disallow")`` a warm ``parallel``
    failed on its tolerance, sent from the host implicitly."""
    rf = cc.RectifiedFlow()
    grid, vgrid = cc.time_grid(rf, 8), np.linspace(0.0, 1.0, 9)
    three = cc.DiffusionModel(lambda x, t, p: x * p, rf, "flow")
    for call in (lambda: cj.parallel(three, jnp.ones((2, 3)), grid, cores=2),
                 lambda: cj.chords(three, jnp.ones((2, 3)), grid, cores=2),
                 lambda: cj.srds(three, jnp.ones((2, 3)), grid, blocks=2)):
        with pytest.raises(TypeError, match=r"^model: its function is called fn\(x, t\) .*without args=, and its "
                                            r"signature \(x, t, p\) needs more .*; pass args="):
            call()
    short = cc.VectorField(lambda t, y: y[:2])
    for call in (lambda: cj.parallel(short, jnp.ones(3), vgrid, cores=4),
                 lambda: cj.chords(short, jnp.ones(3), vgrid, cores=4)):
        with pytest.raises(cc.ModelOutputError, match=r"model returned shape \(2,\), expected \(3,\)"):
            call()

    def callback(t, y):
        return jax.pure_callback(lambda y: np.asarray(y) * 2.0, jax.ShapeDtypeStruct(y.shape, y.dtype), y)

    with pytest.raises(TypeError, match=r"^model: its function must be traceable by jax under vmap .*vmap_method"):
        cj.parallel(cc.VectorField(callback), jnp.ones(3), vgrid, cores=4)

    def unfinished(t, y):
        raise NotImplementedError("my model's own")

    with pytest.raises(NotImplementedError, match="^my model's own"):  # (the model's own: not renamed)
        cj.parallel(cc.VectorField(unfinished), jnp.ones(3), vgrid, cores=4)
    model = cc.DiffusionModel(lambda x, t: jnp.tanh(x) + 0.1 * x, rf, "flow")
    x = jax.device_put(jnp.ones((3, 6)))
    want = [cj.parallel(model, x, grid, cores=4).x, cj.srds(model, x, grid, blocks=3).x,
            cj.chords(model, x, grid, cores=4).x]
    with jax.transfer_guard("disallow"):
        got = [cj.parallel(model, x, grid, cores=4).x, cj.srds(model, x, grid, blocks=3).x,
               cj.chords(model, x, grid, cores=4).x]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want))


def test_the_error_scale_floor_is_each_samples_own():
    """As the core's (``test_window_methods``): a sample 2^-47 times smaller than its neighbour is scored
    against its own floor, in the same sweeps as the core's."""
    rates = np.array([[[-0.2, 0.0], [0.0, -0.2]], [[-0.5, 6.0], [-6.0, -0.5]]])
    grid, y0 = np.linspace(0.0, 3.0, 41), np.array([[1.0, 0.5], [2.0 ** -47, 2.0 ** -48]])
    ref = cc.parallel(cc.VectorField(lambda t, y: np.einsum("kbi,bji->kbj", y, rates), batched=True), y0, grid,
                      "euler", cores=8)
    got = cj.parallel(cc.VectorField(lambda t, y: jnp.einsum("kbi,bji->kbj", y, rates), batched=True), y0, grid,
                      "euler", cores=8)
    assert got.rounds == ref.rounds and got.log == ref.log
    assert np.allclose(np.asarray(got.x), ref.x, rtol=1e-12, atol=0)


@pytest.mark.parametrize("x64", [False, True])
def test_strict_dtype_promotion_is_the_standard_result(x64):
    """A user trial: under ``jax_numpy_dtype_promotion="strict"`` the cascade and ParaSolver failed on the
    library's own bool x float32 product, and with x64 every window method on a float32 float64 one
    (chords, srds and solve ran); the promotions are explicit now, the results the standard mode's."""
    model = cc.DiffusionModel(lambda x, t: -x, cc.RectifiedFlow(), "flow")
    field = cc.VectorField(lambda t, y: -y, batched=True)
    grid = cc.time_grid(model.schedule, 12)
    with jax.enable_x64(x64):
        x = jnp.ones((2, 4), jnp.float32)
        runs = [lambda m=m: cj.parallel(model, x, grid, "euler", cores=4, method=m)
                for m in ("cascade", "paradigms", "parasolver")]
        # (a review: the error scale's products too, in half precision and on a plain ODE)
        runs += [lambda: cj.parallel(model, x.astype(jnp.float16), grid, "euler", cores=4, scale="error"),
                 lambda: cj.parallel(field, x, np.linspace(0.0, 1.0, 13), "euler", cores=4)]
        refs = [run() for run in runs]
        with jax.numpy_dtype_promotion("strict"):
            for run, r in zip(runs, refs):
                got = run()
                assert got.rounds == r.rounds and np.array_equal(np.asarray(got.x), np.asarray(r.x))


def test_an_overflowing_local_error_estimate_accepts_nothing_as_in_the_core():
    """The core's ``test_an_overflowing_local_error_estimate_accepts_nothing``, compiled: an estimate
    that overflowed scored every change 0 (a finite output where the sequential one is inf)."""
    A = np.array([[0.0, 1.0], [-1.0, -0.1]])
    nf = cc.VectorField(lambda t, y: y @ A.T + np.sin(t), batched=True)
    jf = cc.VectorField(lambda t, y: y @ A.T + jnp.sin(t)[:, None], batched=True)
    y0, grid = np.array([[1.0, 0.0], [0.5, 0.1]]), np.array([0.0, 1e308, 1.7e308])
    with np.errstate(over="ignore", invalid="ignore"):
        ref = cc.parallel(nf, y0, grid, "euler", cores=2)
    got = cj.parallel(jf, y0, grid, "euler", cores=2)
    # (the values past overflow differ: the compiled combinations are matrix products, whose 0 x inf is nan)
    assert not np.isfinite(ref.x).any() and not np.isfinite(np.asarray(got.x)).any()
    assert (got.rounds, got.stopped_by, got.log) == (ref.rounds, ref.stopped_by, ref.log) and ref.rounds == 2


def test_an_estimate_beyond_float64s_range_decides_as_the_core_compiled():
    """A review: the core sums squares in longdouble, so its estimate stays finite where the compiled
    path's float64 one overflowed; there the compiled path accepted on an infinite estimate (4 rounds
    where the core takes 11), and then, fixed to accept nothing there, ran more rounds to the sequential
    answer. Its sums are now scaled per sweep by the window's own size: the estimate stays in range and
    the sweeps are the core's."""
    A = np.array([[0.0, 1.0], [-1.0, -0.1]])
    T = 16
    grid = np.linspace(0, 1e-100 * T, T + 1)
    nf = cc.VectorField(lambda t, y: 1e98 * y @ A.T + 1e200 * np.cos(t * 2e100) * np.array([1.0, -1.0]))
    jf = cc.VectorField(lambda t, y: 1e98 * y @ A.T + 1e200 * jnp.cos(t * 2e100) * jnp.array([1.0, -1.0]))
    y0 = np.array([1.0, 0.0])
    ref = cc.parallel(nf, y0, grid, "euler", cores=2)
    got = cj.parallel(jf, y0, grid, "euler", cores=2)
    assert (got.rounds, got.nfe, got.log) == (ref.rounds, ref.nfe, ref.log) and ref.rounds < T
    assert close(got.x, ref.x, 1e-12)


def test_a_plain_ode_iterate_that_runs_off_past_the_window_start_is_named_as_such():
    """A user trial: Van der Pol (mu = 5) on 8 lanes, where the core cuts sweeps whose seeded points run
    off and goes on, raised a bare non-finite error compiled, which read as a broken model. It now says
    the point lay past the window start and what the core does there."""
    def f(t, y):
        return jnp.stack([y[:, 1], 5 * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)

    y0, grid = np.array([[2.0, 0.0], [0.1, 0.1]]), np.linspace(0.0, 2.0, 41)
    with pytest.raises(ModelOutputError, match=r"^round \d+, window point (\d+) .*non-finite.*; window point \1 lies "
                                               r"past the window start \d+ .*chords_core.parallel cuts the sweep"):
        cj.parallel(cc.VectorField(f, batched=True), y0, grid, "euler", cores=8, method="paradigms")
