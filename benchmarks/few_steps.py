"""The safe defaults at few steps: error against the exact solution over the sequential solver's.

The suite's rows have 20 steps and more. Here the defaults of ``cc.chords`` (``StopWhenConverged(0.1)``,
``default_init``) and ``cc.cascade`` (on these diffusion models the noise-level scale at its default
tolerance; beside it the local-error scale, ``scale="error"``, at its default ``default_tol(steps)``
and at ``tol=1`` and ``tol=0.5``; with ``--level`` only the two defaults) run
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
import itertools
import warnings

import numpy as np
from timing import require_runs, rms

import chords_core as cc
from chords_core.demo import int_at_least
from chords_core.grid import SPACINGS
from chords_core.problems import GaussianMixture

SCHEDULES = {"vp": ("VP, eps", cc.VP(), "eps"), "rf": ("rectified flow", cc.RectifiedFlow(), "flow"),
             "cos": ("VP cosine, eps", cc.VP.cosine(), "eps"), "cosv": ("VP cosine, v", cc.VP.cosine(), "v")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[3, 4, 5])
    ap.add_argument("--steps", type=int_at_least(1), nargs="+", default=[6, 8, 10, 12, 16, 20])
    ap.add_argument("--cores", type=int_at_least(1), nargs="+", default=[2, 4, 8])
    ap.add_argument("--solver", nargs="+", default=["euler"], choices=sorted(cc.SOLVERS),
                    help="solver names (DPM-Solver++ and UniPC: VP and flow alike)")
    ap.add_argument("--schedules", nargs="+", choices=sorted(SCHEDULES), default=["vp", "rf"],
                    help="vp: VP with eps prediction; rf: rectified flow; cosv: VP cosine with v prediction")
    ap.add_argument("--spacing", default="uniform", choices=SPACINGS, help="the grid's spacing (cc.time_grid)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--chords-only", action="store_true", help="CHORDS' default alone (no cascade columns)")
    only.add_argument("--level", action="store_true",
                    help="the cascade sampler's default here (the noise-level scale, 1e-4, floored at 0.1) and the "
                         "local-error scale at its default only (no CHORDS or fixed-tol columns)")
    a = ap.parse_args(argv)
    require_runs(ap, a.steps, a.cores)
    for key in a.schedules:  # (karras needs a schedule with t_max < 1: a one-line error now, not mid-table)
        for steps in sorted(set(a.steps)):
            try:
                cc.time_grid(SCHEDULES[key][1], steps, a.spacing)
            except ValueError as e:
                ap.error(f"argument --spacing: {a.spacing!r} on schedule {key} with --steps {steps}: {e}")
    runs = {"chords": lambda m, x, g, sv, k: cc.chords(m, x, g, sv, cores=k),
            "cascade level": lambda m, x, g, sv, k: cc.cascade(m, x, g, sv, cores=k),
            "cascade error": lambda m, x, g, sv, k: cc.cascade(m, x, g, sv, cores=k, scale="error"),
            "cascade error tol 1": lambda m, x, g, sv, k: cc.cascade(m, x, g, sv, cores=k, scale="error", tol=1.0),
            "cascade error tol 0.5": lambda m, x, g, sv, k: cc.cascade(m, x, g, sv, cores=k, scale="error", tol=0.5)}
    if a.chords_only:
        runs = {"chords": runs["chords"]}
    elif a.level:
        runs = {n: runs[n] for n in ("cascade error", "cascade level")}
    first = next(iter(runs))  # the runs are counted on the first column's
    print("| schedule | solver | seed | steps | " + " | ".join(f"{n}, {k} cores" for n in runs for k in a.cores) + " |")
    print("|---|---|---|---|" + "---|" * (len(runs) * len(a.cores)))
    worst = {n: 0.0 for n in runs}
    misses = {n: 0 for n in runs}
    total = {n: 0 for n in runs}
    count = 0
    for key, sv, seed in itertools.product(a.schedules, a.solver, a.seeds):
        name, schedule, prediction = SCHEDULES[key]
        gmm = GaussianMixture.random(16, 4, seed=seed)
        model = gmm.model(schedule, prediction)
        x = np.random.default_rng(1).standard_normal((64, 16))
        for steps in a.steps:
            grid = cc.time_grid(schedule, steps, a.spacing)
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
                        r = run(model, x, grid, sv, k)
                    q = rms(r.x - exact) / seq
                    worst[n] = max(worst[n], q)
                    misses[n] += q > 1.05
                    total[n] += r.rounds
                    count += n == first
                    cells.append(f"{q:.3f}{'*' if q > 1.05 else ''} ({r.rounds})")
            print(f"| {name} | {sv} | {seed} | {steps} | " + " | ".join(cells) + " |", flush=True)
    print("\nworst ratio: " + ", ".join(f"{n} {v:.3f}" for n, v in worst.items()))
    print("runs above 1.05: " + ", ".join(f"{n} {v}" for n, v in misses.items()) + f" (of {count} each)")
    print("rounds in all: " + ", ".join(f"{n} {v}" for n, v in total.items()))


if __name__ == "__main__":
    main()
