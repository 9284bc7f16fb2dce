"""chords_jax.srds: SRDS compiled (symbolic replay of the core's pipeline, one lax.scan per segment),
equal to the numpy core in float64 (outputs per iteration, rounds, NFE, trace, log, stop), compiled
once per shape, its errors named as the core names them; a rule that decides on the outputs runs in
chunks and executes the core's rounds, no more.

Every solver and several block counts are checked on the lowered program run with numpy (no compile);
the compiled path for a few of them: each distinct program costs a compile (~0.5 s here).
"""

import warnings

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)  # the exactness tests need float64
import jax.numpy as jnp  # noqa: E402
from helpers import interpret  # noqa: E402

import chords_core as cc  # noqa: E402
import chords_jax as cj  # noqa: E402
from chords_core.stopping import StopNotMet  # noqa: E402

D = 5
_W = np.random.default_rng(1).standard_normal((D, D)) / np.sqrt(D)
X = np.random.default_rng(0).standard_normal((3, D))
SCHED = cc.VP.cosine()
FLOW = cc.RectifiedFlow()


def denoiser(x, t):
    """A smooth nonlinear 'network' written for numpy and jax alike."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ _W + t[:, None]) * 0.5 + 0.2 * x


EXECUTED = []  # one entry per round executed by ``counted`` (the model is one batched call per round)


def counted(x, t):
    """``denoiser`` counting the rounds the compiled run executes (a host callback per call)."""
    jax.debug.callback(lambda: EXECUTED.append(1))
    return denoiser(x, t)


def denoiser_args(x, t, args):
    """The denoiser with its weights as an argument (traced, not baked in)."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ args["w"] + t[:, None]) * 0.5 + args["c"] * x


def field(t, y):
    """dy/dt for one state y (D,) at a float t (an unbatched VectorField)."""
    xp = jnp if isinstance(y, jax.Array) else np
    return xp.sin(y @ _W) * (1.0 + t) - 0.3 * y


def close(a, b, tol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


def same_srds(got, ref, tol=1e-12):
    """Every field of the core's ``Result``: counts exactly, arrays (and the log's RMS changes, which
    are differences of outputs) within ``tol`` of the outputs' scale."""
    keys = ("rounds", "nfe", "stopped_by", "method", "sequential_rounds", "width", "trace", "plan")
    assert [getattr(got, k) for k in keys] == [getattr(ref, k) for k in keys]
    assert [(h.core, h.round, h.nfe) for h in got.hits] == [(h.core, h.round, h.nfe) for h in ref.hits]
    assert all(close(g.x, h.x, tol) for g, h in zip(got.hits, ref.hits))
    assert close(got.x, ref.x, tol) and close(got.coarse, ref.coarse, tol)
    assert isinstance(got.x, jax.Array) and got.x.dtype == jnp.asarray(ref.x).dtype
    assert [s[:3] for s in got.log] == [s[:3] for s in ref.log] and len(got.log) == len(got.hits)
    scale = max(1.0, float(np.max(np.abs(ref.x))))
    assert all(abs(a.change - b.change) <= tol * scale for a, b in zip(got.log, ref.log))


@pytest.mark.parametrize("solver", cj.SUPPORTED_SOLVERS)
def test_every_solver_and_block_count_replayed_and_lowered_reproduces_the_core(solver):
    model = cc.DiffusionModel(denoiser, SCHED, "v")
    grid = cc.time_grid(SCHED, 10, "logsnr")
    for blocks in (1, 2, 3, 5, 10):
        ref = cc.srds(model, X, grid, solver, blocks=blocks, tol=0.0)  # every iteration
        prog, sym = cj.compile_srds(model, X.shape, X.dtype, grid, solver, blocks=blocks)
        assert [(h.core, h.round, h.nfe) for h in sym.hits] == [(h.core, h.round, h.nfe) for h in ref.hits]
        assert (sym.trace, sym.width, sym.sequential_rounds) == (ref.trace, ref.width, ref.sequential_rounds)
        assert prog.rounds == ref.rounds and prog.slots == ref.width
        # an iteration's output is in the buffer after the round the core offers it to the rule (its
        # chunk's last round), the coarse prediction before the first: a chunked run stops there
        assert [s.x.phase for s in sym.hits] == [h.round for h in ref.hits]
        assert sym.coarse.phase <= ref.hits[0].round
        buf = interpret(prog, X, denoiser)
        row = prog.outputs
        assert all(close(buf[row[s.x.id]].reshape(X.shape), h.x) for s, h in zip(sym.hits, ref.hits))
        assert close(buf[row[sym.coarse.id]].reshape(X.shape), ref.coarse)


@pytest.mark.parametrize("solver, blocks", [("euler", 4), ("dpmpp_3m", 2), ("unipc", 5)])
def test_compiled_srds_equals_the_core(solver, blocks):
    # heun: test_vector_field_on_a_one_device_mesh_and_float32; euler's program and executable (the
    # counted denoiser) are the stop rules' too
    if solver == "euler":
        grid, model = cc.time_grid(FLOW, 12), cc.DiffusionModel(denoiser, FLOW, "flow")
        jmodel = cc.DiffusionModel(counted, FLOW, "flow")
    else:
        grid, model = cc.time_grid(SCHED, 10, "logsnr"), cc.DiffusionModel(denoiser, SCHED, "eps")
        jmodel = model
    same_srds(cj.srds(jmodel, X, grid, solver, blocks=blocks, tol=0.0),
              cc.srds(model, X, grid, solver, blocks=blocks, tol=0.0))


def _warned(fn, *args, **kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = fn(*args, **kw)
    return res, [(w.category, str(w.message), w.filename) for w in seen]


def test_stop_rules_pick_what_the_core_picks_and_execute_the_rounds_the_core_runs():
    model = cc.DiffusionModel(denoiser, FLOW, "flow")
    jmodel = cc.DiffusionModel(counted, FLOW, "flow")
    grid = cc.time_grid(FLOW, 12)
    program_rounds = cj.compile_srds(jmodel, X.shape, X.dtype, grid, "euler", blocks=4)[0].rounds
    picked, early = set(), []
    # one program for all but the last two (4 iterations), one for those (2); the rules that decide
    # on the outputs run in chunks (the default rule among them), tol=0, stop=None (every iteration, as
    # in the core), RunAll and StopAtCore in one call
    for kw in (dict(), dict(tol=0.05), dict(tol=1e-6), dict(tol=0.0), dict(stop=None),
               dict(stop=cc.RunAll()), dict(stop=cc.StopOnResidual(0.05)), dict(tol=1e-6, max_iters=2),
               dict(stop=cc.StopAtCore(2), max_iters=3)):
        ref, ref_warnings = _warned(cc.srds, model, X, grid, "euler", blocks=4, **kw)
        EXECUTED.clear()
        got, got_warnings = _warned(cj.srds, jmodel, X, grid, "euler", blocks=4, **kw)
        jax.effects_barrier()
        same_srds(got, ref)
        assert len(EXECUTED) == ref.rounds  # rounds executed: up to the returned iteration's, no further
        if ref.rounds < program_rounds and "max_iters" not in kw:
            early.append(ref.hits[-1].core)  # the program holds all 4 iterations; the rule stopped sooner
        assert got_warnings == ref_warnings  # StopNotMet where the core warns, naming this file's line
        picked.add(ref.hits[-1].core)
        if "max_iters" in kw and "tol" in kw:
            assert [w[0] for w in got_warnings] == [StopNotMet] and got_warnings[0][2] == __file__
    assert picked == {1, 2, 3, 4}  # the cases stop at every iteration
    assert sorted(early) == [1, 1, 2, 3]  # default, tol=0.05 (and as a rule), tol=1e-6: fewer rounds than the program's
    n = cj.compilations()
    EXECUTED.clear()
    ref = cc.srds(model, 2 * X, grid, "euler", blocks=4, tol=0.05)
    same_srds(cj.srds(jmodel, 2 * X, grid, "euler", blocks=4, tol=0.05), ref)
    jax.effects_barrier()
    assert cj.compilations() == n and len(EXECUTED) == ref.rounds < program_rounds  # the chunks reused


def test_one_step_blocks_of_a_multistep_solver_are_judged_from_iteration_two_as_in_the_core():
    """Every block one step of DPM-Solver++(2M): iteration 1's output is the coarse prediction, which
    the default rule accepted on its change of 0; the compiled run offers the rule the outputs the
    core offers (``srds_first``) and returns what the core returns."""
    model, grid = cc.DiffusionModel(denoiser, SCHED, "eps"), cc.time_grid(SCHED, 6, "logsnr")
    ref = cc.srds(model, X, grid, "dpmpp_2m", blocks=6)
    assert ref.log[0].change == 0.0 and len(ref.hits) >= 2
    same_srds(cj.srds(model, X, grid, "dpmpp_2m", blocks=6), ref)
    # blocks = steps - 1: iterations 2 to 5 form in the last round; the rule accepts 2, 5 is returned (``srds_latest``)
    ref = cc.srds(model, X, grid, "euler", blocks=5)
    assert ref.stopped_by == "residual below 0.001 at iteration 2; iteration 5, formed in the same round, returned"
    same_srds(cj.srds(model, X, grid, "euler", blocks=5), ref)


def test_new_values_new_grid_and_new_weights_do_not_recompile():
    model = cc.DiffusionModel(denoiser_args, SCHED, "eps")
    grid = cc.time_grid(SCHED, 8, "logsnr")
    w1 = {"w": jnp.asarray(_W), "c": jnp.asarray(0.2)}
    w2 = {"w": jnp.asarray(_W * 0.5), "c": jnp.asarray(0.1)}
    cj.srds(model, X, grid, "dpmpp_2m", blocks=3, tol=0.0, args=w1)
    n = cj.compilations()
    x = np.random.default_rng(7).standard_normal(X.shape)
    grid2 = cc.time_grid(cc.VP.linear(), 8, "karras")
    runs = [(x, SCHED, grid, w1), (X, SCHED, grid, w2), (X, cc.VP.linear(), grid2, w1)]
    for xi, sched, g, w in runs:
        got = cj.srds(cc.DiffusionModel(denoiser_args, sched, "eps"), xi, g, "dpmpp_2m", blocks=3, tol=0.0, args=w)
        numpy_model = cc.DiffusionModel(lambda x, t, w=w: denoiser_args(x, t, jax.tree.map(np.asarray, w)), sched,
                                        "eps")
        same_srds(got, cc.srds(numpy_model, xi, g, "dpmpp_2m", blocks=3, tol=0.0))
    assert cj.compilations() == n  # only values changed: the executable is reused


def test_a_bad_output_is_named_as_the_core_names_it_and_one_after_the_chosen_iteration_is_not_raised():
    grid = cc.time_grid(FLOW, 12)
    # block 1's fine solve of iteration 1 starts at x_1^1, the sequential state at step 6, so its
    # step-7 evaluation is at the sequential state at step 7: nan there and only there; it is made in
    # round 8, after iteration 1's output (round 7)
    seq7 = cc.solve(cc.DiffusionModel(denoiser, FLOW, "flow"), X, grid[:8], "euler")

    def nan_late(x, t):
        xp = jnp if isinstance(x, jax.Array) else np
        hit = xp.all(xp.abs(x - xp.tile(seq7, (x.shape[0] // len(seq7), 1))) < 1e-9, axis=1) & (t == grid[7])
        return xp.where(hit[:, None], xp.nan, denoiser(x, t))

    model = cc.DiffusionModel(nan_late, FLOW, "flow")
    for tol in (0.0, 1e-9):  # one call; chunked (the bad round in the second chunk, after iteration 1)
        with pytest.raises(cc.ModelOutputError) as core:
            cc.srds(model, X, grid, "euler", blocks=2, tol=tol)
        with pytest.raises(cc.ModelOutputError) as compiled:
            cj.srds(model, X, grid, "euler", blocks=2, tol=tol)
        assert str(compiled.value) == str(core.value) and compiled.value.point == core.value.point
        assert str(core.value).startswith("round 8, block 1 of iteration 1 (step 7, stage 0")
    # a rule that accepts iteration 1 (round 7) returns it in both: the bad round is past the stop (the
    # chunked run does not execute it)
    same_srds(cj.srds(model, X, grid, "euler", blocks=2, tol=1e9), cc.srds(model, X, grid, "euler", blocks=2, tol=1e9))
    unchecked = cc.DiffusionModel(nan_late, FLOW, "flow", check_outputs=False)
    assert np.isnan(np.asarray(cj.srds(unchecked, X, grid, "euler", blocks=2, tol=0.0).x)).all()


def test_bad_arguments_raise_as_in_the_core():
    model = cc.DiffusionModel(denoiser, FLOW, "flow")
    grid = cc.time_grid(FLOW, 6)
    cases = [dict(tol=1e-3, stop=cc.StopAtCore(1)), dict(blocks=0), dict(blocks=7), dict(tol=float("inf")),
             dict(blocks=3, max_iters=4), dict(blocks=3, stop=cc.StopAtCore(4)), dict(stop="fast"),
             dict(grid=[1.0]), dict(solver="rk4"), dict(model=denoiser), dict(x=np.ones((3, D), dtype=np.int32)),
             dict(x=np.array(1.0))]
    for case in cases:
        kw = dict(model=model, x=X, grid=grid, solver="euler") | case
        with pytest.raises((TypeError, ValueError)) as core:
            cc.srds(kw.pop("model"), kw.pop("x"), kw.pop("grid"), kw.pop("solver"), **kw)
        kw = dict(model=model, x=X, grid=grid, solver="euler") | case
        with pytest.raises(type(core.value)) as compiled:
            cj.srds(kw.pop("model"), kw.pop("x"), kw.pop("grid"), kw.pop("solver"), **kw)
        assert str(compiled.value) == str(core.value), case
    with pytest.raises(ValueError, match="executor"):
        cj.srds(model, X, grid, "euler", executor=cc.SerialExecutor())
    with pytest.raises(ValueError, match="devices"):
        cj.srds(model, X, grid, "euler", devices=len(jax.devices()) + 1)


def test_vector_field_on_a_one_device_mesh_and_float32():
    grid = np.linspace(0.0, 2.0, 9)
    y0 = np.random.default_rng(3).standard_normal(D)
    model = cc.VectorField(field)  # unbatched: vmapped; devices=1 runs the sharded (shard_map) path
    same_srds(cj.srds(model, y0, grid, "heun", blocks=3, tol=0.0, devices=1),
              cc.srds(model, y0, grid, "heun", blocks=3, tol=0.0))
    flow = cc.DiffusionModel(denoiser, FLOW, "flow")
    got = cj.srds(flow, X.astype(np.float32), cc.time_grid(FLOW, 8), "euler", blocks=2, tol=0.0)
    ref = cc.srds(flow, X, cc.time_grid(FLOW, 8), "euler", blocks=2, tol=0.0)
    assert got.x.dtype == jnp.float32 and got.rounds == ref.rounds and close(got.x, ref.x, 1e-5)


def test_the_default_stop_on_a_plain_ode_warns_as_the_cores():
    """SRDS' default residual is in the state's units: on a ``VectorField`` the core warns, and so does
    this path, with the same message at this file's line."""
    field = cc.VectorField(lambda t, y: -2.0 * y)
    grid = np.linspace(0.0, 1.0, 9)
    ref, ref_warnings = _warned(cc.srds, field, np.ones(3), grid, blocks=2)
    got, got_warnings = _warned(cj.srds, field, np.ones(3), grid, blocks=2)
    assert [w[1][:40] for w in ref_warnings] == ["srds: its default tol=0.001 is absolute,"]
    assert got_warnings == ref_warnings and got_warnings[0][2] == __file__
    assert np.allclose(np.asarray(got.x), ref.x, rtol=1e-12, atol=0)
