"""The host route (``chords_core.host``): a run on CPU tensors with gradients off computes on numpy's
views of them, the network still called on tensors; what it returns and raises is what the torch
path returns and raises, and it is taken only where nothing outside the library meets the arrays."""

from __future__ import annotations

import numpy as np
import pytest

import chords_core as cc
from chords_core import host
from chords_core.models import ModelOutputError

torch = pytest.importorskip("torch")

SCH = cc.RectifiedFlow()
GRID = cc.time_grid(SCH, 12)
METHODS = [None, "chords", "paradigms", "srds", "parataa", "parasolver"]


def _pair(dtype=np.float32):
    """The same network in numpy and in torch (elementwise float ops that round alike in both)."""
    w = np.linspace(-1.0, 1.0, 8).astype(dtype)
    return (cc.DiffusionModel(lambda x, t: x * w - t[:, None] * x, SCH, "flow"),
            cc.DiffusionModel(lambda x, t: x * torch.from_numpy(w) - t[:, None] * x, SCH, "flow"))


def _x(dtype=np.float32, batch=2):
    return np.random.default_rng(0).standard_normal((batch, 8)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_a_routed_run_is_the_numpy_engines_run_returned_as_tensors(method, dtype):
    """Under ``no_grad`` every method's output, hits and coarse prediction are the numpy engine's bit for
    bit, as tensors of the state's dtype; one core is ``solve`` bit for bit; and a run with gradients
    (not routed) is the numpy engine's too."""
    m_np, m_t = _pair(dtype)
    x = _x(dtype)
    with torch.no_grad():
        got = cc.parallel(m_t, torch.from_numpy(x.copy()), GRID, cores=4, method=method)
        one = cc.parallel(m_t, torch.from_numpy(x.copy()), GRID, cores=1, method=method)
        seq = cc.solve(m_t, torch.from_numpy(x.copy()), GRID)
    want = cc.parallel(m_np, x, GRID, cores=4, method=method)
    assert type(got.x) is torch.Tensor and got.x.dtype == torch.from_numpy(x).dtype and got.rounds == want.rounds
    assert np.array_equal(got.x.numpy(), want.x) and got.stopped_by == want.stopped_by
    assert all(type(h.x) is torch.Tensor and np.array_equal(h.x.numpy(), w.x) for h, w in zip(got.hits, want.hits))
    assert (got.x is got.hits[-1].x) == (want.x is want.hits[-1].x)  # (one tensor per array)
    assert (got.coarse is None) == (want.coarse is None)
    if want.coarse is not None:
        assert type(got.coarse) is torch.Tensor and np.array_equal(got.coarse.numpy(), want.coarse)
    assert type(seq) is torch.Tensor and torch.equal(one.x, seq) and np.array_equal(seq.numpy(), cc.solve(m_np, x, GRID))
    # with gradients on the run keeps to torch operations, and they are numpy's (no fused multiply-add)
    unrouted = cc.parallel(m_t, torch.from_numpy(x.copy()).requires_grad_(True), GRID, cores=4, method=method)
    assert unrouted.x.requires_grad and np.array_equal(unrouted.x.detach().numpy(), want.x)


@pytest.mark.parametrize("method, options", [("cascade", {"anderson": 3}), ("parataa", {})])
def test_the_anderson_mixing_on_cpu_tensors_is_the_numpy_engines_too(method, options):
    """The mixing's inner products on CPU tensors are summed as numpy sums them: on a UniPC run of a
    small network the weights summed by torch took other last bits, and a run with gradients on (not
    routed) differed from the same run under ``no_grad``."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(9, 32, dtype=torch.float64, generator=g) * 0.3
    w2 = torch.randn(32, 8, dtype=torch.float64, generator=g) * 0.3
    model = cc.DiffusionModel(lambda x, t: torch.tanh(torch.cat([x, t[:, None]], 1) @ w1) @ w2 - 0.5 * x, SCH, "flow")
    x = torch.randn(3, 8, dtype=torch.float64, generator=g)
    with torch.no_grad():
        routed = cc.parallel(model, x.clone(), GRID, "unipc", cores=4, method=method, **options)
    grad = cc.parallel(model, x.clone().requires_grad_(True), GRID, "unipc", cores=4, method=method, **options)
    assert routed.rounds == grad.rounds and torch.equal(routed.x, grad.x.detach())
    m_np, m_t = _pair(np.float64)  # (and an elementwise network's run is the numpy engine's)
    want = cc.parallel(m_np, _x(np.float64, 3), GRID, "unipc", cores=4, method=method, **options)
    with torch.no_grad():
        got = cc.parallel(m_t, torch.from_numpy(_x(np.float64, 3)), GRID, "unipc", cores=4, method=method, **options)
    assert np.array_equal(got.x.numpy(), want.x)


def test_the_network_gets_tensors_and_its_faults_read_as_on_the_torch_path():
    """The network is called on tensors (times a tensor of the state's dtype); a wrong shape, dtype,
    type, a non-finite value and an in-place write raise what they raise with gradients on (the torch
    path), word for word."""
    seen = []

    def fn(x, t):
        seen.append((type(x), type(t), t.dtype))
        return x * 0.5

    x = torch.from_numpy(_x())
    with torch.no_grad():
        cc.chords(cc.DiffusionModel(fn, SCH, "flow"), x, GRID, cores=3)
    assert set(seen) == {(torch.Tensor, torch.Tensor, torch.float32)}
    faults = {"shape": lambda x, t: x[:1], "dtype": lambda x, t: (x * 0.5).to(torch.int32),
              "type": lambda x, t: x.numpy() * 0.5, "nan": lambda x, t: x * float("nan"),
              "in place": lambda x, t: x.mul_(0.5), "late nan": lambda x, t: x * (1.0 / (t[:, None] < 0.5))}
    for name, fault in faults.items():
        model = cc.DiffusionModel(fault, SCH, "flow")
        said = []
        for grad in (True, False):
            with torch.set_grad_enabled(grad), pytest.raises(ModelOutputError) as err:
                cc.chords(model, x.clone(), GRID, cores=3, stop=None)
            said.append(str(err.value))
        assert said[0] == said[1], name


def test_a_window_run_cut_at_a_non_finite_value_goes_on_as_on_the_torch_path():
    """Van der Pol (mu = 2) on 4 lanes: points seeded ahead run off to where the field overflows and
    the sweep is cut there, with the outputs before the bad point (``ModelOutputError.done``, numpy
    views on the route): the same rounds, note and output as the numpy engine."""
    def vdp(lib):
        def f(t, y):
            return lib.stack([y[..., 1], 2.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)
        return cc.VectorField(f, batched=True)

    y0, grid = np.array([[2.0, 0.0], [0.5, 1.0]]), np.linspace(0.0, 8.0, 51)
    with np.errstate(over="ignore", invalid="ignore"), pytest.warns(RuntimeWarning, match="cut"):
        want = cc.parallel(vdp(np), y0, grid, cores=4, method="paradigms", tol=0.1)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="cut"):
        got = cc.parallel(vdp(torch), torch.from_numpy(y0), grid, cores=4, method="paradigms", tol=0.1)
    assert "cut" in got.stopped_by and got.rounds == want.rounds and got.stopped_by == want.stopped_by
    assert np.array_equal(got.x.numpy(), want.x)


def test_a_network_that_returns_its_input_is_copied_out_of_the_reused_buffer():
    """A large round joins its points into a reused buffer; an identity network's output is that
    buffer, and on the route it is numpy's view of it: copied (``Workspace.detach``) before the next
    round overwrites it, as on the torch path."""
    x = np.random.default_rng(1).standard_normal((1, 20_000)).astype(np.float32)  # 80 KB a point, 320 KB a round
    model_t = cc.DiffusionModel(lambda x, t: x, SCH, "x0")
    model_np = cc.DiffusionModel(lambda x, t: x, SCH, "x0")
    with torch.no_grad():
        got = cc.chords(model_t, torch.from_numpy(x.copy()), GRID, "dpmpp_2m", cores=4, stop=None)
    want = cc.chords(model_np, x, GRID, "dpmpp_2m", cores=4, stop=None)
    assert np.array_equal(got.x.numpy(), want.x) and np.allclose(got.x.numpy(), x, rtol=1e-5, atol=1e-6)


def test_inference_mode_channels_last_and_views_are_routed_alike():
    """``inference_mode`` routes as ``no_grad``; a channels-last state and a non-contiguous view keep
    their values (the numpy engine's) and come back as tensors of their shape."""
    x4 = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    m_np = cc.DiffusionModel(lambda x, t: 0.5 * x, SCH, "flow")
    m_t = cc.DiffusionModel(lambda x, t: 0.5 * x, SCH, "flow")
    want = cc.parallel(m_np, x4, GRID, cores=4).x
    for x in (torch.from_numpy(x4.copy()).to(memory_format=torch.channels_last),
              torch.from_numpy(np.ascontiguousarray(x4.transpose(0, 1, 3, 2))).transpose(2, 3)):
        with torch.inference_mode():
            got = cc.parallel(m_t, x, GRID, cores=4).x
        assert got.shape == x.shape and got.stride() == x.stride() and np.array_equal(got.numpy(), want)


def _routed(model, x, solver="euler", **options) -> bool:
    return host.route(model, x, solver, options) is not None


def test_the_route_is_taken_only_where_nothing_else_meets_the_arrays(monkeypatch):
    """Not taken (the torch path runs): gradients on or a state that requires them, other dtypes, a
    tensor subclass, a 0-d state, a user's model subclass, solver, stop rule or executor, and a large
    state where torch would split its arithmetic over threads."""
    _, model = _pair()
    x = torch.from_numpy(_x())
    with torch.no_grad():
        assert _routed(model, x) and _routed(model, x, "heun", executor=cc.SerialExecutor(), stop=cc.StopAtCore(2))
        assert _routed(cc.VectorField(lambda t, y: -y), torch.ones(3, dtype=torch.float64))
        assert not _routed(model, x.half()) and not _routed(model, x.bfloat16())
        assert not _routed(model, torch.nn.Parameter(x.clone())) and not _routed(model, x[0, 0])
        assert not _routed(model, torch.zeros(2, 8)._neg_view()) and not _routed(model, torch.zeros(0, 8))
        mine = type("Mine", (cc.DiffusionModel,), {})
        assert not _routed(mine(model.fn, SCH, "flow"), x)

        class Rule(cc.StopRule):
            def accept(self, outputs, coarse):
                return True

        class Ex(cc.BatchedExecutor):
            pass

        assert not _routed(model, x, stop=Rule()) and not _routed(model, x, executor=Ex())
        assert not _routed(model, x, cc.make_solver("euler", model, GRID))
        spec = cc.SOLVERS["euler"]
        monkeypatch.setitem(cc.SOLVERS, "euler", cc.solvers.SolverSpec(spec.build, 1, 1, "a user's", options=()))
        assert not _routed(model, x)
        monkeypatch.undo()
        big = torch.zeros(1, host.GRAIN)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
        assert not _routed(model, big) and _routed(model, big[:, :-1])
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        assert _routed(model, big)
    assert not _routed(model, x)  # gradients on
    with torch.no_grad():
        assert not _routed(model, x.clone().requires_grad_(True))


def test_with_gradients_on_a_result_still_carries_the_networks_graph():
    """The route is off with gradients on: a sampler differentiated through to the network's parameter
    gets its gradient (numpy would have cut the graph)."""
    w = torch.tensor(0.5, requires_grad=True)
    model = cc.DiffusionModel(lambda x, t: w * x, SCH, "flow")
    out = cc.parallel(model, torch.from_numpy(_x()), GRID, cores=3, method="chords")
    out.x.sum().backward()
    assert w.grad is not None and float(w.grad) != 0.0


def test_the_entry_points_take_the_route_and_return_tensors_of_their_own(monkeypatch):
    """Every entry point asks ``route`` and runs on what it returns (a review: with the decorators
    removed the value tests still passed, the torch path being numpy's bit for bit); the results are
    tensors of their own, which can be resized as the torch path's can (a view of numpy's memory could
    not)."""
    taken = []
    real = host.route

    def spy(*a, **k):
        got = real(*a, **k)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(host, "route", spy)
    model = cc.DiffusionModel(lambda x, t: 0.5 * x, SCH, "flow")
    x = torch.from_numpy(_x())
    with torch.no_grad():
        seq = cc.solve(model, x, GRID)
        results = [cc.parallel(model, x, GRID, cores=3, method=m) for m in METHODS]
    assert taken == [True] * (1 + len(METHODS))
    cc.solve(model, x, GRID)  # (gradients on: not taken)
    assert taken[-1] is False
    for r in [seq, *(res.x for res in results)]:
        r.resize_(4, 8)  # (a tensor on numpy's memory: "Trying to resize storage that is not resizable")


def test_forward_mode_derivatives_are_not_routed_through_numpy():
    """A review: ``no_grad`` leaves forward-mode AD on, and a dual state or a network with dual weights
    lost its tangent on the route (None where the torch path gives it)."""
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level(), torch.no_grad():
        x = fwad.make_dual(torch.ones(2, 3), torch.ones(2, 3))
        out = cc.solve(cc.DiffusionModel(lambda x, t: 0.5 * x, SCH, "flow"), x, GRID)
        assert fwad.unpack_dual(out).tangent is not None
        w = fwad.make_dual(torch.tensor(0.5), torch.tensor(1.0))
        res = cc.chords(cc.DiffusionModel(lambda x, t: w * x, SCH, "flow"), torch.ones(2, 3), GRID, cores=3)
        assert fwad.unpack_dual(res.x).tangent is not None


def test_a_routed_run_raises_no_numpy_warning_where_the_torch_path_raises_none():
    """A review: an overflow in the library's own float32 arithmetic raised numpy's RuntimeWarning on the
    route (an error under ``-W error``, pointing into the library), where the torch path says nothing
    and the output check names the step."""
    import warnings

    model = cc.VectorField(lambda t, y: y + 0.0)
    said = []
    for grad in (True, False):
        with warnings.catch_warnings(), torch.set_grad_enabled(grad), pytest.raises(ModelOutputError) as err:
            warnings.simplefilter("error")
            cc.solve(model, torch.full((2,), 3e38), np.linspace(0.0, 1.0, 5))
        said.append(str(err.value))
    assert said[0] == said[1] and said[0].startswith("step 1")
