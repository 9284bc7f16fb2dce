"""The safe defaults and SRDS' default on single-Gaussian data, against the exact solution.

Data N(m, s^2) per coordinate (``GaussianMixture.single``), whose probability-flow ODE is linear and
solved exactly (``exact_trajectory``): s in 0.02, 0.05, 0.2, 1, 3 and m in 0, 0.8; rectified flow
(flow prediction, uniform grid), VP linear (eps, log-SNR grid), EDM (eps, Karras grid) and VP cosine
(v, uniform grid); 6, 10, 20 and 30 steps; Euler, Heun, DDIM, DPM-Solver++(2M) and (3M), UniPC; 2, 4
and 8 cores (at most the steps); a batch of 4 samples of 5 coordinates drawn from the noised marginal at the grid's
start (seed 1). A case whose sequential error is below 1e-10 is left out (nothing to judge).

Printed per method (``cc.parallel`` at each method's default: the cascade sampler, CHORDS with
``StopWhenConverged(0.1)``, SRDS with the paper's final-sample residual ``StopOnResidual(1e-3)``):
runs, misses of the no-degradation criterion (RMS error at most 1.05 x the sequential solver's),
the worst ratio, rounds in all against the sequential solver's, then the misses, worst first
(``--show`` of them).

    .venv/bin/python benchmarks/single_gaussian.py
    .venv/bin/python benchmarks/single_gaussian.py --methods cascade --steps 10 --solvers euler --cores 2   # small
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from timing import require_runs, rms

import chords_core as cc
from chords_core.demo import int_at_least
from chords_core.problems import GaussianMixture

STDS = (0.02, 0.05, 0.2, 1.0, 3.0)
MEANS = (0.0, 0.8)
STEPS = (6, 10, 20, 30)
SOLVERS = ("euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc")
CORES = (2, 4, 8)
METHODS = ("cascade", "chords", "srds")


def settings() -> dict[str, tuple[cc.Schedule, str, str]]:
    """Schedule, prediction and grid spacing per name."""
    return {"flow": (cc.RectifiedFlow(), "flow", "uniform"), "vp": (cc.VP.linear(), "eps", "logsnr"),
            "edm": (cc.EDM(), "eps", "karras"), "cosine": (cc.VP.cosine(), "v", "uniform")}



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--show", type=int_at_least(0), default=10, help="misses printed per method")
    # (a subset runs small: the whole takes minutes a method, a trial)
    ap.add_argument("--steps", type=int_at_least(1), nargs="+", default=list(STEPS))
    ap.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS))
    ap.add_argument("--cores", type=int_at_least(1), nargs="+", default=list(CORES))
    args = ap.parse_args(argv)
    require_runs(ap, args.steps, args.cores)
    tally = {m: [0, 0.0, 0, 0] for m in args.methods}  # runs, worst, rounds, sequential rounds
    misses: dict[str, list] = {m: [] for m in args.methods}
    warnings.simplefilter("ignore")  # (the defaults' notes on a run; the criterion judges the outputs)
    for s in STDS:
        for m in MEANS:
            data = GaussianMixture.single(np.full(5, m), np.full(5, s * s))
            for name, (sched, pred, spacing) in settings().items():
                model = data.model(sched, pred)
                for steps in args.steps:
                    grid = cc.time_grid(sched, steps, spacing)
                    a, sig = float(sched.alpha(grid[0])), float(sched.sigma(grid[0]))
                    x = a * m + np.sqrt(a * a * s * s + sig * sig) * np.random.default_rng(1).standard_normal((4, 5))
                    exact = data.exact_trajectory(x, float(grid[0]), float(grid[-1]), sched)
                    for solver in args.solvers:
                        seq = cc.solve(model, x, grid, solver)
                        err = rms(seq - exact)
                        if err < 1e-10:
                            continue
                        for cores in (k for k in args.cores if k <= steps):
                            for method in args.methods:
                                r = cc.parallel(model, x, grid, solver, cores=cores, method=method)
                                ratio = rms(r.x - exact) / err
                                t = tally[method]
                                t[0] += 1
                                t[1] = max(t[1], ratio)
                                t[2] += r.rounds
                                t[3] += r.sequential_rounds
                                if ratio > 1.05:
                                    misses[method].append((ratio, s, m, name, steps, solver, cores, err, r.rounds,
                                                           r.sequential_rounds, r.stopped_by))
    print("| method | runs | misses | worst | rounds / sequential |")
    print("|---|---|---|---|---|")
    for method, (runs, worst, rounds, seq_rounds) in tally.items():
        print(f"| {method} | {runs} | {len(misses[method])} | {worst:.3f}x | {rounds / max(seq_rounds, 1):.3f} |")
    for method, found in misses.items():
        worst_first = sorted(found, reverse=True)[:args.show]
        for ratio, s, m, name, steps, solver, cores, err, rounds, seq_rounds, why in worst_first:
            print(f"{method}: {ratio:.3f}x  s={s} m={m} {name} {solver} {steps} steps, {cores} cores, sequential error "
                  f"{err:.1e}, {rounds}/{seq_rounds} rounds ({why})")


if __name__ == "__main__":
    main()
