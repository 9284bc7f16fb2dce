"""ParaDiGMS and SRDS (chords_core.methods): exactness against the sequential solver, accounting, input checks."""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chords_core as cc
from chords_core import paradigms, srds
from chords_core.methods.paradigms import noise_variances
from chords_core.methods.srds import srds_blocks
from chords_core.problems import GaussianMixture, LinearODE
from chords_core.stopping import StopNotMet

GMM = GaussianMixture.random(8, 3, seed=0)
X = np.random.default_rng(1).standard_normal((4, 8))
SCHEDULES = {"rf": (cc.RectifiedFlow(), "flow"), "vp": (cc.VP.linear(), "eps")}
SOLVERS = sorted(cc.SOLVERS)  # every registered solver




VECTOR_FIELD_SOLVERS = [n for n in SOLVERS if not cc.SOLVERS[n].needs_diffusion_model]  # euler, heun


def setup(sched="rf", solver="euler", steps=12):
    sch, pred = SCHEDULES[sched]
    return GMM.model(sch, pred), cc.time_grid(sch, steps)


class Counting(cc.BatchedExecutor):
    def __init__(self):
        self.sizes = []

    def __call__(self, model, xs, ts):
        self.sizes.append(len(xs))
        return super().__call__(model, xs, ts)


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_window_one_and_one_block_equal_sequential_bit_for_bit(sched, solver):
    model, grid = setup(sched, solver)
    ref = cc.solve(model, X, grid, solver)
    p = paradigms(model, X, grid, solver, window=1, tol=0.5)
    s = srds(model, X, grid, solver, blocks=1, tol=0.5)
    assert np.array_equal(p.x, ref) and np.array_equal(s.x, ref)
    rounds = sum(cc.make_solver(solver, model, grid).evals(i, i + 1) for i in range(len(grid) - 1))
    assert p.rounds == s.rounds == p.nfe == s.nfe == rounds
    assert p.speedup == s.speedup == 1.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_converged_runs_equal_sequential_bit_for_bit(solver):
    """tol = 0: ParaDiGMS accepts only unchanged points, SRDS runs all B iterations; both exact."""
    model, grid = setup("vp", solver, 15)
    ref = cc.solve(model, X, grid, solver)
    for window in (2, 5, 15):
        assert np.array_equal(paradigms(model, X, grid, solver, window=window, tol=0.0).x, ref)
    for blocks in (2, 4, 15):
        r = srds(model, X, grid, solver, blocks=blocks, tol=0.0)
        assert np.array_equal(r.x, ref)
        assert [h.core for h in r.hits] == list(range(1, blocks + 1))


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 24), data=st.data(), solver=st.sampled_from(VECTOR_FIELD_SOLVERS))
def test_vector_field_exact_and_width_bounded(steps, data, solver):
    ode = LinearODE.random(3, seed=steps)
    model, y0, grid = ode.vector_field(), np.ones((2, 3)), np.linspace(0.0, 1.0, steps + 1)
    blocks = data.draw(st.integers(1, steps))
    window = data.draw(st.integers(1, steps))
    ref = cc.solve(model, y0, grid, solver)
    s = srds(model, y0, grid, solver, blocks=blocks, tol=0.0)
    p = paradigms(model, y0, grid, solver, window=window, tol=0.0)
    assert np.array_equal(s.x, ref) and np.array_equal(p.x, ref)
    assert s.width <= blocks and p.width <= window
    with pytest.raises(ValueError, match="window"):  # a window larger than the grid
        paradigms(model, y0, grid, solver, window=steps + 1)


def test_one_executor_call_per_round_and_nfe_accounting():
    model, grid = setup("rf", "euler", 20)
    ex = Counting()
    r = paradigms(model, X, grid, "euler", window=4, tol=0.1, executor=ex)
    assert len(ex.sizes) == r.rounds == len(r.log) and sum(ex.sizes) == r.nfe and max(ex.sizes) == r.width <= 4
    assert [s.end - s.start for s in r.log] == ex.sizes
    assert all(s.accepted_to > s.start for s in r.log) and r.log[-1].accepted_to == 20
    ex = Counting()
    r = srds(model, X, grid, "euler", blocks=4, tol=0.0, executor=ex)
    assert len(ex.sizes) == r.rounds and sum(ex.sizes) == r.nfe and max(ex.sizes) == r.width == 4


def test_srds_rounds_closed_form():
    """Pipelined SRDS with one-evaluation steps, T = B L: iteration k's output after k L + B - k rounds."""
    model, grid = setup("rf", "euler", 24)
    for blocks in (2, 3, 4, 6):
        r = srds(model, X, grid, "euler", blocks=blocks, tol=0.0)
        L = 24 // blocks
        assert [h.round for h in r.hits] == [k * L + blocks - k for k in range(1, blocks + 1)]
        assert r.coarse is not None and r.hits[-1].round == 24


def test_srds_stops_on_change_of_final_sample():
    model, grid = setup("vp", "euler", 25)
    tol = 2e-3
    r = srds(model, X, grid, "euler", blocks=5, tol=tol)
    changes = [it.change for it in r.log]
    assert changes[-1] < tol and all(c >= tol for c in changes[:-1])
    assert r.x is r.hits[-1].x and r.rounds == r.hits[-1].round
    capped = srds(model, X, grid, "euler", blocks=5, tol=0.0, max_iters=2)
    assert len(capped.hits) == 2 and capped.rounds < 25


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_srds_one_step_blocks_of_a_multistep_solver_never_return_the_coarse_prediction(solver):
    """Every block one step of a multistep solver: iteration 1's output is the coarse prediction, to
    rounding (each fine solve starts fresh, at first order: the coarse jump), a change of about 0
    that the default rule accepted (12% off in diffusers at cores = steps). It is offered from iteration 2 on;
    a one-step solver's coarse prediction is its solution there, returned after iteration 1."""
    model, grid = setup("vp", solver, 8)
    seq = cc.solve(model, X, grid, solver)
    r = srds(model, X, grid, solver, blocks=8)
    assert r.log[0].change < 1e-12  # (the case itself)
    assert len(r.hits) >= 2 and r.log[-1].change < 1e-3
    assert cc._backend.rms(r.x - seq) < 0.1 * cc._backend.rms(r.coarse - seq)
    seven = srds(model, X, grid, solver, blocks=7)  # (a block of two steps: iteration 1 is not the coarse
    assert seven.log[0].change > 0 and len(seven.hits) >= 2  # prediction, but offered from iteration 2 on too)
    euler = srds(model, X, grid, "euler", blocks=8)  # (iteration 1 accepted; 8 formed in its round, returned)
    assert euler.log[0].change == 0 and np.array_equal(euler.x, cc.solve(model, X, grid, "euler"))
    with pytest.warns(StopNotMet, match=r"none judged: iteration 1 of a multistep solver .*\(srds_first\)"):
        capped = srds(model, X, grid, solver, blocks=8, max_iters=1)  # iteration 1 alone can accept nothing here
    assert capped.rounds == 8
    chosen = srds(model, X, grid, solver, blocks=8, stop=cc.StopAtCore(1))  # chosen by arrival: as asked
    assert chosen.stopped_by == "output 1 (iteration 1)" and np.array_equal(chosen.x, r.hits[0].x)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_srds_never_offers_a_multistep_solvers_first_iteration_restarted_at_every_block(solver):
    """Iteration 1's fine solves start from coarse points, where a multistep solver starts afresh: its
    output is the solver restarted at every block boundary, and its change from the coarse prediction
    was accepted 4.2-6.4x the sequential error away on blocks of 1-2 steps (single Gaussian data,
    EDM, 6 steps, 4 blocks; ``benchmarks/single_gaussian.py``, 22 of SRDS' 29 misses)."""
    from chords_core.problems import GaussianMixture

    sched = cc.EDM()
    data = GaussianMixture.single(np.zeros(5), np.full(5, 0.04))
    model, grid = data.model(sched, "eps"), cc.time_grid(sched, 6, "karras")
    a, s = float(sched.alpha(grid[0])), float(sched.sigma(grid[0]))
    x = np.sqrt(a * a * 0.04 + s * s) * np.random.default_rng(1).standard_normal((4, 5))
    exact = data.exact_trajectory(x, float(grid[0]), float(grid[-1]), sched)
    seq_err = cc._backend.rms(cc.solve(model, x, grid, solver) - exact)
    r = srds(model, x, grid, solver, blocks=4)
    assert r.log[0].change < 1e-3  # (iteration 1 would pass the default rule)
    assert len(r.hits) >= 2 and cc._backend.rms(r.x - exact) <= 1.05 * seq_err


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "euler"])
def test_srds_returns_the_latest_iteration_of_the_accepting_round(solver):
    """A user trial: the default rule accepted iteration 1 (EDM, DPM-Solver++(2M), 8 steps, 7 blocks)
    in round 8, the sequential count, where iteration 7, the sequential solution, formed too: 1.52x
    the sequential solver's error for no round saved. The last output of the accepting round is
    returned now (a rule picking by arrival still gets its own)."""
    sch = cc.EDM()
    model, grid = GaussianMixture.random(4, 3, seed=102).model(sch, "x0"), cc.time_grid(sch, 8)
    x = np.random.default_rng(2).standard_normal((2, 4)) * 80
    seq = cc.solve(model, x, grid, solver)
    r = srds(model, x, grid, solver, blocks=7)
    full = srds(model, x, grid, solver, blocks=7, stop=None)
    assert r.rounds == full.rounds == 8 and full.hits[0].round == 8  # every iteration forms in the last round
    assert np.array_equal(r.x, seq) and r.x is r.hits[-1].x and len(r.hits) == 7
    if solver != "euler":  # (euler's iteration 1 is accepted as the answer of its round, which is 7's too)
        assert re.fullmatch(r"residual below 0\.001 at iteration \d; iteration 7, formed in the same round, returned",
                            r.stopped_by), r.stopped_by
    chosen = srds(model, x, grid, solver, blocks=7, stop=cc.StopAtCore(1))
    assert np.array_equal(chosen.x, full.hits[0].x) and len(chosen.hits) == 1
    for blocks in (2, 4):  # outputs in rounds of their own: the accepted one, as before
        one = srds(model, x, grid, solver, blocks=blocks)
        assert one.x is one.hits[-1].x and "same round" not in one.stopped_by


def test_paradigms_tolerance_trades_rounds_for_error():
    model, grid = setup("rf", "euler", 30)
    ref = cc.solve(model, X, grid, "euler")
    loose, tight = (paradigms(model, X, grid, "euler", window=6, tol=t) for t in (1.0, 1e-4))
    assert loose.rounds < tight.rounds
    assert cc._backend.rms(tight.x - ref) < cc._backend.rms(loose.x - ref)


def test_result_type_and_torch_arrays():
    import torch
    model, grid = setup("rf", "dpmpp_2m", 10)
    for fn, kw in ((paradigms, dict(window=3)), (srds, dict(blocks=3))):
        r = fn(model, X, grid, "dpmpp_2m", **kw)
        assert isinstance(r, cc.Result) and r.plan is None
        assert r.speedup == 10 / r.rounds
        fn_t = cc.DiffusionModel(lambda x, t: torch.from_numpy(model.fn(x.numpy(), t.numpy())), model.schedule, "flow")
        rt = fn(fn_t, torch.from_numpy(X), grid, "dpmpp_2m", **kw)
        assert isinstance(rt.x, torch.Tensor) and np.allclose(rt.x.numpy(), r.x, rtol=0, atol=1e-12)
        assert rt.rounds == r.rounds


def test_noise_variances_match_ddpm_posterior():
    sch = cc.VP.linear()
    model, times = GMM.model(sch, "eps"), cc.time_grid(sch, 10)
    var = noise_variances(model, times)
    abar = np.asarray(sch.alpha(times)) ** 2
    ddpm = (1 - abar[1:]) / (1 - abar[:-1]) * (1 - abar[:-1] / abar[1:])
    assert np.allclose(var[1:-1], ddpm[:-1], rtol=1e-10) and var[-1] == 0.0 and var[0] == 1.0
    assert np.all(noise_variances(LinearODE.random(2).vector_field(), times) == 1.0)


def test_srds_blocks():
    assert srds_blocks(50) == (0, 7, 14, 21, 29, 36, 43, 50)
    # round(sqrt(T)), not its floor (a mutation review): sqrt(8) = 2.83 -> 3 blocks, sqrt(42) = 6.48 -> 6
    assert srds_blocks(8) == (0, 3, 5, 8) and len(srds_blocks(42)) == 7
    assert srds_blocks(5, 5) == (0, 1, 2, 3, 4, 5) and srds_blocks(1) == (0, 1)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_srds_holds_memory_linear_in_its_blocks(solver):
    """A run keeps a state only while a point still to form needs it: the peak over every
    iteration of 32 blocks is a few states a block (it kept every iterate: 49 a block), and the
    output is still the sequential solution."""
    import tracemalloc

    field = cc.VectorField(lambda t, y: -0.5 * y)
    x = np.ones(20_000)  # 160 kB a state: the states dwarf the bookkeeping
    grid = np.linspace(0.0, 1.0, 65)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        res = srds(field, x, grid, solver, blocks=32, stop=None)
        peak = (tracemalloc.get_traced_memory()[1] - base) / x.nbytes
    finally:
        tracemalloc.stop()
    assert peak < 6 * 32, peak
    assert np.array_equal(res.x, cc.solve(field, x, grid, solver)) and len(res.hits) == 32


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, g: paradigms(m, X, g, window=0), "window"),
        (lambda m, g: paradigms(m, X, g, window=2.5), "window"),
        (lambda m, g: paradigms(m, X, g, tol=-1.0), "tol"),
        (lambda m, g: paradigms(m, X, g, tol=math.nan), "tol"),
        (lambda m, g: srds(m, X, g, blocks=0), "blocks"),
        (lambda m, g: srds(m, X, g, blocks=13), "blocks"),
        (lambda m, g: srds(m, X, g, tol=math.inf), "tol"),
        (lambda m, g: srds(m, X, g, blocks=3, max_iters=4), "max_iters"),
        (lambda m, g: srds(m, X, [1.0], blocks=1), "grid"),
        (lambda m, g: paradigms(m, X, g, "nope"), "solver"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    model, grid = setup()
    with pytest.raises(ValueError, match=name):
        call(model, grid)


def test_a_peers_absolute_default_on_a_plain_ode_warns():
    """ParaDiGMS, ParaSolver and ParaTAA keep their papers' default tolerances, in the state's units
    (the diffusion convention); on a plain ODE (a ``VectorField``) the default warns, naming the method
    and pointing at the caller (``benchmarks/plain_odes.py --peers``: up to 1291x the sequential
    error); an explicit ``tol``, a ``DiffusionModel`` and the recommended method do not."""
    ode = LinearODE.random(3, seed=1)
    field, y0, grid = ode.vector_field(), np.ones((2, 3)), np.linspace(0.0, 1.0, 11)
    srds3 = functools.partial(cc.srds, blocks=3)  # (its residual stop: a damped linear ODE started at 1e-4
    # returned 1,500x the solution's size, silently)
    for fn, name, default in ((cc.paradigms, "paradigms", 0.1), (cc.parasolver, "parasolver", 0.1),
                              (cc.parataa, "parataa", 1e-3), (srds3, "srds", 1e-3)):
        size = {} if fn is srds3 else {"window": 3}
        with pytest.warns(UserWarning, match=rf"^{name}: its default tol={default:g} is absolute") as seen:
            res = fn(field, y0, grid, **size)
        assert len(seen) == 1 and seen[0].filename == __file__
        assert np.array_equal(res.x, fn(field, y0, grid, **size, tol=default).x)  # the same default
    for method in ("paradigms", "srds"):
        with pytest.warns(UserWarning, match=f"^{method}: its default"):
            cc.parallel(field, y0, grid, cores=3, method=method)
    model, dgrid = setup()
    x = X
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (cc.paradigms, cc.parasolver, cc.parataa):
            fn(model, x, dgrid, window=3)
            fn(field, y0, grid, window=3, tol=0.1)
        cc.srds(model, x, dgrid, blocks=3)
        cc.srds(field, y0, grid, blocks=3, tol=0.1)
        cc.srds(field, y0, grid, blocks=3, stop=None)
        cc.parallel(field, y0, grid, cores=3)


def test_srds_names_its_outputs_as_iterations():
    """The stop rules say "core k"; an SRDS output k is iteration k's ("residual below 0.001 at core 3")."""
    grid = cc.time_grid(cc.RectifiedFlow(), 12)
    model = GMM.model(cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(0).standard_normal((2, GMM.dim))
    for kw, text in (({}, r"^residual below 0.001 at iteration \d$"),
                     ({"stop": None}, r"^ran to the end; output 4 \(iteration 4\) \(4 of 4 iterations\)$"),
                     ({"stop": cc.StopAtCore(2)}, r"^output 2 \(iteration 2\)$")):
        assert re.match(text, cc.srds(model, x, grid, blocks=4, **kw).stopped_by)



def test_an_srds_fine_solve_keeps_its_lane_in_the_trace():
    """A user trial: ``Eval.core`` of an SRDS round was the position in the round's list, so one
    block's steps moved between lanes from round to round (Heun: stage 0 of step 6 on lane 2, stage 1
    on lane 1), and the diagram's columns mixed blocks and iterations. A solve now keeps its lane."""
    sched = cc.RectifiedFlow()
    model = cc.DiffusionModel(lambda x, t: -0.5 * x + np.tanh(x), sched, "flow")
    for steps, blocks in ((8, 3), (20, 4), (33, 5)):
        res = cc.srds(model, np.random.default_rng(0).standard_normal((2, 4)), cc.time_grid(sched, steps), "heun",
                      blocks=blocks, tol=0.0)
        for before, rd in zip(res.trace, res.trace[1:]):
            lanes = [e.core for e in rd.evals]
            assert len(set(lanes)) == len(lanes) and max(lanes) < res.width
            prev = {(e.core, e.index): e.stage for e in before.evals}
            for e in rd.evals:
                if e.stage == 1:  # the second stage of a step: on the lane of its first, the round before
                    assert prev.get((e.core, e.index)) == 0, (rd.number, e)
