"""chords_jax: time per round of the compiled pipeline with a near-free model, and compile time.

8 cores, T = 50, init 0-2-4-8-16-24-32-40, every core run (``stop=None``: 50 rounds), a
rectified-flow model whose evaluation is one array op (``x * 0.5``), float32 states of 64 and
65,536 elements, Euler and DPM-Solver++(2M) (a flow model's data prediction). Printed per case:

- ``plan ms``     symbolic replay of the core engine + lowering to arrays (host, first call only);
- ``compile ms``  first ``chords_jax.chords`` call minus a steady-state call (trace + XLA compile);
- ``jax us/rd``   steady-state time of a whole call divided by the 50 rounds (best of N);
- ``core us/rd``  ``chords_core.chords`` with numpy on the same plan, for comparison;
- ``regs``        registers of the scan carry (values that outlive a round).

``--devices D`` shards the 8 core slots over D host devices (sets XLA_FLAGS before jax starts).
Run: ``python benchmarks/jax_rounds.py [--devices 2] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=0, help="shard over this many host devices (0: default device)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax

    import chords_core as cc
    import chords_jax as cj

    init, steps = (0, 2, 4, 8, 16, 24, 32, 40), 50
    sched = cc.RectifiedFlow()
    grid = cc.time_grid(sched, steps)
    devices = args.devices or None
    print(f"jax {jax.__version__}, {jax.device_count()} device(s), devices={devices}, "
          "K=8, T=50, all 50 rounds, float32")
    print(f"{'solver':>9} {'size':>7} {'plan ms':>8} {'compile ms':>11} {'jax us/rd':>10} "
          f"{'core us/rd':>11} {'regs':>5}")
    for solver in ("euler", "dpmpp_2m"):
        for size in (64, 65536):
            x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
            jmodel = cc.DiffusionModel(lambda x, t: x * 0.5, sched, "flow")
            nmodel = cc.DiffusionModel(lambda x, t: x * np.float32(0.5), sched, "flow")
            kw = dict(init=init, stop=None)
            t0 = time.perf_counter()
            prog, _ = cj.compile_plan(jmodel, x.shape, np.dtype(np.float32), grid, solver,
                                      slots_multiple=args.devices or 1, **kw)
            plan = time.perf_counter() - t0

            def run(jmodel=jmodel, x=x, solver=solver, kw=kw):
                jax.block_until_ready(cj.chords(jmodel, x, grid, solver, devices=devices, **kw).x)

            t0 = time.perf_counter()
            run()
            first = time.perf_counter() - t0
            steady = _best(run, args.repeat)
            core = _best(lambda nmodel=nmodel, x=x, solver=solver, kw=kw: cc.chords(nmodel, x, grid, solver, **kw),
                         max(3, args.repeat // 4))
            print(f"{solver:>9} {size:>7} {plan * 1e3:8.1f} {(first - steady) * 1e3:11.0f} "
                  f"{steady / steps * 1e6:10.1f} {core / steps * 1e6:11.1f} {prog.regs:5d}")


def _best(fn, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    main()
