"""CHORDS' default stop on mixtures it was not tuned on, sample by sample.

``cc.chords`` at its defaults (``default_init``, ``StopWhenConverged(0.1)``) on Gaussian mixtures
with narrow modes (``--family narrow``: 2-D with 8 modes and 4-D with 6, mode scale 0.2 / 0.3) or the
suite's kind (``--family wide``: 16-D with 4 modes and 8-D with 3), rectified flow / flow and VP / eps,
Euler, Heun, DPM-Solver++(2M) and UniPC at 20 and 50 steps, 4 and 8 cores; per case six problems of
``--batch`` samples each (1: single samples, where a batch-wide rule cannot hide a slow sample).
Printed: runs, misses of the no-degradation criterion (error against the exact solution at most
1.05 x the sequential solver's with the same steps) judged on the batch's RMS and on each sample's,
the worst ratios, and the rounds in all against the sequential solver's.

    .venv/bin/python benchmarks/chords_stop.py --family narrow --seeds 3 4 5
    .venv/bin/python benchmarks/chords_stop.py --family narrow --seeds 6 7
    .venv/bin/python benchmarks/chords_stop.py --family wide --batch 8 --seeds 3 4
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np
from timing import require_runs

import chords_core as cc
from chords_core.demo import int_at_least
from chords_core.problems import GaussianMixture

#: (dimension, modes, mode scale or None for the library's default) per family
FAMILIES = {"narrow": [(2, 8, 0.2), (4, 6, 0.3)], "wide": [(16, 4, None), (8, 3, None)]}
SCHEDULES = {"rf": (cc.RectifiedFlow(), "flow"), "vp": (cc.VP.linear(), "eps")}


def per_sample_rms(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.reshape(a, (a.shape[0], -1)) ** 2, axis=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), default="narrow")
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[3, 4, 5])
    ap.add_argument("--batch", type=int_at_least(1), default=1, help="samples per problem (default 1)")
    ap.add_argument("--solvers", nargs="+", default=["euler", "heun", "dpmpp_2m", "unipc"], choices=sorted(cc.SOLVERS))
    ap.add_argument("--steps", type=int_at_least(1), nargs="+", default=[20, 50])
    ap.add_argument("--cores", type=int_at_least(1), nargs="+", default=[4, 8])
    a = ap.parse_args(argv)
    require_runs(ap, a.steps, a.cores)
    warnings.simplefilter("ignore")  # (the retirement of a run-off core, where one occurs, is counted below)
    runs = batch_miss = sample_miss = rounds = seq_rounds = 0
    worst_batch = worst_sample = 0.0
    for seed, (dim, modes, scale), key, solver, steps, cores in itertools.product(
            a.seeds, FAMILIES[a.family], sorted(SCHEDULES), a.solvers, a.steps, a.cores):
        if cores > steps:
            continue
        schedule, prediction = SCHEDULES[key]
        gmm = GaussianMixture.random(dim=dim, modes=modes, seed=seed, **({} if scale is None else {"scale": scale}))
        model, grid = gmm.model(schedule, prediction), cc.time_grid(schedule, steps)
        xs = np.random.default_rng(seed + 100).standard_normal((6 * a.batch, dim))
        for i in range(6):
            x = xs[i * a.batch:(i + 1) * a.batch]
            ref = gmm.reference_solve(x, grid[0], grid[-1], schedule, rtol=1e-12, atol=1e-12)
            seq = cc.solve(model, x, grid, solver)
            res = cc.chords(model, x, grid, solver, cores=cores)
            runs += 1
            rounds += res.rounds
            seq_rounds += res.sequential_rounds
            batch = float(np.sqrt(np.mean((res.x - ref) ** 2)) / np.sqrt(np.mean((seq - ref) ** 2)))
            sample = float(np.max(per_sample_rms(res.x - ref) / per_sample_rms(seq - ref)))
            batch_miss += batch > 1.05
            sample_miss += sample > 1.05
            worst_batch, worst_sample = max(worst_batch, batch), max(worst_sample, sample)
    print(f"{a.family} mixtures, seeds {a.seeds}, batch {a.batch}: {runs} runs")
    print(f"misses (batch RMS): {batch_miss}, worst {worst_batch:.3f}; misses (any sample): {sample_miss}, "
          f"worst {worst_sample:.3f}")
    print(f"rounds {rounds} of the sequential {seq_rounds} ({rounds / seq_rounds:.3f})")


if __name__ == "__main__":
    main()
