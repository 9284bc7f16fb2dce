"""The cascade sampler in half precision: its rounds against float32's, and its output against the sequential solver's.

The default level tolerance (1e-4 of max(0.1, sigma), less on finer grids) lies below the resolution of
bfloat16 (machine epsilon 2^-7) and float16 (2^-10): there a point's change never falls below the
dtype's rounding, and a point is accepted only once its iterate repeats bit for bit. This measures
what that costs. The problems are ``safety_sweep.py``'s (random mixtures, schedules, predictions,
spacings, solvers, 4 to 100 steps, two core counts from 2 to 16, 1 to 16 samples), run on torch
tensors of each dtype: the model is the mixture's exact prediction evaluated in float64 and rounded
to the dtype (a network computing in it), every solver step in the dtype. The reference is the exact
ODE solution (DOP853 at 1e-12, as there). Per run: the error ratio against the sequential solver in
the same dtype, and that solver's own *rounding band*: its largest error ratio when the start is
perturbed by a quarter epsilon (relative, normal, ``--band`` draws) before rounding to the dtype,
which moves about one element in ten by one unit in the last place. In half precision that alone
moves the sequential error by up to tens of percent, so a fixed 1.05x criterion lies inside the
noise; a run is "beyond the band" when its ratio exceeds both 1.05 and the band.

Printed per dtype: runs, rounds in all and against float32's on the same runs, runs above 1.05x, runs
beyond the band, the worst ratio and the widest band; then the runs beyond the band.

    .venv/bin/python benchmarks/half_precision.py --seeds 11 --problems 60     # about 2 minutes
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from safety_sweep import problems
from timing import rms

import chords_core as cc
from chords_core.demo import int_at_least

torch.set_num_threads(1)
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_model(comb, schedule: cc.Schedule, prediction: str, dtype: torch.dtype) -> cc.DiffusionModel:
    """The combination's exact prediction (``Combination.model``) on torch tensors of ``dtype``: evaluated
    in float64, rounded."""
    exact = comb.model(schedule, prediction).fn

    def fn(x, t):
        tn = t.double().numpy() if torch.is_tensor(t) else t
        return torch.from_numpy(np.asarray(exact(x.double().numpy(), tn))).to(dtype)

    return cc.DiffusionModel(fn, schedule, prediction)


def band(model, x: np.ndarray, grid, solver: str, ref: np.ndarray, e_seq: float, dtype: torch.dtype,
         draws: int) -> float:
    """The largest error ratio of the sequential solver from starts perturbed by a quarter epsilon."""
    eps = float(torch.finfo(dtype).eps)
    worst = 0.0
    for s in range(draws):
        xp = x * (1.0 + 0.25 * eps * np.random.default_rng(s).standard_normal(x.shape))
        out = cc.solve(model, torch.from_numpy(xp).to(dtype), grid, solver)
        worst = max(worst, rms(out.double().numpy() - ref) / e_seq)
    return worst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[11])
    ap.add_argument("--problems", type=int_at_least(1), default=60, help="problems per seed")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--band", type=int_at_least(0), default=4, help="perturbed sequential solves per run")
    ap.add_argument("--show", type=int_at_least(0), default=10, help="runs beyond the band listed")
    a = ap.parse_args(argv)
    rows: dict[str, list[dict]] = {d: [] for d in a.dtypes}
    for seed in a.seeds:
        for tag, comb, sch, pred, solver, grid, Ks, x in problems(seed, a.problems):
            ref = comb.reference(x, grid, sch)
            for d in a.dtypes:
                dtype = DTYPES[d]
                model = torch_model(comb, sch, pred, dtype)
                xt = torch.from_numpy(x).to(dtype)
                e_seq = rms(cc.solve(model, xt, grid, solver).double().numpy() - ref)
                top = band(model, x, grid, solver, ref, e_seq, dtype, a.band) if a.band else 1.0
                for K in Ks:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        r = cc.parallel(model, xt, grid, solver, cores=K)
                    rows[d].append(dict(tag=tag, solver=solver, T=len(grid) - 1, K=K, band=top, rounds=r.rounds,
                                        ratio=rms(r.x.double().numpy() - ref) / e_seq))
    base = sum(r["rounds"] for r in rows["float32"]) if "float32" in rows else None
    print("| dtype | runs | rounds | rounds / float32's | > 1.05x | beyond the band | worst | widest band |")
    print("|---|---|---|---|---|---|---|---|")
    for d, rs in rows.items():
        n = sum(r["rounds"] for r in rs)
        print(f"| {d} | {len(rs)} | {n} | {n / base if base else float('nan'):.3f} | "
              f"{sum(r['ratio'] > 1.05 for r in rs)} | {sum(r['ratio'] > max(1.05, r['band']) for r in rs)} | "
              f"{max(r['ratio'] for r in rs):.3f} | {max(r['band'] for r in rs):.3f} |")
    for d, rs in rows.items():
        beyond = sorted((r for r in rs if r["ratio"] > max(1.05, r["band"])), key=lambda r: -r["ratio"])
        for r in beyond[:a.show]:
            print(f"  {d}: {r['ratio']:.3f}x (band {r['band']:.3f})  {r['tag']} {r['solver']} T={r['T']} K={r['K']} "
                  f"rounds {r['rounds']}")


if __name__ == "__main__":
    main()
