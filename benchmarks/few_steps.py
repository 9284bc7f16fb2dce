"""The safe defaults at few steps: error against the exact solution over the sequential solver's.

The suite's rows have 20 steps and more. Here the defaults of ``cc.chords`` (``StopWhenConverged(0.1)``,
``default_init``) and ``cc.cascade`` (``default_tol(steps)``; ``tol=1`` and ``tol=0.5`` beside it) run
on mixtures they were not tuned on: 16-D, 4 modes (``GaussianMixture.random(16, 4, seed)``, seeds 3,
4, 5 by default), 64 samples, eps prediction on VP and flow prediction on rectified flow, Euler at 6,
8, 10, 12, 16 and 20 steps, 2, 4 and 8 cores. Each cell:
RMS error against the exact solution (``reference_solve``) over the sequential solver's, and the
rounds; ``*`` marks a cell above the no-degradation criterion (1.05); ``-``: more cores than steps.

    .venv/bin/python benchmarks/few_steps.py
    .venv/bin/python benchmarks/few_steps.py --seeds 6 7 8 9 10 11
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

import chords_core as cc
from chords_core.problems import GaussianMixture


def rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--steps", type=int, nargs="+", default=[6, 8, 10, 12, 16, 20])
    ap.add_argument("--cores", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--solver", default="euler", help="a solver name (DPM-Solver++ and UniPC: VP and flow alike)")
    a = ap.parse_args(argv)
    sv = a.solver
    runs = {"chords": lambda m, x, g, k: cc.chords(m, x, g, sv, cores=k),
            "cascade": lambda m, x, g, k: cc.cascade(m, x, g, sv, cores=k),
            "cascade tol 1": lambda m, x, g, k: cc.cascade(m, x, g, sv, cores=k, tol=1.0),
            "cascade tol 0.5": lambda m, x, g, k: cc.cascade(m, x, g, sv, cores=k, tol=0.5)}
    print("| schedule | seed | steps | " + " | ".join(f"{n}, {k} cores" for n in runs for k in a.cores) + " |")
    print("|---|---|---|" + "---|" * (len(runs) * len(a.cores)))
    worst = {n: 0.0 for n in runs}
    misses = {n: 0 for n in runs}
    count = 0
    for name, schedule, prediction in (("VP, eps", cc.VP(), "eps"), ("rectified flow", cc.RectifiedFlow(), "flow")):
        for seed in a.seeds:
            gmm = GaussianMixture.random(16, 4, seed=seed)
            model = gmm.model(schedule, prediction)
            x = np.random.default_rng(1).standard_normal((64, 16))
            for steps in a.steps:
                grid = cc.time_grid(schedule, steps)
                exact = gmm.reference_solve(x, grid[0], grid[-1], schedule)
                seq = rms(cc.solve(model, x, grid, sv) - exact)
                cells = []
                for n, run in runs.items():
                    for k in a.cores:
                        if k > steps:
                            cells.append("-")
                            continue
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            r = run(model, x, grid, k)
                        q = rms(r.x - exact) / seq
                        worst[n] = max(worst[n], q)
                        misses[n] += q > 1.05
                        count += n == "chords"
                        cells.append(f"{q:.3f}{'*' if q > 1.05 else ''} ({r.rounds})")
                print(f"| {name} | {seed} | {steps} | " + " | ".join(cells) + " |", flush=True)
    print("\nworst ratio: " + ", ".join(f"{n} {v:.3f}" for n, v in worst.items()))
    print("runs above 1.05: " + ", ".join(f"{n} {v}" for n, v in misses.items()) + f" (of {count} each)")


if __name__ == "__main__":
    main()
