"""The architecture's promises: no import cycles, stop rules as plug-ins (a rule written here works
with chords, the peers and the JAX backend), one result type and one entry point for every method,
and a default init sequence that spreads its cores for any core count."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import chords_core as cc
from chords_core.problems import GaussianMixture, LinearODE

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"chords_core": ROOT / "chords_core", "chords_torch": ROOT / "backends" / "chords_torch",
            "chords_jax": ROOT / "backends" / "chords_jax", "chords_diffusers": ROOT / "backends" / "chords_diffusers",
            "theory": ROOT / "theory"}


# ------------------------------------------------------------------------------------------ imports
def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (not executed)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                skip.add(id(sub))
    return skip


def import_graph() -> dict[str, set[str]]:
    """Every import between the packages' modules, module level and inside functions alike."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        is_pkg = path.name == "__init__.py"
        base = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    src = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "chords_core.engine" in graph["chords_core.methods.chords"]
    # a package's __init__ re-exports its modules: edges into it from its own modules would be cycles
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# ---------------------------------------------------------------------------------------- stop rules
@dataclass(frozen=True)
class StopWhenClose(cc.StopRule):
    """A user's rule: stop at the first output within ``tol`` (max abs) of the previous one, never
    before output ``least``; written against the protocol only."""

    tol: float
    least: int = 1

    def accept(self, outputs, coarse):
        if len(outputs) < self.least:
            return False
        prev = outputs[-2] if len(outputs) > 1 else coarse
        return float(np.max(np.abs(np.asarray(outputs[-1]) - np.asarray(prev)))) < self.tol

    def describe(self, n, core, accepted):
        return f"close at output {n}" if accepted else "never close"


GMM = GaussianMixture.random(6, 3, seed=2)
SCHED = cc.RectifiedFlow()
MODEL = GMM.model(SCHED, "flow")
X = np.random.default_rng(0).standard_normal((3, 6))
GRID = cc.time_grid(SCHED, 24)


def _distances(hits, coarse):
    prev, out = coarse, []
    for h in hits:
        out.append(float(np.max(np.abs(h.x - prev))))
        prev = h.x
    return out


def test_user_stop_rule_with_chords():
    full = cc.chords(MODEL, X, GRID, cores=4, stop=None)
    d = _distances(full.hits, full.coarse)
    tol = sorted(d)[1] * 1.0001  # the second-smallest change: met, but not by every output
    n = next(k for k, v in enumerate(d) if v < tol) + 1
    res = cc.chords(MODEL, X, GRID, cores=4, stop=StopWhenClose(tol))
    assert res.stopped_by == f"close at output {n}" and len(res.hits) >= n
    assert np.array_equal(res.x, full.hits[n - 1].x) and res.rounds == full.hits[n - 1].round
    never = cc.chords(MODEL, X, GRID, cores=4, stop=StopWhenClose(0.0))
    assert never.stopped_by == "never close" and np.array_equal(never.x, full.x)  # core 0: the sequential output
    late = cc.chords(MODEL, X, GRID, cores=4, stop=StopWhenClose(np.inf, least=3))
    assert late.hits[-1].core == full.hits[2].core and np.array_equal(late.x, full.hits[2].x)


def test_user_stop_rule_with_srds_and_parallel():
    full = cc.srds(MODEL, X, GRID, blocks=4, tol=0.0)
    d = _distances(full.hits, full.coarse)
    tol = sorted(d)[1] * 1.0001
    n = next(k for k, v in enumerate(d) if v < tol) + 1
    res = cc.srds(MODEL, X, GRID, blocks=4, stop=StopWhenClose(tol))
    assert res.stopped_by == f"close at output {n}" and np.array_equal(res.x, full.hits[n - 1].x)
    via = cc.parallel(MODEL, X, GRID, cores=4, method="srds", stop=StopWhenClose(tol))
    assert np.array_equal(via.x, res.x) and via.rounds == res.rounds
    with pytest.raises(ValueError, match="tol or stop"):
        cc.srds(MODEL, X, GRID, blocks=4, tol=1e-3, stop=StopWhenClose(tol))


def test_stop_none_runs_everything_in_chords_and_srds_alike():
    """``stop=None`` means one thing: run every core (chords) or every iteration (srds), whose last
    output is the sequential solution; each method's default rule is its own."""
    seq = cc.solve(MODEL, X, GRID)
    every = cc.srds(MODEL, X, GRID, blocks=4, stop=None)
    assert every.stopped_by == cc.srds(MODEL, X, GRID, blocks=4, stop=cc.RunAll()).stopped_by
    assert len(every.hits) == 4 and np.array_equal(every.x, seq)
    assert np.array_equal(cc.chords(MODEL, X, GRID, cores=4, stop=None).x, seq)
    default = cc.srds(MODEL, X, GRID, blocks=4)
    from chords_core.methods.srds import SRDS_STOP

    assert SRDS_STOP == cc.StopOnResidual(1e-3)
    same = cc.srds(MODEL, X, GRID, blocks=4, stop=cc.StopOnResidual(1e-3))
    assert default.stopped_by == same.stopped_by and np.array_equal(default.x, same.x)
    assert default.rounds < every.rounds  # the default rule stops early here
    with pytest.raises(ValueError, match="tol or stop"):
        cc.srds(MODEL, X, GRID, blocks=4, tol=1e-3, stop=None)


_W = np.random.default_rng(1).standard_normal((6, 6)) / np.sqrt(6)


def _denoiser(x, t):
    """A smooth nonlinear 'network' for numpy and jax alike."""
    import jax.numpy as jnp

    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.tanh(x @ _W + t[:, None]) * 0.5 + 0.2 * x


def test_user_stop_rule_with_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import chords_jax as cj

    model = cc.DiffusionModel(_denoiser, SCHED, "flow")
    ref = cc.chords(model, X, GRID, cores=4, stop=None)
    d = _distances(ref.hits, ref.coarse)
    tol = sorted(d)[1] * 1.0001
    n = next(k for k, v in enumerate(d) if v < tol) + 1
    a = cc.chords(model, X, GRID, cores=4, stop=StopWhenClose(tol))
    b = cj.chords(model, X, GRID, cores=4, stop=StopWhenClose(tol))
    assert a.stopped_by == f"close at output {n}"
    assert b.stopped_by == a.stopped_by and (b.rounds, b.nfe, len(b.hits)) == (a.rounds, a.nfe, len(a.hits))
    np.testing.assert_allclose(np.asarray(b.x), a.x, rtol=0, atol=1e-12)
    late = cj.chords(model, X, GRID, cores=4, stop=StopWhenClose(np.inf, least=3))
    assert late.hits[-1].core == ref.hits[2].core and late.rounds == ref.hits[2].round


def test_bad_stop_rule_is_named():
    with pytest.raises(TypeError, match="stop must be a stop rule"):
        cc.chords(MODEL, X, GRID, cores=2, stop="fastest")


# ------------------------------------------------------------------------------ methods and results
@pytest.mark.parametrize("method", sorted(cc.METHODS))
@pytest.mark.parametrize("solver", sorted(cc.SOLVERS))
def test_parallel_one_core_is_solve(method, solver):
    grid = cc.time_grid(SCHED, 8)
    ref = cc.solve(MODEL, X, grid, solver)
    res = cc.parallel(MODEL, X, grid, solver, cores=1, method=method)
    assert isinstance(res, cc.Result) and res.method == method
    assert np.array_equal(res.x, ref)
    assert res.rounds == res.sequential_rounds and res.width == 1


@pytest.mark.parametrize("method", sorted(cc.METHODS))
def test_every_method_returns_the_same_result_type(method):
    res = cc.parallel(MODEL, X, GRID, cores=3, method=method)
    assert isinstance(res, cc.Result) and res.method == method
    assert 1 <= res.width <= 3 and res.rounds <= res.sequential_rounds
    assert len(res.trace) == res.rounds and all(r.number == k + 1 for k, r in enumerate(res.trace))
    assert sum(len(r.evals) for r in res.trace) == res.nfe
    assert res.hits and res.hits[-1].round <= res.rounds  # (chords too: its "or" made it vacuous there)
    legend = res.diagram().splitlines()[0]
    assert "round |" in res.diagram() and legend.startswith("legend: i = evaluates step i -> i+1")
    # (a user trial: every method's legend explained CHORDS' rectifications and hits, which only it draws)
    assert ("rectified" in legend and "hit cN" in legend) == (method == "chords"), legend


def test_registered_method_plugs_into_parallel():
    def run(model, x, grid, solver, *, cores, executor, progress, **options):
        return cc.chords(model, x, grid, solver, cores=cores, executor=executor, stop=None, **options)

    cc.register_method(cc.Method("chords-all", run, "every core"))
    try:
        res = cc.parallel(MODEL, X, GRID, cores=3, method="chords-all")
        assert np.array_equal(res.x, cc.solve(MODEL, X, GRID))
        with pytest.raises(ValueError, match="already registered"):
            cc.register_method(cc.Method("chords-all", run))
    finally:
        del cc.METHODS["chords-all"]
    with pytest.raises(ValueError, match="method must be one of"):
        cc.parallel(MODEL, X, GRID, cores=3, method="chords-all")
    with pytest.raises(ValueError, match=r"method must be one of .*, got \['chords'\]"):  # (was "unhashable type")
        cc.parallel(MODEL, X, GRID, cores=3, method=["chords"])


def test_registrations_that_cannot_work_are_refused_at_once():
    """A researcher's trial: a method whose ``run`` cannot take ``parallel``'s call, and a solver spec
    whose ``build`` is an instance, registered and failed at first use in Python's words, naming neither;
    a solver subclass that kept its base's ``name`` had errors blame the base ("'heun' evaluates stage
    1 ...")."""
    from chords_core.solvers import Heun, SolverSpec

    with pytest.raises(TypeError, match=r"^method 'badsig': run\(m, x\) cannot take the call parallel makes"):
        cc.register_method(cc.Method("badsig", lambda m, x: None, ""))
    with pytest.raises(TypeError, match=r"method 'nocores'.*cannot take the call parallel makes.*'cores'"):
        cc.register_method(cc.Method("nocores", lambda m, x, g, s, *, executor, progress: None, ""))
    assert "badsig" not in cc.METHODS and "nocores" not in cc.METHODS
    # a required option of the method's own, and a functools.wraps wrapper, are taken (a review)
    import functools

    def inner(model, x, grid, solver, *, window):
        return None

    @functools.wraps(inner)
    def wrapped(model, x, grid, solver, *, cores, executor, progress, **options):
        return None

    for name, run in (("required", lambda m, x, g, s, *, cores, executor, progress, blocks, **o: None),
                      ("wrapped", wrapped)):
        cc.register_method(cc.Method(name, run, ""))
        del cc.METHODS[name]
    with pytest.raises(TypeError, match="^solver 'inst': its SolverSpec's build must be callable"):
        cc.register_solver("inst", SolverSpec(Heun(MODEL, GRID), 2, 2, "x"))
    assert "inst" not in cc.SOLVERS

    class AtStart(Heun):  # (a stage at the step's start: CHORDS refuses it, naming the solver)
        def stage_point(self, state, qs, i, j, k):
            return state.x, i

    cc.register_solver("heun_at_start", SolverSpec(AtStart, 2, 2, "x"))
    try:
        assert cc.make_solver("heun_at_start", MODEL, GRID).name == "heun_at_start"
        with pytest.raises(ValueError, match="^solver: 'heun_at_start' evaluates stage 1"):
            cc.chords(MODEL, X, GRID, "heun_at_start", cores=3)
    finally:
        del cc.SOLVERS["heun_at_start"]


# ------------------------------------------------------------------------------------- default init
@settings(max_examples=300, deadline=None)
@given(st.integers(10, 1000), st.integers(2, 32))
def test_default_init_spreads_its_cores(steps, cores):
    assume(cores <= steps)  # validity everywhere: tests/test_plan.py
    init = cc.default_init(steps, cores)
    plan_finish = [steps - t + c for c, t in enumerate(init)]  # R_c with one evaluation per step
    # the fastest core outputs before the sequential solver, after at most 85% of its rounds where
    # the grid has room (4 K <= T), and core 1 starts in the first half
    if cores < steps:
        assert plan_finish[-1] < steps, init
    if 4 * cores <= steps:
        assert plan_finish[-1] <= 0.85 * steps + 1, init
    assert init[1] <= steps / 2, init
    # no two faster cores collapse onto neighbouring steps where the grid has room (gap >= 2)
    if 4 * cores <= steps:
        assert all(b - a >= 2 for a, b in zip(init, init[1:])), init
    # every core's output comes no later than its slower neighbour's
    assert all(b <= a for a, b in zip(plan_finish, plan_finish[1:])), init


def test_default_init_no_longer_degenerates():
    assert cc.default_init(200, 16) == tuple(round(c * 200 / 16) for c in range(16))
    assert cc.recipe_init(200, 16)[-1] == 160 and cc.recipe_init(200, 16)[-2] < 159  # capped at 0.8 T
    # the paper's sequences are untouched
    assert cc.default_init(50, 8) == (0, 2, 4, 8, 16, 24, 32, 40)
    assert cc.default_init(50, 4) == (0, 8, 16, 32)


def test_registry_says_which_solvers_need_a_diffusion_model():
    field = LinearODE.random(2).vector_field()
    for name, spec in cc.SOLVERS.items():
        if spec.needs_diffusion_model:
            with pytest.raises(ValueError, match="DiffusionModel"):
                cc.make_solver(name, field, np.linspace(0.0, 1.0, 3))
        else:
            assert cc.make_solver(name, field, np.linspace(0.0, 1.0, 3)).name == name


def test_an_unmet_tolerance_says_so():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", cc.stopping.StopNotMet)
        # CHORDS: an unmet rule returns core 0, the sequential solution, and says so
        res = cc.chords(MODEL, X, GRID, cores=4, stop=cc.StopOnResidual(1e-30))
        assert "never below" in res.stopped_by and np.array_equal(res.x, cc.solve(MODEL, X, GRID))
        conv = cc.chords(MODEL, X, GRID, cores=1)
        assert "not converged" in conv.stopped_by and np.array_equal(conv.x, cc.solve(MODEL, X, GRID))
        cc.srds(MODEL, X, GRID, blocks=3, tol=1e-30)  # all iterations: the sequential solution
    # SRDS cut short by max_iters before its tolerance: not the sequential solution, a warning
    with pytest.warns(cc.stopping.StopNotMet, match="not met"):
        short = cc.srds(MODEL, X, GRID, blocks=3, tol=1e-30, max_iters=2)
    assert "2 of 3 iterations" in short.stopped_by


class _OwnModel(cc.Model):
    """A user's own ``Model`` (neither a ``DiffusionModel`` nor a ``VectorField``): a plain ODE."""

    def __init__(self, f):
        self.f = f

    def _call(self, xs, ts, workspace=None):
        return [self.f(t, x) for x, t in zip(xs, ts)]

    def coefficients(self, times, quantity):
        return None


class _Sub(type(MODEL)):
    """A subclass of ``DiffusionModel``: still a diffusion model."""


def test_a_plain_ode_is_decided_in_one_place():
    """``models.is_plain_ode`` is what every rule that differs for a plain ODE asks: the cascade
    sampler's scale and default tolerance, the peers' warning about absolute tolerances, and the
    CHORDS stop's newest-errors bound (its error state carries the newest local errors). Each agrees
    with it for a diffusion model, a subclass of one, a ``VectorField`` and a user's own ``Model``."""
    import warnings

    from chords_core.methods.cascade import PLAIN_TOL, default_tol_for, resolve_scale
    from chords_core.methods.window import absolute_tol

    field = LinearODE.random(6).vector_field()
    own = _OwnModel(field.f)
    sub = _Sub(MODEL.fn, MODEL.schedule, MODEL.prediction)
    seen = []
    for model, plain in ((MODEL, False), (sub, False), (field, True), (own, True)):
        assert cc.models.is_plain_ode(model) is plain
        assert resolve_scale("auto", model) == ("error" if plain else "level")
        assert default_tol_for(model, 50, "error") == (PLAIN_TOL if plain else 1.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            absolute_tol(0.1, model, "peer")
        assert bool(caught) is plain
        x = X if not plain else np.random.default_rng(1).standard_normal((3, 6))
        rule = _SeesErrorState()
        cc.chords(model, x, GRID if not plain else np.linspace(0.0, 1.0, 25), cores=4, stop=rule)
        assert rule.states and all((len(s) > 4 and s[4] is not None) is plain for s in rule.states)
        seen.append(plain)
    assert seen == [False, False, True, True]


@dataclass
class _SeesErrorState:
    """Accepts nothing; keeps each output's error state."""

    uses_error_estimate = True

    def __post_init__(self):
        self.states = []

    def outputs_needed(self, available: int) -> int:
        return available

    def accept(self, outputs, coarse) -> bool:
        self.states.append(outputs.error_state)
        return False

    def describe(self, n: int, core: int, accepted: bool) -> str:
        return "never"


def test_messages_a_first_hour_user_met():
    """A user trial: the default stop accepting core 0's output read as a success with no word that it
    is the sequential run; chords_jax's ``args=`` given to the core was 'an unknown option' only."""
    rule = cc.StopWhenConverged()
    assert "no rounds saved" in rule.describe(4, 0, True) and "no rounds saved" not in rule.describe(2, 1, True)
    with pytest.raises(ValueError, match=r"^args: unknown option .*chords_jax"):
        cc.chords(MODEL, X, GRID, cores=2, args={"w": 1.0})
