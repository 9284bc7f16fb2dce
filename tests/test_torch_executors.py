"""chords_torch: the point -> worker map and DeviceExecutor (threads, one replica per device).

Exactness: float64 on CPU, every output of every core equal to the SerialExecutor's bit for bit.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import chords_core as cc
import chords_torch
from chords_core.models import ModelOutputError, raised_in
from chords_torch import DeviceExecutor, ExecutorClosed, ProcessExecutor, WorkerTimeout, assign
from chords_torch.testing import MLP, TorchLinear, Trap, gmm_problem, same_hits
from chords_torch.testing import seeded_state as x0

MODEL, FACTORY = gmm_problem(dim=4, modes=3, seed=0)




@st.composite
def plans(draw):
    steps = draw(st.integers(2, 30))
    K = draw(st.integers(1, min(6, steps)))
    init = [0] + sorted(draw(st.sets(st.integers(1, steps - 1), min_size=K - 1, max_size=K - 1)))
    eps = draw(st.lists(st.integers(1, 3), min_size=steps, max_size=steps))
    return cc.make_plan(steps, init, eps)


@settings(max_examples=60, deadline=None)
@given(plans(), st.integers(1, 4))
def test_active_cores_are_a_prefix_so_round_robin_is_a_stable_core_map(plan, workers):
    for rd in plan.rounds:
        cores = [e.core for e in rd.evals]
        assert cores == list(range(len(cores)))  # point k of a round is core k
        groups = assign(len(cores), workers)
        assert sorted(k for g in groups for k in g) == cores
        for w, g in enumerate(groups):
            assert all(cores[k] % workers == w for k in g)
        assert max(map(len, groups)) == -(-len(cores) // workers)  # balanced


@pytest.mark.parametrize("solver,cores", [("euler", 4), ("heun", 3), ("dpmpp_2m", 4), ("unipc", 3)])
def test_device_executor_equals_serial_bitwise(solver, cores):
    grid = cc.time_grid(MODEL.schedule, 16)
    ref = cc.chords(MODEL, x0(), grid, solver, cores=cores, stop=None, executor=cc.SerialExecutor())
    with DeviceExecutor(["cpu", "cpu", "cpu"]) as ex:
        res = cc.chords(MODEL, x0(), grid, solver, cores=cores, stop=None, executor=ex)
    assert same_hits(res, ref) and res.rounds == ref.rounds and res.nfe == ref.nfe


def test_device_executor_batched_and_vector_field():
    grid = cc.time_grid(MODEL.schedule, 12)
    ref = cc.chords(MODEL, x0(), grid, "euler", cores=4, stop=None, executor=cc.SerialExecutor())
    with DeviceExecutor(["cpu", "cpu"], batched=True) as ex:  # the GMM is batch invariant
        assert same_hits(cc.chords(MODEL, x0(), grid, "euler", cores=4, stop=None, executor=ex), ref)
    vf = cc.VectorField(TorchLinear(3))
    y = torch.ones(3, dtype=torch.float64)
    ref = cc.chords(vf, y, [0.0, 0.25, 0.5, 0.75, 1.0], "heun", cores=2, stop=None, executor=cc.SerialExecutor())
    with DeviceExecutor(["cpu", "cpu"]) as ex:
        res = cc.chords(vf, y, [0.0, 0.25, 0.5, 0.75, 1.0], "heun", cores=2, stop=None, executor=ex)
    assert same_hits(res, ref)


def test_replicas_are_built_once_per_device_and_modules_are_copied_when_moved():
    built = []

    def rep(fn, device):
        built.append(device)
        return fn

    grid = cc.time_grid(MODEL.schedule, 8)
    with DeviceExecutor(["cpu", "cpu"], replicate=rep) as ex:
        cc.chords(MODEL, x0(), grid, "euler", cores=3, executor=ex)
        cc.chords(MODEL, x0(), grid, "euler", cores=3, executor=ex)
    assert built == [torch.device("cpu")] * 2
    net = MLP(4, 8, 1, dtype=torch.float64)
    assert chords_torch.replicate(net, torch.device("cpu")) is net  # already there: shared, not copied
    meta = chords_torch.replicate(net, torch.device("meta"))
    assert meta is not net and next(meta.parameters()).device.type == "meta"


def test_grad_mode_of_the_caller_is_used_in_the_threads():
    seen = []

    def fn(x, t):
        seen.append(torch.is_grad_enabled())
        return x * 0.5

    model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
    with DeviceExecutor(["cpu", "cpu"]) as ex, torch.no_grad():
        ex(model, [x0(), x0()], [0.5, 0.5])
    assert seen == [False, False]


def _torch_model() -> cc.DiffusionModel:
    """A small differentiable torch network on 4-D states (``MODEL`` evaluates through numpy)."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(a, b, generator=gen, dtype=torch.float64) * 0.4 for a, b in ((4, 16), (16, 4)))
    return cc.DiffusionModel(lambda x, t: torch.tanh(x @ w1) @ w2, cc.RectifiedFlow(), "flow")


def test_torch_func_transforms_are_refused_and_autograd_and_forward_ad_pass():
    """A user trial: torch.func.grad through DeviceExecutor was 0.605 off a gradient of 2.50 (jvp 3.96
    off 5.47), silently: the transform does not reach the device threads, which returned the model's
    outputs as constants. Refused now, naming the executor; loss.backward() and forward-mode AD
    (whose state the threads share) still give the serial executor's derivatives."""
    import torch.autograd.forward_ad as fwAD

    model = _torch_model()
    grid = cc.time_grid(model.schedule, 6)
    x, v = x0(batch=2, dim=4, seed=1), x0(batch=2, dim=4, seed=2)
    with DeviceExecutor(["cpu", "cpu"]) as ex:
        run = lambda y, e: cc.parallel(model, y, grid, cores=3, method="chords", stop=None, executor=e).x  # noqa: E731
        refused = r"^executor: DeviceExecutor evaluates the model on threads of its own, which the torch\.func transform"
        for transform in (torch.func.grad, lambda f: lambda y: torch.func.jvp(f, (y,), (v,))[1]):
            with pytest.raises(TypeError, match=refused):
                transform(lambda y: run(y, ex).sum())(x)
        # (a review: a gradient with respect to the network's weights, x plain, came back all zero: no point
        # was a transform's tensor; the transform itself is seen now)
        w = torch.eye(4, dtype=torch.float64)

        def by_weights(w, e):
            m = cc.DiffusionModel(lambda z, t: torch.tanh(z @ w), cc.RectifiedFlow(), "flow")
            return cc.parallel(m, x, grid, cores=3, method="chords", stop=None, executor=e).x.sum()

        with pytest.raises(TypeError, match=refused):
            torch.func.grad(by_weights)(w, ex)
        assert float(torch.func.grad(by_weights)(w, cc.SerialExecutor()).abs().max()) > 0.1
        assert torch.equal(torch.func.grad(lambda y: run(y, cc.SerialExecutor()).sum())(x),
                           torch.func.grad(lambda y: cc.solve(model, y, grid).sum())(x))
        grads = []
        for e in (ex, cc.SerialExecutor()):
            y = x.clone().requires_grad_(True)
            run(y, e).sum().backward()
            grads.append(y.grad)
        assert torch.equal(*grads)
        with fwAD.dual_level():
            tangents = [fwAD.unpack_dual(run(fwAD.make_dual(x, v), e)).tangent for e in (ex, cc.SerialExecutor())]
        assert torch.equal(*tangents)


@pytest.mark.parametrize("method", [None, "chords", "paradigms", "srds"])
def test_torch_func_derivatives_through_value_reading_defaults_equal_autograds(method):
    """A user trial: torch.func.grad over the default cc.parallel (a tolerance) or cc.chords (its
    default stop) failed inside the library ("Cannot access data pointer of Tensor that doesn't have
    storage", from a stop rule's sum of squares), with torch's "Converting a tensor with
    requires_grad=True to a scalar" warning from the output check. The values read are now a copy
    (``_backend.values_of``): the derivatives equal loss.backward()'s and forward-mode AD's bit for
    bit. torch.func.vmap is refused naming x (a read would see every mapped sample at once)."""
    import torch.autograd.forward_ad as fwAD

    model = _torch_model()
    grid, x, v = cc.time_grid(model.schedule, 10), x0(batch=2, dim=4, seed=1), x0(batch=2, dim=4, seed=2)
    run = lambda y: cc.parallel(model, y, grid, "heun", cores=3, method=method).x  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grad = torch.func.grad(lambda y: (run(y) * v).sum())(x)
        tangent = torch.func.jvp(run, (x,), (v,))[1]
    y = x.clone().requires_grad_(True)
    (run(y) * v).sum().backward()
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(run(fwAD.make_dual(x, v))).tangent
    assert torch.equal(grad, y.grad) and torch.equal(tangent, dual) and float(grad.abs().max()) > 0.1
    with pytest.raises(TypeError, match=r"^x: a value is read .* under torch\.func\.vmap"):
        torch.func.vmap(lambda y: run(y[None]))(x)
    # (a review: with respect to the network's weights, x and a tensor grid plain, the reads failed too:
    # inside a transform numpy views no tensor; and a VectorField's kept values in B.own)
    w0, times = torch.eye(4, dtype=torch.float64) * 0.7, torch.linspace(1, 0, 7, dtype=torch.float64)

    def by_weights(w, kind):
        m = (cc.DiffusionModel(lambda z, t: torch.tanh(z @ w), cc.RectifiedFlow(), "flow") if kind == "flow"
             else cc.VectorField(lambda t, z: -torch.tanh(z @ w)))
        return cc.parallel(m, x, times, "heun", cores=3, method="cascade" if method is None else method).x.sum()

    for kind in ("flow", "field") if method in (None, "chords") else ("flow",):
        w = w0.clone().requires_grad_(True)
        by_weights(w, kind).backward()
        assert torch.equal(torch.func.grad(by_weights)(w0, kind), w.grad)
    field = cc.VectorField(lambda t, z: -0.5 * z)  # (an integer tensor grid failed there too)
    assert torch.equal(torch.func.grad(lambda y: cc.solve(field, y, torch.arange(5)).sum())(x),
                       torch.full_like(x, 0.5 ** 4))


@pytest.mark.parametrize("mode,error", [("raise", RuntimeError), ("exit", chords_torch.WorkerError), ("shape", ModelOutputError),
                                        ("nan", ModelOutputError)])
def test_device_executor_faults_name_the_point_and_leave_it_usable(mode, error):
    net = Trap(FACTORY)()
    xs = [x0(seed=s) for s in range(5)]
    bad = xs[3].clone()
    bad[0, 0] = Trap.MARKERS[mode]
    with DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: net) as ex:
        with pytest.raises(error) as info:
            ex(MODEL, xs[:3] + [bad] + xs[4:], [0.5] * 5)
        if error is ModelOutputError:
            assert info.value.point == 3
        assert any(w in str(info.value) for w in ("injected", "shape", "non-finite", "SystemExit"))
        assert all(torch.equal(a, b) for a, b in zip(ex(MODEL, xs, [0.5] * 5), cc.SerialExecutor()(MODEL, xs, [0.5] * 5)))


def test_engine_reports_round_and_core_of_a_bad_output():
    net = Trap(FACTORY)()
    x = x0()
    x[0, 0] = Trap.MARKERS["nan"]
    with DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: net) as ex:
        with pytest.raises(ModelOutputError, match=r"round 1, core 0 .*non-finite"):
            cc.chords(MODEL, x, cc.time_grid(MODEL.schedule, 8), "euler", cores=2, executor=ex)


def test_a_retirement_takes_the_slower_cores_outputs_on_every_in_process_executor():
    """A faster core whose output is not finite is retired; the slower cores' outputs of that round are
    taken (``ModelOutputError.done``), not evaluated again (a run with retirements took one round more
    per retirement than the sequential solver). The device threads, a batched call split in parts and
    one call a point all give the serial run's outputs and rounds."""
    field = cc.VectorField(lambda t, y: torch.where(y.abs() > 10, torch.nan, -15.0 * y), batched=True)
    grid, x = torch.linspace(0.0, 1.0, 41).numpy(), 5.0 * torch.ones(2, 3, dtype=torch.float64)
    runs = {}
    for name, ex in (("serial", cc.SerialExecutor()), ("batched", cc.BatchedExecutor()),
                     ("parts", cc.BatchedExecutor(max_batch_bytes=2 * x.nelement() * 8)),
                     ("devices", DeviceExecutor(["cpu", "cpu"]))):
        with ex, pytest.warns(RuntimeWarning, match="core 3 and faster retired.*core 2 and faster retired"):
            runs[name] = cc.chords(field, x, grid, init=(0, 4, 12, 30), stop=None, executor=ex)
    ref = runs["serial"]
    assert ref.rounds == ref.sequential_rounds == 40
    for name, res in runs.items():
        assert res.rounds == ref.rounds and res.nfe == ref.nfe, name
        assert [h.core for h in res.hits] == [h.core for h in ref.hits] and torch.equal(res.x, ref.x), name
    assert torch.equal(ref.x, cc.solve(field, x, grid))


def test_device_executor_timeout_closes_it():
    release = threading.Event()

    def stuck(x, t):
        release.wait(30)
        return x

    model = cc.DiffusionModel(stuck, cc.RectifiedFlow(), "flow")
    ex = DeviceExecutor(["cpu", "cpu"], round_timeout=0.3)
    try:
        with pytest.raises(WorkerTimeout, match="within round_timeout=0.3 s"):
            ex(model, [x0(), x0()], [0.5, 0.5])
        with pytest.raises(ExecutorClosed):
            ex(model, [x0()], [0.5])
    finally:
        release.set()
        ex.close()


def test_device_executor_timeout_in_a_with_block_returns_at_once():
    """The ``with`` block's exit after a WorkerTimeout does not wait for the stuck model call (it
    waited out the whole call: a hung model hung the caller)."""
    release = threading.Event()

    def stuck(x, t):
        release.wait(30)
        return x

    model = cc.DiffusionModel(stuck, cc.RectifiedFlow(), "flow")
    start = time.monotonic()
    try:
        with pytest.raises(WorkerTimeout, match="within round_timeout=0.3 s"):
            with DeviceExecutor(["cpu", "cpu"], round_timeout=0.3) as ex:
                cc.chords(model, x0(), cc.time_grid(model.schedule, 4), "euler", cores=2, executor=ex)
        assert time.monotonic() - start < 10  # (the stuck call lasts 30 s)
        ex.close()  # a later close returns at once too
        assert time.monotonic() - start < 10
    finally:
        release.set()


def test_device_executor_bad_arguments():
    with pytest.raises(ValueError, match="devices"):
        DeviceExecutor([])
    with pytest.raises(ValueError, match="devices"):
        DeviceExecutor("cpu")
    with pytest.raises(ValueError, match="devices"):
        DeviceExecutor(["nonsense:7"])
    with pytest.raises(ValueError, match="timeout"):
        DeviceExecutor(["cpu"], round_timeout=0)
    # (accepted, these overflowed inside the first call, in the OS wait's milliseconds)
    for big in (math.inf, 1e10, 3e6):
        with pytest.raises(ValueError, match=r"round_timeout must be at most 1e\+06 seconds, got .* \(None: no limit\)"):
            DeviceExecutor(["cpu"], round_timeout=big)
        with pytest.raises(ValueError, match=r"start_timeout must be at most 1e\+06 seconds"):
            ProcessExecutor(FACTORY, workers=1, start_timeout=big)
    with pytest.raises(TypeError, match="replicate"):
        DeviceExecutor(["cpu"], replicate=3)
    # (a trial: None failed with "object of type 'NoneType' has no len()"; numpy's numbers were refused as
    # timeouts, np.float64 alone taken, as a float subclass; a bool or a numpy bool is no number of seconds)
    for devices in (None, 2):
        with pytest.raises(ValueError, match=r"^devices must be a non-empty list of devices"):
            DeviceExecutor(devices)
    for seconds in (np.float32(5), np.int64(5), np.float16(5)):
        with DeviceExecutor(["cpu"], round_timeout=seconds) as ex:
            assert ex.round_timeout == 5.0 and type(ex.round_timeout) is float
    for flag in (True, np.bool_(True)):
        with pytest.raises(ValueError, match="^round_timeout must be a positive number of seconds"):
            DeviceExecutor(["cpu"], round_timeout=flag)
    with DeviceExecutor(["cpu"]) as ex:
        with pytest.raises(ValueError, match="xs"):
            ex(MODEL, [x0(), x0(dim=5)], [0.5, 0.5])
        with pytest.raises(TypeError, match=r"x: this executor evaluates torch tensors, and point 0 of the round is a "
                                            r"ndarray; pass the state as a torch.Tensor"):
            ex(MODEL, [x0().numpy()], [0.5])


@pytest.mark.parametrize("method", sorted(cc.METHODS))
def test_every_method_runs_on_the_device_executor(method):
    grid = cc.time_grid(MODEL.schedule, 12)
    ref = cc.parallel(MODEL, x0(), grid, "dpmpp_2m", cores=3, method=method, executor=cc.SerialExecutor())
    with DeviceExecutor(["cpu", "cpu", "cpu"]) as ex:
        res = cc.parallel(MODEL, x0(), grid, "dpmpp_2m", cores=3, method=method, executor=ex)
    assert torch.equal(res.x, ref.x) and (res.rounds, res.nfe, res.width) == (ref.rounds, ref.nfe, ref.width)
    assert [h.core for h in res.hits] == [h.core for h in ref.hits]


def test_device_executor_wraps_model_exceptions_in_worker_error():
    net = Trap(FACTORY)()
    xs = [x0(seed=s) for s in range(3)]
    xs[1][0, 0] = Trap.MARKERS["raise"]
    with DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: net) as ex:
        with pytest.raises(chords_torch.WorkerError, match=r"device cpu \(point 1\).*injected") as info:
            ex(MODEL, xs, [0.5] * 3)
        assert "traceback" in str(info.value) and raised_in(info.value, xs) == 1
    # (a call on several points names them all; one a point names the one that raised: it named the device's
    # share, a trial)
    xs = [x0(seed=s) for s in range(4)]
    xs[1][0, 0] = Trap.MARKERS["raise"]  # (device 1 takes points 1 and 3; the trap reads a call's first element)
    for batched, which, at in ((True, r"points \[1, 3\]", None), (False, r"point 1", 1)):
        with DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: net, batched=batched) as ex:
            with pytest.raises(chords_torch.WorkerError, match=rf"device cpu \({which}\).*injected") as info:
                ex(MODEL, xs, [0.5] * 4)
            assert raised_in(info.value, xs) == at


def test_device_executor_checks_its_devices_at_construction():
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU-only machine)
    with pytest.raises(ValueError, match=rf"devices: {missing} is not available here"):
        DeviceExecutor(["cpu", missing])


def test_a_stuck_device_thread_does_not_keep_the_interpreter_alive(tmp_path):
    """After a WorkerTimeout the stuck model thread is a daemon: the process exits at once."""
    import subprocess
    import sys

    script = tmp_path / "stuck.py"
    script.write_text(
        "import time, torch, chords_core as cc\n"
        "from chords_torch import DeviceExecutor, WorkerTimeout\n"
        "from chords_torch.testing import gmm_problem\n"
        "model, _ = gmm_problem()\n"
        "ex = DeviceExecutor(['cpu'], round_timeout=0.3, replicate=lambda fn, d: (lambda x, t: time.sleep(60)))\n"
        "try:\n"
        "    ex(model, [torch.zeros(2, 4, dtype=torch.float64)], [0.5])\n"
        "except WorkerTimeout:\n"
        "    print('timed out', flush=True)\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0 and "timed out" in out.stdout, out.stderr
    assert time.monotonic() - t0 < 30  # not the 60 s of the stuck call


def test_weights_changed_in_place_reach_the_copies_on_other_devices():
    """Replicas copied to other devices kept the old weights when the network was updated in place
    (``load_state_dict``, an EMA step): the device that shares the network ran the new ones, the
    others the old, silently mixed. (On the CPU the default shares the network, so the copies are
    made by ``replicate`` here.)"""
    import copy

    net = MLP(4, 16, 2, seed=3, dtype=torch.float64)
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x = x0(batch=3, dim=4)
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    made = []

    def copies(fn, device):
        made.append(device)
        return copy.deepcopy(fn)

    with DeviceExecutor(["cpu", "cpu"], replicate=copies) as ex:
        old = cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
        assert same_hits(old, cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))
        again = cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
        assert len(made) == 2 and same_hits(again, old)  # unchanged weights: the copies are reused
        with torch.no_grad():
            net.weights[0].mul_(0.5)
        new = cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
        assert len(made) == 4 and same_hits(new, cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))
        assert not torch.equal(new.x, old.x)
        net.load_state_dict({k: v * 2 for k, v in net.state_dict().items()})
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex),
                         cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))
        # parameters replaced by new objects, and another network in the model: seen too
        net.load_state_dict({k: v * 0.7 for k, v in net.state_dict().items()}, assign=True)
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex),
                         cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))
        model.fn = MLP(4, 16, 2, seed=9, dtype=torch.float64)
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex),
                         cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))


def test_another_network_in_the_model_is_evaluated_when_the_replicas_share_the_drivers():
    """(With the default replicas on the CPU, which share the driver's network, a model given another
    network kept evaluating the old one: 26-33 off the serial answer, no error.)"""
    x = x0(batch=3, dim=4)
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    for first, second in ((lambda x, t: torch.tanh(x + t[:, None]), lambda x, t: torch.tanh(2 * x - t[:, None])),
                          (MLP(4, 16, 2, seed=3, dtype=torch.float64), MLP(4, 16, 2, seed=9, dtype=torch.float64))):
        model = cc.DiffusionModel(first, cc.RectifiedFlow(), "flow")
        with DeviceExecutor(["cpu", "cpu"]) as ex:
            cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
            model.fn = second
            assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex),
                             cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))


def test_meta_tensors_and_the_meta_device_are_refused_naming_the_argument():
    """(A meta state failed inside torch's Tensor.item(); DeviceExecutor(["meta"]) was accepted and
    every call failed.)"""
    with pytest.raises(TypeError, match="^x: a tensor on the meta device"):
        cc.chords(MODEL, torch.empty(3, 4, dtype=torch.float64, device="meta"), cc.time_grid(MODEL.schedule, 4),
                  cores=2)
    with pytest.raises(ValueError, match="^devices: the meta device"):
        DeviceExecutor(["cpu", "meta"])


def test_the_weight_check_spares_inference_tensors_buffers_and_says_when_to_refresh():
    """Inference tensors keep no version counter (reading it raised); a buffer the forward pass updates
    must not make the copies again every round; an update through ``.data`` is not seen, and
    ``refresh()`` makes the copies again."""
    import copy

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

        def forward(self, x, t):
            self.calls += 1  # a buffer updated in the forward pass
            return self.net(x, t)

    made = []

    def copies(fn, device):
        made.append(device)
        return copy.deepcopy(fn)

    x = x0(batch=3, dim=4)
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    serial = cc.SerialExecutor()
    with torch.inference_mode():
        frozen = cc.DiffusionModel(MLP(4, 16, 2, seed=4, dtype=torch.float64), cc.RectifiedFlow(), "flow")
        with DeviceExecutor(["cpu", "cpu"], replicate=copies) as ex:
            assert same_hits(cc.chords(frozen, x, grid, cores=2, stop=None, executor=ex),
                             cc.chords(frozen, x, grid, cores=2, stop=None, executor=serial))
    net = Counting(MLP(4, 16, 2, seed=5, dtype=torch.float64))
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    made.clear()
    with DeviceExecutor(["cpu", "cpu"], replicate=copies) as ex:
        cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
        assert len(made) == 2  # once, though the buffer changed every round
        with torch.no_grad():
            net.net.weights[0].data.mul_(0.5)  # not seen by the version counters
        ex.refresh()
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex),
                         cc.chords(model, x, grid, cores=2, stop=None, executor=serial)) and len(made) == 4


class _Moded(torch.nn.Module):
    """A network whose output depends on its train / eval mode and on an optional adapter."""

    def __init__(self):
        super().__init__()
        self.net = MLP(4, 16, 2, seed=3, dtype=torch.float64)
        self.adapter: torch.nn.Module | None = None

    def forward(self, x, t):
        y = self.net(x, t) * (1.5 if self.training else 1.0)
        return y if self.adapter is None else self.adapter(y)


def test_copies_follow_the_networks_mode_adapters_and_the_models_settings():
    """A user trial: copies on other devices kept training mode after ``net.eval()`` (about 270 off the
    serial answer), missed an added adapter module (376 off), and ``check_outputs`` set on the model
    after a first call was not seen by the replicas; all are seen now."""
    import copy

    net = _Moded()
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x, grid = x0(batch=3, dim=4), cc.time_grid(cc.RectifiedFlow(), 8)

    def serial():
        return cc.chords(model, x, grid, cores=2, stop=None, executor=cc.SerialExecutor())

    with torch.no_grad(), DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: copy.deepcopy(fn)) as ex:
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex), serial())
        net.eval()
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex), serial())
        net.adapter = torch.nn.Linear(4, 4, dtype=torch.float64)
        assert same_hits(cc.chords(model, x, grid, cores=2, stop=None, executor=ex), serial())
        nan_net = cc.DiffusionModel(lambda x, t: x * float("nan"), cc.RectifiedFlow(), "flow")
        with pytest.raises(ModelOutputError):
            cc.chords(nan_net, x, grid, cores=2, stop=None, executor=ex)
        nan_net.check_outputs = False
        assert torch.isnan(cc.chords(nan_net, x, grid, cores=2, stop=None, executor=ex).x).all()


def test_weight_gradients_through_copies_warn():
    """Copies on other devices are made from detached weights: the model's part of dL/dW from their
    cores never reached the parameters (3-17% lost in a user trial), silently. A run with gradients
    enabled and parameters that require them warns at the caller; under no_grad, or with shared
    replicas (the CPU default), nothing to warn of."""
    import copy
    import warnings

    net = MLP(4, 16, 2, seed=3, dtype=torch.float64).requires_grad_(True)
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x, grid = x0(batch=3, dim=4), cc.time_grid(cc.RectifiedFlow(), 4)
    with DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: copy.deepcopy(fn)) as ex:
        with pytest.warns(UserWarning, match="gradients reach x, not the parameters") as seen:
            cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
        assert seen[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with torch.no_grad():
                cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
            net.requires_grad_(False)  # the warning's own advice: silent from then on (read at every call)
            cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
    with warnings.catch_warnings(), DeviceExecutor(["cpu", "cpu"]) as shared:
        warnings.simplefilter("error")
        cc.chords(model, x, grid, cores=2, stop=None, executor=shared)


def test_closing_while_another_threads_round_is_queued_raises_closed():
    """The queued round's future was cancelled without waking its waiter: that thread waited for ever
    (with a round_timeout, a misleading WorkerTimeout)."""
    def slow(x, t):
        time.sleep(0.6)
        return x * 0.5

    model = cc.DiffusionModel(slow, cc.RectifiedFlow(), "flow")
    ex = DeviceExecutor(["cpu"])
    got: dict = {}

    def call(name):
        try:
            ex(model, [x0(batch=1, dim=4)], [0.5])
            got[name] = "result"
        except BaseException as e:
            got[name] = type(e).__name__

    a, b = threading.Thread(target=call, args=("a",)), threading.Thread(target=call, args=("b",))
    a.start()
    time.sleep(0.1)
    b.start()
    time.sleep(0.1)
    ex.close()
    a.join(10)
    b.join(10)
    assert got == {"a": "result", "b": "ExecutorClosed"}
    # the running round stuck: the queued caller still gets ExecutorClosed at once (with rounds taking
    # turns it waited for the stuck one, for ever without a round_timeout: a second review)
    release = threading.Event()
    stuck = cc.DiffusionModel(lambda x, t: release.wait(30) and x, cc.RectifiedFlow(), "flow")
    ex, got, model = DeviceExecutor(["cpu"]), {}, stuck
    a, b = threading.Thread(target=call, args=("a",)), threading.Thread(target=call, args=("b",))
    try:
        a.start()
        time.sleep(0.1)
        b.start()
        time.sleep(0.1)
        start = time.monotonic()
        ex.close(wait=False)
        b.join(10)
        assert got == {"b": "ExecutorClosed"} and time.monotonic() - start < 5
    finally:
        release.set()
        a.join(10)


def test_a_model_that_solves_on_its_own_device_executor_is_evaluated_on_the_device_thread():
    """A review: a network that itself runs a solve on the DeviceExecutor evaluating it queued the inner
    round behind the call it is part of, on the same device thread: a hang (with a round_timeout, a
    WorkerTimeout and a closed executor). The inner rounds are evaluated on that thread, as the serial
    executor would."""
    inner_grid = cc.time_grid(cc.RectifiedFlow(), 3)
    ex = DeviceExecutor(["cpu", "cpu"], round_timeout=20)

    def network(executor):
        def fn(x, t):
            inner = cc.DiffusionModel(lambda y, s: torch.tanh(y) - 0.5 * y, cc.RectifiedFlow(), "flow")
            return cc.chords(inner, x, inner_grid, "euler", cores=2, stop=None, executor=executor).x * t[:, None]
        return fn

    grid = cc.time_grid(cc.RectifiedFlow(), 4)
    with ex:
        got = cc.chords(cc.DiffusionModel(network(ex), cc.RectifiedFlow(), "flow"), x0(), grid, "euler", cores=2,
                        stop=None, executor=ex)
    serial = cc.SerialExecutor()
    ref = cc.chords(cc.DiffusionModel(network(serial), cc.RectifiedFlow(), "flow"), x0(), grid, "euler", cores=2,
                    stop=None, executor=serial)
    assert same_hits(got, ref)


def test_two_threads_rounds_each_get_the_whole_round_timeout():
    """A review: a round's timeout counted from its submission, so a round queued behind another
    thread's on the device threads timed out (1 s rounds, round_timeout=1.6: the second thread got a
    WorkerTimeout and the executor closed for both). Rounds now take turns, each timed from its start."""
    def slow(x, t):
        time.sleep(0.5)
        return x * 0.5

    model = cc.DiffusionModel(slow, cc.RectifiedFlow(), "flow")
    ex = DeviceExecutor(["cpu", "cpu"], round_timeout=0.9)
    got: dict = {}

    def call(name):
        try:
            got[name] = ex(model, [x0(batch=1, dim=4), x0(batch=1, dim=4)], [0.5, 0.4])
        except BaseException as e:
            got[name] = type(e).__name__

    threads = [threading.Thread(target=call, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    try:
        assert all(isinstance(v, list) for v in got.values()) and len(got) == 2, got
        assert len(ex(model, [x0(batch=1, dim=4)], [0.5])) == 1  # (still open)
    finally:
        ex.close()


def test_ctrl_c_inside_a_with_block_returns_at_once_while_a_model_call_hangs():
    """A review: leaving the ``with`` block on a KeyboardInterrupt joined the device thread stuck in the
    model call (only a second Ctrl-C got out); an explicit close() after the interrupt did the same."""
    release = threading.Event()

    def stuck(x, t):
        release.wait(30)
        return x

    model = cc.DiffusionModel(stuck, cc.RectifiedFlow(), "flow")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with DeviceExecutor(["cpu", "cpu"]) as ex:
                ex(model, [x0(), x0()], [0.5, 0.4])
        assert time.monotonic() - start < 10  # (the stuck call lasts 30 s)
        other = DeviceExecutor(["cpu"])
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            other(model, [x0()], [0.5])
        other.close()  # (wait=True: not for the interrupted round's evaluation, which still runs)
        assert time.monotonic() - start < 15
    finally:
        timer.cancel()
        release.set()


def test_a_module_without_tensors_of_its_own_and_an_indexed_cpu_share_the_network():
    """A review: a module holding its network through a plain attribute (here a functools.partial)
    registers no parameters, and was deep-copied even onto the CPU it lives on, network included: the
    copies missed a changed attribute (0.63 off serial) and in-place weight updates (0.18 off); and
    "cpu:0" / "cpu:1" counted as another device than the CPU's tensors' "cpu", so a CPU network was
    copied too."""
    import functools

    inner = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()).double()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.call, self.scale = functools.partial(lambda net, x: net(x), inner), 1.0

        def forward(self, x, t):
            return self.call(x) * self.scale - t.reshape(-1, *([1] * (x.dim() - 1))) * x

    w = Wrap()
    assert chords_torch.replicate(w, "cpu") is w and chords_torch.replicate(inner, "cpu:1") is inner
    model = cc.DiffusionModel(w, cc.RectifiedFlow(), "flow")
    pts = [x0(batch=2, dim=4), x0(batch=2, dim=4) * 0.5]
    for devices in (["cpu", "cpu"], ["cpu:0", "cpu:1"]):
        with DeviceExecutor(devices) as ex, torch.no_grad():
            ex(model, pts, [0.5, 0.4])
            w.scale = 2.0
            with torch.no_grad():
                inner[0].weight.mul_(0.5)
            got, ref = ex(model, pts, [0.5, 0.4]), cc.SerialExecutor()(model, pts, [0.5, 0.4])
            assert all(torch.equal(a, b) for a, b in zip(got, ref)), devices


def test_a_keyboard_interrupt_raised_by_the_model_on_a_device_thread_is_a_worker_error():
    """A device thread never receives a signal: a KeyboardInterrupt there is the model's own, and came
    through unwrapped, looking like the user's Ctrl-C (ProcessExecutor wraps it)."""
    def interrupting(x, t):
        raise KeyboardInterrupt("from the model")

    with DeviceExecutor(["cpu"]) as ex, pytest.raises(chords_torch.WorkerError, match="KeyboardInterrupt: from the model"):
        cc.chords(cc.DiffusionModel(interrupting, cc.RectifiedFlow(), "flow"), x0(batch=1, dim=4),
                  cc.time_grid(cc.RectifiedFlow(), 2), cores=1, executor=ex)


def test_a_stopped_device_thread_hands_back_a_finished_future():
    """A round that read the pools before another thread's close() submitted to a stopped thread: the
    future was cancelled without the notify that wakes concurrent.futures.wait, which then waited for
    ever (a review found it after the queued-round fix). The call is now handed back on its queue,
    cancelled."""
    import queue

    from chords_torch.device import _Call, _DeviceThread, _wait

    worker = _DeviceThread("test")
    worker.shutdown(wait=True)
    done: queue.SimpleQueue = queue.SimpleQueue()
    call = worker.submit(done, lambda: 1)
    assert _wait([call], done, 5) and call.state == _Call.CANCELLED and done.get_nowait() is call


class _InterruptedOnce:
    """A round lock on which a Ctrl-C lands once: just as it is taken (``where="taken"``: the lock then
    held, the KeyboardInterrupt raised before the round's ``try``), or as the round's ``finally``
    releases it (``"released"``: raised before the release)."""

    def __init__(self, where):
        self.lock, self.where = threading.Lock(), where

    def acquire(self, timeout=-1):
        got = self.lock.acquire(timeout=timeout)
        if got and self.where == "taken":
            self.where = None
            raise KeyboardInterrupt
        return got

    def release(self):
        if self.where == "released":
            self.where = None
            raise KeyboardInterrupt
        self.lock.release()


@pytest.mark.parametrize("where", ["taken", "released"])
@pytest.mark.parametrize("kind", ["device", "process"])
def test_a_ctrl_c_as_the_round_lock_is_taken_leaves_no_lock_held(kind, where):
    """A trial: a Ctrl-C landing just as a round took the executor's lock, before the ``try`` that
    releases it (or inside that ``finally``), left it held by no round; the next call waited for ever
    (after 76-1,840 interrupted calls, ProcessExecutor and DeviceExecutor). Now the next call, from
    another thread here, finds no round holding it and takes it over (after ``ORPHANED_S``), and
    equals SerialExecutor's result."""
    from chords_torch import _common

    grid = cc.time_grid(MODEL.schedule, 8)
    ref = cc.chords(MODEL, x0(), grid, "euler", cores=3, stop=None, executor=cc.SerialExecutor())
    ex = DeviceExecutor(["cpu", "cpu"]) if kind == "device" else ProcessExecutor(FACTORY, workers=2)
    got: list = []
    try:
        ex._lock = _InterruptedOnce(where)
        with pytest.raises(KeyboardInterrupt):
            cc.chords(MODEL, x0(), grid, "euler", cores=3, stop=None, executor=ex)
        # (on a thread: a call that waits for ever ends with the close() below, ExecutorClosed)
        second = threading.Thread(target=lambda: got.append(
            cc.chords(MODEL, x0(), grid, "euler", cores=3, stop=None, executor=ex)), daemon=True)
        second.start()
        second.join(getattr(_common, "ORPHANED_S", 1.0) + 30)
        assert got, "the call after the interrupt did not return"
        same_hits(got[0], ref)
        assert not ex._lock.lock.locked()
    finally:
        ex.close()


def test_a_ctrl_c_while_a_device_round_waits_leaves_the_device_threads_free(monkeypatch):
    """A trial: a Ctrl-C inside ``concurrent.futures.wait`` (while it took the futures' locks) left a
    future's lock held, and its device thread blocked for ever in ``set_result``: the next call hung
    (10 of 12 runs of interrupted rounds). The round now waits on a queue that the device threads put
    their calls on, holding no lock of theirs; interrupted there, the next call equals
    SerialExecutor's."""
    import concurrent.futures as cf

    from chords_torch import device

    grid = cc.time_grid(MODEL.schedule, 8)
    ref = cc.chords(MODEL, x0(), grid, "euler", cores=3, stop=None, executor=cc.SerialExecutor())
    armed = [True]
    enter = cf._base._AcquireFutures.__enter__

    def interrupted_enter(self):  # (the interrupt landing once the futures' locks are taken)
        enter(self)
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    monkeypatch.setattr(cf._base._AcquireFutures, "__enter__", interrupted_enter)
    if hasattr(device, "_wait"):
        wait = device._wait

        def interrupted_wait(calls, done, timeout):
            if armed[0]:
                armed[0] = False
                time.sleep(0.05)  # (the device threads finish meanwhile)
                raise KeyboardInterrupt
            return wait(calls, done, timeout)

        monkeypatch.setattr(device, "_wait", interrupted_wait)
    ex = DeviceExecutor(["cpu", "cpu"], round_timeout=20)
    try:
        with pytest.raises(KeyboardInterrupt):
            cc.chords(MODEL, x0(), grid, "euler", cores=3, stop=None, executor=ex)
        same_hits(cc.chords(MODEL, x0(), grid, "euler", cores=3, stop=None, executor=ex), ref)
    finally:
        ex.close(wait=False)


def test_model_settings_compare_what_the_shell_carries_by_value_and_hold_other_objects():
    """The executors resend a model's shell when ``model_settings`` changes. What a shell carries is
    compared by value: a schedule of other parameters, and a numeric array changed in place (a trial: a
    Model subclass scaled by an array field kept the serving ranks' old value, 17 off the serial
    result); a schedule replaced by an equal one is the same shell. Other objects are compared by
    identity, and held (a bare id is reused once the object is freed)."""
    import gc

    import numpy as np

    from chords_torch._common import model_settings

    model = cc.DiffusionModel(lambda x, t: x, cc.EDM(t_noise=10.0), "x0")
    first = model_settings(model)
    model.schedule = cc.EDM(t_noise=5.0)
    assert model_settings(model) != first
    model.schedule = cc.EDM(t_noise=10.0)  # equal to the first by value, another object: the same shell
    assert model_settings(model) == first
    model.check_outputs = False
    assert ("check_outputs", False) in model_settings(model)
    model.scale = np.array([1.0, 2.0])
    model.nested = {"w": [np.array([3, 4])]}
    before = model_settings(model)
    model.scale[0] = 0.5
    assert model_settings(model) != before
    after = model_settings(model)
    model.nested["w"][0][1] = 5
    assert model_settings(model) != after and model_settings(model) == model_settings(model)
    model.extra = object()
    held = model_settings(model)
    model.extra = None
    gc.collect()
    model.extra = object()  # (the freed object's id may be reused)
    assert model_settings(model) != held
    # (a review) a slots dataclass's fields (its __dict__, from the base, is empty); a float32 nan equals
    # itself (the shell was sent again every round); a list holding itself twice is walked in bounded time
    import dataclasses

    @dataclasses.dataclass(frozen=True, slots=True)
    class SlotVP(cc.VP):
        tilt: float = 0.0

    model.schedule = SlotVP(tilt=1.0)
    tilted = model_settings(model)
    model.schedule = SlotVP(tilt=2.0)
    assert model_settings(model) != tilted
    model.nan = np.float32("nan")
    assert model_settings(model) == model_settings(model)
    loop: list = [1.0]
    loop += [loop, loop]
    model.loop = loop
    assert model_settings(model) != tilted


def test_round_timeout_is_checked_when_set_after_construction():
    """(``ex.round_timeout = ...`` after a first call: taken unchecked; a DistributedExecutor sends it to
    its ranks with the model's shell.)"""
    ex = DeviceExecutor(["cpu"])
    try:
        ex.round_timeout = 30
        assert ex.round_timeout == 30.0
        for bad in ("60", -1.0, float("nan"), 1e9):
            with pytest.raises(ValueError, match="^round_timeout must be"):
                ex.round_timeout = bad
        ex.round_timeout = None
        assert ex.round_timeout is None
    finally:
        ex.close()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # (JAX, imported by other tests, warns on any fork)
def test_a_dropped_device_executor_stops_its_threads_and_a_forked_child_is_told():
    """A user trial: a DeviceExecutor dropped without close() left its threads waiting for ever (20
    executors: 1 -> 41 threads); one used in a child made by os.fork() (where its threads do not
    exist) waited for ever."""
    import gc
    import os

    def ours() -> int:
        return sum(t.name.startswith("chords-cpu") for t in threading.enumerate())

    before = ours()
    for _ in range(5):
        ex = DeviceExecutor(["cpu", "cpu"])
        ex(MODEL, [x0(), x0()], [0.5, 0.5])
        del ex
    gc.collect()
    deadline = time.monotonic() + 10
    while ours() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours() == before
    with DeviceExecutor(["cpu", "cpu"]) as ex:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGALRM, lambda *a: os._exit(99))
            signal.alarm(10)
            try:
                ex(MODEL, [x0(), x0()], [0.5, 0.5])
                os._exit(3)
            except ExecutorClosed as e:
                os._exit(0 if "belongs to process" in str(e) else 2)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_model_writing_into_its_input_or_answering_on_another_device_is_named():
    """A user trial: a network doing ``x.mul_(0.5)`` overwrote the caller's noise under ``solve`` and put
    the cascade 1.80 off ``solve`` (``ProcessExecutor`` 4.74 off ``SerialExecutor``), unnoticed; an
    output on another device (the meta device here) failed as three different raw errors, one of them
    blaming the model for the library's own check. Both are ``ModelOutputError``s naming the step or
    the round and core now, on every executor."""
    def writes(x, t):
        x.mul_(0.5)
        return -x.clone()

    grid = cc.time_grid(cc.RectifiedFlow(), 6)
    x = x0(batch=1, dim=4, seed=3)
    # (at the first step the input is the caller's own x, and the message says that it changed: a user trial)
    for fn, what in ((writes, "modified its input in place .*at the first step the caller's own x, now changed"),
                     (lambda x, t: torch.zeros(x.shape, device="meta"),
                                                               "returned a tensor on device meta, expected cpu")):
        model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
        with pytest.raises(ModelOutputError, match=r"^step 0 \(stage 0, t=1\): model " + what):
            cc.solve(model, x, grid)
        with DeviceExecutor(["cpu", "cpu"]) as ex:
            for executor in (None, cc.SerialExecutor(), ex):
                with pytest.raises(ModelOutputError, match=r"^round 1, .*: model " + what):
                    cc.parallel(model, x, grid, cores=3, method="cascade", tol=0, executor=executor)
        field = cc.VectorField(lambda t, y, fn=fn: fn(y, t))
        with pytest.raises(ModelOutputError, match=r"^step 0 .*: model " + what):
            cc.solve(field, x[0].clone(), grid)
    # (a review: a view shares its version counter with every view of its storage; another thread writing
    # into another row of the caller's buffer during the call was taken for the network's write)
    buf = torch.zeros(2, 1, 4, dtype=torch.float64)
    buf[1] = x

    def elsewhere(z, t):
        buf[0] += 1.0  # (not the input)
        return -z

    model = cc.DiffusionModel(elsewhere, cc.RectifiedFlow(), "flow")
    assert torch.equal(cc.solve(model, buf[1], grid), cc.solve(cc.DiffusionModel(lambda z, t: -z, model.schedule,
                                                                                 "flow"), x, grid))
    # (a review of that: a large round's points are rows of the library's round buffers, views too, and
    # were let through; views of the library's own buffers are watched)
    def late(z, t):
        if z._base is not None:  # (writes only where its input is such a row)
            z.clamp_(-0.5, 0.5)
        return -z.clone()

    big = torch.randn(2, 70000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    late_model = cc.DiffusionModel(late, cc.RectifiedFlow(), "flow")
    for method, exact in (("paradigms", {"tol": 0}), ("cascade", {"tol": 0}), ("chords", {"stop": None})):
        with pytest.raises(ModelOutputError, match=r"^round \d+, .*: model modified its input in place"):
            cc.parallel(late_model, big, cc.time_grid(cc.RectifiedFlow(), 8), cores=4, method=method, **exact)


def test_a_replica_model_parametrised_otherwise_than_the_call_is_refused():
    """A user trial: ``replicate`` (or a ProcessExecutor factory) returning a complete VP / eps Model
    beside a rectified-flow call gave the flow result bit for bit, its parametrisation ignored (the
    engine converts the outputs as the call's model says). Refused, naming both; a Model like the
    call's is taken."""
    model = _torch_model()
    grid, x = cc.time_grid(model.schedule, 6), x0(batch=2, dim=4, seed=1)
    other = cc.DiffusionModel(model.fn, cc.VP.linear(), "eps")
    with DeviceExecutor(["cpu"], replicate=lambda fn, d: other) as ex, pytest.raises(
            ValueError, match=r"^model: the Model a worker was given \(prediction 'eps' on VP\(.*\)\) is "
                              r"parametrised otherwise than the call's \(prediction 'flow' on RectifiedFlow\(.*\)\)"):
        cc.chords(model, x, grid, cores=2, stop=None, executor=ex)
    like = cc.DiffusionModel(model.fn, cc.RectifiedFlow(), "flow")
    with DeviceExecutor(["cpu"], replicate=lambda fn, d: like) as ex:
        assert torch.equal(cc.chords(model, x, grid, cores=2, stop=None, executor=ex).x, cc.solve(model, x, grid))
    # (a false positive: schedules that differ only in t_min, where grids stop, parametrise alike; one that
    # differs in a parameter of its path does not)
    vp = cc.DiffusionModel(model.fn, cc.VP.linear(), "flow")
    vp_grid = cc.time_grid(vp.schedule, 6)
    with DeviceExecutor(["cpu"], replicate=lambda fn, d: cc.DiffusionModel(fn, cc.VP.linear(t_min=1e-4), "flow")) as ex:
        assert torch.equal(cc.chords(vp, x, vp_grid, cores=2, stop=None, executor=ex).x, cc.solve(vp, x, vp_grid))
    with DeviceExecutor(["cpu"], replicate=lambda fn, d: cc.DiffusionModel(fn, cc.VP.linear(beta_max=19.0), "flow")) \
            as ex, pytest.raises(ValueError, match="parametrised otherwise"):
        cc.chords(vp, x, vp_grid, cores=2, stop=None, executor=ex)
    # (a review: a VectorField subclass beside a plain VectorField was refused; a plain ODE's outputs are its
    # velocity whatever its class)
    class Field(cc.VectorField):
        pass

    f = lambda t, y: -y  # noqa: E731
    with DeviceExecutor(["cpu"], replicate=lambda fn, d: cc.VectorField(f)) as ex:
        assert torch.equal(cc.chords(Field(f), x, grid, cores=2, stop=None, executor=ex).x, cc.solve(Field(f), x, grid))


def test_a_network_left_in_training_mode_with_batch_norm_warns():
    """A user trial: a new nn.Module starts in train(): its BatchNorm normalised over each call's batch,
    so CHORDS' stacked rounds mixed the cores (0.047 off solve under the default executor, 0.0 after
    net.eval()), with no word. A UserWarning names the layer; eval mode, or no batch norm, is silent."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = torch.nn.Linear(4, 4).double(), torch.nn.BatchNorm1d(4).double()

        def forward(self, x, t):
            return self.bn(self.lin(x)) - x

    net = Net()
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    grid, x = cc.time_grid(model.schedule, 6), x0(batch=4, dim=4, seed=1)
    with torch.no_grad():
        with pytest.warns(UserWarning, match=r"^model: the network's batch-norm layer 'bn' is in training mode"):
            train = cc.chords(model, x, grid, cores=3, stop=None)
            assert float((train.x - cc.solve(model, x, grid)).abs().max()) > 1e-3  # (what the warning is about)
        class Config(dict):  # (a second review: reading __self__ of a closure's config object raised KeyError)
            __getattr__ = dict.__getitem__

        cfg = Config(scale=1.0)
        net.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cc.solve(cc.DiffusionModel(lambda z, t: net(z, t) * cfg.scale, cc.RectifiedFlow(), "flow"), x, grid)
        net.train()
        for wrapped in (lambda z, t: net(z, t), functools.partial(net.forward)):  # (a review: missed behind a lambda)
            with pytest.warns(UserWarning, match=r"^model: the network's batch-norm layer 'bn' is in training mode"):
                cc.chords(cc.DiffusionModel(wrapped, cc.RectifiedFlow(), "flow"), x, grid, cores=3, stop=None)
        # (a trial of false negatives: a wrapper object's attribute, a top-level lambda's global, a batch-norm
        # child in training mode under a parent in eval, one without running statistics in eval)
        class Wrapper:
            def __init__(self, net):
                self.net = net

            def __call__(self, z, t):
                return self.net(z, t)

        global _GLOBAL_NET
        _GLOBAL_NET = net
        untracked = Net()
        untracked.bn = torch.nn.BatchNorm1d(4, track_running_stats=False).double()
        untracked.eval()
        for wrapped, why in ((Wrapper(net), "is in training mode"), (_global_net_lambda, "is in training mode"),
                             (untracked, "keeps no running statistics")):
            with pytest.warns(UserWarning, match=r"^model: the network's batch-norm layer 'bn' " + why):
                cc.chords(cc.DiffusionModel(wrapped, cc.RectifiedFlow(), "flow"), x, grid, cores=3, stop=None)
        net.eval()
        net.bn.train()
        with pytest.warns(UserWarning, match=r"^model: the network's batch-norm layer 'bn' is in training mode"):
            cc.chords(model, x, grid, cores=3, stop=None)
        net.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(cc.chords(model, x, grid, cores=3, stop=None).x, cc.solve(model, x, grid))


_GLOBAL_NET = None
_global_net_lambda = lambda z, t: _GLOBAL_NET(z, t)  # noqa: E731 (a script's top-level wrapping)



def test_a_network_left_in_training_mode_with_dropout_warns():
    """A user trial: dropout left in training mode (``nn.Module``s start in ``train()``) drew a new
    mask at every call, 0.56-0.77 between executors, with no word. A ``UserWarning`` names the layer;
    eval mode, or a dropout of p = 0, is silent."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 4).double(), torch.nn.Dropout(0.2))
    model = cc.DiffusionModel(lambda z, t: net(z) - z, cc.RectifiedFlow(), "flow")
    grid, x = cc.time_grid(model.schedule, 6), x0(batch=4, dim=4, seed=1)
    with torch.no_grad():
        with pytest.warns(UserWarning, match=r"^model: the network's dropout layer '1' is in training mode"):
            a = cc.solve(model, x, grid)
        with pytest.warns(UserWarning, match="dropout"):
            assert not torch.equal(a, cc.solve(model, x, grid))  # (what the warning is about)
        for quiet in (net.eval, lambda: (net.train(), setattr(net[1], "p", 0.0))):
            quiet()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert torch.equal(cc.solve(model, x, grid), cc.solve(model, x, grid))
        # every such layer named (a torch trial: the dropout layer alone, hiding the batch-norm one)
        both = torch.nn.Sequential(torch.nn.Linear(4, 4).double(), torch.nn.Dropout(0.2), torch.nn.BatchNorm1d(4).double())
        with pytest.warns(UserWarning, match=r"^model: the network's dropout layer '1' is in training mode.*; the "
                                             r"network's batch-norm layer '2' is in training mode.*; call net.eval"):
            cc.solve(cc.DiffusionModel(lambda z, t: both(z) - z, cc.RectifiedFlow(), "flow"), x, grid)


def test_a_model_with_its_own_call_is_shape_checked_on_the_device_executor():
    """A review: declaring DeviceExecutor ``outputs_checked`` dropped the engine's shape check for a
    Model subclass with a ``_call`` of its own (which checks nothing): its (4,) outputs for (2, 4)
    points were broadcast into a wrong result, silently. The engine checks them."""
    class Raw(cc.DiffusionModel):
        def _call(self, xs, ts):
            return [self.fn(x, None)[0] for x in xs]

    model = Raw(lambda x, t: -x, cc.RectifiedFlow(), "flow")
    with DeviceExecutor(["cpu"]) as ex, torch.no_grad(), pytest.raises(  # (model.evaluate's check, on the device)
            cc.ModelOutputError, match=r"^round 1, core 0 \(.*\): model returned shape \(4,\), expected \(2, 4\)"):
        cc.chords(model, x0(batch=2, dim=4), cc.time_grid(model.schedule, 6), cores=2, stop=None, executor=ex)


class _Rounds:
    """An executor's round discipline alone (``one_round_at_a_time`` over ``_lock``), counting the rounds
    running at once."""

    def __init__(self, lock):
        self._lock, self._closed, self.inside, self.most = lock, False, 0, 0

    @chords_torch._common.one_round_at_a_time
    def round(self, model, xs, ts):
        self.inside += 1
        self.most = max(self.most, self.inside)
        time.sleep(0.2)
        self.inside -= 1
        return xs


def test_an_orphaned_round_lock_is_taken_over_by_one_waiter_and_a_reentrant_one_not_at_all():
    """A review of the takeover: eight waiters on an orphaned lock, with thread switches forced often,
    took it over two at once (2 of 20 trials ran two rounds together); a re-entrant lock
    (``DistributedExecutor``'s) that an interrupted round left is still its thread's, which re-enters it,
    and another thread that took it over ran a round beside that thread's. Now one waiter at a time looks
    and takes over, and a re-entrant lock is never taken over (its waiters end with ``ExecutorClosed``
    when the executor is closed)."""
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(3):
            ex = _Rounds(threading.Lock())
            ex._lock.acquire()  # (what a Ctrl-C as the lock was taken leaves)
            threads = [threading.Thread(target=ex.round, args=(None, [], [])) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert ex.most == 1 and not any(t.is_alive() for t in threads)
    finally:
        sys.setswitchinterval(old)
    ex = _Rounds(threading.RLock())
    ex._lock.acquire()  # (left by an interrupted round of this thread, which may go on using it)
    errors: list = []

    def other():
        try:
            ex.round(None, [2], [0.0])
        except ExecutorClosed as e:
            errors.append(e)

    t = threading.Thread(target=other, daemon=True)
    t.start()
    time.sleep(2.5)  # (past ORPHANED_S)
    assert ex.round(None, [1], [0.0]) == [1] and ex.most == 1
    ex._closed = True
    t.join(10)
    assert not t.is_alive() and len(errors) == 1 and ex.most == 1


def test_a_device_rounds_outputs_are_freed_without_the_cycle_collector():
    """A review: a call and the queue it was handed back on referred to each other, so a round's outputs
    lived until the cyclic garbage collector ran (234 of 1,600 with it off); on a GPU, memory freed late."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        with DeviceExecutor(["cpu"] * 4) as ex:
            refs = []
            for _ in range(50):
                outs = ex(MODEL, [x0() for _ in range(8)], [0.5] * 8)
                refs += [weakref.ref(o) for o in outs]
                del outs
            assert sum(r() is not None for r in refs) == 0
    finally:
        gc.enable()
