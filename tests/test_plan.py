"""The static CHORDS plan: round ladder, rectification schedule, NFE (issue #2)."""

import os
import signal
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chords_core as cc

PAPER8 = (0, 2, 4, 8, 16, 24, 32, 40)


def test_paper_sequence_ladder_and_nfe():
    plan = cc.make_plan(50, PAPER8)
    assert plan.finish_round == (50, 49, 48, 45, 38, 31, 24, 17)
    assert plan.hit_order == (7, 6, 5, 4, 3, 2, 1, 0)
    assert plan.finish_round[plan.hit_order[0]] == 17
    assert plan.nfe(17) == 8 * 17 - 8 * 7 // 2 == 108
    assert plan.nfe(24) == 157
    assert [plan.rectifications(c) for c in range(8)] == [0, 24, 23, 10, 4, 3, 2, 1]
    assert [r.number for r in plan.rounds if r.coarse_hit] == [8]


def test_stop_round_from_the_plan():
    plan = cc.make_plan(50, PAPER8)
    assert plan.stop_round(cc.StopAtCore(1)) == 17 and plan.stop_round(cc.StopAtCore(2)) == 24
    assert plan.stop_round(None) == plan.stop_round(cc.StopOnResidual(1e-3)) == 50


def test_four_core_paper_sequence():
    plan = cc.make_plan(50, (0, 8, 16, 32))
    assert sorted(plan.finish_round) == [21, 36, 43, 50]
    assert plan.nfe(21) == 78


def test_rectification_costs_no_evaluation():
    plan = cc.make_plan(50, PAPER8)
    for r in plan.rounds:
        # exactly one evaluation per active core, rectified or not
        cores = [e.core for e in r.evals]
        assert len(cores) == len(set(cores))
    assert plan.nfe() == sum(50 - t for t in PAPER8)


def test_fastest_core_is_rectified_at_step_48():
    plan = cc.make_plan(50, PAPER8)
    rect7 = [(rd.number, b, j) for rd in plan.rounds for (c, b, j) in rd.rectified if c == 7]
    assert rect7 == [(15, 40, 48)]


def test_two_stage_solver_plan():
    # Heun: 2 evaluations per step, the final step to sigma = 0 takes 1
    eps = [2] * 49 + [1]
    plan = cc.make_plan(50, PAPER8, eps)
    assert plan.sequential_rounds == 99
    for c, t in enumerate(PAPER8):
        assert plan.finish_round[c] == c + sum(eps[t:])
    assert plan.nfe() == sum(sum(eps[t:]) for t in PAPER8)


@st.composite
def init_sequences(draw):
    steps = draw(st.integers(2, 60))
    k = draw(st.integers(1, min(steps, 9)))
    rest = draw(st.lists(st.integers(1, steps - 1), min_size=k - 1, max_size=k - 1, unique=True))
    return steps, (0,) + tuple(sorted(rest))


@settings(max_examples=150, deadline=None)
@given(init_sequences())
def test_ladder_formula_holds_for_random_sequences(case):
    steps, init = case
    plan = cc.make_plan(steps, init)
    K = len(init)
    for c, t in enumerate(init):
        assert plan.finish_round[c] == steps - t + c
        if c:
            delta = t - init[c - 1]
            assert plan.rectifications(c) == (steps - t) // delta
    R = plan.finish_round[K - 1]
    assert plan.nfe(R) == K * R - K * (K - 1) // 2
    # hits arrive fastest first, ties broken towards the faster core
    rounds = [plan.finish_round[c] for c in plan.hit_order]
    assert rounds == sorted(rounds)


def test_default_init_reproduces_paper_sequences():
    assert cc.default_init(50, 8) == PAPER8
    assert cc.default_init(50, 6) == (0, 3, 6, 12, 24, 36)
    assert cc.default_init(50, 4) == (0, 8, 16, 32)
    assert cc.default_init(50, 1) == (0,)


@pytest.mark.parametrize("steps", [2, 5, 10, 20, 28, 50, 75, 100, 1000])
@pytest.mark.parametrize("cores", [1, 2, 3, 4, 5, 6, 7, 8])
def test_default_init_is_valid_everywhere(steps, cores):
    if cores > steps:
        with pytest.raises(ValueError, match="cores"):
            cc.default_init(steps, cores)
        return
    init = cc.default_init(steps, cores)
    assert cc.validate_init(init, steps, cores) == init


@pytest.mark.parametrize(
    "init, match",
    [
        ((1, 2, 3), "start at 0"),
        ((0, 4, 4), "strictly increasing"),
        ((0, 5, 3), "strictly increasing"),
        ((0, 10, 50), "below steps"),
        ((0, 1.5), "integers"),
        ((), "start at 0"),
    ],
)
def test_invalid_init(init, match):
    with pytest.raises(ValueError, match=match):
        cc.validate_init(init, 50)


def test_init_length_must_match_cores():
    with pytest.raises(ValueError, match="cores=3"):
        cc.validate_init((0, 8), 50, cores=3)


def test_diagram_marks_rectifications_and_hits():
    text = cc.make_plan(50, PAPER8).diagram(17)
    lines = text.splitlines()
    assert len(lines) == 18
    assert "c1<-c0@2" in lines[3] and "3*" in lines[3]
    assert "hit c7" in lines[17]
    assert "coarse hit" in lines[8]


def test_the_plan_cache_is_bounded_by_the_plans_size(monkeypatch):
    """The cache kept 256 plans whatever their size (164 MiB after one optimize_init at 200 steps on 16
    cores); it now keeps at most ``PLAN_CACHE_EVALS`` evaluations, the most recently used, and a plan
    larger than that is built and returned but not kept."""
    from chords_core import plan as P

    monkeypatch.setattr(P, "PLAN_CACHE_EVALS", 5000)
    monkeypatch.setattr(P, "_PLANS", type(P._PLANS)())
    monkeypatch.setattr(P, "_PLANS_EVALS", 0)
    small = cc.make_plan(50, cc.default_init(50, 8))
    assert cc.make_plan(50, list(cc.default_init(50, 8))) is small  # kept, found again
    for steps in range(200, 260, 5):
        cc.make_plan(steps, cc.default_init(steps, 8))
        assert P._PLANS_EVALS == sum(p.nfe() for p in P._PLANS.values()) <= 5000
    assert (255, tuple(cc.default_init(255, 8)), None) in P._PLANS and (50, tuple(small.init), None) not in P._PLANS
    big = cc.make_plan(800, cc.default_init(800, 32))
    assert big.nfe() > 5000 and (800, tuple(big.init), None) not in P._PLANS
    assert cc.make_plan(800, cc.default_init(800, 32)).rounds == big.rounds  # built again, the same
    with pytest.raises(ValueError):
        cc.make_plan(10, (0, 20))  # bad input: nothing kept
    assert P._PLANS_EVALS == sum(p.nfe() for p in P._PLANS.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # (JAX, imported by other tests, warns on any fork)
def test_a_fork_taken_while_another_thread_holds_the_plan_cache_lock_leaves_a_working_child():
    """A user trial: os.fork() while other threads ran cc.chords left 52 of 300 children waiting for
    ever on the plan cache's lock (held by a thread that does not exist in the child)."""
    from chords_core import plan as plan_module

    held, release = threading.Event(), threading.Event()

    def hold():
        with plan_module._PLANS_LOCK:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: a plan within 10 s, or status 99
        signal.signal(signal.SIGALRM, lambda *a: os._exit(99))
        signal.alarm(10)
        try:
            cc.make_plan(23, [0, 3, 7, 12])
            os._exit(0)
        except BaseException:
            os._exit(4)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_chords_warns_where_the_default_init_has_more_cores_than_help():
    """A user trial: 256 cores at T = 500 took all 500 rounds (each core is spawned a round after the
    one before: the fastest output near round T/K + K - 1); the default init now says so."""
    import warnings

    model = cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow")
    x = np.ones((1, 3))
    grid = cc.time_grid(cc.RectifiedFlow(), 50)
    with pytest.warns(UserWarning, match=r"^chords: 32 cores on 50 steps: .* at round 33, where 9 cores give it at "
                                         r"round 14;"):
        cc.chords(model, x, grid, cores=32, stop=cc.StopAtCore(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cc.chords(model, x, grid, cores=16, stop=cc.StopAtCore(1))  # (18 rounds against 14: not warned)
        cc.chords(model, x, grid, init=cc.uniform_init(50, 32), stop=cc.StopAtCore(1))  # (an init of one's own)
        cc.chords(model, x, grid, cores=32, stop=None)  # (every core run: 50 rounds whatever the cores)
        # (an audit: tolerances of 0 run every core too, and warned)
        cc.chords(model, x, grid, cores=32, stop=cc.StopWhenConverged(0))
        cc.chords(model, x, grid, cores=32, stop=cc.StopOnResidual(0))
    # the rounds it names are the plans' (one evaluation a step): the fastest output of K cores at T - s + K - 1
    for k, r in ((32, 33), (9, 14), (16, 18)):
        assert min(cc.make_plan(50, cc.default_init(50, k)).finish_round) == r


def test_plan_arguments_are_checked_by_name_before_the_cache():
    """A user trial: ``evals_per_step`` was truncated (1.7 -> 1) or read from a string ("12" -> (1, 2)),
    silently; 10.0 steps or an init holding True were refused fresh but accepted once 10 or 1 had been
    built (the cache was keyed before the check); an init that is no sequence raised Python's errors;
    ``width(0)``, ``width(-1)`` and ``diagram(-1)`` read the wrong rounds, ``rectifications`` of a core
    the plan lacks was 0, and ``diagram`` with too few lanes raised an IndexError."""
    cc.make_plan(10, [0, 4])
    cc.make_plan(7, [0, 1])
    for call, match in ((lambda: cc.make_plan(3, [0, 1], [1.7, 1, 1]), r"^evals_per_step needs one integer"),
                        (lambda: cc.make_plan(2, [0, 1], "12"), r"^evals_per_step"),
                        (lambda: cc.make_plan(2, [0, 1], [True, True]), r"^evals_per_step"),
                        (lambda: cc.make_plan(10.0, [0, 4]), r"^steps must be an integer"),
                        (lambda: cc.make_plan(7, [0, True]), r"^init must hold integers"),
                        (lambda: cc.make_plan(10, None), r"^init must be a sequence"),
                        (lambda: cc.make_plan(10, 5), r"^init must be a sequence")):
        with pytest.raises(ValueError, match=match):
            call()
    assert cc.make_plan(2, [0, 1], np.array([1, 2])).evals_per_step == (1, 2)
    plan = cc.make_plan(10, [0, 3, 6])
    assert plan.width(3) == 3 and plan.rectifications(2) == 1
    for bad in (0, -1, len(plan.rounds) + 1, 2.0):
        with pytest.raises(ValueError, match=r"^rounds must be an integer in \[1, "):
            plan.width(bad)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=r"^rounds must be an integer >= 0"):
            plan.diagram(bad)
    with pytest.raises(ValueError, match=r"^core must be an integer in \[0, 2\], got 5"):
        plan.rectifications(5)
    with pytest.raises(ValueError, match=r"^lanes: 2 columns for rounds that evaluate core 2; give at least 3"):
        cc.plan.diagram(plan.rounds, 2)
