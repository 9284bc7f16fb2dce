"""chords_jax sharded over 1, 2, 4 and 8 host devices equals the numpy core (float64, 1e-12).

The device count is fixed when jax starts, so the runs happen in a fresh interpreter with
XLA_FLAGS=--xla_force_host_platform_device_count=8; it prints one JSON line that the tests check.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax  # noqa: F401
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import chords_core as cc
import chords_jax as cj

W = np.random.default_rng(1).standard_normal((4, 4)) / 2.0
ROWS = []  # batch sizes the model sees when traced: the per-device share of the slots
def fn(x, t):
    xp = jnp if isinstance(x, jax.Array) else np
    if xp is jnp:
        ROWS.append(int(x.shape[0]))
    return xp.tanh(x @ W + t[:, None]) * 0.5 + 0.2 * x

def err(got, ref):
    pairs = [(g.x, h.x) for g, h in zip(got.hits, ref.hits)] + [(got.x, ref.x), (got.coarse, ref.coarse)]
    same = (got.rounds, got.nfe, len(got.hits)) == (ref.rounds, ref.nfe, len(ref.hits))
    e = max(float(np.max(np.abs(np.asarray(a) - b))) / max(1.0, float(np.max(np.abs(b)))) for a, b in pairs)
    return e if same else float("inf")

out = {"devices": jax.device_count(), "runs": []}
x = np.random.default_rng(0).standard_normal((2, 4))
sched = cc.VP.cosine()
model = cc.DiffusionModel(fn, sched, "eps")
grid = cc.time_grid(sched, 20, "logsnr")
ref = cc.chords(model, x, grid, "dpmpp_2m", cores=8, stop=None)
out["rows"] = {}
for d in (1, 2, 4, 8):
    ROWS.clear()
    got = cj.chords(model, x, grid, "dpmpp_2m", cores=8, stop=None, devices=d)
    out["runs"].append(["dpmpp_2m K=8", d, err(got, ref)])
    out["rows"][d] = sorted(set(ROWS))
    prog, _ = cj.compile_plan(model, x.shape, x.dtype, grid, "dpmpp_2m", cores=8, stop=None, slots_multiple=d)
    out.setdefault("widths", {})[d] = sorted({s.width for s in prog.segments})
n = cj.compilations()
got = cj.chords(model, 2 * x, grid, "dpmpp_2m", cores=8, stop=None, devices=4)
out["retraced"] = cj.compilations() - n
out["runs"].append(["dpmpp_2m K=8 again", 4, err(got, cc.chords(model, 2 * x, grid, "dpmpp_2m", cores=8, stop=None))])
flow = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
fgrid = cc.time_grid(cc.RectifiedFlow(), 10)
ref = cc.chords(flow, x, fgrid, "heun", cores=3, stop=None)
got = cj.chords(flow, x, fgrid, "heun", cores=3, stop=None, devices=2)  # 3 cores padded to 4 slots
out["runs"].append(["heun K=3 padded", 2, err(got, ref)])
# args committed to another device than x: a named error (JAX's named the library's inner functions)
scaled = cc.DiffusionModel(lambda x, t, a: a["s"] * x, cc.RectifiedFlow(), "flow")
x3 = jax.device_put(jnp.asarray(x), jax.devices()[3])
out["args"] = []
for run in (lambda a: cj.chords(scaled, x3, fgrid, cores=4, args=a), lambda a: cj.solve(scaled, x3, fgrid, args=a),
            lambda a: cj.srds(scaled, x3, fgrid, args=a), lambda a: cj.parallel(scaled, x3, fgrid, cores=4, args=a)):
    try:
        run({"s": jax.device_put(jnp.asarray(0.5), jax.devices()[5])})
        out["args"].append("no error")
    except ValueError as e:
        out["args"].append(str(e))
    run({"s": jax.device_put(jnp.asarray(0.5), jax.devices()[3])})  # (on x's device: runs)
# a state sharded over a mesh of its own, and one put on a second device: the window methods run as on one
# device (the tolerance, put where x is, failed on a 0-d value with x's sharding: a review)
from jax.sharding import Mesh, NamedSharding, PartitionSpec
x4 = np.random.default_rng(2).standard_normal((4, 4))
one = cj.parallel(flow, jnp.asarray(x4), fgrid, cores=4)
out["placed"] = []
for placed in (jax.device_put(jnp.asarray(x4), NamedSharding(Mesh(np.array(jax.devices()[:4]), ("a",)),
                                                             PartitionSpec("a"))),
               jax.device_put(jnp.asarray(x4), jax.devices()[6])):
    got = cj.parallel(flow, placed, fgrid, cores=4)
    out["placed"].append([got.rounds == one.rounds and got.log == one.log,
                          float(np.max(np.abs(np.asarray(got.x) - np.asarray(one.x))))])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    paths = [str(ROOT / "backends"), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_host_devices_are_visible(report):
    assert report["devices"] == 8


@pytest.mark.parametrize("k", range(6))
def test_sharded_runs_equal_the_numpy_core(report, k):
    name, devices, error = report["runs"][k]
    assert error <= 1e-12, f"{name} on {devices} devices: relative error {error:.3g}"


def test_each_device_evaluates_its_share_of_the_slots(report):
    # slots of 2 rows each; a segment of w slots gives each of d devices w / d slots: 2 w / d rows
    assert report["rows"] == {d: [2 * w // int(d) for w in ws] for d, ws in report["widths"].items()}
    # the busiest rounds use all 8 slots; on fewer than 8 devices the ramp-up and the tail use fewer
    assert all(ws[-1] == 8 for ws in report["widths"].values())
    assert report["widths"]["1"][0] < 8 and report["widths"]["8"] == [8]


def test_sharded_second_call_does_not_recompile(report):
    assert report["retraced"] == 0


def test_the_caches_survive_another_thread_clearing_them_between_lookup_and_reorder():
    """A concurrency review: ``clear_cache`` from another thread between ``lru_get``'s lookup and its
    reordering raised ``KeyError`` in a call that had its value."""
    from collections import OrderedDict

    from chords_jax.run import lru_get, lru_put

    class ClearedMeanwhile(OrderedDict):
        def move_to_end(self, key, last=True):
            self.clear()  # another thread's clear_cache, just after the lookup
            super().move_to_end(key, last)

    cache = ClearedMeanwhile(a=1)
    assert lru_get(cache, "a") == 1
    assert lru_put(OrderedDict(), "b", 2, 0) == 2


def test_args_on_another_device_than_the_state_are_named(report):
    """A user trial: ``args`` committed to device 5 with x on device 3 raised JAX's "incompatible devices"
    naming the library's inner functions; every entry point now names ``args`` and says what to do."""
    assert len(report["args"]) == 4
    assert all(m.startswith("args: an array of it lies on device(s) [5], the state x on [3]") for m in report["args"])


def test_the_window_methods_run_on_a_state_sharded_or_placed_elsewhere(report):
    """A review: ``chords_jax.parallel`` put its tolerance on x's own sharding, which a 0-d value cannot
    take when x is sharded over a mesh (a bare jax ValueError); it is now replicated over x's mesh. A
    state sharded over 4 devices and one on device 6 give the one-device run's sweeps and values."""
    assert report["placed"] == [[True, 0.0], [True, 0.0]]
