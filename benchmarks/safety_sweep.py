"""Random diffusion problems outside everything the defaults were tuned on: how often each default misses.

Each problem is drawn from a seeded generator: a Gaussian mixture of one of nine families (random;
one mode's variance 100x smaller, the others up to 8x larger; one mode's weight 1e-3; modes ~10 out;
data at 0.18 scale, as Stable Diffusion latents; pixel-like means in [-1, 1] with variances 1e-4 to
1e-2; 256-D; 32 modes; a guidance-like combination (1 - w) p_uncond + w p_cond, w in [3, 10], of
two mixtures' model outputs), in 2 to 32 dimensions; a schedule (rectified flow, the same with
shift 3, VP linear, VP cosine, EDM), prediction, spacing (uniform, log-SNR, Karras), solver (Euler,
Heun, DDIM, DPM-Solver++(2M), (3M), UniPC), 4 to 100 steps (Heun at most 50), two core counts from
2 to 16, a batch of 1 to 16 samples. The reference is the probability-flow ODE solved by DOP853 at
rtol = atol = 1e-12 (the mixture's exact velocity). A run misses "no degradation" when its error
against the reference exceeds 1.05x the sequential solver's (RMS over the batch; also per sample).

Methods: ``cascade`` (``cc.parallel``'s default), ``cascade-level-TOL`` (the noise-level scale at
1e-3, 5e-4, 2.2e-4, 1e-4, floored at 0.1 as the default), ``cascade-floor1-TOL`` (the same floored
at 1, ParaTAA's rule and the cascade's until this release, at 5e-4, 2.2e-4 and 1e-4),
``cascade-error`` (the local-error scale at its default, tol 1), ``chords`` (``cc.chords`` at its
default stop).
Printed per method: runs, misses above 1.05x and 1.02x (batch, and any one sample), the worst ratio,
the rounds in all, the runs that warned, and the worst misses.

    .venv/bin/python benchmarks/safety_sweep.py --seeds 11 12 --problems 600 --methods cascade \
        cascade-floor1-0.0005 cascade-floor1-0.00022 cascade-floor1-0.0001 cascade-level-0.00022 \
        cascade-error chords                                                                    # the rules compared
    .venv/bin/python benchmarks/safety_sweep.py --seeds 13 14 15 16 17 --problems 600 --methods cascade \
        cascade-floor1-0.00022 cascade-floor1-0.0001 cascade-level-0.00022                      # held out
    .venv/bin/python benchmarks/safety_sweep.py --seeds 3 --problems 50     # a quick look
    .venv/bin/python benchmarks/safety_sweep.py --solvers dpmpp_3m --methods chords cascade-error  # one solver's
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from scipy.integrate import solve_ivp
from timing import rms

import chords_core as cc
from chords_core.demo import int_at_least
from chords_core.problems import GaussianMixture

SOLVERS = ["euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc"]
FAMILIES = ["rand", "unequal_var", "unequal_w", "far", "sd018", "pixel", "hidim", "cfg", "many"]
METHODS = {
    "cascade": lambda model, x, grid, solver, K: cc.parallel(model, x, grid, solver, cores=K),
    **{f"cascade-level-{tol:g}": (lambda model, x, grid, solver, K, tol=tol:
                                  cc.cascade(model, x, grid, solver, cores=K, scale="level", tol=tol))
       for tol in (1e-3, 5e-4, 2.2e-4, 1e-4)},
    **{f"cascade-floor1-{tol:g}": (lambda model, x, grid, solver, K, tol=tol:
                                   cc.cascade(model, x, grid, solver, cores=K, scale="level", tol=tol, level_floor=1.0))
       for tol in (5e-4, 2.2e-4, 1e-4)},
    "cascade-error": lambda model, x, grid, solver, K: cc.cascade(model, x, grid, solver, cores=K, scale="error"),
    "chords": lambda model, x, grid, solver, K: cc.chords(model, x, grid, solver, cores=K),
}


class Combination:
    """sum_k c_k mixture_k: a mixture (c = [1]) or a guidance-like combination (c = [1 - w, w])."""

    def __init__(self, mixtures: list[GaussianMixture], coefs: list[float]) -> None:
        self.mixtures, self.coefs = mixtures, coefs

    def model(self, schedule: cc.Schedule, prediction: str) -> cc.DiffusionModel:
        fns = [g.prediction_fn(schedule, prediction) for g in self.mixtures]
        return cc.DiffusionModel(lambda x, t: sum(c * f(x, t) for c, f in zip(self.coefs, fns)), schedule, prediction)

    def reference(self, x: np.ndarray, grid: np.ndarray, schedule: cc.Schedule) -> np.ndarray:
        def rhs(t, y):
            return sum(c * g.velocity(y.reshape(x.shape), float(t), schedule)
                       for c, g in zip(self.coefs, self.mixtures)).ravel()
        s = solve_ivp(rhs, (float(grid[0]), float(grid[-1])), x.ravel(), method="DOP853", rtol=1e-12, atol=1e-12)
        if not s.success:
            raise RuntimeError(s.message)
        return s.y[:, -1].reshape(x.shape)


def family(rng: np.random.Generator) -> tuple[str, Combination]:
    """A problem family and its mixture(s), drawn from ``rng``."""
    fam = str(rng.choice(FAMILIES))
    D, K, s = int(rng.choice([2, 8, 16, 32])), int(rng.integers(2, 8)), int(rng.integers(0, 10**6))
    if fam == "rand":
        g = GaussianMixture.random(D, K, s, spread=float(rng.uniform(0.5, 4)), scale=float(rng.uniform(0.1, 1)))
    elif fam == "unequal_var":
        g = GaussianMixture.random(D, K, s)
        v = g.variances.copy()
        v[0] *= 0.01
        v[1:] *= rng.uniform(1, 8)
        g = GaussianMixture(g.weights, g.means, v)
    elif fam == "unequal_w":
        g = GaussianMixture.random(D, K, s)
        w = g.weights.copy()
        w[0] = 1e-3
        g = GaussianMixture(w, g.means, g.variances)
    elif fam == "far":
        g = GaussianMixture.random(D, K, s, spread=10.0, scale=float(rng.uniform(0.1, 1)))
    elif fam == "sd018":
        g = GaussianMixture.random(D, K, s, spread=2, scale=float(rng.uniform(0.3, 1)))
        g = GaussianMixture(g.weights, g.means * 0.18, g.variances * 0.18**2)
    elif fam == "pixel":
        r = np.random.default_rng(s)
        mu = r.uniform(-1, 1, (K, D))
        v = np.full((K, D), float(rng.choice([1e-4, 1e-3, 1e-2])))
        g = GaussianMixture(r.uniform(0.5, 1.5, K), mu, v)
    elif fam == "hidim":
        g = GaussianMixture.random(256, K, s, spread=float(rng.uniform(1, 4)), scale=float(rng.uniform(0.2, 1)))
    elif fam == "many":
        g = GaussianMixture.random(D, 32, s, spread=float(rng.uniform(1, 4)), scale=float(rng.uniform(0.1, 0.5)))
    else:  # "cfg": (1 - w) p_uncond + w p_cond, the conditional one a single mode of the unconditional
        u = GaussianMixture.random(D, K + 2, s)
        cond = GaussianMixture(u.weights[:1], u.means[:1], u.variances[:1])
        w = float(rng.uniform(3, 10))
        return f"cfg{w:.1f}", Combination([u, cond], [1 - w, w])
    return fam, Combination([g], [1.0])


def setting(rng: np.random.Generator) -> tuple[str, cc.Schedule, str, str, np.ndarray, str]:
    """(schedule name, schedule, prediction, solver, grid, spacing), drawn from ``rng``."""
    name = str(rng.choice(["rf", "rf_shift", "vp", "cos", "edm"]))
    sch, preds = {"rf": (cc.RectifiedFlow(), ["flow", "x0", "v"]),
                  "rf_shift": (cc.RectifiedFlow(), ["flow", "x0", "v"]),
                  "vp": (cc.VP.linear(), ["eps", "x0", "v"]), "cos": (cc.VP.cosine(), ["v", "eps", "x0"]),
                  "edm": (cc.EDM(), ["x0", "eps"])}[name]
    pred = preds[0] if rng.random() < 0.6 else str(rng.choice(preds))
    solver = str(rng.choice(SOLVERS))
    T = int(rng.choice([4, 6, 8, 10, 12, 16, 20, 25, 30, 40, 50, 75, 100]))
    if solver == "heun":
        T = min(T, 50)
    spacing = "uniform"
    if name == "rf_shift":
        return name, sch, pred, solver, cc.time_grid(sch, T, shift=3.0), spacing
    if name == "edm":
        spacing = str(rng.choice(["karras", "karras", "uniform", "logsnr"]))
    else:
        spacing = str(rng.choice(["uniform", "uniform", "logsnr", "karras"]))
    kw: dict = {}
    if spacing != "uniform" and name == "rf":
        kw["t_max"] = 0.999
    if spacing == "logsnr" and name == "rf":
        kw["t_min"] = 1e-3
    if spacing == "logsnr" and name == "edm":
        kw["t_min"] = 0.002
    return name, sch, pred, solver, cc.time_grid(sch, T, spacing, **kw), spacing


def problems(seed: int, count: int):
    """``count`` problems of the generator seeded ``seed``: (tag, combination, schedule, prediction,
    solver, grid, core counts, x)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        fam, comb = family(rng)
        try:
            name, sch, pred, solver, grid, spacing = setting(rng)
        except ValueError:  # (a grid the schedule refuses: the next problem)
            continue
        D = comb.mixtures[0].dim
        n = int(rng.choice([1, 1, 4, 16])) if D <= 32 else int(rng.choice([1, 4]))
        T = len(grid) - 1
        Ks = sorted({int(k) for k in rng.choice([2, 3, 4, 6, 8, 12, 16], 2) if k <= T})
        noise = int(rng.integers(10**6))  # the noise's seed; the start is x_T of the schedule at grid[0]
        s, a = float(sch.sigma(grid[0])), float(sch.alpha(grid[0]))
        x = s * np.random.default_rng(noise).standard_normal((n, D))
        if a > 0:
            x = x + a * comb.mixtures[0].sample(n, noise + 1)
        rng.random()  # (a draw the first sweeps made here; kept so that a seed gives the same problems)
        yield f"{seed}.{i}/{fam}/{name}/{pred}/{spacing}/D{D}n{n}", comb, sch, pred, solver, grid, Ks, x



def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[11, 12])
    ap.add_argument("--problems", type=int_at_least(1), default=600, help="problems per seed")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--show", type=int_at_least(0), default=5, help="worst misses listed per method")
    ap.add_argument("--solvers", nargs="+", default=SOLVERS, choices=SOLVERS,
                    help="run only the problems that drew these solvers (the same problems as a full sweep)")
    a = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {m: [] for m in a.methods}
    for seed in a.seeds:
        for tag, comb, sch, pred, solver, grid, Ks, x in problems(seed, a.problems):
            if solver not in a.solvers:
                continue
            model = comb.model(sch, pred)
            ref = comb.reference(x, grid, sch)
            seq = cc.solve(model, x, grid, solver)
            e_seq, e_rows = rms(seq - ref), np.sqrt(np.mean(np.square(seq - ref).reshape(len(x), -1), axis=1))
            for K in Ks:
                for m in a.methods:
                    with warnings.catch_warnings(record=True) as seen:
                        warnings.simplefilter("always")
                        r = METHODS[m](model, x, grid, solver, K)
                    rows = np.sqrt(np.mean(np.square(r.x - ref).reshape(len(x), -1), axis=1))
                    runs[m].append(dict(tag=tag, solver=solver, T=len(grid) - 1, K=K, ratio=rms(r.x - ref) / e_seq,
                                        row=float(np.max(rows / e_rows)), rounds=r.rounds, warned=bool(seen)))
    print("| method | runs | > 1.05x (batch) | > 1.02x | > 1.05x (any sample) | worst | rounds | warned |")
    print("|---|---|---|---|---|---|---|---|")
    for m, rs in runs.items():
        if not rs:  # (no problem drew the solvers asked for)
            print(f"| {m} | 0 | | | | | | |")
            continue
        print(f"| {m} | {len(rs)} | {sum(r['ratio'] > 1.05 for r in rs)} | {sum(r['ratio'] > 1.02 for r in rs)} | "
              f"{sum(r['row'] > 1.05 for r in rs)} | {max(r['ratio'] for r in rs):.3f} | "
              f"{sum(r['rounds'] for r in rs)} | {sum(r['warned'] for r in rs)} |")
    for m, rs in runs.items():
        for r in sorted((r for r in rs if r["ratio"] > 1.05), key=lambda r: -r["ratio"])[:a.show]:
            print(f"  {m}: {r['ratio']:.3f}x  {r['tag']} {r['solver']} T={r['T']} K={r['K']} rounds {r['rounds']}"
                  f"{' (warned)' if r['warned'] else ''}")


if __name__ == "__main__":
    main()
