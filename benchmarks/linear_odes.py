"""The safe defaults on random linear ODEs dy/dt = A y, against the exact solution expm(A t) y0.

Per seed ``--trials`` problems: A of dimension 1-4 with standard normal entries times a scale drawn
from [0.3, 4] (decaying, growing and oscillating modes), y0 standard normal, t from 0 to a time in
[0.5, 3] (reversed in 3 of 10), Euler or Heun at 10, 20, 40 or 80 steps, 2, 4 or 8 cores; a problem
whose sequential error exceeds half the solution's RMS is left out (no degradation to judge).
Printed per method (``cc.chords`` and ``cc.parallel`` at their defaults): runs, misses of the
no-degradation criterion (error at most 1.05 x the sequential solver's), the worst ratio, and the
rounds in all against the sequential solver's; each miss is printed first (its seed, eigenvalues,
solver, steps and cores).

    .venv/bin/python benchmarks/linear_odes.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from scipy.linalg import expm
from timing import rms

import chords_core as cc
from chords_core.demo import int_at_least


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[1, 2, 3])
    ap.add_argument("--trials", type=int_at_least(1), default=150, help="problems drawn per seed")
    args = ap.parse_args(argv)
    methods = {"chords": cc.chords, "cascade": cc.parallel}
    tally = {m: [0, 0, 0.0, 0, 0] for m in methods}  # runs, misses, worst, rounds, sequential rounds
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        for _ in range(args.trials):
            d = int(rng.integers(1, 5))
            a = rng.standard_normal((d, d)) * rng.uniform(0.3, 4)
            y0 = rng.standard_normal(d)
            t1 = rng.uniform(0.5, 3)
            steps, cores = int(rng.choice([10, 20, 40, 80])), int(rng.choice([2, 4, 8]))
            solver = str(rng.choice(["euler", "heun"]))
            grid = np.linspace(0, t1, steps + 1)
            if rng.random() < 0.3:
                grid = grid[::-1].copy()
            exact = expm(a * (grid[-1] - grid[0])) @ y0
            field = cc.VectorField(lambda t, y, a=a: a @ y)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (overflow of a sequential solve: left out below)
                seq = cc.solve(field, y0, grid, solver)
            err = rms(seq - exact)
            if not np.isfinite(err) or err > 0.5 * rms(exact) or err == 0:
                continue
            for name, run in methods.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # (a retired core or a cut sweep warns)
                    res = run(field, y0, grid, solver, cores=cores)
                ratio = rms(res.x - exact) / err
                if ratio > 1.05:  # each miss, so that it can be run again
                    eig = ", ".join(f"{v:.3g}" for v in np.linalg.eigvals(a))
                    way = " reversed" if grid[0] > grid[-1] else ""
                    print(f"miss: {name}, seed {seed}, eigenvalues [{eig}], {solver} {steps} steps{way}, "
                          f"{cores} cores: {ratio:.3f}x ({res.stopped_by})")
                t = tally[name]
                t[0] += 1
                t[1] += ratio > 1.05
                t[2] = max(t[2], ratio)
                t[3] += res.rounds
                t[4] += res.sequential_rounds
    for name, (runs, misses, worst, rounds, seq_rounds) in tally.items():
        print(f"{name}: runs {runs}, misses {misses}, worst {worst:.3f}, rounds {rounds} of the sequential "
              f"{seq_rounds} ({rounds / max(seq_rounds, 1):.3f})")


if __name__ == "__main__":
    main()
