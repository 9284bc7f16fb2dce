"""Grids with a very short step: the cascade sampler's multistep gain (``history_gain``) on and off.

A multistep solver's extrapolation divides a difference of two model values by the ratio of two
steps, so where one step is much shorter than the next it multiplies what a point accepted by the
cascade still carries by about the inverse ratio (``Solver.history_gains``); ``history_gain=True``
(the default) divides such a point's tolerance by the excess over ``HISTORY_GAIN_FREE``. Two sets of
grids none of which a default was tuned on, each run with the gain on and off side by side:

- ``gap``: a user trial's grid, the 30-step rectified-flow grid with one time inserted ``gap`` after
  t_20 (gaps 1e-3 to 1e-6), a 4-D 3-mode mixture (``GaussianMixture.random(4, 3, seed=0,
  scale=0.3)``, 3 samples, ``default_rng(0)``), DPM-Solver++(2M) / (3M) and UniPC, 2 and 4 cores;
- ``random``: grids of T = 12 and 24 steps whose step sizes are drawn log-uniform over ``--spread``
  (1000: neighbouring steps up to about 1000x apart), rectified flow (flow prediction) and VP cosine
  (eps), ``--seeds`` mixtures (``GaussianMixture.random(4, 3, seed, scale=0.3)``, 3 samples), the same
  solvers, 2, 4 and 8 cores.

The error is each sample's against the exact solution (``reference_solve``), over the sequential
solver's on the same grid; a run misses "no degradation" where the worst sample's exceeds 1.05.
Printed: per gap run the worst sample and the rounds, on / off; per set the runs, misses, the worst
and the rounds in all, on / off. ``--standard`` prints instead the largest gain of each multistep
solver over the standard grids, where the threshold is to leave the tolerances as they were: every
``time_grid`` spacing, shift 1 and 3, of rectified flow, VP cosine and linear and EDM, with eps, v,
x0 and flow predictions, at 3 to 1,000 steps.

    .venv/bin/python benchmarks/short_steps.py
    .venv/bin/python benchmarks/short_steps.py --seeds 0 1 2 --spread 100
    .venv/bin/python benchmarks/short_steps.py --standard
"""

from __future__ import annotations

import argparse

import numpy as np

import chords_core as cc
from chords_core.demo import int_at_least
from chords_core.grid import SPACINGS
from chords_core.methods.window import HISTORY_GAIN_FREE
from chords_core.problems import GaussianMixture
from chords_core.solvers import make_solver

SOLVERS = ("dpmpp_2m", "dpmpp_3m", "unipc")
GAPS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)
SCHEDULES = ((cc.RectifiedFlow(), "flow"), (cc.VP.cosine(), "eps"))


def worst_ratio(mix: GaussianMixture, model: cc.DiffusionModel, x: np.ndarray, grid: np.ndarray, solver: str,
                cores: int, exact: np.ndarray, seq: np.ndarray, gain: bool) -> tuple[float, int]:
    """(the worst sample's error over the sequential solver's, rounds) of the cascade's default."""
    r = cc.parallel(model, x, grid, solver, cores=cores, history_gain=gain)
    return float(np.max(np.linalg.norm(r.x - exact, axis=-1) / seq)), r.rounds


def gap_grid(gap: float) -> np.ndarray:
    g = cc.time_grid(cc.RectifiedFlow(), 30)
    return np.sort(np.append(g, g[20] - gap))[::-1].copy()


def random_grid(sched: cc.Schedule, steps: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    ends = cc.time_grid(sched, 1)  # the schedule's default start and end
    h = np.exp(rng.uniform(0.0, np.log(spread), steps))
    grid = ends[0] + (ends[1] - ends[0]) * np.concatenate([[0.0], np.cumsum(h) / h.sum()])
    grid[-1] = ends[1]  # (exactly: a rounding past the schedule's end is refused)
    return grid


class Tally:
    def __init__(self) -> None:
        self.runs, self.misses, self.worst, self.rounds = 0, 0, 0.0, 0

    def add(self, ratio: float, rounds: int) -> None:
        self.runs, self.rounds = self.runs + 1, self.rounds + rounds
        self.misses += ratio > 1.05
        self.worst = max(self.worst, ratio)

    def __str__(self) -> str:
        return f"{self.runs} runs, {self.misses} misses, worst {self.worst:.3f}, {self.rounds} rounds"


def run_case(mix, model, x, grid, solver, cores, tallies, sched_obj) -> tuple[tuple[float, int], ...]:
    exact = mix.reference_solve(x, grid[0], grid[-1], sched_obj)
    seq = np.linalg.norm(cc.solve(model, x, grid, solver) - exact, axis=-1)
    out = tuple(worst_ratio(mix, model, x, grid, solver, cores, exact, seq, gain) for gain in (True, False))
    for tally, got in zip(tallies, out):
        tally.add(*got)
    return out


def standard_gains() -> None:
    """The largest ``history_gains`` of each multistep solver over the standard grids, and where."""
    schedules = [(cc.RectifiedFlow(), "flow"), (cc.VP.cosine(), "eps"), (cc.VP.cosine(), "v"), (cc.VP.linear(), "eps"),
                 (cc.VP.linear(), "x0"), (cc.EDM(), "eps")]
    steps = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 250, 500, 1000)
    print(f"| solver | grids | largest gain | where | grids above {HISTORY_GAIN_FREE:g} |")
    print("|---|---|---|---|---|")
    for solver in ("dpmpp_2m", "dpmpp_3m", "unipc", "unip"):
        seen = []
        for sched, pred in schedules:
            model = cc.DiffusionModel(lambda x, t: x, sched, pred)
            for spacing in SPACINGS:
                for shift in (1.0, 3.0):
                    for T in steps:
                        try:
                            grid = cc.time_grid(sched, T, spacing, shift=shift)
                        except ValueError:  # (a spacing or shift the schedule does not take)
                            continue
                        gains = make_solver(solver, model, grid).history_gains()
                        where = f"{type(sched).__name__} {pred} {spacing} shift {shift:g} T={T}"
                        seen.append((float(np.max(gains)), where))
        top = max(seen)
        above = sum(g > HISTORY_GAIN_FREE for g, _ in seen)
        print(f"| {solver} | {len(seen)} | {top[0]:.2f} | {top[1]} | {above} |")


def at_least_one(text: str) -> float:
    v = float(text)
    if not v >= 1.0:  # (nan too)
        raise argparse.ArgumentTypeError(f"must be a number at least 1, got {text!r}")
    return v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=list(range(8)))
    ap.add_argument("--spread", type=at_least_one, default=1000.0,
                    help="the ratio of the largest to the smallest step drawn (>= 1)")
    ap.add_argument("--standard", action="store_true", help="print the solvers' largest gains on the standard grids")
    args = ap.parse_args(argv)
    if args.standard:
        standard_gains()
        return
    sched = cc.RectifiedFlow()
    mix = GaussianMixture.random(dim=4, modes=3, seed=0, scale=0.3)
    model = mix.model(sched, "flow")
    x = np.random.default_rng(0).standard_normal((3, 4))
    gap_tally = (Tally(), Tally())
    print("| gap | solver | cores | worst sample, gain on | off | rounds on | off |")
    print("|---|---|---|---|---|---|---|")
    for gap in GAPS:
        grid = gap_grid(gap)
        for solver in SOLVERS:
            for cores in (2, 4):
                (on, r_on), (off, r_off) = run_case(mix, model, x, grid, solver, cores, gap_tally, sched)
                mark = lambda v: f"**{v:.4f}**" if v > 1.05 else f"{v:.4f}"  # noqa: E731
                print(f"| {gap:g} | {solver} | {cores} | {mark(on)} | {mark(off)} | {r_on} | {r_off} |")
    rand_tally = (Tally(), Tally())
    for sch, pred in SCHEDULES:
        for seed in args.seeds:
            mixture = GaussianMixture.random(dim=4, modes=3, seed=seed, scale=0.3)
            m = mixture.model(sch, pred)
            rng = np.random.default_rng(100 + seed)
            xs = rng.standard_normal((3, 4))
            for steps in (12, 24):
                grid = random_grid(sch, steps, args.spread, rng)
                for solver in SOLVERS:
                    for cores in (2, 4, 8):
                        run_case(mixture, m, xs, grid, solver, cores, rand_tally, sch)
    for label, tallies in (("gap grids", gap_tally), (f"random grids (spread {args.spread:g})", rand_tally)):
        print(f"{label}: gain on: {tallies[0]}; off: {tallies[1]}")


if __name__ == "__main__":
    main()
