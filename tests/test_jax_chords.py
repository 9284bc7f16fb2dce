"""chords_jax on one device: equal to the numpy core (float64), compiled once, clear errors.

Multi-device runs are in test_jax_devices.py (a subprocess with 8 host devices).
"""

import dataclasses
import functools
import inspect
import os
import warnings

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax.config.update("jax_enable_x64", True)  # as test_pipeline does; the exactness tests need float64
import jax.extend.core  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from helpers import first_nonfinite, interpret, never_accepts  # noqa: E402

import chords_core as cc  # noqa: E402
import chords_jax as cj  # noqa: E402
from chords_core.models import NONFINITE  # noqa: E402
from chords_core.schedules import ByIdentity  # noqa: E402
from chords_jax.linear import LinearRecorder, NonLinearOperation  # noqa: E402

D = 5
_W = np.random.default_rng(1).standard_normal((D, D)) / np.sqrt(D)


def denoiser(x, t):
    """A smooth nonlinear 'network' written for numpy and jax alike."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ _W + t[:, None]) * 0.5 + 0.2 * x


def field(t, y):
    """dy/dt for one state y (D,) at a float t (unbatched VectorField)."""
    xp = jnp if isinstance(y, jax.Array) else np
    return xp.sin(y @ _W) * (1.0 + t) - 0.3 * y


def field_batched(t, y):
    return field(t[:, None], y)


def close(a, b, tol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


def same_result(got, ref, tol=1e-12):
    assert (got.rounds, got.nfe, got.stopped_by) == (ref.rounds, ref.nfe, ref.stopped_by)
    assert [(h.core, h.round, h.nfe) for h in got.hits] == [(h.core, h.round, h.nfe) for h in ref.hits]
    assert got.plan == ref.plan
    assert all(close(g.x, h.x, tol) for g, h in zip(got.hits, ref.hits))
    assert close(got.x, ref.x, tol) and close(got.coarse, ref.coarse, tol)


SCHED = cc.VP.cosine()
X = np.random.default_rng(0).standard_normal((3, D))


@pytest.mark.parametrize("solver", cj.SUPPORTED_SOLVERS)
def test_every_solver_matches_the_numpy_core(solver):
    model = cc.DiffusionModel(denoiser, SCHED, "v")
    grid = cc.time_grid(SCHED, 9, "logsnr")
    ref = cc.chords(model, X, grid, solver, cores=3, stop=None)
    got = cj.chords(model, X, grid, solver, cores=3, stop=None)
    assert isinstance(got.x, jax.Array) and got.x.dtype == jnp.float64
    same_result(got, ref)


@pytest.mark.parametrize("stop", [cc.StopAtCore(2), cc.StopOnResidual(1e9), cc.StopOnResidual(0.0), cc.StopOnResidual(0.05)])
def test_stop_rules_match_the_core(stop):
    model = cc.DiffusionModel(denoiser, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 12)
    same_result(cj.chords(model, X, grid, "euler", cores=4, stop=stop), cc.chords(model, X, grid, "euler", cores=4, stop=stop))


@pytest.mark.parametrize("history", ["keep", "restart"])
def test_history_policies_match_the_core(history):
    model = cc.DiffusionModel(denoiser, SCHED, "x0")
    grid = cc.time_grid(SCHED, 10, "logsnr")
    kw = dict(cores=3, init=(0, 3, 6), stop=None, history=history)
    same_result(cj.chords(model, X, grid, "dpmpp_2m", **kw), cc.chords(model, X, grid, "dpmpp_2m", **kw))


def test_a_bound_solver_runs_under_the_default_output_check():
    """A review: the symbolic replay runs on a copy of the model without its output check, and a
    ``Solver`` bound to the model itself was refused there ("bound to another model") under the
    default ``check_outputs``: chords and srds take it now, as the core does."""
    model = cc.DiffusionModel(denoiser, SCHED, "v")
    grid = cc.time_grid(SCHED, 9, "logsnr")
    bound = cc.make_solver("dpmpp_2m", model, grid, lower_order_final=False)
    assert model.check_outputs == "auto"
    same_result(cj.chords(model, X, grid, bound, cores=3, stop=None), cc.chords(model, X, grid, bound, cores=3, stop=None))
    got, ref = cj.srds(model, X, grid, bound, tol=0.0), cc.srds(model, X, grid, bound, tol=0.0)
    assert (got.rounds, got.nfe) == (ref.rounds, ref.nfe) and close(got.x, ref.x)


def test_one_core_is_the_compiled_sequential_solve():
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    grid = cc.time_grid(SCHED, 8, "logsnr")
    seq = cj.solve(model, X, grid, "unipc")
    one = cj.chords(model, X, grid, "unipc", cores=1)
    assert one.rounds == one.nfe == 8
    # (cj.solve is cj.chords at one core: comparing the two could not fail; each against the core can)
    assert close(seq, cc.solve(model, X, grid, "unipc")) and close(one.x, cc.chords(model, X, grid, "unipc", cores=1).x)


def test_second_call_with_the_same_shapes_does_not_recompile():
    grid = cc.time_grid(SCHED, 7, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    cj.chords(model, X, grid, "dpmpp_2m", cores=2, stop=cc.StopAtCore(1))
    n = cj.compilations()
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal(X.shape)
        got = cj.chords(model, x, grid, "dpmpp_2m", cores=2, stop=cc.StopAtCore(1))
        assert close(got.x, cc.chords(model, x, grid, "dpmpp_2m", cores=2, stop=cc.StopAtCore(1)).x)
    # a new model object and another schedule/grid of the same length: only the coefficients change
    other = cc.DiffusionModel(denoiser, cc.VP.linear(), "x0")
    grid2 = cc.time_grid(cc.VP.linear(), 7, "karras")
    got = cj.chords(other, X, grid2, "dpmpp_2m", cores=2, stop=cc.StopAtCore(1))
    assert close(got.x, cc.chords(other, X, grid2, "dpmpp_2m", cores=2, stop=cc.StopAtCore(1)).x)
    assert cj.compilations() == n


@pytest.mark.parametrize("batched", [False, True])
def test_vector_fields_batched_and_not(batched):
    model = cc.VectorField(field_batched if batched else field, batched=batched)
    grid = np.linspace(0.0, 2.0, 11)
    y0 = np.random.default_rng(3).standard_normal(D)
    same_result(cj.chords(model, y0, grid, "heun", cores=3, stop=None), cc.chords(model, y0, grid, "heun", cores=3, stop=None))


def test_float32_state_stays_float32():
    model = cc.DiffusionModel(denoiser, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    got = cj.chords(model, X.astype(np.float32), grid, "euler", cores=2)
    assert got.x.dtype == jnp.float32
    assert close(got.x, cc.chords(model, X, grid, "euler", cores=2).x, 1e-5)


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(2, 16), data=st.data())
def test_lowered_program_reproduces_the_core_on_random_plans(steps, data):
    cores = data.draw(st.integers(1, min(steps, 6)))
    init = sorted(data.draw(st.sets(st.integers(1, steps - 1), min_size=cores - 1, max_size=cores - 1)))
    solver = data.draw(st.sampled_from(cj.SUPPORTED_SOLVERS))
    history = data.draw(st.sampled_from(["keep", "shift", "restart"]))
    multiple = data.draw(st.sampled_from([1, 2, 4]))
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    grid = cc.time_grid(SCHED, steps, "logsnr")
    kw = dict(init=[0] + init, stop=None, history=history)
    prog, sym = cj.compile_plan(model, X.shape, X.dtype, grid, solver, slots_multiple=multiple, **kw)
    ref = cc.chords(model, X, grid, solver, **kw)
    assert prog.slots % multiple == 0 and prog.slots >= cores
    assert int(prog.active.sum()) == ref.plan.nfe(prog.rounds) and prog.rounds == len(ref.plan.rounds)
    # the segments cover the rounds in order, each as wide as its busiest round needs, a multiple of the devices
    segs = prog.segments
    assert segs[0].start == 0 and segs[-1].stop == prog.rounds and all(a.stop == b.start for a, b in zip(segs, segs[1:]))
    for seg in segs:
        busy = max(len(rd.evals) for rd in ref.plan.rounds[seg.start:seg.stop])
        assert busy <= seg.width <= prog.slots and seg.width % multiple == 0 and not prog.active[seg.start:seg.stop, seg.width:].any()
    buf = interpret(prog, X, denoiser)
    for s, h in zip(sym.hits, ref.hits):
        assert close(buf[prog.outputs[s.x.id]].reshape(X.shape), h.x, 1e-11)
    assert close(buf[prog.outputs[sym.coarse.id]].reshape(X.shape), ref.coarse, 1e-11)


def test_registers_are_reused_and_rounds_touch_few_rows():
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    prog, sym = cj.compile_plan(model, X.shape, X.dtype, cc.time_grid(SCHED, 50, "logsnr"), "dpmpp_2m", cores=8, stop=None)
    # per core a handful of live values (point, history, anchor, recorded slower point), plus outputs
    assert prog.regs <= 4 * 8 + len(sym.hits) + 1
    assert prog.rows == 1 + prog.regs and prog.idx.shape[:2] == prog.dest.shape == prog.out_idx.shape[:2]
    # a round writes only the values born in it, a few terms each: fewer rows than the buffer holds
    assert prog.dest.shape[1] < prog.regs and prog.idx.shape[2] + prog.out_idx.shape[2] <= 8
    # a scalar type names the dtype as well (np.float32 failed deep inside: "'<' not supported", a user trial)
    typed, _ = cj.compile_plan(model, X.shape, np.float32, cc.time_grid(SCHED, 20), "euler", cores=3, stop=None)
    assert cj.compile_plan(model, X.shape, np.dtype("float32"), cc.time_grid(SCHED, 20), "euler", cores=3,
                           stop=None)[0] is typed  # (the same cache key)
    # the ramp-up and the tail evaluate fewer slots than the busiest rounds
    evaluated = sum((s.stop - s.start) * s.width for s in prog.segments)
    assert sym.plan.nfe() <= evaluated < prog.rounds * prog.slots


def test_model_output_errors_name_round_and_core():
    def bad(x, t):
        return jnp.where(t[:, None] < 0.5, jnp.nan, x)

    model = cc.DiffusionModel(bad, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    with pytest.raises(cc.ModelOutputError, match=r"round \d+, core \d+ .*non-finite"):
        cj.chords(model, X, grid, "euler", cores=2, stop=None)
    unchecked = cc.DiffusionModel(bad, cc.RectifiedFlow(), "flow", check_outputs=False)
    assert np.isnan(np.asarray(cj.chords(unchecked, X, grid, "euler", cores=2, stop=None).x)).all()
    wrong = cc.DiffusionModel(lambda x, t: x[:, :2], cc.RectifiedFlow(), "flow")
    with pytest.raises(cc.ModelOutputError, match="shape"):
        cj.chords(wrong, X, grid, "euler", cores=2)


@pytest.mark.parametrize("solver, index", [("euler", 5), ("heun", 3), ("dpmpp_2m", 8)])
def test_nonfinite_output_at_a_chosen_round_is_named_as_the_core_names_it(solver, index):
    grid = cc.time_grid(cc.RectifiedFlow(), 10)
    bad_t = grid[index]  # every evaluation at t_index returns nan: the first one is reported

    def nan_at(x, t):
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.where((t == bad_t)[:, None], xp.nan, denoiser(x, t))

    model = cc.DiffusionModel(nan_at, cc.RectifiedFlow(), "flow")
    with pytest.raises(cc.ModelOutputError) as compiled:  # raised at the first (the core retires a faster core)
        cj.chords(model, X, grid, solver, cores=4, stop=None)
    # "round r, core c (step i, stage k, t=..)"
    assert str(compiled.value).split(":")[0] == first_nonfinite(lambda: cc.chords(model, X, grid, solver, cores=4,
                                                                                   stop=None))
    # the check is carried on the device: the run returns one int for it, not one value per round
    from chords_jax.api import _device_arrays
    from chords_jax.run import runner

    prog, _ = cj.compile_plan(model, X.shape, X.dtype, grid, solver, cores=4, stop=None)
    outs, bad = jax.eval_shape(runner(model, None, True), jnp.asarray(X), *_device_arrays(prog, X.size, X.dtype, X.dtype, None),
                               None)
    assert bad.shape == () and len(outs) == len(prog.outputs)


def test_untraceable_or_non_floating_models_are_named():
    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    numpy_only = cc.DiffusionModel(lambda x, t: np.tanh(np.asarray(x)), cc.RectifiedFlow(), "flow")
    with pytest.raises(TypeError, match="model: its function must be traceable by jax"):
        cj.chords(numpy_only, X, grid, "euler", cores=2)
    integer = cc.DiffusionModel(lambda x, t: (x > 0).astype(jnp.int32), cc.RectifiedFlow(), "flow")
    with pytest.raises(cc.ModelOutputError, match="dtype int32, expected a floating dtype"):
        cj.chords(integer, X, grid, "euler", cores=2)


def test_bad_arguments_raise_naming_them():
    model = cc.DiffusionModel(denoiser, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    with pytest.raises(ValueError, match="executor"):
        cj.chords(model, X, grid, "euler", cores=2, executor=cc.SerialExecutor())
    with pytest.raises(ValueError, match="devices"):
        cj.chords(model, X, grid, "euler", cores=2, devices=len(jax.devices()) + 1)
    with pytest.raises(ValueError, match=r"got a list whose item 0 is a str \('cpu'\)$"):
        cj.chords(model, X, grid, "euler", cores=2, devices=["cpu"])
    for bad in (True, 2.0):  # not a sequence: a ValueError too, not a bare TypeError
        with pytest.raises(ValueError, match=f"devices must be None, a device count.*, got {type(bad).__name__}$"):
            cj.chords(model, X, grid, "euler", cores=2, devices=bad)
    # (a trial: one device, as jax.device_put takes it, got the same words, naming neither it nor the fix)
    with pytest.raises(ValueError, match=r"got .*Device; for one device, pass a list: devices=\[device\]$"):
        cj.chords(model, X, grid, "euler", cores=2, devices=jax.devices()[0])
    # (and a traced grid was "must be a 1-D sequence of times", which it was)
    with pytest.raises(ValueError, match="^grid must be a 1-D sequence of times; numpy cannot read it "
                                         r"\(TracerArrayConversionError: .*traced array"):
        jax.jit(lambda g: cj.solve(model, X, g, "euler"))(jnp.asarray(grid))
    with pytest.raises(ValueError, match="^devices: an empty sequence"):  # (it said "must be a sequence")
        cj.chords(model, X, grid, "euler", cores=2, devices=[])
    with pytest.raises(TypeError, match="x"):
        cj.chords(model, np.ones((3, D), dtype=np.int32), grid, "euler", cores=2)
    with pytest.raises(TypeError, match="model"):
        cj.chords(denoiser, X, grid, "euler", cores=2)
    with pytest.raises(ValueError, match="cores"):
        cj.chords(model, X, grid, "euler", cores=0)
    with pytest.raises(ValueError, match="unknown solver"):
        cj.chords(model, X, grid, "rk4", cores=2)
    bad = np.array(X, copy=True)
    bad[0, 1] = np.nan
    for call in (lambda: cj.chords(model, bad, grid, "euler", cores=2), lambda: cj.solve(model, bad, grid),
                 lambda: cj.parallel(model, bad, grid, cores=2)):
        with pytest.raises(ValueError, match=r"^x: the initial state has non-finite values"):
            call()
    with pytest.raises(ValueError, match=r"devices: .* appears more than once"):  # (jax's bare AssertionError;
        cj.chords(model, X, grid, "euler", cores=2, devices=[jax.devices()[0]] * 2)  # with 3 devices, a hang)
    with pytest.raises(ValueError, match=r"devices: .* appears more than once"):  # a Mesh too
        cj.chords(model, X, grid, "euler", cores=2, devices=jax.sharding.Mesh(np.array([jax.devices()[0]] * 2),
                                                                              ("cores",)))
    with pytest.raises(ValueError, match=r"devices=0: a device count must be from 1 to the"):
        cj.chords(model, X, grid, "euler", cores=2, devices=0)
    # (a user trial: "compile_plan() got multiple values for keyword argument 'cores'", as the core says now)
    with pytest.raises(ValueError, match=r"^cores: not an argument of this method .* cores= is an argument of"):
        cj.solve(model, X, grid, "euler", cores=2)
    with pytest.raises(ValueError, match=r"^history: not an argument of this method"):
        cj.solve(model, X, grid, "euler", history="keep")
    for call in (lambda: cj.solve(model, X, grid, "euler", slots_multiple=2),
                 lambda: cj.chords(model, X, grid, "euler", cores=2, slots_multiple=3)):
        with pytest.raises(ValueError, match=r"^slots_multiple: unknown option \(not an argument of chords_jax\."):
            call()


def test_an_init_the_core_refuses_is_refused_on_a_warm_cache_too():
    """A review: the program cache keyed ``init`` by its values truncated to ints, so once (0, 2, 5) was
    compiled, init=[0, 2.4, 5] (and [0.0, 2.9, 5.7], and a jax float array, which the core refuses) ran
    as (0, 2, 5); refused on a cold cache only. An integral float is what the core reads it as, and a
    jax integer array."""
    model = cc.DiffusionModel(denoiser, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    ref = cj.chords(model, X, grid, "euler", init=[0, 2, 5], stop=None)
    for bad in ([0, 2.4, 5], [0.0, 2.9, 5.7], jnp.asarray([0.0, 2.4, 5.0])):
        with pytest.raises(ValueError, match="^init") as core:
            cc.chords(model, X, grid, "euler", init=bad, stop=None)
        with pytest.raises(ValueError) as got:
            cj.chords(model, X, grid, "euler", init=bad, stop=None)
        assert str(got.value) == str(core.value)
    for same in ([0.0, 2.0, 5.0], jnp.asarray([0, 2, 5])):  # (a jax integer array: integers, as in the core)
        again = cj.chords(model, X, grid, "euler", init=same, stop=None)
        assert np.array_equal(np.asarray(again.x), np.asarray(ref.x)) and again.plan == ref.plan


def test_nonlinear_operations_are_refused():
    tr = LinearRecorder((2,))
    a = tr.x0 * 2.0 + tr.x0
    with pytest.raises(NonLinearOperation):
        a * a
    with pytest.raises(NonLinearOperation):
        a + 1.0
    # (linear, but it rounds otherwise than a * 0.5: refused saying how to write it, a user trial)
    with pytest.raises(NonLinearOperation, match=r"divided by a number .* write the solver's step as x \* \(1.0 / c\)"):
        a / 2.0
    # (these raised TypeErrors naming the internal Sym, or numpy's own: docs/jax.md promises NonLinearOperation)
    for op in (lambda a: a ** 2, abs, lambda a: 1.0 / a, np.tanh, np.abs, lambda a: np.clip(a, -1, 1),
               lambda a: a @ a):
        with pytest.raises(NonLinearOperation):
            op(a)
    # numpy scalars and ufuncs keep the linear operations
    b = np.float64(2.0) * a - np.multiply(a, np.float32(0.5)) + np.add(a, a)
    assert isinstance(b, type(a)) and isinstance(-np.float64(1.0) * b, type(a)) and isinstance(np.negative(b), type(a))
    # a 0-d numpy array is a coefficient too (np.asarray(h) * q was refused as an ndarray)
    c = np.asarray(0.25) * a + a * np.asarray(2, np.int64)
    assert isinstance(c, type(a)) and [w for w, _ in c.terms] == [1.0, 1.0] and c.terms[0][1].terms[0][0] == 0.25
    with pytest.raises(NonLinearOperation):
        np.ones(2) * a


def denoiser_args(x, t, args):
    """The denoiser with its weights as an argument (traced by jit, not baked in)."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ args["w"] + t[:, None]) * 0.5 + args["c"] * x


def test_args_are_traced_new_weights_new_results_without_recompiling():
    grid = cc.time_grid(SCHED, 8, "logsnr")
    model = cc.DiffusionModel(denoiser_args, SCHED, "eps")
    w1 = {"w": jnp.asarray(_W), "c": jnp.asarray(0.2)}
    w2 = {"w": jnp.asarray(_W * 0.5), "c": jnp.asarray(0.1)}
    a = cj.chords(model, X, grid, "dpmpp_2m", cores=3, stop=None, args=w1)
    n = cj.compilations()
    b = cj.chords(model, X, grid, "dpmpp_2m", cores=3, stop=None, args=w2)
    assert cj.compilations() == n  # same shapes: the executable is reused with the new weights
    for w, got in ((w1, a), (w2, b)):
        ref = cc.chords(cc.DiffusionModel(lambda x, t, w=w: denoiser_args(x, t, jax.tree.map(np.asarray, w)), SCHED,
                                          "eps"), X, grid, "dpmpp_2m", cores=3, stop=None)
        assert close(got.x, ref.x)
    assert not close(a.x, b.x)
    field = cc.VectorField(lambda t, y, args: args * jnp.sin(y))
    assert close(cj.solve(field, X[0], np.linspace(0, 1, 5), "heun", args=jnp.asarray(2.0)),
                 cc.solve(cc.VectorField(lambda t, y: 2.0 * np.sin(y)), X[0], np.linspace(0, 1, 5), "heun"))


def test_a_model_object_equal_by_its_own_equality_is_not_taken_for_another_compiled_one():
    """(A trial.) The cache key held the model function itself where it could be hashed, so its own
    ``__eq__`` decided: a frozen dataclass leaving its weights out of its equality (JAX's static-argument
    pattern) got the first object's executable with the first weights baked in, 0.142 off the core.
    Each object is its own program now; a bound method is keyed by its object."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Net:
        width: int
        w: float = dataclasses.field(compare=False, hash=False)

        def __call__(self, x, t):
            xp = jnp if isinstance(x, jax.Array) else np
            return xp.tanh(x * self.w + t[:, None])

        def apply(self, x, t):
            return self(x, t)

    grid = cc.time_grid(SCHED, 6, "logsnr")
    for make in (lambda net: net, lambda net: net.apply):
        outs = []
        for w in (1.0, 3.0):
            model = cc.DiffusionModel(make(Net(3, w)), SCHED, "eps")
            got = cj.chords(model, X, grid, "euler", cores=2, stop=None)
            assert close(got.x, cc.chords(model, X, grid, "euler", cores=2, stop=None).x)
            outs.append(got.x)
        assert not close(*outs)
    net = Net(3, 2.0)  # one object's method, asked for twice (two method objects): one program
    cj.chords(cc.DiffusionModel(net.apply, SCHED, "eps"), X, grid, "euler", cores=2, stop=None)
    n = cj.compilations()
    cj.chords(cc.DiffusionModel(net.apply, SCHED, "eps"), X, grid, "euler", cores=2, stop=None)
    assert cj.compilations() == n


def test_args_for_a_function_without_them_is_named():
    """(It raised the bare ``TypeError: ... takes 2 positional arguments but 3 were given``.)"""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    model = cc.DiffusionModel(lambda x, t: jnp.tanh(x + t[:, None]), SCHED, "eps")
    with pytest.raises(TypeError, match=r"args: with args= the model's function is called with a third argument"):
        cj.chords(model, X, grid, "euler", cores=2, stop=None, args=1.0)
    with pytest.raises(TypeError, match=r"args: with args="):
        cj.parallel(model, X, grid, "euler", cores=2, args=1.0)
    with pytest.raises(TypeError, match=r"args: with args=.*f\(t, y, args\) for a VectorField"):
        cj.solve(cc.VectorField(lambda t, y: -y), X[0], np.linspace(0, 1, 5), args=1.0)
    # a function that takes args and fails inside in its own words is not blamed on args
    broken = cc.DiffusionModel(lambda x, t, args: jnp.tanh(x, t), SCHED, "eps")
    with pytest.raises(TypeError) as err:
        cj.chords(broken, X, grid, "euler", cores=2, stop=None, args=1.0)
    assert not str(err.value).startswith("args:")



def test_an_args_leaf_that_cannot_be_traced_is_named():
    """(A string leaf raised jax's "Error interpreting argument to <function _jitted.<locals>.chunk>
    as an abstract array ... not marked as static".) Every entry point names args and the leaf's path;
    numbers and numeric arrays of any kind pass."""
    field = cc.VectorField(lambda t, y, args: -args["k"] * y)
    grid = np.linspace(0, 1, 5)
    want = cc.solve(cc.VectorField(lambda t, y: -2.0 * y), X[0], grid)
    for call in (functools.partial(cj.chords, cores=2, stop=None),
                 functools.partial(cj.parallel, cores=2, tol=0.0), functools.partial(cj.srds, blocks=2, stop=None),
                 cj.solve):
        for bad, path in (({"k": 1.0, "name": "silu"}, r"args\['name'\]: .* got a str"),
                          ({"k": np.array(["a"])}, r"args\['k'\]: .* got a ndarray"),
                          ({"k": 1.0, "f": [0.0, jnp.sin]}, r"args\['f'\]\[1\]: .* got a")):
            with pytest.raises(TypeError, match=path):
                call(field, X[0], grid, args=bad)
        got = call(field, X[0], grid, args={"k": 2, "b": True, "c": np.float32(1.0), "d": np.ones(1), "e": None})
        assert close(got if call is cj.solve else got.x, want)

def test_clear_cache_releases_the_models_and_their_weights():
    import gc
    import weakref

    class Net:
        def __init__(self):
            self.w = jnp.asarray(np.random.default_rng(3).standard_normal((D, D)))

        def __call__(self, x, t):
            return jnp.tanh(x @ self.w + t[:, None])

    net = Net()
    ref = weakref.ref(net)
    cj.chords(cc.DiffusionModel(net, SCHED, "eps"), X, cc.time_grid(SCHED, 6, "logsnr"), "euler", cores=2, stop=None)
    del net
    gc.collect()
    assert ref() is not None  # the cached executable still holds the model's function
    cj.clear_cache()
    gc.collect()
    assert ref() is None  # released: its weights with it


def test_the_caches_bound_the_executables_not_the_functions(monkeypatch):
    """A user trial: a cache entry is one jitted function, which holds an executable per state shape;
    60 batch sizes held 60 executables (12 MB each) in one entry of a 32-entry cache, never evicted.
    Now the executables are counted: at most the cache's size in all, the least recently used functions
    dropped first, and a function holding that many itself rebuilt."""
    import chords_jax.run as run
    import chords_jax.window as window

    def held(cache):
        return sum(f._cache_size() for f in cache.values())  # (jax.jit's count of its executables)

    cj.clear_cache()
    monkeypatch.setattr(run, "_CACHE_SIZE", 3)
    monkeypatch.setattr(window, "_CACHE_SIZE", 3)
    grid = cc.time_grid(SCHED, 4, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    other = cc.DiffusionModel(lambda x, t: 0.5 * denoiser(x, t), SCHED, "eps")
    for B in (1, 2, 3, 4, 5):
        xb = jnp.asarray(np.random.default_rng(B).standard_normal((B, D)))
        want = cc.solve(model, np.asarray(xb), grid, "euler")
        assert np.allclose(np.asarray(cj.solve(model, xb, grid, "euler")), want, rtol=1e-12, atol=1e-12)
        cj.parallel(model, xb, grid, "euler", cores=2, method="paradigms")
        cj.solve(other, xb, grid, "euler")
        assert held(run._CACHE) <= 3 + 1 and held(window._JITTED) <= 3 + 1  # (+ 1: this call's own)
    assert held(run._CACHE) >= 1 and len(window._JITTED) == 1
    # a working set of as many shapes as the bound does not thrash (dropped at the bound, cycling through
    # them compiled every call, a review)
    cj.clear_cache()
    xs = [jnp.asarray(np.random.default_rng(B).standard_normal((B, D))) for B in (1, 2, 3)]
    for xb in xs:
        cj.solve(model, xb, grid, "euler")
    n = cj.compilations()
    for xb in xs * 3:
        cj.solve(model, xb, grid, "euler")
    assert cj.compilations() == n
    cj.clear_cache()


def test_a_bound_solver_is_cached_by_identity():
    """A trial: a bound ``Solver`` had no cache key, so every call replayed, lowered and uploaded its
    program again (10-47x a named solver's time per call) and pushed other programs' arrays out."""
    import chords_jax.api as api
    from chords_core.solvers import make_solver

    cj.clear_cache()
    grid = cc.time_grid(SCHED, 8, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    sol = make_solver("dpmpp_2m", model, grid)
    named = cj.chords(model, X, grid, "dpmpp_2m", cores=3, stop=None)
    first = cj.chords(model, X, grid, sol, cores=3, stop=None)
    built = len(api._PROGRAMS), len(api._ARRAYS)
    again = cj.chords(model, X, grid, sol, cores=3, stop=None)
    assert (len(api._PROGRAMS), len(api._ARRAYS)) == built == (2, 2)  # (the named one's, and the bound one's once)
    for r in (first, again):
        assert np.array_equal(np.asarray(r.x), np.asarray(named.x)) and r.rounds == named.rounds
    srds = [cj.srds(model, X, grid, sol, blocks=2) for _ in range(2)]
    assert len(api._PROGRAMS) == 3 and np.array_equal(np.asarray(srds[0].x), np.asarray(srds[1].x))
    other = make_solver("dpmpp_2m", model, grid)  # an equal solver made anew: its own entry, the same values
    assert np.array_equal(np.asarray(cj.chords(model, X, grid, other, cores=3, stop=None).x), np.asarray(named.x))
    assert len(api._PROGRAMS) == 4
    # the caches hold no bound solver (held, each kept its model and weights in up to 64 entries, a review)
    import gc
    import weakref

    gone = weakref.ref(other)
    del other
    gc.collect()
    assert gone() is None
    cj.clear_cache()


def test_float64_state_with_x64_off_warns():
    import subprocess
    import sys

    code = ("import warnings, numpy as np, chords_core as cc, chords_jax as cj, jax.numpy as jnp\n"
            "s = cc.RectifiedFlow()\n"
            "m = cc.DiffusionModel(lambda x, t: jnp.tanh(x) * 0.1, s, 'flow')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    r = cj.chords(m, np.ones((2, 3)), cc.time_grid(s, 4), cores=2, stop=None)\n"
            "    y = cj.solve(m, np.ones((2, 3)), cc.time_grid(s, 4))\n"
            "print(r.x.dtype, y.dtype, [(v.filename, v.lineno) for v in w if '64-bit mode off' in str(v.message)])\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    # one warning per call, each pointing at the caller's line (chords on line 6, solve on line 7)
    assert out.stdout.split(" ", 2)[:2] == ["float32", "float32"]
    assert out.stdout.split(" ", 2)[2].strip() == "[('<string>', 6), ('<string>', 7)]"


def test_bfloat16_is_floating_alike_in_the_core_and_the_compiled_path():
    model = cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    x = jnp.ones((2, 3), jnp.bfloat16)
    stop = cc.StopAtCore(1)
    a = cc.chords(model, x, grid, "euler", cores=2, stop=stop)
    b = cj.chords(model, x, grid, "euler", cores=2, stop=stop)
    assert a.x.dtype == b.x.dtype == jnp.bfloat16 and a.rounds == b.rounds
    # a bfloat16 output from a float32 state is cast back, on both paths
    m16 = cc.DiffusionModel(lambda x, t: (x * 0.5).astype(jnp.bfloat16), cc.RectifiedFlow(), "flow")
    x32 = jnp.ones((2, 3), jnp.float32)
    for f in (cc.chords, cj.chords):
        assert f(m16, x32, grid, "euler", cores=2, stop=stop).x.dtype == jnp.float32


# ---- the default stop rule: StopWhenConverged's error estimate on the compiled path ----

from chords_core.problems import GaussianMixture, LinearODE  # noqa: E402
from chords_core.stopping import DEFAULT_STOP  # noqa: E402

FLOW = cc.RectifiedFlow()
GMM = GaussianMixture.random(4, 3, seed=3)
ODE = LinearODE.random(4, seed=1)
XG = np.random.default_rng(4).standard_normal((3, 4))


def gmm_x0(x, t):
    """``GMM.prediction_fn(FLOW, "x0")`` in jax.numpy: E[x0 | x_t = x] at alpha = 1 - t, sigma = t."""
    a, s = (1.0 - t)[:, None, None], t[:, None, None]
    c = a * a * GMM.variances + s * s
    r = x[:, None, :] - a * GMM.means
    log_joint = jnp.log(GMM.weights) - 0.5 * jnp.sum(r * r / c + jnp.log(2 * jnp.pi * c), axis=-1)
    gamma = jax.nn.softmax(log_joint, axis=1)[..., None]
    return jnp.sum(gamma * (GMM.means + a * GMM.variances / c * r), axis=1)


def _ode_jax(t, y):
    return y @ jnp.asarray(ODE.A.T)


# (numpy model, jax model, x, grid, solvers): the analytic problems of chords_core.problems (the
# exact GMM denoiser; dy/dt = A y) and the nonlinear test denoiser
FAST = np.array([[0.6922641398864646, 0.27330381277018034], [1.777587543538914, 1.9684606645602079]])
PROBLEMS = {
    "gmm": (GMM.model(FLOW, "x0"), cc.DiffusionModel(gmm_x0, FLOW, "x0"), XG, cc.time_grid(FLOW, 16),
            cj.SUPPORTED_SOLVERS),
    "denoiser": (cc.DiffusionModel(denoiser, SCHED, "v"), cc.DiffusionModel(denoiser, SCHED, "v"), X,
                 cc.time_grid(SCHED, 14, "logsnr"), cj.SUPPORTED_SOLVERS),
    "linear_ode": (ODE.vector_field(), cc.VectorField(_ode_jax, batched=True), XG[0], np.linspace(0.0, 1.0, 17),
                   ("euler", "heun")),
    # a decaying solution (the estimate scales with it: ``stopping.estimate_error``)
    "decay": (cc.VectorField(lambda t, y: -3.0 * y), cc.VectorField(lambda t, y: -3.0 * y), np.array([1.0, -0.5]),
              np.linspace(0.0, 2.0, 41), ("euler", "heun")),
    # a mode decaying faster than the solution (the estimate bounded by the newest local errors' decay)
    "modes": (cc.VectorField(lambda t, y: y @ FAST.T, batched=True), cc.VectorField(lambda t, y: y @ FAST.T, batched=True),
              np.array([[-0.79, -0.22]]), np.linspace(2.96, 0.0, 41), ("euler", "heun")),
}
CASES = [(p, s) for p, (*_, solvers) in PROBLEMS.items() for s in solvers]


def test_the_default_stop_rule_is_the_cores():
    assert inspect.signature(cc.chords).parameters["stop"].default is DEFAULT_STOP  # (through the host route's wrapper)
    assert cj.chords.__kwdefaults__["stop"] is DEFAULT_STOP
    assert cj.compile_plan.__kwdefaults__["stop"] is DEFAULT_STOP


@pytest.mark.parametrize("problem,solver", CASES)
def test_the_cores_default_stop_selects_what_the_core_selects(problem, solver):
    nmodel, jmodel, x, grid, _ = PROBLEMS[problem]
    for cores in (2, 4, 8):
        ref = cc.chords(nmodel, x, grid, solver, cores=cores)
        got = cj.chords(jmodel, x, grid, solver, cores=cores, stop=DEFAULT_STOP)
        assert ref.stopped_by.startswith(("converged", "not converged"))
        same_result(got, ref)  # same output (core, rounds, NFE, stopped_by), values within 1e-12


class RecordErrors(cc.StopRule):
    """Never stops; keeps ``outputs.error`` as each output arrives."""

    uses_error_estimate = True

    def __init__(self):
        self.errors = []

    def accept(self, outputs, coarse):
        self.errors.append(outputs.error)
        return False


@pytest.mark.parametrize("solver", cj.SUPPORTED_SOLVERS)
def test_error_estimates_equal_the_cores(solver):
    nmodel, jmodel, x, grid, _ = PROBLEMS["gmm"]
    ref, got = RecordErrors(), RecordErrors()
    a = cc.chords(nmodel, x, grid, solver, cores=4, stop=ref)
    b = cj.chords(jmodel, x, grid, solver, cores=4, stop=got)
    same_result(b, a)
    assert len(ref.errors) == len(got.errors) == 4
    assert [e is None for e in ref.errors] == [e is None for e in got.errors]
    assert any(e is not None for e in ref.errors)
    for e, f in zip(ref.errors, got.errors):
        assert e is None or (isinstance(f, float) and abs(e - f) <= 1e-12 * e)


@pytest.mark.parametrize("stop", [cc.StopWhenConverged(0.0), cc.StopWhenConverged(0.02), cc.StopWhenConverged(0.5),
                                  cc.StopWhenConverged(10.0), cc.StopAtCore(1), cc.StopAtCore(3), None])
@pytest.mark.parametrize("problem", ["gmm", "linear_ode"])
def test_explicit_stop_rules_select_what_the_core_selects(stop, problem):
    nmodel, jmodel, x, grid, _ = PROBLEMS[problem]
    for solver in ("euler", "heun"):
        same_result(cj.chords(jmodel, x, grid, solver, cores=4, stop=stop),
                    cc.chords(nmodel, x, grid, solver, cores=4, stop=stop))


def test_too_few_steps_for_an_estimate_returns_core_0_as_the_core_does():
    nmodel, jmodel, x, grid, _ = PROBLEMS["gmm"]
    short = grid[:5]  # 4 steps on 4 cores: under half the steps get an estimate before the last output
    ref = cc.chords(nmodel, x, short, "dpmpp_3m", cores=4)
    same_result(cj.chords(jmodel, x, short, "dpmpp_3m", cores=4, stop=DEFAULT_STOP), ref)


def test_the_cores_default_stop_does_not_recompile_for_new_values():
    grid = cc.time_grid(SCHED, 7, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    cj.chords(model, X, grid, "dpmpp_2m", cores=3, stop=DEFAULT_STOP)
    n = cj.compilations()
    x = np.random.default_rng(6).standard_normal(X.shape)
    same_result(cj.chords(model, x, grid, "dpmpp_2m", cores=3, stop=DEFAULT_STOP),
                cc.chords(model, x, grid, "dpmpp_2m", cores=3))
    # another schedule/grid of the same length and the same parametrisation: only the coefficients
    # change (a different parametrisation changes which terms the error estimate's rows have)
    other = cc.DiffusionModel(denoiser, cc.VP.linear(), "eps")
    grid2 = cc.time_grid(cc.VP.linear(), 7, "karras")
    same_result(cj.chords(other, X, grid2, "dpmpp_2m", cores=3, stop=DEFAULT_STOP),
                cc.chords(other, X, grid2, "dpmpp_2m", cores=3))
    assert cj.compilations() == n


# ---- a rule deciding on the outputs runs in chunks: the scan stops where the rule accepts ----


class AcceptAt(cc.StopRule):
    """Accepts output n (a rule the compiled path cannot tell from one deciding on the values)."""

    def __init__(self, n):
        self.n = n

    def accept(self, outputs, coarse):
        return len(outputs) >= self.n


@pytest.mark.parametrize("stop", [cc.StopWhenConverged(0.1), cc.StopOnResidual(0.05), AcceptAt(2)])
def test_a_rule_deciding_on_the_outputs_runs_only_the_rounds_up_to_its_output(stop):
    nmodel, _, x, _, _ = PROBLEMS["gmm"]
    grid = cc.time_grid(FLOW, 40)
    rounds = []  # one entry per executed scan step: the model is one batched call per round

    def counted(x, t):
        jax.debug.callback(lambda: rounds.append(1))
        return gmm_x0(x, t)

    jmodel = cc.DiffusionModel(counted, FLOW, "x0")
    ref = cc.chords(nmodel, x, grid, "euler", cores=8, stop=stop)
    prog, _ = cj.compile_plan(jmodel, x.shape, x.dtype, grid, "euler", cores=8, stop=stop)
    assert ref.rounds < prog.rounds  # the rule stops before the last round it may need
    got = cj.chords(jmodel, x, grid, "euler", cores=8, stop=stop)
    jax.effects_barrier()
    same_result(got, ref)
    assert len(rounds) == ref.rounds  # rounds executed: up to the accepted output's, no further
    n, executed = cj.compilations(), len(rounds)
    same_result(cj.chords(jmodel, 2 * x, grid, "euler", cores=8, stop=stop),
                cc.chords(nmodel, 2 * x, grid, "euler", cores=8, stop=stop))
    jax.effects_barrier()
    assert cj.compilations() == n  # every chunk's executable is reused
    assert len(rounds) - executed <= prog.rounds
    rounds.clear()
    cj.chords(jmodel, x, grid, "euler", cores=8, stop=cc.StopAtCore(8))  # a static rule: one call, all rounds
    jax.effects_barrier()
    assert len(rounds) == prog.rounds


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_the_chunked_run_names_a_bad_output_as_the_core_does_and_skips_rounds_after_the_stop(solver):
    grid = cc.time_grid(cc.RectifiedFlow(), 12)  # t_1 .. t_5 are core 0's alone, late

    def nan_at(x, t, bad_t):  # the bad time a traced argument: one compiled program serves every time
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.where((t == bad_t)[:, None], xp.nan, denoiser(x, t))

    compiled_model = cc.DiffusionModel(nan_at, cc.RectifiedFlow(), "flow")
    kinds = set()
    for index in range(12):
        bad_t = grid[index]
        model = cc.DiffusionModel(functools.partial(nan_at, bad_t=bad_t), cc.RectifiedFlow(), "flow")
        for n in (1, 2, 3):
            def core_run(n=n, model=model):
                return cc.chords(model, X, grid, solver, init=(0, 6, 9, 11), stop=AcceptAt(n))

            def compiled_run(n=n, bad_t=bad_t):
                return cj.chords(compiled_model, X, grid, solver, init=(0, 6, 9, 11), stop=AcceptAt(n) if n else None,
                                 args=jnp.asarray(bad_t))

            where = first_nonfinite(core_run)
            if where is not None:  # the core met a non-finite output before it stopped (and retired or raised)
                with pytest.raises(cc.ModelOutputError) as compiled:
                    compiled_run()
                assert str(compiled.value).split(":")[0] == where  # "round r, core c (step i, stage k, t=..)"
                kinds.add("raised after output 1" if n > 1 else "raised")
            else:  # the bad rounds come after the accepted output: the chunked run stops before them
                ref = core_run()
                same_result(compiled_run(), ref, tol=1e-12)
                with pytest.raises(cc.ModelOutputError):
                    compiled_run(0)
                kinds.add("skipped")
    assert kinds == {"raised", "raised after output 1", "skipped"}


CHUNKED_DEVICES = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import chords_core as cc
import chords_jax as cj
from chords_core.problems import GaussianMixture
import test_jax_chords as t

x = t.XG
grid = cc.time_grid(t.FLOW, 40)
out = {"devices": jax.device_count(), "runs": []}
for stop in (cc.StopWhenConverged(0.1), cc.StopOnResidual(0.05)):
    ref = cc.chords(t.GMM.model(t.FLOW, "x0"), x, grid, "euler", cores=8, stop=stop)
    jm = cc.DiffusionModel(t.gmm_x0, t.FLOW, "x0")
    got = cj.chords(jm, x, grid, "euler", cores=8, stop=stop, devices=2)
    n = cj.compilations()
    again = cj.chords(jm, x, grid, "euler", cores=8, stop=stop, devices=2)
    prog, _ = cj.compile_plan(jm, x.shape, x.dtype, grid, "euler", cores=8, stop=stop, slots_multiple=2)
    same = all(t.close(a.x, b.x) for a, b in zip(got.hits, ref.hits)) and t.close(got.x, ref.x)
    key = lambda r: [r.rounds, r.nfe, r.stopped_by, [(h.core, h.round) for h in r.hits]]
    out["runs"].append([key(got) == key(ref) == key(again), same, ref.rounds < prog.rounds,
                        cj.compilations() - n, got.x.sharding.is_fully_replicated])
print(json.dumps(out))
"""


def test_the_chunked_run_shards_over_two_devices():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    paths = [str(root / "backends"), str(root), str(root / "tests")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-c", CHUNKED_DEVICES], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    assert out["runs"] == [[True, True, True, 0, True]] * 2


def _first_bad_calls(monkeypatch):
    """Record ``first_bad``'s calls as (whether the screen flagged the run, the exact code)."""
    import chords_jax.api as api
    from chords_jax.run import NO_BAD, first_bad

    calls = []

    def spy(bad, rerun):
        code = first_bad(bad, rerun)
        calls.append((int(bad) != NO_BAD, code))
        return code

    monkeypatch.setattr(api, "first_bad", spy)
    return calls


def test_rows_that_overflow_from_finite_outputs_are_rerun_and_give_the_core_result(monkeypatch):
    """The screen reads the written rows: a row that overflows although every output is finite flags
    the run, the exact check on the outputs passes it, and the result is the core's (inf for core 0, as
    the core's float32 arithmetic gives; nan for the faster cores, whose rectifications take inf from
    inf), with no error."""
    calls = _first_bad_calls(monkeypatch)
    y = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    model = cc.VectorField(lambda t, y: (jnp if isinstance(y, jax.Array) else np).full_like(y, 3e38))
    grid = np.linspace(0.0, 2.0, 11)  # y(2) = 6e38 overflows float32
    # at 0-3-5-6 every overflowed output is the same non-finite value on both paths; at some inits
    # one is inf where the other is nan (the compiled rows multiply the coefficients out, so inf - inf
    # arises in another order): both non-finite, neither an error (docs/jax.md)
    init = (0, 3, 5, 6)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = cc.chords(model, y, grid, "euler", init=init, stop=None)
    got = cj.chords(model, y, grid, "euler", init=init, stop=None)
    assert calls == [(True, calls[0][1])] and calls[0][1] > 2**30  # flagged, then NO_BAD from the exact check
    assert np.isinf(ref.x).all() and got.rounds == ref.rounds
    assert all(np.array_equal(np.asarray(g.x), h.x, equal_nan=True) for g, h in zip(got.hits, ref.hits))


def test_a_nan_in_an_output_that_no_row_uses_is_still_found(monkeypatch):
    """Core 3's last evaluation (round 6, x0 prediction, DPM-Solver++(2M) on VP-cosine, T = 8) enters
    no written row: the screen still sees it, through the scratch row it is written to, and the
    error names it as the core does. The model returns nan at that one point only."""
    calls = _first_bad_calls(monkeypatch)
    init = (0, 3, 4, 5)  # the recipe for 4 cores and 8 steps (the default init is evenly spaced there)
    grid = cc.time_grid(SCHED, 8)
    points = []

    class Recording(cc.SerialExecutor):
        def __call__(self, model, xs, ts):
            points.append([np.array(p) for p in xs])
            return super().__call__(model, xs, ts)

    plain = cc.DiffusionModel(denoiser, SCHED, "x0")
    ref = cc.chords(plain, X, grid, "dpmpp_2m", init=init, stop=None, executor=Recording())
    assert [(e.core, e.index) for e in ref.plan.rounds[5].evals][3] == (3, 7)
    target = points[5][3]

    def nan_there(x, t, target):
        xp = jnp if isinstance(x, jax.Array) else np
        n = x.shape[0] // target.shape[0]  # points stacked in the call
        hit = xp.abs(x.reshape(n, -1) - target.reshape(1, -1)).max(axis=1) < 1e-9
        return xp.where(xp.repeat(hit, target.shape[0])[:, None], xp.nan, denoiser(x, t))

    where = first_nonfinite(lambda: cc.chords(cc.DiffusionModel(lambda x, t: nan_there(x, t, target), SCHED, "x0"), X,
                                              grid, "dpmpp_2m", init=init, stop=None))
    assert where is not None and where.startswith("round 6, core 3 (step 7")  # (the core retires core 3 there)
    with pytest.raises(cc.ModelOutputError) as compiled:
        cj.chords(cc.DiffusionModel(nan_there, SCHED, "x0"), X, grid, "dpmpp_2m", init=init, stop=None,
                  args=jnp.asarray(target))
    assert str(compiled.value).startswith(f"{where}: {NONFINITE}; core 3 started at step 5") and compiled.value.point == 3
    # a diffusion model: no advice meant for a plain ODE's run-off (it suggested the cascade sampler or
    # closer starts, which a model returning nan at some time defeats as well)
    assert str(compiled.value).endswith("retires such a core and goes on with the slower ones; the compiled run "
                                        "stops at it") and "plain ODE" not in str(compiled.value)
    assert calls == [(True, calls[0][1])]


@pytest.mark.parametrize("prediction, solver", [("x0", "dpmpp_2m"), ("eps", "unipc"), ("v", "euler")])
def test_a_nan_in_any_output_is_found_by_the_screen_as_the_core_names_it(prediction, solver, monkeypatch):
    """Every evaluated output is a term of a written row (an output nothing uses goes to a scratch
    row; such outputs exist in these plans), so a nan at any grid time is flagged by the screen,
    and the exact rerun names it as the core does. The bad time is an argument: one compile."""
    calls = _first_bad_calls(monkeypatch)
    grid = cc.time_grid(SCHED, 8)

    def nan_at(x, t, bad_t):
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.where((t == bad_t)[:, None], xp.nan, denoiser(x, t))

    model = cc.DiffusionModel(nan_at, SCHED, prediction)
    for index in range(8):
        bad_t = grid[index]
        core_model = cc.DiffusionModel(lambda x, t, b=bad_t: nan_at(x, t, b), SCHED, prediction)
        where = first_nonfinite(lambda m=core_model: cc.chords(m, X, grid, solver, cores=4, stop=None))
        with pytest.raises(cc.ModelOutputError) as compiled:
            cj.chords(model, X, grid, solver, cores=4, stop=None, args=jnp.asarray(bad_t))
        assert where is not None and str(compiled.value).startswith(f"{where}: {NONFINITE}")
    assert len(calls) == 8 and all(flagged for flagged, _ in calls)


def test_an_output_whose_coefficient_rounds_to_zero_in_float16_is_still_checked():
    """The last step's coefficient on its output (h = 1e-9) is 0 in float16: the output is written to
    the scratch row, so its nan is found, as the core finds it."""
    def f(t, y):
        xp = jnp if isinstance(y, jax.Array) else np
        return xp.where(y > 0, -2.0 * y, xp.nan).astype(y.dtype)

    grid = np.array([0.0, 1.0, 1.0 + 1e-9])
    with np.errstate(invalid="ignore"), pytest.raises(cc.ModelOutputError) as core:
        cc.chords(cc.VectorField(f), np.ones(4, np.float16), grid, "euler", cores=1, stop=None)
    with pytest.raises(cc.ModelOutputError) as compiled:
        cj.chords(cc.VectorField(f), jnp.ones(4, jnp.float16), grid, "euler", cores=1, stop=None)
    assert str(compiled.value) == str(core.value) and str(core.value).startswith("round 2, core 0 (step 1")
    # the sequential solve names it as the core's solve does (it named a round and core 0, as chords)
    with np.errstate(invalid="ignore"), pytest.raises(cc.ModelOutputError) as core:
        cc.solve(cc.VectorField(f), np.ones(4, np.float16), grid, "euler")
    with pytest.raises(cc.ModelOutputError) as compiled:
        cj.solve(cc.VectorField(f), jnp.ones(4, jnp.float16), grid, "euler")
    assert str(compiled.value) == str(core.value) and str(core.value).startswith("step 1 (stage 0, t=1)")


def test_a_model_function_that_cannot_be_hashed():
    """A ``@dataclass`` model (unhashable, as an equinox module holding arrays is) compiles, keyed by
    identity, and equals the core; a second instance with other weights gives its own result."""
    import dataclasses

    @dataclasses.dataclass
    class Net:
        W: np.ndarray

        def __call__(self, x, t):
            xp = jnp if isinstance(x, jax.Array) else np
            return xp.tanh(x @ self.W) * 0.5 + 0.2 * x

    sch = cc.RectifiedFlow()
    grid = cc.time_grid(sch, 8)
    x = np.random.default_rng(2).standard_normal((2, D))
    for W in (_W, -_W):
        m = cc.DiffusionModel(Net(W), sch, "flow")
        ref = cc.chords(m, x, grid, "euler", cores=3, stop=None)
        got = cj.chords(m, x, grid, "euler", cores=3, stop=None)
        assert np.allclose(np.asarray(got.x), ref.x, rtol=0, atol=1e-12) and got.rounds == ref.rounds
        par = cc.parallel(m, x, grid, cores=3)
        assert np.allclose(np.asarray(cj.parallel(m, x, grid, cores=3).x), par.x, rtol=0, atol=1e-12)


def test_a_solver_registered_anew_is_compiled_anew():
    """``register_solver(name, ..., replace=True)``: the compiled caches key on the registered spec,
    so the new solver runs, not the executable of the old one."""
    sch = cc.RectifiedFlow()
    grid = cc.time_grid(sch, 8)
    x = np.random.default_rng(3).standard_normal((2, D))
    m = cc.DiffusionModel(denoiser, sch, "flow")
    name = "test_jax_swapped"
    try:
        for spec in (cc.SOLVERS["euler"], cc.SOLVERS["ddim"]):
            cc.register_solver(name, spec, replace=True)
            ref = cc.chords(m, x, grid, name, cores=3, stop=None)
            assert np.allclose(np.asarray(cj.chords(m, x, grid, name, cores=3, stop=None).x), ref.x, atol=1e-12)
            assert np.allclose(np.asarray(cj.srds(m, x, grid, name, blocks=2).x), cc.srds(m, x, grid, name, blocks=2).x,
                               atol=1e-12)
    finally:
        cc.SOLVERS.pop(name, None)


def test_a_wrapper_that_adds_args_is_accepted():
    """``functools.wraps`` makes ``inspect.signature`` report the wrapped function's two arguments;
    the wrapper's own signature takes args."""
    import functools

    def base(x, t):
        return jnp.tanh(x + t[:, None])

    @functools.wraps(base)
    def scaled(x, t, a):
        return a * base(x, t)

    grid = cc.time_grid(SCHED, 6, "logsnr")
    got = cj.chords(cc.DiffusionModel(scaled, SCHED, "eps"), X, grid, "euler", cores=2, stop=None, args=0.5)
    ref = cc.chords(cc.DiffusionModel(lambda x, t: 0.5 * np.tanh(x + t[:, None]), SCHED, "eps"), X, grid, "euler",
                    cores=2, stop=None)
    assert close(got.x, ref.x)


def test_solve_and_chords_compose_with_jit_vmap_and_grad():
    """(Every call under a transformation failed with a ``ConcretizationTypeError``: the output check
    read its flag on the host.) With a rule decided before any value the run is one compiled call
    that reads nothing on the host: jit gives the plain call's values (to rounding: XLA compiles the
    inlined program on its own terms, and on an AMD EPYC host it contracted a multiply-add into an FMA
    there, 6.7e-16 relative on chords, where an earlier machine gave the same bits), vmap over a batch
    of states each one's, grad the derivative (checked against central differences), weights traced
    as ``args``."""
    cj.clear_cache()  # the first call is the transformed one: no cached array may be a tracer
    grid = cc.time_grid(SCHED, 8, "logsnr")
    model = cc.DiffusionModel(denoiser_args, SCHED, "eps")
    w = {"w": jnp.asarray(_W), "c": jnp.asarray(0.2)}
    x = jnp.asarray(X)
    calls = {"solve": lambda x, w: cj.solve(model, x, grid, "dpmpp_2m", args=w),
             "chords": lambda x, w: cj.chords(model, x, grid, "dpmpp_2m", cores=3, stop=None, args=w).x,
             "fastest": lambda x, w: cj.chords(model, x, grid, "dpmpp_2m", cores=3, stop=cc.StopAtCore(1), args=w).x}
    for name, call in calls.items():
        jitted = np.asarray(jax.jit(call)(x, w))
        plain = np.asarray(call(x, w))
        assert close(jitted, plain, 1e-13), name
        rows = np.asarray(jax.vmap(call, in_axes=(0, None))(x[:, None], w))[:, 0]
        assert close(rows, plain, 1e-13), name
        assert close(np.asarray(jax.jit(functools.partial(call, x))(w)), plain, 1e-13), name  # traced args alone

        def total(c, call=call):
            return call(x, {"w": w["w"], "c": c}).sum()

        grad = np.asarray(jax.grad(total)(w["c"]))
        h = 1e-6
        fd = (float(total(w["c"] + h)) - float(total(w["c"] - h))) / (2 * h)
        assert abs(float(grad) - fd) <= 1e-6 * max(1.0, abs(fd)), name
    # the plain call after transformed ones: no tracer was cached
    assert np.array_equal(np.asarray(calls["chords"](x, w)), np.asarray(cj.chords(
        model, x, grid, "dpmpp_2m", cores=3, stop=None, args=w).x))


def test_a_rule_that_reads_values_or_a_method_that_reads_its_run_is_refused_under_a_transformation():
    grid = cc.time_grid(SCHED, 8, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    x = jnp.asarray(X)
    with pytest.raises(TypeError, match=r"stop: chords_jax.chords inside jax.jit, vmap or grad .*StopWhenConverged"):
        jax.jit(lambda x: cj.chords(model, x, grid, cores=3).x)(x)
    with pytest.raises(TypeError, match=r"stop: .*only rules that decide on the outputs' arrival alone"):  # a caller's jit
        jax.jit(lambda a: cj.chords(model, x, grid, cores=3).x * a)(2.0)
    # (solve's refusal named chords_jax.chords, which the caller never called)
    with pytest.raises(TypeError, match=r"devices: chords_jax.solve inside jax.jit, vmap or grad runs on the default"):
        jax.jit(lambda x: cj.solve(model, x, grid, devices=1))(x)
    with pytest.raises(TypeError, match=r"x: a traced value: chords_jax.srds inside jax.jit, vmap or grad is not"):
        jax.vmap(lambda x: cj.srds(model, x[None], grid, stop=None).x)(x)
    with pytest.raises(TypeError, match=r"args: a traced value: chords_jax.parallel"):
        jax.jit(lambda c: cj.parallel(cc.DiffusionModel(denoiser_args, SCHED, "eps"), x, grid, cores=3,
                                      args={"w": jnp.asarray(_W), "c": c}).x)(0.2)


def test_a_nonfinite_output_under_jit_raises_when_it_runs_naming_round_and_core():
    grid = cc.time_grid(SCHED, 8, "logsnr")
    t_bad = float(grid[3])
    model = cc.DiffusionModel(lambda x, t: jnp.where(t[:, None] == t_bad, jnp.nan, denoiser(x, t)), SCHED, "eps")
    with pytest.raises(cc.ModelOutputError) as plain:
        cj.chords(model, X, grid, cores=1, stop=None)
    with pytest.raises(jax.errors.JaxRuntimeError) as err:
        jax.block_until_ready(jax.jit(lambda x: cj.chords(model, x, grid, cores=1, stop=None).x)(jnp.asarray(X)))
    assert "round 4, core 0" in str(plain.value) and str(plain.value) in str(err.value)


def test_a_model_closing_over_traced_weights_composes_too_and_is_not_cached():
    """(vmap or grad over weights the model's function closes over read the check's flag on the host:
    ``ConcretizationTypeError``; a caller's jit kept its tracer in the runner cache.) The trace state,
    not the arguments, says the call is transformed."""
    from chords_jax import run

    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)

    def mk(c):
        return cc.DiffusionModel(lambda x, t: jnp.tanh(x @ _W + t[:, None]) * 0.5 + c * x, SCHED, "eps")

    cs = jnp.asarray([0.2, 0.1])
    for call in (lambda c: cj.solve(mk(c), x, grid, "heun"),
                 lambda c: cj.chords(mk(c), x, grid, "heun", cores=3, stop=None).x):
        rows = np.asarray(jax.vmap(call)(cs))
        for k in range(2):
            assert close(rows[k], np.asarray(call(float(cs[k]))), 1e-13)
        kept = set(run._CACHE)
        jax.jit(call)(cs[0])
        # the closure holds the caller's tracer: run once, not kept (keys compared, not counted: an entry
        # of a model collected meanwhile leaves the cache, which failed a count once under pytest-xdist)
        assert set(run._CACHE) <= kept
    with pytest.raises(TypeError, match=r"stop: chords_jax.chords inside jax.jit, vmap or grad"):
        jax.grad(lambda c: cj.chords(mk(c), x, grid, cores=3).x.sum())(0.2)
    with pytest.raises(TypeError, match=r"chords_jax.srds inside jax.jit, vmap or grad \(here a tracer in the model"):
        jax.grad(lambda c: cj.srds(mk(c), x, grid, stop=None).x.sum())(0.2)


class _Net:
    """A callable object holding its weights as an attribute (as a network class does)."""

    def __init__(self, c):
        self.c = c

    def __call__(self, x, t):
        return jnp.tanh(x @ _W + t[:, None]) * 0.5 + self.c * x


class _SlottedNet:
    """The same, its weights in a slot (no ``__dict__``)."""

    __slots__ = ("c",)

    def __init__(self, c):
        self.c = c

    def __call__(self, x, t):
        return jnp.tanh(x @ _W + t[:, None]) * 0.5 + self.c * x


@pytest.mark.parametrize("kind", ["object", "bound method", "object in a closure", "slotted object"])
def test_traced_weights_held_by_an_object_are_not_cached_either(kind):
    """A user trial: weights held as an attribute of a callable object, or of the object behind a bound
    method (a pytree sees one opaque leaf), were not seen: under vmap the runner was cached with the
    caller's tracer, kept alive until clear_cache() or eviction. Now, as for a closure, the runner is
    run once and not kept, and no tracer outlives the call."""
    import gc

    from chords_jax import run

    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)
    make = {"object": _Net, "bound method": lambda c: _Net(c).__call__,
            "object in a closure": lambda c: (lambda net: (lambda x, t: net(x, t)))(_Net(c)),
            "slotted object": _SlottedNet}[kind]
    def tracers() -> set:
        gc.collect()
        with warnings.catch_warnings():  # (isinstance on every live object touches torch's deprecated aliases)
            warnings.simplefilter("ignore")
            return {id(o) for o in gc.get_objects() if isinstance(o, jax.core.Tracer)}

    cj.clear_cache()
    before = tracers()  # (jax keeps the tracers of a trace an error cut short alive: another test's)
    rows = np.asarray(jax.vmap(lambda c: cj.chords(cc.DiffusionModel(make(c), SCHED, "eps"), x, grid, "heun", cores=3,
                                                   stop=None).x)(jnp.asarray([0.2, 0.1])))
    assert len(run._CACHE) == 0 and not tracers() - before
    plain = cj.chords(cc.DiffusionModel(make(0.1), SCHED, "eps"), x, grid, "heun", cores=3, stop=None).x
    assert close(rows[1], np.asarray(plain), 1e-13) and len(run._CACHE) == 1  # (a concrete one is kept)


def test_under_a_transformation_only_rules_that_never_read_values_choose_among_outputs():
    grid = cc.time_grid(SCHED, 6, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    x = jnp.asarray(X)
    with pytest.raises(TypeError, match=r"stop: .*cannot offer the outputs to StopOnResidual"):  # its accept reads the outputs
        jax.jit(lambda x: cj.chords(model, x, grid, cores=3, stop=cc.StopOnResidual(1e-3)).x)(x)
    # tol 0 never accepts, and reads nothing (decides_on_values False): it runs, to core 0's output
    zero = jax.jit(lambda x: cj.chords(model, x, grid, cores=3, stop=cc.StopOnResidual(0)).x)(x)
    assert close(zero, cj.solve(model, x, grid))
    one = jax.jit(lambda x: cj.chords(model, x, grid, cores=1).x)(x)  # one output: nothing to decide
    assert np.array_equal(np.asarray(one), np.asarray(cj.solve(model, x, grid)))


def test_a_nonfinite_initial_state_is_refused_first_in_every_mode():
    """A nan, an inf or a -inf anywhere in x is refused naming x before anything is compiled or run (a
    CPU state read on numpy's view of it, ``_all_finite``), in every mode: one call and chunk by chunk,
    the output check on or off, a sharded run, SRDS; before another bad argument, as the core refuses
    it (a review: a check moved into the compiled run raised the other error first, and only after a
    whole run of the model)."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    for check in (True, False):
        model = cc.DiffusionModel(denoiser, SCHED, "eps", check_outputs=check)
        for where, value in (((0, 0), np.nan), ((1, D - 1), np.inf), ((2, 3), -np.inf)):
            bad = np.array(X, copy=True)
            bad[where] = value
            for stop in (None, cc.StopAtCore(1), cc.StopWhenConverged(0.1), cc.StopOnResidual(1e-3)):
                for devices in (None, 1):
                    with pytest.raises(ValueError, match=r"^x: the initial state has non-finite values"):
                        cj.chords(model, jnp.asarray(bad), grid, cores=3, stop=stop, devices=devices)
            with pytest.raises(ValueError, match=r"^x: the initial state has non-finite values"):
                cj.solve(model, bad, grid)
            for stop in (None, cc.StopAtCore(2), cc.StopOnResidual(1e-3)):  # SRDS: one call, chunk by chunk
                with pytest.raises(ValueError, match=r"^x: the initial state has non-finite values"):
                    cj.srds(model, bad, grid, blocks=2, stop=stop)
        bad = np.array(X, copy=True)
        bad[0, 0] = np.nan
        traced = cj.compilations()
        wrong = cc.DiffusionModel(lambda x, t: x[:, :2], SCHED, "eps", check_outputs=check)
        for call in (lambda m, w, b: cj.chords(w, b, grid, cores=3), lambda m, w, b: cj.chords(m, b, grid, cores=0),
                     lambda m, w, b: cj.srds(w, b, grid, blocks=2), lambda m, w, b: cj.solve(m, b, grid[::-1])):
            with pytest.raises(ValueError, match=r"^x: the initial state has non-finite values"):
                call(model, wrong, bad)
        assert cj.compilations() == traced
        # a finite state after a refused one: the executables are the same, nothing is left flagged
        good = cj.chords(model, X, grid, cores=3, stop=None)
        assert np.array_equal(np.asarray(good.x), np.asarray(cj.chords(model, X, grid, cores=3, stop=None).x))
        assert close(good.x, cj.solve(model, X, grid))


def test_the_librarys_rules_read_numpy_views_of_cpu_outputs_and_ones_own_rules_the_arrays():
    """The library's value-deciding rules (``StopWhenConverged``, ``StopOnResidual``) read numpy views of
    a CPU run's float32 / float64 outputs (their eager jax operations were three quarters of a default-stop
    call's 2.3 ms at size 64), and decide as on the core; a rule of one's own, even a subclass, is handed
    the jax arrays it may compute on."""
    grid = cc.time_grid(SCHED, 12, "logsnr")
    model = cc.DiffusionModel(denoiser, SCHED, "eps")
    x = jnp.asarray(X)
    seen = []

    class Mine(cc.StopWhenConverged):
        def accept(self, outputs, coarse):
            seen.append(type(outputs[-1]))
            return super().accept(outputs, coarse)

    for rule in (cc.StopWhenConverged(0.1), cc.StopOnResidual(1e-3)):
        got, core = cj.chords(model, x, grid, cores=4, stop=rule), cc.chords(model, X, grid, cores=4, stop=rule)
        assert (got.rounds, got.stopped_by) == (core.rounds, core.stopped_by) and isinstance(got.x, jax.Array)
        assert close(got.x, core.x)
    got = cj.srds(model, x, grid, blocks=3, stop=cc.StopOnResidual(1e-3))
    core = cc.srds(model, X, grid, blocks=3, stop=cc.StopOnResidual(1e-3))
    assert (got.rounds, got.stopped_by) == (core.rounds, core.stopped_by) and isinstance(got.x, jax.Array)
    real = cc.StopWhenConverged.accept
    try:
        cc.StopWhenConverged.accept = lambda self, outputs, coarse: seen.append(type(outputs[-1])) or real(
            self, outputs, coarse)
        cj.chords(model, x, grid, cores=4, stop=cc.StopWhenConverged(0.1))
        assert seen and set(seen) == {np.ndarray}
        seen.clear()
        cj.chords(model, x, grid, cores=4, stop=Mine(0.1))
        assert seen and all(issubclass(t, jax.Array) for t in seen)
    finally:
        cc.StopWhenConverged.accept = real


def test_a_nonfinite_traced_initial_state_is_named_when_it_runs():
    grid = cc.time_grid(SCHED, 6, "logsnr")
    model = cc.DiffusionModel(lambda x, t: jnp.nan_to_num(denoiser(x, t)), SCHED, "eps")
    bad = jnp.asarray(X).at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"x: the initial state has non-finite values"):
        jax.vmap(lambda x: cj.solve(model, x[None], grid))(bad)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"x: the initial state has non-finite values"):
        jax.block_until_ready(jax.jit(lambda x: cj.solve(model, x, grid))(bad))
    with pytest.raises(ValueError, match=r"x: the initial state has non-finite values"):  # concrete, a caller's jit
        jax.jit(lambda a: cj.solve(model, bad, grid) * a)(1.0)


def test_under_jit_the_checks_are_one_callback_called_only_where_something_is_bad():
    """Under a caller's jit the traced state's check and the outputs' check were two host callbacks
    called at every run (400 µs each on CPU: ``jit(chords)`` took 1.6x the call outside it at size
    64); now one, in a ``lax.cond`` branch taken only where a value is bad, and it still names what.
    With the output check off there is none (the state's check made ``jax.export`` fail where the
    docs said ``check_outputs=False`` serializes)."""
    grid = cc.time_grid(SCHED, 6, "logsnr")

    def callbacks(jaxpr, in_cond=False):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "debug_callback":
                yield in_cond
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from callbacks(sub, in_cond or eqn.primitive.name == "cond")

    for check in (True, False):
        model = cc.DiffusionModel(denoiser, SCHED, "eps", check_outputs=check)
        f = jax.jit(lambda x, model=model: cj.chords(model, x, grid, cores=2, stop=None).x)
        assert list(callbacks(jax.make_jaxpr(f)(jnp.asarray(X)).jaxpr)) == ([True] if check else [])
        assert close(f(jnp.asarray(X)), cc.chords(model, X, grid, cores=2, stop=None).x)
        if check:
            with pytest.raises(jax.errors.JaxRuntimeError, match=r"x: the initial state has non-finite values"):
                jax.block_until_ready(f(jnp.asarray(X).at[0, 0].set(jnp.inf)))
        else:
            exported = jax.export.export(f)(jax.ShapeDtypeStruct(X.shape, jnp.asarray(X).dtype))
            assert np.array_equal(exported.call(jnp.asarray(X)), f(jnp.asarray(X)))


def test_a_numpy_integer_cores_still_checks_the_rules_answer():
    class Greedy(cc.RunAll):
        def outputs_needed(self, available):
            return available + 1

    grid = cc.time_grid(SCHED, 6, "logsnr")
    with pytest.raises(ValueError, match=r"stop: Greedy.outputs_needed\(3\) returned 4"):
        cj.chords(cc.DiffusionModel(denoiser, SCHED, "eps"), X, grid, cores=np.int64(3), stop=Greedy())


def test_grad_through_idle_slots_stays_finite_for_a_model_singular_at_zero():
    """Idle slots evaluated the zero point; a model whose derivative is singular there (a norm) gave
    0 * inf = nan gradients through the unused output, for every core count >= 2, silently. They
    evaluate a point of their round now, and the gradient is solve's."""
    def fn(x, t, w):
        nrm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        return w * x * nrm / (1 + nrm) + 0.2 * t[:, None] * x

    grid = cc.time_grid(cc.RectifiedFlow(), 12)
    model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
    x, w = jnp.asarray(X), jnp.asarray(0.7)
    ref = jax.grad(lambda x, w: jnp.sum(cj.solve(model, x, grid, args=w) ** 2), argnums=(0, 1))(x, w)
    for cores in (2, 5):  # (5 cores on 12 steps: slots idle in the last rounds)
        got = jax.grad(lambda x, w, k=cores: jnp.sum(cj.chords(model, x, grid, cores=k, stop=None, args=w).x ** 2),
                       argnums=(0, 1))(x, w)
        assert close(np.asarray(got[0]), np.asarray(ref[0]), 1e-12) and abs(float(got[1] - ref[1])) < 1e-12
        first = jax.grad(lambda w, k=cores: jnp.sum(cj.chords(model, x, grid, cores=k, stop=cc.StopAtCore(1),
                                                             args=w).x ** 2))(w)
        assert np.isfinite(float(first))


class _PowerFlow(cc.Schedule):
    """alpha = 1 - t^p, sigma = t^p: a parameter set outside the dataclass's fields, which its equality
    does not see (PowerFlow(1) == PowerFlow(2))."""

    def __init__(self, p: float) -> None:
        super().__init__(t_noise=1.0, t_data=0.0, t_min=None)
        object.__setattr__(self, "p", float(p))

    def alpha(self, t):
        return 1.0 - np.asarray(t, dtype=np.float64) ** self.p

    def sigma(self, t):
        return np.asarray(t, dtype=np.float64) ** self.p

    def d_alpha(self, t):
        return -self.p * np.asarray(t, dtype=np.float64) ** (self.p - 1)

    def d_sigma(self, t):
        return self.p * np.asarray(t, dtype=np.float64) ** (self.p - 1)


def test_schedules_that_compare_equal_but_differ_do_not_share_a_cached_program():
    """(The program cache keyed the schedule by its dataclass equality: a run with PowerFlow(2) after
    PowerFlow(1) reused the first one's coefficients, 0.06-0.08 off the core, no error.)"""
    grid = np.linspace(1.0, 0.0, 11)
    x = np.asarray(X)
    for p in (1.0, 2.0):
        fn = functools.partial(lambda x, t, jnp_: 0.5 * jnp_.tanh(x) + 0.3 * t[:, None] * x)
        jm = cc.DiffusionModel(functools.partial(fn, jnp_=jnp), _PowerFlow(p), "flow")
        nm = cc.DiffusionModel(functools.partial(fn, jnp_=np), _PowerFlow(p), "flow")
        assert close(np.asarray(cj.chords(jm, jnp.asarray(x), grid, "dpmpp_2m", cores=4, stop=None).x),
                     cc.chords(nm, x, grid, "dpmpp_2m", cores=4, stop=None).x, 1e-12)
        assert close(np.asarray(cj.parallel(jm, jnp.asarray(x), grid, "ddim", cores=4, method="paradigms").x),
                     cc.parallel(nm, x, grid, "ddim", cores=4, method="paradigms").x, 1e-12)

    # a parameter in a slot (a slots dataclass keeps none in __dict__: a review found them all one key)
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Scaled(cc.RectifiedFlow):
        k: float = 1.0

        def alpha(self, t):
            return (1.0 - np.asarray(t, dtype=np.float64)) * self.k

        def d_alpha(self, t):
            return np.full_like(np.asarray(t, dtype=np.float64), -self.k)

    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    for k in (1.0, 2.0):
        jm = cc.DiffusionModel(lambda x, t: 0.5 * jnp.tanh(x), Scaled(k=k), "x0")
        nm = cc.DiffusionModel(lambda x, t: 0.5 * np.tanh(x), Scaled(k=k), "x0")
        assert close(np.asarray(cj.chords(jm, jnp.asarray(x), grid, "dpmpp_2m", cores=3, stop=None).x),
                     cc.chords(nm, x, grid, "dpmpp_2m", cores=3, stop=None).x, 1e-12)


def test_a_schedules_array_set_anew_or_changed_in_place_is_a_new_program():
    """A trial: a schedule holding an array was keyed by identity, so an array set anew on the same
    schedule ran the old one's program and tables, 8.9 off the core, silently. Keyed by its contents."""
    class ScaledFlow(cc.Schedule):
        t_noise, t_data, t_min = 1.0, 0.0, None

        def __init__(self, k):
            self.k = np.asarray(k, np.float64)

        def alpha(self, t):
            return 1.0 - np.asarray(t, np.float64)

        def sigma(self, t):
            return np.asarray(t, np.float64) * self.k[0]

        def d_alpha(self, t):
            return np.full_like(np.asarray(t, np.float64), -1.0)

        def d_sigma(self, t):
            return np.full_like(np.asarray(t, np.float64), self.k[0])

    w = np.random.default_rng(1).standard_normal((D, D)) / 2
    s, x, grid = ScaledFlow([1.0]), np.asarray(X), np.linspace(0.9, 0.0, 9)
    jm = cc.DiffusionModel(lambda x, t: jnp.tanh(x @ w + t[:, None]), s, "eps")
    nm = cc.DiffusionModel(lambda x, t: np.tanh(x @ w + t[:, None]), s, "eps")
    results = []
    for change in (lambda: None, lambda: setattr(s, "k", np.asarray([2.0])), lambda: s.k.__setitem__(0, 3.0)):
        change()
        got = np.asarray(cj.chords(jm, jnp.asarray(x), grid, "dpmpp_2m", cores=3, stop=None).x)
        assert close(got, cc.chords(nm, x, grid, "dpmpp_2m", cores=3, stop=None).x, 1e-12), s.k
        assert close(np.asarray(cj.parallel(jm, jnp.asarray(x), grid, "ddim", cores=3).x),
                     cc.parallel(nm, x, grid, "ddim", cores=3).x, 1e-12), s.k
        results.append(got)
    assert not close(results[0], results[1], 1e-3) and not close(results[1], results[2], 1e-3)


def test_traced_args_or_weights_with_a_concrete_state_run_as_one_call():
    """A trial: with x concrete and args (or the weights a model closes over) traced, under grad or jit,
    the library's rules read numpy views of traced outputs: TracerArrayConversionError, where the docs
    say these rules run as one compiled call. Now the gradient matches finite differences."""
    w = jnp.asarray(np.random.default_rng(1).standard_normal((D, D)) / 2)
    model = cc.DiffusionModel(lambda x, t, a: jnp.tanh(x @ w + t[:, None]) * a, SCHED, "v")
    grid = cc.time_grid(SCHED, 8)
    x = jnp.asarray(X)
    for kw in ({"cores": 1}, {"cores": 3, "stop": cc.StopWhenConverged(0.0)}, {"cores": 3, "stop": cc.StopOnResidual(0.0)}):
        def total(a, kw=kw):
            return cj.chords(model, x, grid, args=a, **kw).x.sum()

        h = 1e-6
        assert abs(float(jax.grad(total)(0.5)) - float((total(0.5 + h) - total(0.5 - h)) / (2 * h))) < 1e-6, kw
        assert close(np.asarray(jax.jit(lambda a, kw=kw: cj.chords(model, x, grid, args=a, **kw).x)(0.5)),
                     np.asarray(cj.chords(model, x, grid, args=0.5, **kw).x), 1e-12), kw
        # (the weights closed over by the model, traced: grad with respect to them)
        def by_weights(v, kw=kw):
            return cj.chords(cc.DiffusionModel(lambda y, t: jnp.tanh(y @ v + t[:, None]), SCHED, "v"), x, grid,
                             **kw).x.sum()

        e = jnp.zeros_like(w).at[0, 1].set(h)
        assert abs(float(jax.grad(by_weights)(w)[0, 1]) - float((by_weights(w + e) - by_weights(w - e)) / (2 * h))) < 1e-6


def test_a_deleted_state_or_args_leaf_is_named():
    """A trial: a donated (deleted) x or args leaf raised JAX's "Array has been deleted", naming neither."""
    model = cc.DiffusionModel(lambda x, t, a: x * a["w"], cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    runs = (lambda x, a: cj.chords(model, x, grid, cores=2, args=a), lambda x, a: cj.solve(model, x, grid, args=a),
            lambda x, a: cj.parallel(model, x, grid, cores=2, args=a), lambda x, a: cj.srds(model, x, grid, blocks=2, args=a))
    for run in runs:
        for which, name in (("x", r"x"), ("w", r"args\['w'\]")):
            x, a = jnp.ones((2, 3)), {"w": jnp.ones(())}
            (x if which == "x" else a["w"]).delete()
            with pytest.raises(ValueError, match=rf"^{name}: the array has been deleted"):
                run(x, a)


def test_a_model_subclass_that_changes_its_call_is_refused():
    """chords_jax compiles the model's function itself: a ``DiffusionModel`` subclass overriding ``_call``
    (clamping the outputs) was ignored, 0.16 off the core, silently (an extension trial)."""
    class Clamped(cc.DiffusionModel):
        def _call(self, xs, ts, workspace=None):
            return [np.clip(o, -0.1, 0.1) for o in super()._call(xs, ts, workspace)]

    model = Clamped(denoiser, SCHED, "x0")
    grid = cc.time_grid(SCHED, 4, "logsnr")
    for call in (functools.partial(cj.chords, cores=2), cj.solve, functools.partial(cj.parallel, cores=2)):
        with pytest.raises(TypeError, match=r"^model: Clamped overrides _call, which chords_jax does not call"):
            call(model, X, grid)
    cc.chords(model, X, grid, cores=2)  # the core calls it


def test_a_rule_deciding_on_arrival_alone_runs_under_jit():
    """The StopRule docstring says a rule with ``decides_on_values = False`` needs no read-back; under
    ``jax.jit`` only ``RunAll`` and ``StopAtCore`` were let through (an extension trial)."""
    class SecondOutput(cc.StopRule):
        decides_on_values = False

        def accept(self, outputs, coarse):
            return len(outputs) == 2

    model = cc.DiffusionModel(denoiser, SCHED, "x0")
    grid = cc.time_grid(SCHED, 8, "logsnr")
    got = jax.jit(lambda x: cj.chords(model, x, grid, cores=4, stop=SecondOutput()).x)(jnp.asarray(X))
    assert close(got, cj.chords(model, X, grid, cores=4, stop=cc.StopAtCore(2)).x)


def test_a_rule_unmet_short_of_the_sequential_output_warns_as_in_the_core():
    """A rule needing fewer outputs than the cores make and accepting none returns a faster core's
    output: the core warns StopNotMet (an extension trial found it silent), and so does this path, at
    this file's line, in one call and in chunks; a rule that needs every output returns core 0's, the
    sequential solution, without a warning."""
    import warnings

    from chords_core.stopping import StopNotMet

    model = cc.DiffusionModel(denoiser, SCHED, "x0")
    grid = cc.time_grid(SCHED, 8, "logsnr")
    for rule in (never_accepts(2), never_accepts(2, decides_on_values=False)):
        for call in (cc.chords, cj.chords):
            with pytest.warns(StopNotMet, match="not met") as seen:
                res = call(model, X, grid, cores=4, stop=rule)
            assert res.hits[-1].core != 0 and seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (cc.chords, cj.chords):
            assert call(model, X, grid, cores=4, stop=never_accepts(None)).hits[-1].core == 0


@pytest.mark.parametrize("scale", [1e-18, 1e19])
def test_the_default_stop_decides_as_the_cores_on_float32_states_of_extreme_units(scale):
    """A review: the per-sample RMS of the default stop summed a jax float32 array (x64 off) in float32,
    so at 1e-18 or 1e19 its squares left float32's range and chords_jax ran to core 0 where the core
    stopped at round 17; out-of-range sums are formed again on the host (``_backend.row_sq_host``)."""
    grid = np.linspace(0, 1, 21)
    x = (np.random.default_rng(0).standard_normal((2, 64)) * scale).astype(np.float32)
    with jax.enable_x64(False):  # (jax's default; this module turns it on)
        res = cj.chords(cc.VectorField(lambda t, y: -jnp.sin(y / scale) * scale * (1 + t)), jnp.asarray(x), grid,
                        "euler", cores=4)
    core = cc.chords(cc.VectorField(lambda t, y: -np.sin(y / scale) * scale * (1 + t)), x, grid, "euler", cores=4)
    assert res.rounds == core.rounds < 20 and res.stopped_by == core.stopped_by


def test_a_subclass_with_coefficients_of_its_own_does_not_reuse_the_plain_models_program():
    """A user trial: a ``DiffusionModel`` subclass overriding ``coefficients`` (a network predicting
    eps / 2) got the plain model's cached program where that ran first: 45 off the core, silently.
    The program's key holds such a subclass's coefficient values on the grid."""
    class HalfEps(cc.DiffusionModel):
        def coefficients(self, times, quantity):
            base = super().coefficients(times, quantity)
            return None if base is None else [(a, 2.0 * b) for a, b in base]

    sched, grid = cc.VP.cosine(), cc.time_grid(cc.VP.cosine(), 10)
    fn = lambda x, t: 0.5 * jnp.tanh(x + t[:, None])  # noqa: E731
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3)))
    plain, half = cc.DiffusionModel(fn, sched, "eps"), HalfEps(fn, sched, "eps")
    for run, ref in ((lambda m: cj.solve(m, x, grid, "dpmpp_2m"), "dpmpp_2m"),
                     (lambda m: cj.chords(m, x, grid, "dpmpp_2m", cores=4, stop=None).x, "dpmpp_2m"),
                     (lambda m: cj.srds(m, x, grid, "dpmpp_2m", blocks=2, tol=0).x, "dpmpp_2m"),
                     (lambda m: cj.parallel(m, x, grid, "ddim", cores=4, tol=0).x, "ddim")):
        run(plain)  # the plain model's program first
        assert np.abs(np.asarray(run(half)) - np.asarray(cc.solve(half, x, grid, ref))).max() < 1e-10


def test_a_vector_field_subclass_with_coefficients_of_its_own_does_not_reuse_the_plain_fields_program():
    """A user trial: a ``VectorField`` subclass scaling its field through ``coefficients`` (dy/dt = 2 f)
    got the plain field's cached program where that ran first, 0.195 off the core, silently: only a
    ``DiffusionModel`` subclass's coefficients were in the key."""
    class Doubled(cc.VectorField):
        def coefficients(self, times, quantity):
            return [(0.0, 2.0)] * len(times)

    def field(t, y):
        return -jnp.sin(y) * (1 + t)

    grid, x = np.linspace(0.0, 1.0, 9), np.random.default_rng(0).standard_normal(3)
    for run in (lambda m: cj.chords(m, x, grid, cores=3, stop=None).x, lambda m: cj.solve(m, x, grid),
                lambda m: cj.srds(m, x, grid, blocks=3, tol=0).x):
        run(cc.VectorField(field))  # the plain field's program first
        want = cc.solve(Doubled(lambda t, y: -np.sin(y) * (1 + t)), x, grid)
        assert np.abs(np.asarray(run(Doubled(field))) - want).max() < 1e-12


def test_solver_options_are_keyed_by_their_values():
    """A user trial: the compiled programs were cached by the options' reprs, so an array of over 1,000
    elements (printed with "...") or a 0-d array (printed to 8 digits) ran another value's program,
    and so did a function option freed and made anew at the same address: up to 0.87 off the core,
    silently. Arrays are keyed by their bytes, other objects by identity (the key holds them)."""
    from chords_core.solvers import Euler, SolverSpec, State

    class Gained(Euler):
        def __init__(self, model, times, gain=1.0, tag=None):  # (tag: carried, unused)
            super().__init__(model, times)
            self.gain, self.tag = gain, tag

        def step(self, state, qs, i, j):
            g = self.gain(i) if callable(self.gain) else float(np.asarray(self.gain).sum())
            return State(state.x + ((self.t[j] - self.t[i]) * g) * qs[0])

    name = "test_jax_gained"
    cc.register_solver(name, SolverSpec(Gained, stages=1, order=1, summary="Euler with its steps scaled"))
    try:
        model = cc.DiffusionModel(denoiser, SCHED, "eps")
        grid = cc.time_grid(SCHED, 8, "logsnr")
        x = np.random.default_rng(1).standard_normal((2, D))
        long_a, long_b = np.zeros(2000), np.zeros(2000)
        long_a[0], long_b[0], long_b[1000] = 1.0, 1.0, 0.5  # (one repr: "[1., 0., 0., ..., 0., 0., 0.]")

        def gains():
            yield from (np.array(0.5), np.array(0.5 + 3e-9), long_a, long_b)
            for c in (1.0, 0.5):  # each made after the one before is freed, maybe at its address
                yield lambda i, c=c: c

        def rel(a, b):
            return np.abs(np.asarray(a) - b).max() / np.abs(b).max()

        for gain in gains():
            kw = {"gain": gain}
            assert rel(cj.solve(model, x, grid, name, **kw), cc.solve(model, x, grid, name, **kw)) < 1e-13
            assert rel(cj.chords(model, x, grid, name, cores=3, stop=None, **kw).x,
                       cc.chords(model, x, grid, name, cores=3, stop=None, **kw).x) < 1e-13
            del gain, kw
        # a review: values equal but made anew (a dataclass, a named tuple, a set, a range) missed the cache at
        # every call (the plan replayed: 80-300 ms where it took 1-3 ms), and a jax PRNG key raised
        import collections
        import dataclasses

        @dataclasses.dataclass(frozen=True)
        class Tag:
            a: float
            weights: object = dataclasses.field(default=None, compare=False)

        pair = collections.namedtuple("pair", "a b")
        for make in (lambda: Tag(1.0, np.ones(3)), lambda: pair(1, 2.0), lambda: frozenset({"a", "b"}),
                     lambda: range(3), lambda: jax.random.key(0)):
            first, again = (cj.compile_plan(model, x.shape, x.dtype, grid, name, cores=3, stop=None, tag=make())[0]
                            for _ in range(2))
            assert first is again
        plan = cj.compile_plan(model, x.shape, x.dtype, grid, name, cores=3, stop=None, tag=Tag(1.0, np.ones(3)))[0]
        assert cj.compile_plan(model, x.shape, x.dtype, grid, name, cores=3, stop=None,
                               tag=Tag(1.0, np.zeros(3)))[0] is not plan  # (every field in the key, compare=False too)
    finally:
        cc.SOLVERS.pop(name, None)


@pytest.mark.parametrize("prediction, solver, dtype", [("eps", "dpmpp_2m", jnp.bfloat16), ("eps", "euler", jnp.float16),
                                                        ("v", "ddim", jnp.float16)])
def test_half_precision_rows_are_summed_in_float32(prediction, solver, dtype):
    """A trial: the compiled rows, each a folded combination whose large terms cancel, were summed in the
    state's half precision: 12.1 off a float64 reference at |x| up to 135 (bfloat16, eps, DPM-Solver++(2M),
    T = 50), 9.5x the core's error; float16 Euler 0.51 at |x| 144, v-DDIM 0.032 at |x| 2. Summed in float32
    and rounded once, within 4 ulps of the largest |x| (2.4, 0.29, 0.0044)."""
    w = np.random.default_rng(1).standard_normal((D, D)) / np.sqrt(D)
    x = np.random.default_rng(0).standard_normal((4, D))
    grid = cc.time_grid(SCHED, 50)
    wd = jnp.asarray(w, dtype)

    def net(x, t):
        return jnp.tanh(x @ wd + t[:, None]) * 0.5 + 0.2 * x

    ref = cc.solve(cc.DiffusionModel(lambda x, t: np.asarray(net(jnp.asarray(x, dtype), jnp.asarray(t, dtype)),
                                                             np.float64), SCHED, prediction), x, grid, solver)
    got = cj.chords(cc.DiffusionModel(net, SCHED, prediction), jnp.asarray(x, dtype), grid, solver, cores=4, stop=None).x
    ulp = 2.0 ** (np.floor(np.log2(np.max(np.abs(ref)))) - jnp.finfo(dtype).nmant)
    assert got.dtype == dtype and np.max(np.abs(np.asarray(got, np.float64) - ref)) <= 4 * ulp


def test_exact_times_reach_the_network_in_float64_as_in_the_core():
    """A user trial: ``fn.exact_times = True`` was ignored (times in the state's dtype, bfloat16 here:
    0.2 off the core, silently); the compiled paths now pass float64 (x64 on) as the core does."""
    sched = cc.RectifiedFlow()
    grid = cc.time_grid(sched, 60)
    table = jnp.asarray(np.random.default_rng(1).standard_normal(1000) * 3)
    seen = []

    def fn(x, t):  # a network that looks its timestep up in a table
        seen.append(t.dtype)
        return (table[jnp.round(t.astype(jnp.float64) * 999).astype(jnp.int32)][:, None] - x).astype(x.dtype)

    fn.exact_times = True
    model = cc.DiffusionModel(fn, sched, "flow")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4)), jnp.bfloat16)
    core = cc.chords(model, x, grid, "euler", cores=4, stop=None)
    seen.clear()
    # (within 4 bfloat16 ulps of the core's, 0.0625 at |x| < 4; bit for bit before the compiled rows were
    # summed in float32: the core rounds each operation to bfloat16)
    ulps4 = 4 * 2.0 ** (np.floor(np.log2(np.max(np.abs(np.asarray(core.x, np.float32))))) - 7)
    for got in (cj.chords(model, x, grid, "euler", cores=4, stop=None).x, cj.solve(model, x, grid, "euler"),
                cj.parallel(model, x, grid, "euler", cores=4, tol=0).x):
        assert np.max(np.abs(np.asarray(got, np.float32) - np.asarray(core.x, np.float32))) <= ulps4
    assert set(seen) == {jnp.dtype(jnp.float64)}
    seen.clear()  # a VectorField's f alike, as the core's batched call gives it
    field = lambda t, y: (jnp.sin(37.0 * jnp.asarray(t, jnp.float64)) - y).astype(y.dtype)  # noqa: E731
    ff = lambda t, y: seen.append(t.dtype) or field(t, y)  # noqa: E731
    ff.exact_times = True
    xf = jnp.asarray(np.linspace(-1, 1, 3), jnp.float32)
    got = cj.chords(cc.VectorField(ff), xf, grid, "heun", cores=4, stop=None).x
    assert set(seen) == {jnp.dtype(jnp.float64)}
    ref = np.asarray(cc.solve(cc.VectorField(field), xf, grid, "heun"))  # (compiled: to an ulp of float32)
    assert np.abs(np.asarray(got) - ref).max() <= 2 * np.spacing(np.abs(ref).max())


def test_a_deferred_output_check_compiles_on_a_cold_cache_and_bad_arguments_as_the_cores():
    """A user trial: ``check_outputs="deferred"`` failed with ``NonLinearOperation`` where no program was
    cached yet (the symbolic replay ran the deferred check on symbols); ``cores=jnp.asarray(4)`` raised
    "unhashable type" (it runs as cores=4 now); an empty batch divided by zero in ``parallel``."""
    sched = cc.RectifiedFlow()
    grid = cc.time_grid(sched, 8)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    fn = lambda x, t: jnp.tanh(x) - x  # noqa: E731
    calls = (lambda m, y: cj.chords(m, y, grid, "euler", cores=2, stop=None).x, lambda m, y: cj.solve(m, y, grid),
             lambda m, y: cj.srds(m, y, grid, "euler", blocks=2).x)
    for call in calls:
        cj.clear_cache()
        got = call(cc.DiffusionModel(fn, sched, "flow", check_outputs="deferred"), x)
        assert np.array_equal(np.asarray(got), np.asarray(call(cc.DiffusionModel(fn, sched, "flow"), x)))
    model = cc.DiffusionModel(fn, sched, "flow")
    # (a 0-d jax integer is an integer since: the run of cores=4, ``test_jax_integer_scalars_are_integers``)
    assert cj.chords(model, x, grid, "euler", cores=jnp.asarray(4)).rounds == cj.chords(model, x, grid, "euler",
                                                                                        cores=4).rounds
    empty = jnp.zeros((0, 3))
    field_ = cc.VectorField(lambda t, y: -y, batched=True)
    for scale in ("level", "error"):
        a = cc.parallel(field_, np.zeros((0, 3)), grid, "euler", cores=3, scale=scale)
        b = cj.parallel(field_, empty, grid, "euler", cores=3, scale=scale)
        assert b.x.shape == (0, 3) and (b.rounds, b.nfe) == (a.rounds, a.nfe)


def test_a_subclass_whose_coefficients_hold_nan_hits_the_program_cache_and_empty_samples_are_as_the_cores():
    """A review: a subclass's coefficient values went into the cache key as floats, and a nan there (VP
    with v prediction at t = 0) is unequal to itself, so the key never matched and every call replayed
    and lowered its program again; samples of no elements, (0,) and (B, 0), divided the noise weights
    by zero in the window methods (12 rounds where the core takes 3)."""
    from chords_jax import api

    class Same(cc.DiffusionModel):
        def coefficients(self, times, quantity):
            return super().coefficients(times, quantity)

    sched = cc.VP.linear()
    grid = cc.time_grid(sched, 20)
    model = Same(lambda x, t: 0.5 * x, sched, "v")
    assert api._model_key(model, grid) == api._model_key(model, grid)
    x = jnp.ones((2, 4))
    cj.chords(model, x, grid, "euler", cores=4, stop=None)
    programs = len(api._PROGRAMS)
    cj.chords(model, x, grid, "euler", cores=4, stop=None)
    assert len(api._PROGRAMS) == programs  # (a hit: nothing replayed)
    flow = cc.DiffusionModel(lambda x, t: -x, cc.RectifiedFlow(), "flow")
    g = cc.time_grid(cc.RectifiedFlow(), 12)
    for shape in [(0,), (4, 0)]:
        z = np.zeros(shape, np.float32)
        for method in ("paradigms", "cascade"):
            core = cc.parallel(flow, z, g, "euler", cores=4, method=method)
            got = cj.parallel(flow, jnp.asarray(z), g, "euler", cores=4, method=method)
            assert (got.rounds, got.nfe) == (core.rounds, core.nfe), (shape, method)


def test_jax_integer_scalars_are_integers():
    """A user trial: ``cores=jnp.int32(4)``, ``blocks=jnp.int32(4)`` and ``init=jnp.array([0, 2, 4, 8])``
    were refused as "must be an integer" (showing an int32), here and in the core; they are the
    Python ints' runs now (a 0-d integer array of any library is an integer; bool and float are not)."""
    model = cc.DiffusionModel(denoiser, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 12)
    pairs = [(lambda k, i: cj.chords(model, X, grid, "euler", cores=k, init=i), (4, [0, 2, 4, 8])),
             (lambda k, i: cj.srds(model, X, grid, "euler", blocks=k), (4, None)),
             (lambda k, i: cc.chords(model, X, grid, "euler", cores=k, init=i), (4, [0, 2, 4, 8]))]
    for run, (k, i) in pairs:
        a, b = run(k, i), run(jnp.int32(k), None if i is None else jnp.array(i))
        assert (a.rounds, a.nfe) == (b.rounds, b.nfe) and np.array_equal(np.asarray(a.x), np.asarray(b.x))
    for bad in (jnp.array(True), jnp.float32(4.0), jnp.array([4])):
        with pytest.raises(ValueError, match="^cores must be an integer"):
            cc.chords(model, X, grid, "euler", cores=bad)
    # (a review: a traced one under jax.jit raised jax's ConcretizationTypeError, naming nothing)
    with pytest.raises(ValueError, match=r"^cores must be an integer known when the call is made, .*static argument"):
        jax.jit(lambda k: cj.chords(model, X, grid, "euler", cores=k).x)(jnp.int32(2))
    assert cc.make_plan(jnp.array(12), jnp.array([0, 4])) is cc.make_plan(12, [0, 4])  # (an unhashable cache key)


class _Scaled:
    """A guidance-style wrapper: its ``scale`` attribute and its weights ``w`` are read when traced;
    ``traces`` counts its own traces (set during them: the function's own business)."""

    def __init__(self, scale, w):
        self.scale, self.w, self.traces = scale, w, 0

    def __call__(self, x, t):
        self.traces += 1
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.tanh(x @ self.w + t[:, None]) * self.scale + 0.2 * x


def test_a_value_the_function_reads_set_anew_between_calls_is_seen():
    """A researcher's trial: a wrapper's ``scale`` changed between calls kept the first value's program
    (3.21 off the core, silently). Now what a function read when traced is compared before each lookup:
    a number, an array or an object set anew drops the function's programs (every kind: the window
    methods', a rule's chunked run), with a warning, and it compiles again; what its own trace set (a
    counter) is no change, and an unchanged function compiles nothing."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    net = _Scaled(0.5, jnp.asarray(_W))
    model = cc.DiffusionModel(net, SCHED, "eps")
    x = jnp.asarray(X)

    def core(**kw):
        ref = _Scaled(net.scale, np.asarray(net.w))
        return cc.chords(cc.DiffusionModel(ref, SCHED, "eps"), X, grid, "euler", cores=3, **kw)

    def window():
        ref = _Scaled(net.scale, np.asarray(net.w))
        return cc.parallel(cc.DiffusionModel(ref, SCHED, "eps"), X, grid, "euler", cores=3, method="paradigms")

    cj.clear_cache()
    rule = cc.StopWhenConverged(1e-3)
    for _ in range(2):  # the second round: cached, nothing compiled, no warning
        n = cj.compilations()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            same_result(cj.chords(model, x, grid, "euler", cores=3, stop=None), core(stop=None))
            assert close(cj.chords(model, x, grid, "euler", cores=3, stop=rule).x, core(stop=rule).x)
            assert close(cj.parallel(model, x, grid, "euler", cores=3, method="paradigms").x, window().x)
        assert (cj.compilations() > n) == (_ == 0)
    for change in (lambda: setattr(net, "scale", 0.9), lambda: setattr(net, "w", jnp.asarray(_W.T))):
        change()
        with pytest.warns(UserWarning, match=r"reads from its object, closure or defaults .* set anew .* args="):
            got = cj.chords(model, x, grid, "euler", cores=3, stop=None)
        same_result(got, core(stop=None))
        with warnings.catch_warnings():  # the other programs of the function were dropped with it: compiled anew
            warnings.simplefilter("error")
            assert close(cj.chords(model, x, grid, "euler", cores=3, stop=rule).x, core(stop=rule).x)
            assert close(cj.parallel(model, x, grid, "euler", cores=3, method="paradigms").x, window().x)
            n = cj.compilations()
            same_result(cj.chords(model, x, grid, "euler", cores=3, stop=None), core(stop=None))
            assert cj.compilations() == n
    # a closure variable rebound; an equal number set again is no change
    def closed(v):
        def fn(x, t):
            return jnp.tanh(x @ _W + t[:, None]) * box

        def set_(w):
            nonlocal box
            box = w

        box = v
        return fn, set_

    fn, set_ = closed(0.3)
    m2 = cc.DiffusionModel(fn, SCHED, "eps")
    first = np.asarray(cj.solve(m2, x, grid, "euler"))
    set_(0.6)
    with pytest.warns(UserWarning, match="set anew"):
        second = np.asarray(cj.solve(m2, x, grid, "euler"))
    assert close(second, cc.solve(cc.DiffusionModel(lambda x, t: np.tanh(x @ _W + t[:, None]) * 0.6, SCHED, "eps"),
                                  X, grid, "euler"))
    assert not close(first, second)
    set_(float("0.6"))  # (another float object, equal)
    n = cj.compilations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(cj.solve(m2, x, grid, "euler")), second)
    assert cj.compilations() == n
    cj.clear_cache()


class _BoundMethod:
    """What equinox's ``BoundMethod`` is to a module's method: an object made anew at each attribute
    access, holding ``__func__`` and ``__self__``, with an equality of its own (a dataclass's: by fields)
    and no hash (a field holds an array)."""

    def __init__(self, func, obj):
        self.__func__, self.__self__ = func, obj

    def __call__(self, *a):
        return self.__func__(self.__self__, *a)

    def __eq__(self, other):
        return type(other) is _BoundMethod and (other.__func__, other.__self__) == (self.__func__, self.__self__)

    __hash__ = None  # type: ignore[assignment]


class _MethodOf:
    """A descriptor giving a ``_BoundMethod`` per access (equinox's way for a module's methods)."""

    def __init__(self, func):
        self.func = func

    def __get__(self, obj, cls=None):
        return self.func if obj is None else _BoundMethod(self.func, obj)


class _Module:
    def __init__(self, w):
        self.w = w

    def _denoise(self, x, t):
        return jnp.tanh(x @ self.w + t[:, None])

    denoise = _MethodOf(_denoise)


def test_a_bound_method_object_made_anew_at_each_access_compiles_once():
    """A review: an equinox module's method (``net.denoise``, a new ``BoundMethod`` at each access) was
    keyed by that object's identity, so every call traced and compiled again (about 0.5 s each) and the
    cache filled with copies. Now it is keyed, and its reads watched, as the bound method it stands for:
    one compilation for repeated calls, none of them warned; weights set anew on its object are still
    seen (a warning, the new result)."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    net = _Module(jnp.asarray(_W))
    assert net.denoise is not net.denoise
    x = jnp.asarray(X)

    def core(w):
        return cc.solve(cc.DiffusionModel(lambda x, t: np.tanh(x @ w + t[:, None]), SCHED, "eps"), X, grid, "euler")

    cj.clear_cache()
    n = cj.compilations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            got = cj.chords(cc.DiffusionModel(net.denoise, SCHED, "eps"), x, grid, "euler", cores=3, stop=None)
            assert close(got.x, core(_W))
    assert cj.compilations() == n + 1
    net.w = jnp.asarray(_W.T)
    with pytest.warns(UserWarning, match="set anew"):
        got = cj.chords(cc.DiffusionModel(net.denoise, SCHED, "eps"), x, grid, "euler", cores=3, stop=None)
    assert close(got.x, core(_W.T))
    other = _Module(jnp.asarray(_W))  # another object: its own program
    n = cj.compilations()
    assert close(cj.chords(cc.DiffusionModel(other.denoise, SCHED, "eps"), x, grid, "euler", cores=3, stop=None).x,
                 core(_W))
    assert cj.compilations() == n + 1
    cj.clear_cache()


@jax.tree_util.register_pytree_node_class
class _Layer:
    """A module as equinox and flax nnx make them: a registered pytree, here nested ``depth`` levels deep,
    its weight at the bottom."""

    def __init__(self, inner):
        self.inner = inner

    def tree_flatten(self):
        return (self.inner,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def __call__(self, x, t):
        w = self.inner
        while isinstance(w, _Layer):
            w = w.inner
        return jnp.tanh(x @ w + t[:, None])

    def bottom(self):
        layer = self
        while isinstance(layer.inner, _Layer):
            layer = layer.inner
        return layer


def _apply(net, x, t, *, scale=1.0):
    return net(x, t) * scale


class _Partial:
    """What equinox's ``Partial`` is (an ``eqx.filter_jit`` method at each access): its whole state is
    ``func``, ``args`` and ``keywords``."""

    def __init__(self, func, *args, **keywords):
        self.func, self.args, self.keywords = func, args, keywords

    def __call__(self, *a):
        return self.func(*self.args, *a, **self.keywords)


def test_weights_set_anew_deep_in_a_pytree_module_and_partials_made_anew():
    """A trial with flax nnx and equinox: (1) ``nnx.update`` of a block's kernel five levels of modules
    down, below the watch's eight hops, kept the old program, 0.33 off the core, silently; a module's
    leaves are now watched however deep. (2) A partial application made anew at each call (an
    ``eqx.filter_jit`` method is an equinox ``Partial`` at each access; ``functools.partial(apply, net)``)
    compiled again at every call (0.66 s each): now keyed by its function and arguments, one
    compilation, while another argument (an object by identity, a number by value) is another program."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)

    def core(w, scale=1.0):
        return cc.solve(cc.DiffusionModel(lambda x, t: np.tanh(x @ w + t[:, None]) * scale, SCHED, "eps"), X, grid,
                        "euler")

    cj.clear_cache()
    net = jnp.asarray(_W)
    for _ in range(12):
        net = _Layer(net)
    model = cc.DiffusionModel(net, SCHED, "eps")
    assert close(cj.solve(model, x, grid, "euler"), core(_W))
    net.bottom().inner = jnp.asarray(_W.T)  # set anew, 12 levels down
    with pytest.warns(UserWarning, match="set anew"):
        got = cj.solve(model, x, grid, "euler")
    assert close(got, core(_W.T))
    for make in (lambda *a, **k: functools.partial(_apply, *a, **k), lambda *a, **k: _Partial(_apply, *a, **k)):
        n = cj.compilations()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                assert close(cj.solve(cc.DiffusionModel(make(net), SCHED, "eps"), x, grid, "euler"), core(_W.T))
            assert cj.compilations() == n + 1
            assert close(cj.solve(cc.DiffusionModel(make(net, scale=0.5), SCHED, "eps"), x, grid, "euler"),
                         core(_W.T, 0.5))
            assert close(cj.solve(cc.DiffusionModel(make(net, scale=0.25), SCHED, "eps"), x, grid, "euler"),
                         core(_W.T, 0.25))
            other = _Layer(jnp.asarray(_W))
            assert close(cj.solve(cc.DiffusionModel(make(other), SCHED, "eps"), x, grid, "euler"), core(_W))
            assert cj.compilations() == n + 4
    cj.clear_cache()


class _Method:
    def __init__(self, w):
        self.w = w

    def f(self, x, t):
        return jnp.tanh(x @ self.w + t[:, None])


def _scaled_tanh(w, x, t, scale=1.0):
    return jnp.tanh(x @ w + t[:, None]) * scale


def test_keys_by_parts_leave_out_nothing_the_call_reads():
    """A review of keying bound-method and partial objects by their parts: each of these shared one
    program with another that computes something else (up to 303 off the core, silently), or no
    longer saw a value set anew, or warned at every call; now each is its own program, a change is
    seen, and one made anew with the same parts compiles once without a warning."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)
    w = jnp.asarray(_W)

    def core(scale=1.0, weights=_W):
        return cc.solve(cc.DiffusionModel(lambda x, t: np.tanh(x @ weights + t[:, None]) * scale, SCHED, "eps"),
                        X, grid, "euler")

    def run(fn):
        return cj.solve(cc.DiffusionModel(fn, SCHED, "eps"), x, grid, "euler")

    class Scaled(functools.partial):  # a partial subclass holding more, in a slot
        __slots__ = ("scale",)

        def __call__(self, *a):
            return self.scale * super().__call__(*a)

    class Partial:  # a partial-like object whose call reads a class attribute
        scale = 1.0

        def __init__(self, func, *args, **keywords):
            self.func, self.args, self.keywords = func, args, keywords

        def __call__(self, x, t):
            return self.scale * self.func(*self.args, x, t, **self.keywords)

    class Guided:  # forwards unknown attributes (__func__, __self__) to a bound method
        def __init__(self, inner, scale):
            self.inner, self.scale = inner, scale

        def __call__(self, x, t):
            return self.scale * self.inner(x, t)

        def __getattr__(self, name):
            return getattr(self.__dict__["inner"], name)

    class Bound:  # stands for a bound method
        def __init__(self, func, obj):
            self.__func__, self.__self__ = func, obj

        def __call__(self, x, t):
            return self.__func__(self.__self__, x, t)

    class Bound3(Bound):
        def __call__(self, x, t):
            return 3.0 * self.__func__(self.__self__, x, t)

    def kw(x, t, **k):  # folds its keywords in their order
        s = 0.0
        for v in k.values():
            s = 2.0 * s + v
        return jnp.tanh(x @ w + t[:, None]) * s

    def listed(scales, x, t):
        return jnp.tanh(x @ w + t[:, None]) * scales[0]

    def signed(s, x, t):
        return jnp.tanh(x @ w + t[:, None]) * jnp.copysign(1.0, jnp.real(s) if isinstance(s, float) else s.real)

    cj.clear_cache()
    net = _Method(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scale in (1.0, 3.0):
            p = Scaled(_scaled_tanh, w)
            p.scale = scale
            assert close(run(p), core(scale))
            assert close(run(Guided(net.f, scale)), core(scale))
        assert close(run(Bound(_Method.f, net)), core())
        assert close(run(Bound3(_Method.f, net)), core(3.0))
        assert close(run(functools.partial(kw, m=1.0, a=2.0)), core(4.0))
        assert close(run(functools.partial(kw, a=2.0, m=1.0)), core(5.0))
        scales = [1.0]
        assert close(run(functools.partial(listed, scales)), core())
        scales[0] = 3.0
        assert close(run(functools.partial(listed, scales)), core(3.0))
        assert close(run(functools.partial(signed, complex(0.0, 1.0))), core())
        assert close(run(functools.partial(signed, complex(-0.0, 1.0))), core(-1.0))
    p = Partial(_scaled_tanh, w)
    assert close(run(p), core())
    Partial.scale = 3.0
    with pytest.warns(UserWarning, match="set anew"):
        assert close(run(p), core(3.0))
    holder = _Method(w)

    def through(h, x, t):
        return jnp.tanh(x @ h.w + t[:, None])

    wrapped = functools.update_wrapper(functools.partial(through, holder), through)  # a partial with attributes
    assert close(run(wrapped), core())
    holder.w = jnp.asarray(_W.T)
    with pytest.warns(UserWarning, match="set anew"):
        assert close(run(wrapped), core(weights=_W.T))
    n = cj.compilations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):  # a partial of a bound-method object made anew each time
            assert close(run(functools.partial(Bound(_Method.f, net))), core())
    assert cj.compilations() == n + 1
    cj.clear_cache()


def _tanh_solve(grid, scale=1.0):
    """The core's Euler solve of tanh(x W + t) * scale on X: the partial-keying tests' reference."""
    return cc.solve(cc.DiffusionModel(lambda x, t: np.tanh(x @ _W + t[:, None]) * scale, SCHED, "eps"), X, grid,
                    "euler")


def test_one_value_key_for_options_and_partial_arguments():
    """``keys.value_key`` keys a solver's options and a partial's arguments alike (two near-copies
    before): containers by their items, arrays by value in options and by identity in a partial (its
    weights: ``reads`` watches them); a partial's named tuple or frozen dataclass argument made anew
    at each call compiles once (by identity before: at every call), a dict argument's order and a
    list subclass's own attributes are part of the program, and a complex -0.0 is not 0.0 (an
    option's was, and a complex nan never matched itself)."""
    import collections

    from chords_jax.keys import value_key

    assert value_key(complex(-0.0, 1.0)) != value_key(complex(0.0, 1.0))
    assert value_key(complex(np.nan, 0.0)) == value_key(complex(np.nan, 0.0))
    a = np.arange(3.0)
    assert value_key([a]) == value_key([a.copy()]) and value_key([a], arrays=False) != value_key([a.copy()], arrays=False)
    assert value_key({"a": 1, "b": 2}) != value_key({"b": 2, "a": 1})

    class Tagged(list):
        scale = 1.0

    assert isinstance(value_key(Tagged([1.0])), ByIdentity)
    grid = cc.time_grid(SCHED, 6, "logsnr")
    x, w = jnp.asarray(X), jnp.asarray(_W)
    core = functools.partial(_tanh_solve, grid)

    def run(fn):
        return cj.solve(cc.DiffusionModel(fn, SCHED, "eps"), x, grid, "euler")

    Scales = collections.namedtuple("Scales", "a b")

    @dataclasses.dataclass(frozen=True)
    class Config:
        scale: float

    def by_tuple(s, x, t):
        return jnp.tanh(x @ w + t[:, None]) * (s.a - s.b)

    def by_config(c, x, t):
        return jnp.tanh(x @ w + t[:, None]) * c.scale

    def by_dict(d, x, t):
        s = 0.0
        for v in d.values():
            s = 2.0 * s + v
        return jnp.tanh(x @ w + t[:, None]) * s

    def by_tagged(v, x, t):
        return jnp.tanh(x @ w + t[:, None]) * v[0] * v.scale

    cj.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for make, scale in ((lambda: functools.partial(by_tuple, Scales(4.0, 1.0)), 3.0),
                            (lambda: functools.partial(by_config, Config(2.0)), 2.0)):
            n = cj.compilations()
            for _ in range(3):
                assert close(run(make()), core(scale))
            assert cj.compilations() == n + 1
        assert close(run(functools.partial(by_dict, {"m": 1.0, "a": 2.0})), core(4.0))
        assert close(run(functools.partial(by_dict, {"a": 2.0, "m": 1.0})), core(5.0))
        one, three = Tagged([1.0]), Tagged([1.0])
        three.scale = 3.0
        assert close(run(functools.partial(by_tagged, one)), core())
        assert close(run(functools.partial(by_tagged, three)), core(3.0))
    cj.clear_cache()


def test_a_partial_in_a_closure_is_watched_whole_and_state_a_model_updates_is_not_its_key():
    """A review of ``keys.value_key``'s first version: a partial reached through the model's closure or
    object is in no key, and its arguments went unwatched (a keyword set anew in place: 0.50 off the
    core, silently); a plain dataclass argument the model updates itself (a counter at trace time) was
    keyed by its values and compiled at every call."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    x, w = jnp.asarray(X), jnp.asarray(_W)
    core = functools.partial(_tanh_solve, grid)

    def act(x, t, scale):
        return jnp.tanh(x @ w + t[:, None]) * scale

    @dataclasses.dataclass
    class Log:
        traces: int = 0

    def counted(log, x, t):
        log.traces += 1  # (at trace time)
        return jnp.tanh(x @ w + t[:, None])

    cj.clear_cache()
    inner = functools.partial(act, scale=0.5)
    model = cc.DiffusionModel(lambda x, t: inner(x, t), SCHED, "eps")
    assert close(cj.solve(model, x, grid, "euler"), core(0.5))
    inner.keywords["scale"] = 2.0
    with pytest.warns(UserWarning, match="set anew"):
        assert close(cj.solve(model, x, grid, "euler"), core(2.0))
    log = Log()
    n = cj.compilations()
    for _ in range(3):
        assert close(cj.solve(cc.DiffusionModel(functools.partial(counted, log), SCHED, "eps"), x, grid, "euler"),
                     core())
    assert cj.compilations() == n + 1
    cj.clear_cache()


def test_a_watch_takes_at_most_max_leaves_of_pytrees():
    """A review: a module of 200,000 arrays cost 256 ms a watch (twice a call); the leaves watched are
    bounded by ``reads.MAX_LEAVES``."""
    from chords_jax import reads

    net = _Layer([jnp.zeros(()) for _ in range(reads.MAX_LEAVES + 500)])
    got = reads.watch(net)
    assert sum(1 for _, key in got if isinstance(key, tuple) and "leaf" in key) == reads.MAX_LEAVES


@jax.tree_util.register_pytree_node_class
class _SpentOnce:
    """What equinox's ``nn.State`` is: a pytree that may be read once; reading it again raises (as
    equinox's "Attempted to use old state")."""

    def __init__(self, value):
        self.value, self.spent = value, False

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def read(self):
        if self.spent:
            raise ValueError("Attempted to use old state")
        self.spent = True
        return self.value


def test_args_spent_once_used_and_a_type_error_names_the_operands():
    """A trial: equinox's stateful pattern (``nn.State`` in ``args``, spent once used) ran with ``solve``
    and a one-segment run but failed in a run of several segments (every segment's trace got the same
    object): each segment now traces with its own copy. An ``args`` leaf of the wrong shape raised jax's
    bare ``TypeError``, naming neither ``args`` nor the model: now its shapes are named."""
    grid = cc.time_grid(SCHED, 12, "logsnr")
    x = jnp.asarray(X)

    def fn(x, t, args):
        return jnp.tanh(x @ args.read() + t[:, None])

    model = cc.DiffusionModel(fn, SCHED, "eps")
    ref = cc.chords(cc.DiffusionModel(lambda x, t: np.tanh(x @ _W + t[:, None]), SCHED, "eps"), X, grid, "heun",
                    cores=3, stop=None)
    prog, _ = cj.compile_plan(model, x.shape, x.dtype, grid, "heun", cores=3, stop=None)
    assert len(prog.segments) > 1
    same_result(cj.chords(model, x, grid, "heun", cores=3, stop=None, args=_SpentOnce(jnp.asarray(_W))), ref)
    bad = cc.DiffusionModel(lambda x, t, w: x @ w["w"], SCHED, "eps")
    with pytest.raises(TypeError, match=r"model: .* called with x \(\d+, 5\) float\d+, t .* args a dict of leaves "
                                        r"\[\(3, 3\) float32\]: dot_general"):
        cj.chords(bad, x, grid, "euler", cores=2, args={"w": jnp.ones((3, 3), jnp.float32)})


def test_what_a_trace_or_a_run_sets_is_no_change_and_deeper_values_are_seen():
    """A trial of the read check: two functions sharing one network whose trace counts itself recompiled
    each other's programs at every call, with a warning; a counter a jax.debug.callback advances
    recompiled every call; a weight set anew on a layer held in a list, three objects below a bound
    method, a class attribute, or a pytree's static field was not seen; a dead weakref.proxy on the
    object raised ReferenceError. Now each compiles once, and each change is seen."""
    import dataclasses
    import weakref

    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)

    def check(fn, change, want_compiles=1):
        """fn compiled once, run again without compiling; after change() compiled again, with a warning,
        and equal to the numpy core's run of the same function."""
        model = cc.DiffusionModel(fn, SCHED, "eps")
        n = cj.compilations()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cj.solve(model, x, grid, "euler")
            cj.solve(model, x, grid, "euler")
        assert cj.compilations() - n == want_compiles
        change()
        with pytest.warns(UserWarning, match="set anew"):
            got = np.asarray(cj.solve(model, x, grid, "euler"))
        ref = cc.solve(cc.DiffusionModel(lambda y, t: np.asarray(fn(jnp.asarray(y), jnp.asarray(t))), SCHED, "eps"),
                       X, grid, "euler")
        assert close(got, ref)

    class Layer:
        def __init__(self, w):
            self.w = jnp.asarray(w)

    class Stack:
        scale = 0.5  # (a class attribute its call reads)

        def __init__(self):
            self.layers, self.traces, self.nfe = [Layer(_W), Layer(_W.T)], 0, 0
            self.owner = None

        def count(self):
            self.nfe += 1

        def __call__(self, y, t, label=0.0):
            self.traces += 1
            jax.debug.callback(self.count)
            for layer in self.layers:
                y = jnp.tanh(y @ layer.w)
            return (y + t[:, None] + label) * self.scale

    cj.clear_cache()
    net = Stack()

    class Owner:
        pass

    owner = Owner()
    net.owner = weakref.proxy(owner)
    del owner  # (a dead proxy on the object: watched, not read)
    check(net, lambda: setattr(net.layers[0], "w", jnp.asarray(-_W)))
    check(net, lambda: setattr(Stack, "scale", 0.9), want_compiles=0)
    # two functions sharing the network (its trace counts itself): each compiles once, no warning
    cond, uncond = (lambda y, t: net(y, t, 1.0)), (lambda y, t: net(y, t, 0.0))
    n = cj.compilations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            for f in (cond, uncond):
                cj.solve(cc.DiffusionModel(f, SCHED, "eps"), x, grid, "euler")
    assert cj.compilations() - n == 2

    class Wrap:  # three objects below a bound method
        def __init__(self, inner, k):
            self.model, self.k = inner, k

        def __call__(self, y, t):
            return self.model(y, t) * self.k

    deep = Wrap(Wrap(Stack(), 0.7), 0.5)
    check(deep.__call__, lambda: setattr(deep.model.model.layers[1], "w", jnp.asarray(0.5 * _W)))

    @dataclasses.dataclass
    class Conf:
        w: jax.Array
        scale: float

    jax.tree_util.register_dataclass(Conf, data_fields=["w"], meta_fields=["scale"])
    box = {"conf": Conf(jnp.asarray(_W), 0.5)}
    conf = box["conf"]

    def fn(y, t):
        return jnp.tanh(y @ conf.w + t[:, None]) * conf.scale

    check(fn, lambda: setattr(conf, "scale", 0.9))  # (a static field: its value, not a leaf)
    cj.clear_cache()


def test_the_read_check_after_a_second_trial():
    """A second trial of the read check: weights updated in place on a variable object five hops below a
    lambda (flax nnx's kernel[...] = ...), a head built lazily by the first trace then changed, a lazy
    init from None then set by the user, and a class's tuple, staticmethod or method swapped were not
    seen; objects that raise when walked (a list subclass whose iteration raises, a float subclass whose
    __eq__ raises, lists nested 3,000 deep) crashed the call. Now each change is seen, and a function
    whose objects cannot be walked runs unwatched."""
    from chords_jax import reads

    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)

    def run(fn):
        return np.asarray(cj.solve(cc.DiffusionModel(fn, SCHED, "eps"), x, grid, "euler"))

    def seen(fn, change):
        run(fn)
        change()
        with pytest.warns(UserWarning, match="set anew"):
            got = run(fn)
        ref = cc.solve(cc.DiffusionModel(lambda y, t: np.asarray(fn(jnp.asarray(y), jnp.asarray(t))), SCHED, "eps"),
                       X, grid, "euler")
        assert close(got, ref)

    class Variable:  # (as nnx's: its value replaced in place through __setitem__)
        def __init__(self, v):
            self.raw = v

        def __setitem__(self, idx, v):
            self.raw = self.raw.at[idx].set(v)

    class Linear:
        def __init__(self, w):
            self.kernel = Variable(w)

    class Net:
        act = staticmethod(jnp.tanh)
        shift = (0.0, 0.1)

        def __init__(self):
            self.blocks = [Linear(jnp.asarray(_W)), Linear(jnp.asarray(_W.T))]
            self.head = None
            self.scale = None

        def __call__(self, y, t):
            if self.head is None:
                self.head = Linear(np.eye(D))  # (built by the first trace, of numpy: no tracer kept)
            if self.scale is None:
                self.scale = 0.5
            for b in self.blocks:
                y = self.act(y @ b.kernel.raw)
            return (y @ self.head.kernel.raw + t[:, None] + self.shift[1]) * self.scale

    cj.clear_cache()
    net = Net()
    fn = (lambda n: (lambda y, t: n(y, t)))(net)
    seen(fn, lambda: net.blocks[0].kernel.__setitem__((0, 0), 3.0))
    seen(fn, lambda: setattr(net.head.kernel, "raw", np.eye(D) * 0.5))
    seen(fn, lambda: setattr(net, "scale", 0.9))
    seen(fn, lambda: setattr(Net, "act", staticmethod(jnp.sin)))
    seen(fn, lambda: setattr(Net, "shift", (0.0, 0.3)))

    class Raising(list):
        def __iter__(self):
            raise RuntimeError("no iteration here")

    class OddFloat(float):
        def __eq__(self, other):
            raise RuntimeError("no comparison here")

        __hash__ = float.__hash__

    deep: list = []
    for _ in range(3000):
        deep = [deep]
    for odd in (Raising([1.0]), OddFloat(0.5), deep):
        def f(y, t, odd=odd):
            return jnp.tanh(y @ _W + t[:, None])

        n = cj.compilations()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(2):
                run(f)
        assert cj.compilations() - n == 1
    many = [object() for _ in range(10**5)]  # (each an entry: the walk stops at MAX_VISITS values)
    assert reads.MAX_VISITS // 2 < len(reads.watch(lambda y, t, many=many: y)) <= reads.MAX_VISITS
    cj.clear_cache()


def test_what_a_run_sets_or_adds_is_no_change_and_the_warning_points_at_the_call():
    """A review: a callback that sets an attribute from None, or appends arrays to a log, during the
    run was taken for a change at the next call (compiled again, warned); and the warning pointed at
    chords_jax's own line, so Python showed it once per process."""
    grid = cc.time_grid(SCHED, 6, "logsnr")
    x = jnp.asarray(X)

    class Logged:
        def __init__(self):
            self.w, self.last, self.log = jnp.asarray(_W), None, []

        def keep(self, out):
            self.last = out
            self.log.append(out)

        def __call__(self, y, t):
            out = jnp.tanh(y @ self.w + t[:, None])
            jax.debug.callback(self.keep, out)
            return out

    cj.clear_cache()
    net = Logged()
    model = cc.DiffusionModel(net, SCHED, "eps")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rep in range(2):  # the second time round: cached, nothing compiled
            n = cj.compilations()
            for stop in (None, cc.StopWhenConverged(1e-3)):  # (one call, and a run in chunks)
                cj.chords(model, x, grid, "euler", cores=3, stop=stop)
            assert (cj.compilations() > n) == (rep == 0)
    assert net.log and net.last is not None
    net.w = jnp.asarray(-_W)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        cj.chords(model, x, grid, "euler", cores=3, stop=None)
    assert [w.filename for w in got if "set anew" in str(w.message)] == [__file__]
    cj.clear_cache()
