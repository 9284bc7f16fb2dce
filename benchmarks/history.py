"""Multistep history at a rectification: 'shift' vs 'keep' vs 'restart' (issue #2, part 4).

64-D Gaussian mixture (10 modes, 8 samples), 50 steps, init 0-2-4-8-16-24-32-40, every core run.
Prints, per solver and policy, the RMS error of each core's output against the sequential solver
with the same steps (fastest core first) and against the exact solution (DOP853).
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import rms

import chords_core as cc
from chords_core.problems import GaussianMixture

INIT = (0, 2, 4, 8, 16, 24, 32, 40)


def main(argv=None):
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args(argv)  # (--help ran the whole run)
    gmm = GaussianMixture.random(64, 10, seed=0)
    print("| problem | solver | history | " + " | ".join(f"core {c}" for c in range(7, 2, -1))
          + " | fastest vs exact (seq vs exact) |")
    print("|---" * 9 + "|")  # (one per column: it printed 10, and the table did not render)
    for sched, pred, spacing in [(cc.VP.linear(), "eps", "logsnr"), (cc.RectifiedFlow(), "flow", "uniform")]:
        model = gmm.model(sched, pred)
        grid = cc.time_grid(sched, 50, spacing)
        x = np.random.default_rng(1).standard_normal((8, 64))
        exact = gmm.reference_solve(x, grid[0], grid[-1], sched)
        for solver in ("dpmpp_2m", "unipc"):
            seq = cc.solve(model, x, grid, solver)
            for policy in cc.HISTORY_POLICIES:
                res = cc.chords(model, x, grid, solver, init=INIT, stop=None, history=policy)
                errs = [rms(h.x - seq) for h in res.hits[:5]]
                name = f"{type(sched).__name__} {pred}"
                print(f"| {name} | {solver} | {policy} | " + " | ".join(f"{e:.1e}" for e in errs)
                      + f" | {rms(res.hits[0].x - exact):.1e} ({rms(seq - exact):.1e}) |")


if __name__ == "__main__":
    main()
