"""chords_jax: time per round of the compiled pipeline with a near-free model, against numpy and the floor.

8 cores, T = 50, init 0-2-4-8-16-24-32-40, every core run (``stop=None``: 50 rounds; Heun's 99), a
rectified-flow model whose evaluation is one array op (``x * 0.5``), float32 states of 64, 4,096,
65,536 and 1,048,576 elements, Euler and DPM-Solver++(2M) (a flow model's data prediction).
Three loops over the same 50 rounds, interleaved repeat by repeat:

- ``jax``    ``chords_jax.chords`` (steady state: the executable is cached);
- ``jit``    the same call inside the caller's ``jax.jit`` (``jax.jit(lambda x: chords_jax.chords(...).x)``:
             the library's per-call host work, its cache lookups and checks, is done once at trace time;
             not with ``--devices``, "-": a sharded call does not run inside ``jit``);
- ``numpy``  ``chords_core.chords`` with numpy on the same plan (the default ``BatchedExecutor``);
- ``floor``  a plain jitted ``lax.scan`` making the same K model calls per round, one batched call on
             the K stacked states followed by one Euler update each: what any compiled K-core round
             costs at the least.

``--estimate`` adds a fourth loop, ``estimate``: ``chords_jax.chords`` with
``StopWhenConverged(1e-30)`` (the default rule's kind, at a ``rel`` that accepts nothing: all 50
rounds), whose run also computes the sequential-error estimate (core 0's local error estimates,
summed on the device) and replays the rule on the host at each output; printed as its time per
round over ``jax``'s (``est/jax``, taken repeat by repeat).

Printed per case: ``plan ms`` (symbolic replay of the core engine + lowering, host, first call
only), ``compile ms`` (first call minus a steady call: trace + XLA compile), microseconds per round
of each loop (each per its own rounds: the floor's 50 one-evaluation rounds) as median [min-max] over
the repeats, the ratios jax/numpy, jax/floor and jit/floor (taken repeat
by repeat, median), ``regs`` (registers of the scan carry) and ``W x M`` (rows written per round x
terms per row). Targets: jax/numpy <= 0.5 and jax/floor <= 3 at every size.

``--devices D`` shards the 8 core slots over D host devices (sets XLA_FLAGS before jax starts).
``--unchecked`` times the jax loops with ``check_outputs=False`` on the model (the numpy core keeps
its check): no output check, and under ``jit`` no host callback at all.
Run: ``python benchmarks/jax_rounds.py [--devices 2] [--repeat 7] [--sizes 64 65536]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from timing import interleaved, spread

import chords_core as cc
from chords_core.demo import int_at_least

INIT = (0, 2, 4, 8, 16, 24, 32, 40)
STEPS = 50


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--devices", type=int_at_least(0), default=0,
                    help="shard over this many host devices (0: default device)")
    ap.add_argument("--repeat", type=int_at_least(1), default=7, help="interleaved repeats per case")
    ap.add_argument("--sizes", type=int_at_least(1), nargs="+", default=[64, 4096, 65536, 1048576])
    ap.add_argument("--solvers", nargs="+", default=["euler", "dpmpp_2m"], choices=sorted(cc.SOLVERS))
    ap.add_argument("--estimate", action="store_true", help="also time the run with the error estimate")
    ap.add_argument("--unchecked", action="store_true",
                    help="the jax model with check_outputs=False (no output check; under jit no host callback)")
    args = ap.parse_args(argv)
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax

    import chords_jax as cj

    sched = cc.RectifiedFlow()
    grid = cc.time_grid(sched, STEPS)
    devices = args.devices or None
    print(f"jax {jax.__version__}, {jax.device_count()} device(s), devices={devices}, K=8, T={STEPS}, "
          f"every round ({STEPS}; a two-stage solver's more), float32, jax output check "
          f"{'off' if args.unchecked else 'on'}; us/round median [min-max] of "
          f"{args.repeat} interleaved repeats")
    print(f"{'solver':>9} {'size':>8} {'plan ms':>8} {'compile ms':>10} {'jax us/rd':>22} {'numpy us/rd':>22} "
          f"{'floor us/rd':>22} {'jit us/rd':>22} {'jax/np':>7} {'jax/floor':>9} {'jit/floor':>9} {'regs':>5} "
          f"{'W x M':>7}")
    for solver in args.solvers:
        for size in args.sizes:
            x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
            jmodel = cc.DiffusionModel(lambda x, t: x * 0.5, sched, "flow", check_outputs=not args.unchecked)
            nmodel = cc.DiffusionModel(lambda x, t: x * np.float32(0.5), sched, "flow")
            kw = dict(init=INIT, stop=None)
            t0 = time.perf_counter()
            prog, _ = cj.compile_plan(jmodel, x.shape, np.dtype(np.float32), grid, solver,
                                      slots_multiple=args.devices or 1, **kw)
            plan = time.perf_counter() - t0
            xj = jax.numpy.asarray(x)
            xs = jax.numpy.asarray(np.repeat(x, len(INIT), axis=0))
            floor = _floor(jax, grid, jmodel.fn)

            def run_jax(jmodel=jmodel, x=xj, solver=solver, kw=kw) -> None:
                jax.block_until_ready(cj.chords(jmodel, x, grid, solver, devices=devices, **kw).x)

            def run_numpy(nmodel=nmodel, x=x, solver=solver, kw=kw) -> None:
                cc.chords(nmodel, x, grid, solver, **kw)

            def run_floor(xs=xs, floor=floor) -> None:
                jax.block_until_ready(floor(xs))

            jitted = jax.jit(lambda x, jmodel=jmodel, solver=solver, kw=kw: cj.chords(jmodel, x, grid, solver, **kw).x)

            def run_jit(x=xj, jitted=jitted) -> None:
                jax.block_until_ready(jitted(x))

            def run_estimate(jmodel=jmodel, x=xj, solver=solver) -> None:
                jax.block_until_ready(cj.chords(jmodel, x, grid, solver, devices=devices, init=INIT,
                                                stop=cc.StopWhenConverged(1e-30)).x)

            t0 = time.perf_counter()
            run_jax()
            first = time.perf_counter() - t0
            run_floor()
            loops = {"jax": run_jax, "numpy": run_numpy, "floor": run_floor}
            if not devices:  # (a sharded call does not run inside jit: shard the jitted function instead)
                run_jit()
                loops["jit"] = run_jit
            if args.estimate:
                run_estimate()  # (compiled before the timed repeats)
                loops["estimate"] = run_estimate
            secs, _ = interleaved(loops, args.repeat, shuffle=True)
            # each loop per its own rounds: the floor's are STEPS, a run's its plan's (a multi-stage solver's
            # more: Heun's 99, a user trial found them all divided by 50)
            rounds = prog.rounds
            jx, npy = (secs[k] / rounds * 1e6 for k in ("jax", "numpy"))
            jit = secs["jit"] / rounds * 1e6 if "jit" in secs else None
            fl = secs["floor"] / STEPS * 1e6
            compile_ms = (first - float(np.min(jx)) * rounds / 1e6) * 1e3
            print(f"{solver:>9} {size:>8} {plan * 1e3:8.1f} {compile_ms:10.0f} {_spread(jx):>22} {_spread(npy):>22} "
                  f"{_spread(fl):>22} {'-' if jit is None else _spread(jit):>22} {np.median(jx / npy):7.2f} "
                  f"{np.median(jx / fl):9.2f} {'-' if jit is None else f'{np.median(jit / fl):.2f}':>9} {prog.regs:5d} "
                  f"{prog.idx.shape[1]:>3} x {prog.idx.shape[2]:<2}"
                  + (f"  est/jax {spread(secs['estimate'] / secs['jax'], fmt='.2f')}" if args.estimate else ""))


def _floor(jax, grid, fn: Callable) -> Callable:
    """The jitted floor: K stacked states, per round one batched call of ``fn`` and one Euler step each."""
    jnp = jax.numpy
    rounds = np.arange(STEPS)
    t = jnp.asarray(grid[rounds], jnp.float32)
    dt = jnp.asarray(grid[rounds + 1] - grid[rounds], jnp.float32)

    @jax.jit
    def floor(xs):
        def body(xs, tr):
            t_r, dt_r = tr
            out = fn(xs, jnp.full(xs.shape[:1], t_r))
            return xs + dt_r * out, None

        return jax.lax.scan(body, xs, (t, dt))[0]

    return floor


def _spread(v: np.ndarray) -> str:
    """median [min-max] with a precision suited to the magnitude."""
    return spread(v, fmt=".0f" if np.median(v) >= 100 else ".1f")


if __name__ == "__main__":
    main()
