"""Defaults on long grids: SRDS' and ParaTAA's absolute tolerances against the cascade sampler's.

An 8-D mixture of 6 modes (``GaussianMixture.random(dim=8, modes=6, seed=3)``) on rectified flow
(flow prediction, uniform grid), 4 standard normal samples (seed 3), errors against its DOP853
reference (``reference_solve``, rtol = atol = 1e-13). Each method at its default through
``cc.parallel``: SRDS (``StopOnResidual(1e-3)`` on the final sample) with DPM-Solver++(2M) at 1,000
steps on 8 and 16 blocks, ParaTAA (tol 1e-3 on its level) with Heun at 200 steps on 16 and 64
cores, and the cascade sampler on the same. Printed: the error over the sequential solver's, rounds
and the sequential rounds, and ``stopped_by``. A few seconds.

    .venv/bin/python benchmarks/long_grids.py
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from timing import rms

import chords_core as cc
from chords_core.problems import GaussianMixture

CASES = (("srds", "dpmpp_2m", 1000, (8, 16)), ("parataa", "heun", 200, (16, 64)))


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args(argv)
    sched = cc.RectifiedFlow()
    data = GaussianMixture.random(dim=8, modes=6, seed=3)
    model = data.model(sched, "flow")
    x = np.random.default_rng(3).standard_normal((4, 8))
    warnings.simplefilter("ignore")  # (the peers' notes; the error judges the outputs)
    print("| method | solver | steps | cores | error / sequential | rounds | sequential rounds | stopped by |")
    print("|---|---|---|---|---|---|---|---|")
    for peer, solver, steps, cores in CASES:
        grid = cc.time_grid(sched, steps)
        ref = data.reference_solve(x, grid[0], grid[-1], sched, rtol=1e-13, atol=1e-13)
        seq = rms(cc.solve(model, x, grid, solver) - ref)
        for k in cores:
            for method in (peer, "cascade"):
                r = cc.parallel(model, x, grid, solver, cores=k, method=method)
                print(f"| {method} | {solver} | {steps} | {k} | {rms(r.x - ref) / seq:.2f}x | {r.rounds} | "
                      f"{r.sequential_rounds} | {r.stopped_by} |", flush=True)


if __name__ == "__main__":
    main()
