"""chords_jax across two processes (``jax.distributed``, CPU collectives): equal to the numpy core.

Two interpreters start as two "hosts" with 2 CPU devices each, join one coordinator on localhost
and shard the core slots over the global mesh of 4 devices, as one process per host would on a
cluster. Each prints one JSON line: the relative error of every run against the numpy core
(float64), the sharding of the result, and the message of a non-finite output raised after the
run. The processes are killed if they outlast the timeout; none is left behind.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[2]}", num_processes=2,
                           process_id=int(sys.argv[1]), initialization_timeout=60)
import jax.numpy as jnp
import numpy as np
import chords_core as cc
import chords_jax as cj

W = np.random.default_rng(1).standard_normal((4, 4)) / 2.0
def fn(x, t):
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ W + t[:, None]) * 0.5 + 0.2 * x

def fn_args(x, t, w):
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.tanh(x @ w + t[:, None]) * 0.5 + 0.2 * x

def err(got, ref):
    pairs = [(g.x, h.x) for g, h in zip(got.hits, ref.hits)] + [(got.x, ref.x), (got.coarse, ref.coarse)]
    same = (got.rounds, got.nfe, len(got.hits)) == (ref.rounds, ref.nfe, len(ref.hits))
    e = max(float(np.max(np.abs(np.asarray(a) - b))) / max(1.0, float(np.max(np.abs(b)))) for a, b in pairs)
    return e if same else float("inf")

mesh = jax.sharding.Mesh(np.array(jax.devices()), (cj.AXIS,))
out = {"process": jax.process_index(), "devices": jax.device_count(), "local": jax.local_device_count(), "runs": []}
x = np.random.default_rng(0).standard_normal((2, 4))
sched = cc.VP.cosine()
grid = cc.time_grid(sched, 20, "logsnr")
model = cc.DiffusionModel(fn, sched, "eps")
ref = cc.chords(model, x, grid, "dpmpp_2m", cores=8, stop=None)
got = cj.chords(model, x, grid, "dpmpp_2m", cores=8, stop=None, devices=mesh)
out["runs"].append(["dpmpp_2m K=8, global mesh", err(got, ref)])
out["replicated"] = bool(got.x.sharding.is_fully_replicated) and not got.x.is_fully_addressable
got = cj.chords(model, x, grid, "dpmpp_2m", cores=8, stop=None, devices=jax.device_count())
out["runs"].append(["dpmpp_2m K=8, devices=4", err(got, ref)])
flow = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
fgrid = cc.time_grid(cc.RectifiedFlow(), 10)
got = cj.chords(flow, x, fgrid, "heun", cores=3, stop=None, devices=mesh)  # 3 cores on 4 slots
out["runs"].append(["heun K=3 padded", err(got, cc.chords(flow, x, fgrid, "heun", cores=3, stop=None))])
weighted = cc.DiffusionModel(fn_args, sched, "eps")
got = cj.chords(weighted, x, grid, "euler", cores=4, stop=None, devices=mesh, args=jnp.asarray(W))
out["runs"].append(["euler K=4 args", err(got, cc.chords(model, x, grid, "euler", cores=4, stop=None))])

bad_t = float(fgrid[6])  # every evaluation at t_6 returns nan: the first is named, on every process
def nan_at(x, t):
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.where((t == bad_t)[:, None], xp.nan, fn(x, t))
from helpers import first_nonfinite  # the core retires faster cores: the first it names
bad = cc.DiffusionModel(nan_at, cc.RectifiedFlow(), "flow")
out["nan"] = [first_nonfinite(lambda: cc.chords(bad, x, fgrid, "euler", cores=4, stop=None))]
try:
    cj.chords(bad, x, fgrid, "euler", cores=4, stop=None, devices=mesh)
    out["nan"].append("no error")
except cc.ModelOutputError as e:
    out["nan"].append(str(e).split(":")[0])

# a call that differs between the processes is refused on each, naming what differs (different cores or
# stop rules aborted the processes in a collective mismatch; a grid or x raised JAX's assertion naming a type)
me = jax.process_index()
out["mismatch"] = {}


class Resid(cc.StopRule):  # a plain class: its repr holds an address, its tolerance shows nowhere else
    def __init__(self, tol):
        self.tol = tol
        self.watch = {"error", "residual", "drift", "norm"}  # (a set's repr order follows the process's hashing)

    def accept(self, outputs, coarse):
        return len(outputs) > 1 and bool(abs(outputs[-1] - outputs[-2]).max() < self.tol)


import dataclasses


@dataclasses.dataclass
class Weighted(cc.StopRule):  # a dataclass: its repr prints a long array with "..." and 8 digits
    w: np.ndarray

    def accept(self, outputs, coarse):
        return len(outputs) > 1


weights = np.zeros(1024)
weights[500] = 1e6 * me
big = jnp.zeros(70_000).at[5].set(float(me))  # (a jax array over 65,536 elements was compared by its shape alone)
spread = jax.make_array_from_callback(x.shape, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                                      lambda index: x[index])
calls = {"cores": lambda: cj.chords(model, x, grid, "euler", cores=8 - 4 * me, stop=None, devices=mesh),
         "stop, dataclass": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=Weighted(weights), devices=mesh),
         "stop, dataclass, jax": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=Weighted(big), devices=mesh),
         "x global, no devices": lambda: cj.chords(model, spread, grid, "euler", cores=4, stop=None),
         "mesh order": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=jax.sharding.Mesh(
             np.array(jax.devices()[::1 - 2 * me]), (cj.AXIS,))),
         "stop": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=[None, cc.StopAtCore(1)][me], devices=mesh),
         "stop, plain class": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=Resid([0.5, 1e-9][me]),
                                                devices=mesh),
         "stop, plain class alike": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=Resid(0.5),
                                                      devices=mesh),
         "stop, per process": lambda: cj.chords(model, x, grid, "euler", cores=4,
                                                stop=setattr(rule := Resid(0.5), "started", me) or rule, devices=mesh),
         "grid": lambda: cj.chords(model, x, [grid, cc.time_grid(sched, 20)][me], "euler", cores=4, stop=None,
                                   devices=mesh),
         "x": lambda: cj.chords(model, x + me, grid, "euler", cores=4, stop=None, devices=mesh),
         "srds": lambda: cj.srds(model, x, grid, "euler", blocks=[4, 5][me], tol=0.0, devices=mesh),
         "function": lambda: (cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=mesh) if me == 0 else
                              cj.srds(model, x, grid, "euler", blocks=3, tol=0.0, devices=mesh)),  # (blocks=4:
         # process 0's previous call, after calls that differed: it reads as process 1 one call behind)
         "local": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=jax.local_device_count()),
         "bound": lambda: cj.chords(model, x, grid, cc.make_solver(["dpmpp_2m", "dpmpp_3m"][me], model, grid),
                                    cores=4, stop=None, devices=mesh),  # (one class, another order)
         "check_outputs": lambda: cj.chords(cc.DiffusionModel(nan_at, cc.RectifiedFlow(), "flow",
                                                              check_outputs=[True, False][me]),
                                            x, fgrid, "euler", cores=4, stop=None, devices=mesh),
         "same, spelt apart": lambda: cj.chords(model, x, grid, "dpmpp_2m", cores=4, stop=None, devices=mesh,
                                                lower_order_final=[True, np.bool_(True)][me]),
         # (a mesh of 4 devices on one process and 3 on the other: the check's collectives over each one's
         # own mesh did not match, a review)
         "mesh devices": lambda: cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=jax.sharding.Mesh(
             np.array(jax.devices()[:4 - me]), (cj.AXIS,)))}
for label, call in calls.items():
    try:
        call()
        out["mismatch"][label] = "no error"
    except ValueError as e:
        out["mismatch"][label] = str(e)
import chords_jax.multihost as multihost
coordinated = multihost._client
multihost._client = lambda: None  # (a JAX without the coordination client: the digests by one all-gather)
for label, cores in (("no client, alike", 4), ("no client, cores", 8 - 4 * me)):
    try:
        out["mismatch"][label] = err(cj.chords(model, x, grid, "euler", cores=cores, stop=None, devices=mesh),
                                     cc.chords(model, x, grid, "euler", cores=cores, stop=None))
    except ValueError as e:
        out["mismatch"][label] = str(e)
multihost._client = coordinated
got = cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=mesh)  # in step again
out["runs"].append(["euler K=4 after the refused calls", err(got, cc.chords(model, x, grid, "euler", cores=4,
                                                                             stop=None))])


class Interrupted(cc.StopWhenConverged):  # a Ctrl-C on process 1 between chunks, a rule's own error on process 0
    def accept(self, outputs, coarse):
        raise KeyboardInterrupt if me == 1 else RuntimeError("stopped alike")


try:
    cj.chords(model, x, grid, "euler", cores=4, stop=Interrupted(0.1), devices=mesh)
except (KeyboardInterrupt, RuntimeError) as e:
    out["interrupted"] = [type(e).__name__]
try:  # (each process ended the call with an error not raised alike: each refuses at once, none waits)
    cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=mesh)
    out["interrupted"].append("no error")
except RuntimeError as e:
    out["interrupted"].append(str(e))
out["interrupted"].append(err(cj.chords(model, x, grid, "euler", cores=4, stop=None),  # its own devices: runs
                              cc.chords(model, x, grid, "euler", cores=4, stop=None)))
print(json.dumps(out), flush=True)
"""


#: the start of the scripts of processes with one CPU device each (argv: process, port, number of processes)
ONE_DEVICE_EACH = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 1)
n = int(sys.argv[3])
jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[2]}", num_processes=n,
                           process_id=int(sys.argv[1]), initialization_timeout=60)
import jax.numpy as jnp
import numpy as np
import chords_core as cc
import chords_jax as cj

me = jax.process_index()
x = np.random.default_rng(0).standard_normal((2, 4))
sched = cc.VP.cosine()
grid = cc.time_grid(sched, 12, "logsnr")
model = cc.DiffusionModel(lambda x, t: 0.5 * x + t[:, None], sched, "eps")
"""

SUBMESH = ONE_DEVICE_EACH + r"""
ref = cc.chords(model, x, grid, "euler", cores=4, stop=None).x
out = {"process": me}
if me < 2:  # a mesh over processes 0 and 1 only: process 2 takes no part in its calls
    mesh = jax.sharding.Mesh(np.array([d for d in jax.devices() if d.process_index < 2]), (cj.AXIS,))
    got = cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=mesh)
    out["run"] = float(np.max(np.abs(np.asarray(got.x) - ref)))
    keyed = cc.DiffusionModel(lambda x, t, a: 0.5 * x + t[:, None] + 0.0 * a["w"].sum(), sched, "eps")
    same = {"w": jnp.zeros(70_000), "k": jax.random.key(0)}  # (a PRNG key failed converting to numpy, a review)
    out["args alike"] = float(np.max(np.abs(np.asarray(cj.chords(keyed, x, grid, "euler", cores=4, stop=None,
                                                                 devices=mesh, args=same).x) - ref)))
    for label, call in {"x": lambda: cj.chords(model, x + me, grid, "euler", cores=4, stop=None, devices=mesh),
                        "grid": lambda: cj.chords(model, x, [grid, cc.time_grid(sched, 12)][me], "euler", cores=4,
                                                  stop=None, devices=mesh),
                        "args": lambda: cj.chords(keyed, x, grid, "euler", cores=4, stop=None, devices=mesh,
                                                  args={"w": jnp.zeros(70_000).at[9].set(me), "k": same["k"]}),
                        "args, key": lambda: cj.chords(keyed, x, grid, "euler", cores=4, stop=None, devices=mesh,
                                                       args={"w": same["w"], "k": jax.random.key(me)})}.items():
        try:
            call()
            out[label] = "no error"
        except ValueError as e:
            out[label] = str(e)
    # one process late to a call (busy, or it raised before it): each refuses it, the late one at once, and
    # the next call meets in step (the others waited in the check's collective for ever)
    cj.set_sync_timeout(1.5)
    if me == 1:
        time.sleep(5.0)
    began = time.monotonic()
    try:
        cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=mesh)
        out["late"] = ["no error"]
    except RuntimeError as e:
        out["late"] = [str(e), time.monotonic() - began]
    cj.set_sync_timeout(60)
    out["late"].append(float(np.max(np.abs(np.asarray(cj.chords(model, x, grid, "euler", cores=4, stop=None,
                                                                 devices=mesh).x) - ref))))
    # a Ctrl-C on process 1 while it waits for process 0: process 0 refuses the call when it comes
    import signal

    def ctrl_c(*_):
        raise KeyboardInterrupt
    if me == 1:
        signal.signal(signal.SIGALRM, ctrl_c)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
    else:
        time.sleep(2.0)
    try:
        cj.chords(model, x, grid, "euler", cores=4, stop=None, devices=mesh)
        out["withdrawn"] = "no error"
    except (KeyboardInterrupt, RuntimeError) as e:
        out["withdrawn"] = f"{type(e).__name__}: {e}"
else:
    out["run"] = float(np.max(np.abs(np.asarray(cj.chords(model, x, grid, "euler", cores=4, stop=None).x) - ref)))
print(json.dumps(out), flush=True)
"""


STEPS = ONE_DEVICE_EACH + r"""
every = jax.sharding.Mesh(np.array(jax.devices()), (cj.AXIS,))
cj.set_sync_timeout(1.5)
out = {"process": me, "calls": []}


def call(cores, mesh=every):
    try:
        got = cj.chords(model, x, grid, "euler", cores=cores, stop=None, devices=mesh)
        ref = cc.chords(model, x, grid, "euler", cores=cores, stop=None)
        out["calls"].append(float(np.max(np.abs(np.asarray(got.x) - ref.x))))
    except (ValueError, RuntimeError) as e:
        out["calls"].append(f"{type(e).__name__}: {e}")


call(4)
if n == 2:  # process 1 skips the call of 8 cores: then 2 and 3 cores on both, then 4 again
    for cores in ([8, 2, 3, 4] if me == 0 else [2, 3, 4]):
        call(cores)
else:  # process 0 passes a mesh over processes 0 and 1, the others over all three; then three calls on all
    call(2, jax.sharding.Mesh(np.array(jax.devices()[:2]), (cj.AXIS,)) if me == 0 else every)
    for cores in (3, 2, 4):
        call(cores)
print(json.dumps(out), flush=True)
"""


def test_calls_out_of_step_are_refused_at_once_not_paired_in_turn():
    """A review: the calls were paired in turn, so a process that skipped one (or passed a mesh over
    other processes, which cost a timeout) met the others' next call with its own from then on: every
    later call was refused as differing ("cores, init: differs"), then one waited out the timeout. A
    call whose previous call on another process is this one (or the reverse) is found now: every
    process refuses it, and each later call at once, naming the cause."""
    skip = sorted(_launch(STEPS, 2, "2"), key=lambda r: r["process"])
    assert all(r["calls"][0] <= 1e-12 for r in skip), skip
    (_, eight, *later0), (_, *later1) = skip[0]["calls"], skip[1]["calls"]
    assert eight.startswith("ValueError: cores, init: differs between the processes"), skip  # (8 against 2)
    for r, said in ((skip[0], "process(es) [1] made this call one call before"),
                    (skip[1], "process(es) [0] make this process's previous call now")):
        two_or_three = r["calls"][-3 + (r["process"] == 1)]
        assert two_or_three.startswith("RuntimeError: devices: the calls over the processes were found out of step "
                                       f"({said}: a process skipped a call, or made one more)"), r
    for later in (later0[-2:] if len(later0) > 2 else later0[-1:], later1[-1:]):
        assert all(c.startswith("RuntimeError: devices: the calls over the processes were found out of step") and
                   c.endswith("; restart every process") for c in later), skip
    sets = sorted(_launch(STEPS, 3, "3"), key=lambda r: r["process"])
    for r in sets:
        assert r["calls"][0] <= 1e-12, r
        assert r["calls"][1].startswith("RuntimeError: devices: not every process of the call (processes ["), r
        assert "passed a mesh over other processes" in r["calls"][1], r
        assert all(not isinstance(c, float) for c in r["calls"][2:]), r  # (none runs on a mispaired call)
        assert any("found out of step" in c for c in r["calls"][2:]), r
        assert r["calls"][-1].endswith("; restart every process"), r


def _launch(script: str, n: int, *extra: str) -> list[dict]:
    """Run ``script`` in ``n`` processes under one coordinator; their last stdout lines, parsed."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    paths = [str(ROOT / "backends"), str(ROOT), str(ROOT / "tests")] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    port = str(free_port("localhost"))
    # (each its own string hashing, as two hosts have: a set's repr order differs between them)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), port, *extra], env=dict(env, PYTHONHASHSEED=str(i + 1)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:  # on a timeout or any failure: leave no process behind
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outs]


@pytest.fixture(scope="module")
def reports():
    return _launch(SCRIPT, 2)


def test_on_a_mesh_over_some_processes_a_call_that_differs_is_refused_and_the_others_go_on():
    """A trial: on a mesh over two of three processes nothing compared the calls (JAX compares ``x``
    only on a mesh over every process): different ``x`` returned 15.4 and 47.8 off the core on the two,
    a different grid 7.5 and 47 off, silently. The digests are gathered over the mesh's own devices now
    (the process outside it takes no part, and its own run goes on)."""
    got = sorted(_launch(SUBMESH, 3, "3"), key=lambda r: r["process"])
    assert all(r["run"] <= 1e-12 for r in got), got
    for r in got[:2]:
        assert r["args alike"] <= 1e-12, r
        assert r["x"].startswith("x (values): differs between the processes (process "), r
        assert "of the mesh's processes [0, 1])" in r["x"], r
        assert r["grid"].startswith("grid: differs between the processes"), r
        assert r["args"].startswith("args (values): differs between the processes"), r
        assert r["args, key"].startswith("args (values): differs between the processes"), r
    # a process late to a call: both refuse it (the one that waited after the timeout, the late one at
    # once), naming the processes and the timeout; the next call runs in step
    for r in got[:2]:
        message, waited, error = r["late"]
        assert message.startswith("devices: not every process of the call (processes [0, 1]) reached it within "
                                  "1.5 s (chords_jax.set_sync_timeout)"), message
        assert error <= 1e-12, r
    assert 1.4 <= got[0]["late"][1] <= 30 and got[1]["late"][1] <= 1.0, got
    assert got[1]["withdrawn"] == "KeyboardInterrupt: ", got[1]
    assert got[0]["withdrawn"] == ("RuntimeError: devices: process(es) [1] withdrew from this call (interrupted "
                                   "while waiting for the others); it is refused on every process"), got[0]


def test_two_processes_share_one_global_mesh(reports):
    assert sorted(r["process"] for r in reports) == [0, 1]
    assert all((r["devices"], r["local"]) == (4, 2) for r in reports)


@pytest.mark.parametrize("k", range(5))
def test_multihost_runs_equal_the_numpy_core(reports, k):
    for r in reports:
        name, error = r["runs"][k]
        assert error <= 1e-12, f"process {r['process']}, {name}: relative error {error:.3g}"


def test_every_process_gets_the_whole_result(reports):
    # replicated over the global mesh (not fully addressable from one process), yet readable as numpy
    assert all(r["replicated"] for r in reports)


def test_nonfinite_output_is_named_on_every_process_as_the_core_names_it(reports):
    for r in reports:
        core, compiled = r["nan"]
        assert core.startswith("round ") and ", core " in core
        assert compiled == core


def test_a_call_that_differs_between_processes_is_refused_naming_the_argument(reports):
    """A user trial: different ``cores`` or ``stop`` on two processes aborted them in a gloo collective
    mismatch (one at once, the other after about 100 s); a different grid or ``x`` raised JAX's
    ``AssertionError`` naming ``numpy.ndarray`` / ``ArrayImpl``; ``devices=jax.local_device_count()``
    (process 0's devices on every process) failed on process 1 reading the result. Each is now a
    ``ValueError`` naming the argument, on every process concerned, and the processes go on in step."""
    for r in reports:
        got = r["mismatch"]
        assert got["cores"].startswith("cores, init: differs between the processes"), got
        assert got["stop"].startswith("stop: differs between the processes"), got
        # (a trial: a plain class's rule was compared by its type's name alone; the processes went on to
        # different collectives and hung)
        assert got["stop, plain class"].startswith("stop: differs between the processes"), got
        assert got["stop, plain class alike"] == "no error", got  # (a review: its set differed in order)
        assert got["stop, per process"].startswith("stop: differs between the processes"), got
        # (a trial: a dataclass rule's array, printed with "...", compared equal; the processes hung)
        assert got["stop, dataclass"].startswith("stop: differs between the processes"), got
        assert got["stop, dataclass, jax"].startswith("stop: differs between the processes"), got
        # (a trial: JAX's error reading it named neither x nor devices, or the run went on unchecked)
        assert got["x global, no devices"].startswith("x: a global array over devices of other processes"), got
        # (a review: the devices in another order on one process failed in a gloo timeout, naming nothing)
        assert got["mesh order"].startswith("devices (the mesh's layout): differs between the processes"), got
        assert "give its class a __repr__ of what decides" in got["stop, per process"], got
        assert got["grid"].startswith("grid: differs"), got
        assert got["x"].startswith("x: its values differ between the processes"), got
        assert got["srds"].startswith("blocks, iterations: differs"), got
        # (another function's call has other parts, and fewer: it read as a process withdrawing, the re-read)
        assert got["function"].startswith("the call: differs between the processes (process "), got
        assert got["bound"].startswith("the compiled program (a bound solver's options"), got
        # (a trial: the process with the check off returned nan, the other waited for ever in the check's collective)
        assert got["check_outputs"].startswith("model.check_outputs: differs between the processes"), got
        assert got["same, spelt apart"] == "no error", got  # (a numpy scalar and the Python one it equals)
        assert got["mesh devices"].startswith("devices (the mesh's layout): differs between the processes"), got
        # (without JAX's coordination client, one all-gather over the mesh's devices compares the digests)
        assert got["no client, alike"] <= 1e-12, got
        assert got["no client, cores"].startswith("cores, init: differs between the processes"), got
        if r["process"] == 0:  # its own devices: it runs alone
            assert got["local"] == "no error", got
        else:
            assert got["local"].startswith("devices: the mesh holds none of the devices of this process (1 of 2)"), got


def test_a_call_interrupted_on_one_process_refuses_that_process_later_calls_over_them(reports):
    """A trial: a Ctrl-C caught on one process between a chunked run's chunks, then the next call, hung
    every process for ever (the others waited in the interrupted call's collectives). That process's
    later calls over several processes are refused; its own devices' runs go on."""
    for r, ended in zip(sorted(reports, key=lambda r: r["process"]), ("RuntimeError", "KeyboardInterrupt")):
        name, refused, error = r["interrupted"]
        assert name == ended  # (a stop rule's own error on one process alike: the others hung, a review)
        assert refused.startswith(f"devices: a previous call over the processes ended on this one with {ended} "
                                  "after they started it together") and "restart every process" in refused, refused
        assert error <= 1e-12


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "3", None])
def test_the_sync_timeout_takes_a_positive_number_of_seconds_naming_it(bad):
    import chords_jax as cj

    previous = cj.set_sync_timeout(42)
    try:
        with pytest.raises(ValueError, match=r"^seconds: a positive number of seconds \(math.inf: no limit\), not "):
            cj.set_sync_timeout(bad)
        assert cj.set_sync_timeout(float("inf")) == 42.0  # (a refused value leaves the setting as it was)
        assert cj.set_sync_timeout(7.5) == float("inf")  # (no limit: the service's longest wait, a review: sys.maxsize
        # seconds overflowed its milliseconds and refused every call at once)
    finally:
        cj.set_sync_timeout(previous)
