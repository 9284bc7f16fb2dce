"""chords_torch.ProcessExecutor: worker processes, shared-memory states, faults without hangs or orphans.

Exactness: float64 on CPU, every output equal to the SerialExecutor's bit for bit (the driver runs
the reference with one torch thread, as the workers do).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time

import pytest
import torch

import chords_core as cc
from chords_core.models import ModelOutputError, raised_in
from chords_torch import DeviceExecutor, ExecutorClosed, ProcessExecutor, WorkerDied, WorkerError, WorkerTimeout
from chords_torch.testing import Faulty, RunsOff, Slow, TorchLinear, Trap, _Const, gmm_problem, mlp, same_hits
from chords_torch.testing import seeded_state as x0

MODEL, FACTORY = gmm_problem(dim=4, modes=3, seed=0)




def gone(pid: int) -> bool:
    """The process no longer exists (reaped), or is a zombie about to be."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def trap_executor():
    """Two workers whose GMM network misbehaves on marker inputs (Trap)."""
    ex = ProcessExecutor(Trap(FACTORY), workers=2, round_timeout=20)
    yield ex
    ex.close()
    assert all(gone(p) for p in ex.pids)


@pytest.mark.parametrize("solver,cores", [("euler", 4), ("heun", 3), ("dpmpp_3m", 4), ("unipc", 2)])
def test_process_executor_equals_serial_bitwise(trap_executor, one_thread, solver, cores):
    grid = cc.time_grid(MODEL.schedule, 14)
    ref = cc.chords(MODEL, x0(), grid, solver, cores=cores, stop=None, executor=cc.SerialExecutor())
    res = cc.chords(MODEL, x0(), grid, solver, cores=cores, stop=None, executor=trap_executor)
    assert same_hits(res, ref) and res.rounds == ref.rounds


def test_parameters_that_require_gradients_warn(trap_executor, one_thread):
    """A trial: with gradients on and a network whose parameters require them, the result carried no
    graph to them (the workers evaluate their own copies), silently, where DeviceExecutor warns."""
    import warnings

    class Net(torch.nn.Module):  # (the driver's network: its parameters require gradients)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            return MODEL.fn(x, t) * self.w

    model = cc.DiffusionModel(Net().double(), MODEL.schedule, MODEL.prediction)
    grid = cc.time_grid(MODEL.schedule, 6)
    with pytest.warns(UserWarning, match="ProcessExecutor: the network's parameters require gradients") as seen:
        res = cc.chords(model, x0(), grid, cores=2, stop=None, executor=trap_executor)
    assert seen[0].filename == __file__ and not res.x.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            cc.chords(model, x0(), grid, cores=2, stop=None, executor=trap_executor)


def test_process_executor_new_shapes_dtypes_and_batched(trap_executor, one_thread):
    # a larger batch regrows the shared buffers; float32 states get float32 buffers
    for x in (x0(batch=7), x0(batch=2).float()):
        grid = cc.time_grid(MODEL.schedule, 6)
        model = cc.DiffusionModel(lambda x, t: MODEL.fn(x.double(), t.double()).to(x.dtype), MODEL.schedule, "x0")
        ref = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=cc.SerialExecutor())
        res = cc.chords(MODEL, x, grid, "euler", cores=3, stop=None, executor=trap_executor)
        assert res.x.dtype == x.dtype and same_hits(res, ref)
    ex = ProcessExecutor(_Const(TorchLinear(3)), workers=2, batched=True)
    try:
        vf = cc.VectorField(TorchLinear(3))
        y, grid = torch.ones(3, dtype=torch.float64), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ref = cc.chords(vf, y, grid, "heun", cores=3, stop=None, executor=cc.SerialExecutor())
        assert same_hits(cc.chords(vf, y, grid, "heun", cores=3, stop=None, executor=ex), ref)
    finally:
        ex.close()


@pytest.mark.parametrize("mode", ["raise", "exit", "shape", "nan"])
def test_worker_errors_raise_in_the_caller_and_the_executor_stays_usable(trap_executor, mode):
    xs = [x0(seed=s) for s in range(5)]
    bad = [x.clone() for x in xs]
    bad[3][0, 0] = Trap.MARKERS[mode]  # point 3 runs on worker 1
    t0 = time.monotonic()
    if mode == "raise":
        # (the point whose call raised: it named the worker alone, a trial)
        with pytest.raises(WorkerError, match=r"worker 1 \(point 3\): RuntimeError: injected failure(.|\n)*worker "
                                              r"traceback") as info:
            trap_executor(MODEL, bad, [0.5] * 5)
        assert raised_in(info.value, bad) == 3
    elif mode == "exit":  # a stray sys.exit in the model is the model's error, not the worker's end
        with pytest.raises(WorkerError, match=r"worker 1 \(points \[1, 3\]\): SystemExit"):
            trap_executor(MODEL, bad, [0.5] * 5)
    else:
        with pytest.raises(ModelOutputError, match="shape" if mode == "shape" else "non-finite") as info:
            trap_executor(MODEL, bad, [0.5] * 5)
        assert info.value.point == 3 and info.value.is_nonfinite == (mode == "nan")  # the kind, from the worker
    assert time.monotonic() - t0 < 10  # bounded (the executor's timeout is 20 s)
    good = trap_executor(MODEL, xs, [0.5] * 5)
    assert all(torch.equal(a, b) for a, b in zip(good, cc.SerialExecutor()(MODEL, xs, [0.5] * 5)))


def test_a_worker_killed_mid_run_raises_and_leaves_no_process():
    ex = ProcessExecutor(Slow(FACTORY, 0.02), workers=2, round_timeout=20)
    pids = ex.pids
    killer = threading.Timer(0.4, os.kill, (pids[1], 9))
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(WorkerDied, match=rf"worker 1 \(pid {pids[1]}\) died .*SIGKILL"):
            cc.chords(MODEL, x0(), cc.time_grid(MODEL.schedule, 200), "euler", cores=2, stop=None, executor=ex)
        assert time.monotonic() - t0 < 15
        with pytest.raises(ExecutorClosed):
            ex(MODEL, [x0()], [0.5])
    finally:
        killer.cancel()
        ex.close()
    assert all(gone(p) for p in pids)


@pytest.mark.parametrize("mode,error,match", [("die", WorkerDied, "died"), ("hang", WorkerTimeout, "within 1 s")])
def test_dying_or_hanging_worker_raises_within_the_timeout(mode, error, match):
    ex = ProcessExecutor(Trap(FACTORY), workers=2, round_timeout=1.0)
    pids = ex.pids
    xs = [x0(), x0()]
    xs[0][0, 0] = Trap.MARKERS[mode]
    t0 = time.monotonic()
    try:
        with pytest.raises(error, match=match):
            ex(MODEL, xs, [0.5, 0.5])
        assert time.monotonic() - t0 < 10
    finally:
        ex.close()
    assert all(gone(p) for p in pids)


def _broken_factory():
    raise ValueError("no weights here")


def test_start_up_errors():
    with pytest.raises(WorkerError, match="factory failed: ValueError: no weights here"):
        ProcessExecutor(_broken_factory, workers=1)
    with pytest.raises(TypeError, match="picklable"):
        ProcessExecutor(lambda: None, workers=1)
    with pytest.raises(ValueError, match="workers"):
        ProcessExecutor(FACTORY, workers=0)
    with pytest.raises(ValueError, match="threads"):
        ProcessExecutor(FACTORY, threads=1.5)
    with pytest.raises(ValueError, match="start_method"):
        ProcessExecutor(FACTORY, start_method="teleport")
    with pytest.raises(TypeError, match="factory"):
        ProcessExecutor(3)


def test_a_model_or_factory_the_workers_cannot_import_is_named_and_the_executor_stays_usable(
        trap_executor, monkeypatch):
    """A review: a Model subclass the workers cannot import (defined in the __main__ of a notebook or of
    ``python -c``) pickled in the driver, then killed each worker as it unpickled the message: an
    unexplained WorkerDied, the executor closed. Now the next evaluation raises a WorkerError naming
    the cause, and the executor stays usable; a factory defined there is refused at once (the workers
    died at their start)."""
    import sys
    import types

    import chords_torch.process as proc

    here_only = types.ModuleType("chords_test_driver_only")  # importable in this process only
    sys.modules[here_only.__name__] = here_only
    try:
        class DriverOnly(cc.DiffusionModel):
            pass

        DriverOnly.__module__ = here_only.__name__
        DriverOnly.__qualname__ = "DriverOnly"
        here_only.DriverOnly = DriverOnly
        odd = DriverOnly(MODEL.fn, MODEL.schedule, MODEL.prediction)
        point = x0(batch=2)
        with pytest.raises(WorkerError, match="could not load the model's shell .*define it in a module"):
            trap_executor(odd, [point], [0.5])
        ref = cc.SerialExecutor()(MODEL, [point], [0.5])
        assert torch.equal(trap_executor(MODEL, [point], [0.5])[0], ref[0])
    finally:
        del sys.modules[here_only.__name__]

    def factory():
        return FACTORY()

    factory.__module__, factory.__qualname__ = "__main__", "factory"
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # (no __file__: python -c)
    with pytest.raises(TypeError, match="^factory: .*factory is defined in the __main__ of a notebook"):
        ProcessExecutor(factory, workers=1, start_method="forkserver")
    assert proc._interactive_main(functools.partial(factory)) and not proc._interactive_main(FACTORY)


class _TrainingNet(torch.nn.Module):
    """A network left in training mode with a batch-norm layer."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4).double()

    def forward(self, x, t):
        return self.bn(x)


def test_a_workers_own_network_is_checked_and_its_arguments_as_everywhere(one_thread):
    """A user trial: a worker's network that writes into its input was accepted (the serial executor
    refuses it: its points are views of the worker's shared buffer, which the check skipped); a
    factory's network in training mode was not warned of (only the call's model, which the workers do
    not run, was read); ``workers=np.int64(2)`` was refused and ``batched="no"`` taken as True."""
    import numpy as np

    grid = cc.time_grid(MODEL.schedule, 6)
    with ProcessExecutor(Faulty(FACTORY, "inplace", after=2), workers=2) as ex:
        with pytest.raises(ModelOutputError, match=r"^round 2, core 0 .*model modified its input in place"):
            cc.chords(MODEL, x0(), grid, cores=2, stop=None, executor=ex)
    with pytest.warns(UserWarning, match=r"^ProcessExecutor: factory: the network's batch-norm layer 'bn' is in "
                                         "training mode"):
        ProcessExecutor(_TrainingNet, workers=1).close()
    with ProcessExecutor(FACTORY, workers=np.int64(1), threads=np.int64(1)) as ex:
        assert ex.workers == 1
    for bad in ("no", 1):
        with pytest.raises(ValueError, match="^batched"):
            ProcessExecutor(FACTORY, workers=1, batched=bad)


def test_a_factory_defined_under_the_main_guard_is_named_by_the_worker(tmp_path):
    """A user trial: a script defining its factory under ``if __name__ == '__main__':`` (as the docs
    advise for the executor's construction) got the forkserver's AttributeError traceback and then
    an unexplained ``WorkerDied ... (start)``: the worker could not find the factory when it imported
    the script. The driver pickles the factory now and the worker says why it cannot load it."""
    import subprocess
    import sys

    script = tmp_path / "guarded.py"
    script.write_text(
        "from chords_torch import ProcessExecutor, WorkerError\n"
        "from chords_torch.testing import gmm_problem\n"
        "if __name__ == '__main__':\n"
        "    def factory():\n"
        "        return gmm_problem(dim=4, modes=3, seed=0)[1]()\n"
        "    try:\n"
        "        ProcessExecutor(factory, workers=1, start_method='spawn')\n"
        "    except WorkerError as e:\n"
        "        print('WorkerError:', str(e).splitlines()[0])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("WorkerError: worker 0: factory: the worker could not load it (AttributeError"), out
    assert "define it at module level, above the guard" in out.stdout and "Traceback" not in out.stderr, out


def test_a_script_without_the_main_guard_is_told_so(tmp_path):
    """A user trial: a script that creates the executor at its top level, without the guard, got an
    unexplained ``WorkerDied ... (start)``, each worker's stderr blaming the factory's pickling (each
    worker, importing the script, created an executor of its own). The worker's error and the
    driver's now say what happened."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from chords_torch import ProcessExecutor\n"
        "from chords_torch.testing import gmm_problem\n"
        "ProcessExecutor(gmm_problem(dim=4, modes=3, seed=0)[1], workers=1, start_method='spawn').close()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "WorkerDied: ProcessExecutor: worker 0" in out.stderr, out.stderr
    assert "must sit under `if __name__ == '__main__':`" in out.stderr, out.stderr  # (the driver's)
    assert "RuntimeError: ProcessExecutor: created while this process starts up" in out.stderr, out.stderr  # (the worker's)
    assert "picklable" not in out.stderr, out.stderr


@pytest.mark.parametrize("dtype, out_order", [(torch.float32, "as given"), (torch.bfloat16, "as given"),
                                              (torch.bfloat16, "C"), (torch.bfloat16, "channels_last")])
def test_a_channels_last_state_reaches_the_workers_in_its_memory_order(dtype, out_order):
    """A user trial: the shared buffers are C-ordered, so a channels_last state reached the workers'
    network C-ordered and came back so: a convolution rounded differently from the serial executor
    (7.5e-8 relative in float32, 6.1e-3 in bfloat16). The workers lay the points out in the state's
    order again, and the outputs come back in the order the network gave them (a review: in the
    points' order, a network returning C order was given channels_last points the next round; one
    returning channels_last from a C-ordered state differed before either): the serial executor's
    result bit for bit, in its memory order."""
    from helpers import conv_net

    net = conv_net(out_order)
    model = cc.DiffusionModel(net, cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 6)
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    states = [x.contiguous(memory_format=torch.channels_last)] + ([x] if out_order == "channels_last" else [])
    with torch.no_grad(), ProcessExecutor(functools.partial(conv_net, out_order), workers=2) as ex:
        for y in states:
            for method in ("chords", "cascade"):
                res = cc.parallel(model, y, grid, "euler", cores=3, method=method, executor=ex)
                ref = cc.parallel(model, y, grid, "euler", cores=3, method=method, executor=cc.SerialExecutor())
                assert torch.equal(res.x, ref.x) and res.x.stride() == ref.x.stride(), (method, res.x.stride())
    # (a layout-sensitive network, else the test could not fail: the C-ordered state's serial run differs; in
    # float32, where its convolution rounds by layout: in bfloat16 only the engine's fused multiply-adds did,
    # which CPU tensors no longer take, _backend.axpy)
    runs = [cc.parallel(model, y, grid, "euler", cores=3, method="cascade", executor=cc.SerialExecutor()).x
            for y in (states[0].float(), states[0].float().contiguous())]
    assert not torch.equal(*runs)


@pytest.mark.parametrize("channels, out_order", [(4, "channels_last"), (1, "channels_last"), (4, "as given")])
def test_the_points_of_a_round_keep_their_own_memory_orders(channels, out_order):
    """A review: a round can mix memory orders (a C-ordered state's steps with a channels_last
    network's outputs, Heun, DPM++(2M)), and one order for the round (C where they differ) evaluated
    them all C-ordered, 1.9e-5 off the serial executor; a channels_last tensor of one channel, which
    torch calls contiguous, was evaluated C-ordered (1.5e-5). Each point keeps its own order now, its
    strides included: the serial executor's result bit for bit (a later review: a batch of one made
    from an HWC image, strides (4, 1, 20, 4), rebuilt as a standard channels_last tensor, was evaluated
    differently, 1.2e-4 off in float32)."""
    from helpers import conv_net

    model = cc.DiffusionModel(conv_net(out_order, channels), cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 6)
    y = torch.randn(2, channels, 5, 5, generator=torch.Generator().manual_seed(0))
    hwc = torch.randn(5, 5, channels, generator=torch.Generator().manual_seed(1)).permute(2, 0, 1).unsqueeze(0)
    states = [y, y.to(memory_format=torch.channels_last), hwc]
    with torch.no_grad(), ProcessExecutor(functools.partial(conv_net, out_order, channels), workers=2) as ex:
        for state in states:
            for solver, method in (("heun", "chords"), ("dpmpp_2m", "cascade")):
                res = cc.parallel(model, state, grid, solver, cores=3, method=method, executor=ex)
                ref = cc.parallel(model, state, grid, solver, cores=3, method=method, executor=cc.SerialExecutor())
                assert torch.equal(res.x, ref.x) and res.x.stride() == ref.x.stride(), (solver, method, state.stride())


def test_closing_releases_the_shared_memory_buffers():
    """A user trial: a closed executor still bound to a name (after its ``with`` block, or closed by a
    Ctrl-C) held its shared-memory buffers, 2 x the round's points: 1 GiB at 64 MiB x 8 cores, in
    /dev/shm until the object was collected."""
    import weakref

    with ProcessExecutor(FACTORY, workers=2) as ex:
        point = x0(batch=2)
        ex(MODEL, [point] * 4, [0.5, 0.4, 0.3, 0.2])
        held = [weakref.ref(t) for pair in ex._bufs if pair is not None for t in pair]
        assert len(held) == 4 and all(r() is not None and r().is_shared() for r in held)
    assert all(r() is None for r in held)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_factory_holding_a_lock_reaches_workers_that_are_not_forked(start_method):
    """A review: pickled by the driver before the worker was spawned (for the main-guard message above),
    a factory holding a multiprocessing lock was refused ("Lock objects should only be shared between
    processes through inheritance"), where multiprocessing sends it while spawning. It is sealed while
    spawning now, and loaded by the worker."""
    import torch.multiprocessing as tmp
    from helpers import build_under_lock

    factory = functools.partial(build_under_lock, tmp.get_context(start_method).Lock(), FACTORY)
    point = x0(batch=2)
    with ProcessExecutor(factory, workers=2, start_method=start_method) as ex:
        assert torch.equal(ex(MODEL, [point, point], [0.5, 0.4])[1], cc.SerialExecutor()(MODEL, [point], [0.4])[0])


@pytest.mark.parametrize("method", sorted(cc.METHODS))
def test_every_method_runs_on_the_process_executor(trap_executor, one_thread, method):
    grid = cc.time_grid(MODEL.schedule, 10)
    ref = cc.parallel(MODEL, x0(), grid, "euler", cores=2, method=method, executor=cc.SerialExecutor())
    res = cc.parallel(MODEL, x0(), grid, "euler", cores=2, method=method, executor=trap_executor)
    assert torch.equal(res.x, ref.x) and (res.rounds, res.nfe) == (ref.rounds, ref.nfe)


def test_an_interrupted_call_breaks_the_executor_instead_of_leaving_stale_replies():
    """Ctrl-C (KeyboardInterrupt) between sending a round and reading its replies: the replies would
    be read by the next call, one round late. The executor closes instead; no process is left."""
    import _thread

    ex = ProcessExecutor(Slow(FACTORY, 0.05), workers=2, round_timeout=20)
    pids = ex.pids
    grid = cc.time_grid(MODEL.schedule, 40)
    gather, calls = ex._gather, []

    def interrupted(ws, timeout, what):  # the Ctrl-C arrives while the 3rd round's replies are awaited
        calls.append(what)
        if calls.count("evaluate") == 3:  # (a timer's Ctrl-C could land between rounds on a loaded machine:
            _thread.interrupt_main()      # nothing in flight, the executor rightly left open; CI failed so)
        return gather(ws, timeout, what)

    ex._gather = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            cc.chords(MODEL, x0(), grid, "euler", cores=2, stop=None, executor=ex)
        # (it says why: a user trial read "closed by the user or after a dead / hung worker")
        with pytest.raises(ExecutorClosed, match=r"closed \(a call was interrupted \(KeyboardInterrupt\)"):
            cc.chords(MODEL, x0(), grid, "euler", cores=2, stop=None, executor=ex)
    finally:
        ex.close()
    assert all(gone(p) for p in pids)


@pytest.mark.parametrize("cores", [1, 2])
def test_a_worker_that_died_while_idle_raises_worker_died_then_closed(cores):
    ex = ProcessExecutor(FACTORY, workers=2, round_timeout=20)
    pids = ex.pids
    grid = cc.time_grid(MODEL.schedule, 6)
    try:
        ref = cc.chords(MODEL, x0(), grid, "euler", cores=cores, stop=None, executor=cc.SerialExecutor())
        assert torch.equal(cc.chords(MODEL, x0(), grid, "euler", cores=cores, stop=None, executor=ex).x, ref.x)
        os.kill(pids[1], 9)
        deadline = time.monotonic() + 10
        while not gone(pids[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # idle: the death has reached the driver's side of the pipe (EOF) before the next call
        with pytest.raises(WorkerDied, match=r"worker 1 .* died \(while idle\).*SIGKILL"):
            cc.chords(MODEL, x0(), grid, "euler", cores=cores, stop=None, executor=ex)
        with pytest.raises(ExecutorClosed):  # never a result from a half-dead executor
            cc.chords(MODEL, x0(), grid, "euler", cores=1, stop=None, executor=ex)
    finally:
        ex.close()
    assert all(gone(p) for p in pids)


def _session(sid: int) -> set[int]:
    """The live processes of session ``sid`` (from /proc: field 6 of stat), zombies excluded."""
    members = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                members.add(int(d))
    return members


@pytest.mark.parametrize("slow", ["Slow(factory, 60.0)", "Faulty(factory, 'gil')"])
def test_workers_exit_when_the_driver_dies_in_the_middle_of_a_model_call(tmp_path, slow):
    """SIGKILL the driver while both workers are inside a 60 s model call: they exit by themselves,
    and so do the forkserver and the resource tracker (every process of the driver's session). Also
    where the call holds the GIL (``Faulty``'s "gil"), which keeps the workers' watch thread from
    running (a trial: they outlived the driver): the kernel ends them with the forkserver."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(
        "import torch, chords_core as cc\n"
        "from chords_torch import ProcessExecutor\n"
        "from chords_torch.testing import Faulty, Slow, gmm_problem, seeded_state\n"
        "if __name__ == '__main__':\n"
        "    model, factory = gmm_problem(dim=4, modes=3, seed=0)\n"
        f"    ex = ProcessExecutor({slow}, workers=2, round_timeout=None)\n"
        "    print(*ex.pids, flush=True)\n"
        "    ex(model, [seeded_state(), seeded_state(seed=1)], [0.5, 0.4])\n")
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        pids = [int(v) for v in driver.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(1.0)  # the workers are now inside the slow model call
        helpers = _session(driver.pid) - {driver.pid, *pids}
        assert len(helpers) >= 1, "expected a forkserver (and a resource tracker) in the driver's session"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        deadline = time.monotonic() + 15
        while _session(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(gone(p) for p in pids), "a worker outlived its driver"
        assert not _session(driver.pid), f"outlived the driver: {_session(driver.pid)} (helpers were {helpers})"
    finally:
        if driver.poll() is None:
            driver.kill()
        with contextlib.suppress(ProcessLookupError):  # (a failing case: its workers and forkserver too)
            os.killpg(driver.pid, signal.SIGKILL)


def test_threads_sharing_the_executor_take_turns_and_a_point_that_needs_gradients_is_refused(trap_executor,
                                                                                             one_thread):
    """Two threads on one executor read each other's replies (a wrong result without error, or an
    UnpicklingError, or a WorkerDied naming a live worker): calls now take turns. Gradients cannot
    cross the processes: the result came back requiring gradients, with the model's part missing
    (89% off SerialExecutor's x.grad, no error); such a point is refused naming x, as one carrying a
    forward-mode tangent and one inside a torch.func transform."""
    grid = cc.time_grid(MODEL.schedule, 8)
    states = [x0(batch=2, dim=4, seed=s) for s in range(2)]
    refs = [cc.parallel(MODEL, x, grid, "dpmpp_2m", cores=4, executor=cc.SerialExecutor()) for x in states]
    got: list = [[], []]

    def work(i: int) -> None:
        try:
            for _ in range(4):
                got[i].append(cc.parallel(MODEL, states[i], grid, "dpmpp_2m", cores=4, executor=trap_executor))
        except Exception as e:  # reported below
            got[i].append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(2):
        assert len(got[i]) == 4 and all(isinstance(r, cc.Result) and torch.equal(r.x, refs[i].x) for r in got[i])

    x = states[0].clone().requires_grad_(True)
    with pytest.raises(TypeError, match=r"^x: ProcessExecutor evaluates the model in other processes, where gradients"):
        cc.chords(MODEL, x, grid, cores=2, executor=trap_executor)
    with torch.no_grad():  # no gradients wanted: it runs, as the serial executor does
        assert same_hits(cc.chords(MODEL, x, grid, cores=2, stop=None, executor=trap_executor),
                         cc.chords(MODEL, x, grid, cores=2, stop=None, executor=cc.SerialExecutor()))
    # a user trial: forward-mode tangents came back without the model's part (3.96 off 5.47, silently), and
    # torch.func.jvp raised "Cannot access storage of TensorWrapper", closing the executor
    import torch.autograd.forward_ad as fwAD

    v = torch.ones_like(states[0])
    with fwAD.dual_level(), pytest.raises(TypeError, match=r"^x: ProcessExecutor .* forward-mode tangent"):
        cc.chords(MODEL, fwAD.make_dual(states[0], v), grid, cores=2, stop=None, executor=trap_executor)
    for transform in (lambda f: torch.func.jvp(f, (states[0],), (v,)), lambda f: torch.func.grad(
            lambda y: f(y).sum())(states[0])):
        with pytest.raises(TypeError, match=r"^executor: ProcessExecutor .* torch\.func transform"):
            transform(lambda y: cc.chords(MODEL, y, grid, cores=2, stop=None, executor=trap_executor).x)
    with pytest.raises(TypeError, match="meta device"):  # (NotImplementedError, and the executor closed)
        trap_executor(MODEL, [torch.empty(2, 4, device="meta")], [0.5])
    assert same_hits(cc.chords(MODEL, states[1], grid, cores=2, stop=None, executor=trap_executor), cc.chords(
        MODEL, states[1], grid, cores=2, stop=None, executor=cc.SerialExecutor()))


def test_process_executor_follows_the_models_settings_inference_mode_and_names_an_unpicklable_model(
        trap_executor, one_thread):
    """A user trial: ``check_outputs=False`` set after a first call was not sent (the workers kept
    raising on nan); a first call under ``torch.inference_mode()`` made inference-tensor buffers that a
    later call outside it could not write (the executor closed, its workers killed); a model whose shell
    does not pickle (a lambda on it) raised a raw PicklingError and closed the executor, nothing sent."""
    import copy
    import functools

    ex = trap_executor
    model = copy.copy(MODEL)
    nan_point = torch.full((2, 4), Trap.MARKERS["nan"], dtype=torch.float64)
    with pytest.raises(ModelOutputError):
        ex(model, [nan_point], [0.5])
    model.check_outputs = False
    assert torch.isnan(ex(model, [nan_point], [0.5])[0]).all()
    grid = cc.time_grid(MODEL.schedule, 6)
    ref = cc.chords(MODEL, x0(batch=5), grid, cores=3, stop=None, executor=cc.SerialExecutor())
    fresh = ProcessExecutor(FACTORY, workers=2)
    try:
        with torch.inference_mode():
            first = cc.chords(MODEL, x0(batch=5), grid, cores=3, stop=None, executor=fresh)
        with torch.no_grad():
            second = cc.chords(MODEL, x0(batch=5), grid, cores=3, stop=None, executor=fresh)
        assert same_hits(first, ref) and same_hits(second, ref)
        odd = copy.copy(MODEL)
        odd.note = functools.partial(lambda: None)  # (a lambda inside: the shell does not pickle)
        with pytest.raises(TypeError, match="^model: its shell .* must pickle to reach the workers"):
            cc.chords(odd, x0(batch=5), grid, cores=3, stop=None, executor=fresh)
        odd.note = torch.ones(2, requires_grad=True) * 2  # plain pickle takes it, torch's reductions do not
        with pytest.raises(TypeError, match="^model: its shell .* non-leaf tensor"):
            cc.chords(odd, x0(batch=5), grid, cores=3, stop=None, executor=fresh)
        assert same_hits(cc.chords(MODEL, x0(batch=5), grid, cores=3, stop=None, executor=fresh), ref)
    finally:
        fresh.close()


def test_a_changed_model_carrying_a_tensor_leaks_no_file_descriptor(trap_executor):
    """A tensor on the model travels in its shell as a shared-memory descriptor that one unpickle takes:
    the shell was pickled once more to check it, and that copy's descriptor stayed open in the driver
    (one per model change: 30 more after 30 changes)."""
    import copy

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    xs = [x0(), x0()]
    ref = cc.SerialExecutor()(MODEL, xs, [0.5, 0.5])
    before = None
    for i in range(12):
        model = copy.copy(MODEL)
        model.extra = torch.full((3,), float(i))  # a new model each call: its shell goes to the workers again
        out = trap_executor(model, xs, [0.5, 0.5])
        assert all(torch.equal(a, b) for a, b in zip(out, ref))
        if i == 1:
            before = open_fds()
    assert open_fds() <= before + 2


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # (JAX, imported by other tests, warns on any fork)
def test_a_forked_child_neither_uses_nor_stops_the_drivers_workers(trap_executor):
    """A user trial: a child made by os.fork() that exited normally terminated the driver's workers
    (multiprocessing's exit handler listed them; the driver's next call: "worker died while idle"),
    and one that used the executor got a raw AssertionError."""
    xs = [x0(), x0(seed=1)]
    ref = cc.SerialExecutor()(MODEL, xs, [0.5, 0.5])
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            trap_executor(MODEL, xs, [0.5, 0.5])
        except ExecutorClosed as e:
            code = 0 if "belongs to process" in str(e) else 2
        except BaseException:
            code = 4
        from multiprocessing import util

        if code == 0:
            signal.signal(signal.SIGALRM, lambda *a: os._exit(99))
            signal.alarm(20)
            util._exit_function()  # what a normal exit runs: multiprocessing's handler (it terminated the workers)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    out = trap_executor(MODEL, xs, [0.5, 0.5])
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_close_from_another_thread_during_a_long_round_raises_executor_closed_in_the_caller():
    """A user trial: close() during a model call longer than its grace period raised OSError (Bad file
    descriptor: the caller's error path and close() both closed the pipes) in 3 of 8 runs, and the
    waiting caller got WorkerDied (SIGTERM) for what the user did."""
    ex = ProcessExecutor(Slow(FACTORY, 4.0), workers=2, round_timeout=30)
    pids = ex.pids
    caught: list = []

    def call():
        try:
            ex(MODEL, [x0(), x0()], [0.5, 0.5])
            caught.append("finished")
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.0)
    ex.close()  # no error
    t.join(30)
    assert len(caught) == 1 and isinstance(caught[0], ExecutorClosed), caught
    assert "closed (by another thread) while a round waited" in str(caught[0])
    assert all(gone(p) for p in pids)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # (JAX, imported by other tests, warns on any fork)
def test_a_fork_taken_mid_round_gives_a_child_that_is_told_not_one_that_waits():
    """A review: with another thread inside a round at the fork, the child's call waited for ever on
    the round lock (held by a thread the child does not have) before reaching the process check."""
    ex = ProcessExecutor(Slow(FACTORY, 1.5), workers=2, round_timeout=30)
    try:
        t = threading.Thread(target=ex, args=(MODEL, [x0(), x0()], [0.5, 0.5]))
        t.start()
        time.sleep(0.5)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGALRM, lambda *a: os._exit(99))
            signal.alarm(10)
            try:
                ex(MODEL, [x0()], [0.5])
                os._exit(3)
            except ExecutorClosed:
                os._exit(0)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        t.join(30)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        ex.close()


def test_several_bad_outputs_in_a_round_name_the_first_in_point_order(trap_executor):
    """A user trial: with nan at points 1 and 2 (point 2 on worker 0, point 1 on worker 1) the executor
    named point 2, worker 0's first, where every other executor names point 1; CHORDS then retired the
    wrong core and the window methods cut more sweeps (254 of 480 runs differed from serial)."""
    xs = [x0(seed=s) for s in range(4)]
    for k in (1, 2):
        xs[k] = xs[k].clone()
        xs[k][0, 0] = Trap.MARKERS["nan"]
    with pytest.raises(ModelOutputError) as info:
        trap_executor(MODEL, xs, [0.5] * 4)
    assert info.value.point == 1 and info.value.is_nonfinite


def test_a_round_with_a_raise_and_a_bad_output_raises_the_models_exception_as_the_batched_executor(trap_executor):
    """A user trial: with nan at point 1 and an exception at point 2, the default (batched) executor
    raised the model's exception, the process and device executors the ModelOutputError (so CHORDS
    could retire a core and go on where the default executor's run stopped)."""
    xs = [x0(seed=s) for s in range(4)]
    xs[1] = xs[1].clone()
    xs[1][0, 0] = Trap.MARKERS["nan"]
    xs[2] = xs[2].clone()
    xs[2][0, 0] = Trap.MARKERS["raise"]
    with pytest.raises(WorkerError, match="injected failure"):
        trap_executor(MODEL, xs, [0.5] * 4)
    with DeviceExecutor(["cpu", "cpu"], replicate=lambda fn, d: Trap(FACTORY)()) as ex:
        with pytest.raises(WorkerError, match="injected failure"):
            ex(MODEL, xs, [0.5] * 4)


def test_the_callers_autocast_reaches_the_device_threads_and_the_worker_processes(one_thread):
    """A user trial: under ``torch.autocast`` the device threads and the worker processes evaluated in
    full precision (autocast is thread-local), 1.3e-3 off ``SerialExecutor``, silently; they now enter
    the caller's autocast as they do its grad mode."""
    factory = functools.partial(mlp, dim=8, width=16, depth=2)
    model = cc.DiffusionModel(factory(), cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(model.schedule, 8)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    run = functools.partial(cc.chords, model, x, grid, "euler", cores=4, stop=None)
    with torch.no_grad():
        plain = run(executor=cc.SerialExecutor())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = run(executor=cc.SerialExecutor())
            with DeviceExecutor(["cpu", "cpu"]) as ex:
                dev = run(executor=ex)
            with ProcessExecutor(factory, workers=2, round_timeout=60) as ex:
                proc = run(executor=ex)
        with DeviceExecutor(["cpu", "cpu"]) as ex:  # and none where the caller has none
            dev_plain = run(executor=ex)
    assert not torch.equal(ref.x, plain.x)  # (autocast changes this network's outputs)
    assert same_hits(dev, ref) and same_hits(proc, ref) and same_hits(dev_plain, plain)


def test_a_retirement_on_worker_processes_takes_the_slower_cores_outputs(one_thread):
    """The workers pass the outputs of their points before a bad one through the shared buffers
    (``ModelOutputError.done``), so a retirement costs no round evaluated again, as in process: the
    rounds and outputs of the serial executor (a round more per retirement before)."""
    field = cc.VectorField(RunsOff(), batched=True)
    grid, x = torch.linspace(0.0, 1.0, 41).numpy(), 5.0 * torch.ones(2, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="retired"):
        ref = cc.chords(field, x, grid, init=(0, 4, 12, 30), stop=None, executor=cc.SerialExecutor())
    with ProcessExecutor(_Const(RunsOff()), workers=2, round_timeout=20) as ex:
        for batched in (True, False):
            ex.batched = batched
            with pytest.warns(RuntimeWarning, match="retired"):
                res = cc.chords(field, x, grid, init=(0, 4, 12, 30), stop=None, executor=ex)
            assert res.rounds == ref.rounds == 40 and res.nfe == ref.nfe
            assert same_hits(res, ref)


def test_shares_no_worker_fetched_are_released_when_the_executor_breaks(one_thread):
    """A user trial: a Ctrl-C while the workers were being handed their shared buffers (the first round)
    left the buffers' descriptors in multiprocessing's resource sharer until the driver exited (313 in
    150 interrupted calls; 64 MiB for two 16 MiB buffers). Here the worker is stopped (SIGSTOP) so that
    it cannot fetch them, and the round times out: the executor breaks and releases them."""
    from multiprocessing import resource_sharer

    from chords_torch import process as proc

    ex = ProcessExecutor(FACTORY, workers=1, round_timeout=0.5)
    before = proc._shared_key()
    os.kill(ex.pids[0], signal.SIGSTOP)
    try:
        with pytest.raises(WorkerTimeout):
            cc.chords(MODEL, x0(), cc.time_grid(MODEL.schedule, 6), cores=2, stop=None, executor=ex)
        assert proc._shared_key() > before  # (the buffers were shared)
        cache = resource_sharer._resource_sharer._cache
        assert not [k for k in cache if k > before]
    finally:
        with contextlib.suppress(OSError):
            os.kill(ex.pids[0], signal.SIGCONT)
        ex.close()
    assert gone(ex.pids[0])


def test_a_garbage_collected_executor_does_not_wait_for_its_workers():
    """A user trial: a Ctrl-C while an executor dropped without close() was garbage collected was lost
    ("Exception ignored in: <finalize object>"), the finalizer waiting up to 2 s for the workers. Its
    finalizer now sends the stop and returns; close() still waits."""
    import multiprocessing as mp

    from chords_torch import process as proc

    class Unjoinable:
        terminated = False

        def join(self, timeout=None):
            raise AssertionError("the finalizer waited for a worker")

        def is_alive(self):
            return True

        def terminate(self):  # (a worker inside a model call reads the stop only after it: a review)
            self.terminated = True

    mine, theirs = mp.Pipe()
    worker = Unjoinable()
    proc._shutdown([worker], [mine], 2.0, os.getpid(), wait=False)
    assert theirs.recv() == ("stop",) and mine.closed and worker.terminated
    ex = ProcessExecutor(FACTORY, workers=1)
    pid = ex.pids[0]
    assert ex._finalizer.peek()[2][-1] is False  # (the registered shutdown does not wait)
    del ex
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_a_worker_whose_driver_closed_the_pipe_leaves_quietly(capfd):
    """A user trial: a Ctrl-C while the executor started its workers closed their pipes, and each worker
    printed a BrokenPipeError traceback as its ready message failed."""
    from chords_torch import process as proc

    class Closed:
        def send(self, msg):
            raise BrokenPipeError(32, "Broken pipe")

    handler, threads, env = signal.getsignal(signal.SIGINT), torch.get_num_threads(), dict(os.environ)
    try:
        proc._worker_main(Closed(), FACTORY, 1, 0, None)  # (returns, where it raised)
    finally:  # (what a worker sets up for itself, undone in this process)
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
    assert "Traceback" not in capfd.readouterr().err


def test_a_full_shared_memory_file_system_raises_a_memory_error_and_leaves_no_file(monkeypatch):
    """A trial with Docker's 64 MB /dev/shm: a 23 MiB state's buffers raised torch's bare
    ``RuntimeError`` ("unable to allocate shared memory(shm) ... No space left on device"), and a
    /dev/shm/torch_<pid>_* file stayed after the process exited. Now a ``MemoryError`` says what a
    worker's buffers need and how to make room, and this process's leftover file is removed (torch's
    "file_descriptor" strategy unlinks the segments in use)."""
    if not os.path.isdir("/dev/shm") or torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        pytest.skip("the leftover segments are torch's file_descriptor strategy's, in /dev/shm")
    leftover = f"/dev/shm/torch_{os.getpid()}_chords_test_leftover"
    grid = cc.time_grid(MODEL.schedule, 4)
    with ProcessExecutor(FACTORY, workers=2) as ex:

        def full(self):
            with open(leftover, "wb"):  # (what torch leaves behind when it fails)
                pass
            raise RuntimeError(f"unable to allocate shared memory(shm) for file <{leftover[8:]}>: No space left on "
                               "device (28)")

        monkeypatch.setattr(torch.Tensor, "share_memory_", full)
        with pytest.raises(MemoryError, match=r"no room in shared memory for a worker's buffers \(0\.0 MiB: .*"
                                              r"--shm-size.*No space left on device"):
            cc.chords(MODEL, x0(), grid, "euler", cores=2, stop=None, executor=ex)
        monkeypatch.undo()
        with pytest.raises(ExecutorClosed):
            cc.chords(MODEL, x0(), grid, "euler", cores=2, stop=None, executor=ex)
    assert not os.path.exists(leftover)
