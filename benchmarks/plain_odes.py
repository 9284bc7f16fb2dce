"""The cascade sampler's default on plain ODEs: error against a fine solve over the sequential solver's.

For a ``VectorField`` the default is the local-error scale at ``PLAIN_TOL``. Seven ODEs none of the
defaults was tuned on, two states each: Lorenz (to t = 1.5), Van der Pol with
mu = 2 (to t = 8) and mu = 0.5 (to 10), a pendulum (to 10), Lotka-Volterra (to 6), Euler's rigid
body (to 12) and a stiff linear system (rates 50 and 0.5, to t = 1; added after a review found
CHORDS' default stop fooled there); Euler and Heun at 50, 100 and 200 steps; 2, 4 and 8 lanes.
Each cell: RMS error against a Heun solve on a 40x finer grid over the sequential solver's with the
same steps, and the rounds;
``*`` marks a cell above the no-degradation criterion (1.05), ``E`` a run that raised (its rounds
counted as the sequential solve's in the totals). Runs whose
sequential solve itself overflows (Euler at 50 steps on Lorenz) are left out, and so are those whose
sequential error exceeds the solution's RMS (not an approximation: no degradation to judge). Columns: the default
(``cc.parallel``: the local-error scale at ``PLAIN_TOL``) and the local-error scale at ``tol=1`` (the
default for a diffusion model) and ``tol=0.5``. Also counted: the largest deviation from the
sequential output in units of the sequential error (the error ratio alone can pass by cancellation
or fail by an unlucky sign), and runs with a sweep cut where an iterate ran off (a non-finite model
output past the window start; docs/safety.md, "An iterate that runs off"). A last column runs CHORDS
(``cc.chords`` with its default init and stop rule, ``cores`` cores): its faster cores start with one
coarse jump over many steps, which on these ODEs often lands where the field overflows; such a core
is retired with the faster ones and the run goes on (counted as "retired"). ``--peers`` adds the
peers at their own defaults (SRDS with ``blocks`` = cores, ParaDiGMS, ParaSolver and ParaTAA with
``window`` = cores), whose tolerances are in the state's units (the diffusion convention); they
warn on a plain ODE, silenced here. ``--stiff`` runs the stiff system at rates 10, 20, 30, 50 and 80
instead (one state each), where CHORDS' default stop rule is hardest to satisfy. ``--forced`` runs
forced cubic decays, dy/dt = -a y^3 + b sin(w t) (one state each; a user trial's, where CHORDS'
default stop accepted 1.40x the sequential error, and 12 random ones), instead.

    .venv/bin/python benchmarks/plain_odes.py
    .venv/bin/python benchmarks/plain_odes.py --stiff --steps 30 40 60 120 --cores 4 8
    .venv/bin/python benchmarks/plain_odes.py --forced --steps 30 40 60 --cores 4 8
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from timing import positive_float, rms

import chords_core as cc
from chords_core.demo import int_at_least


def lorenz(t, y):
    return np.stack([10.0 * (y[..., 1] - y[..., 0]), y[..., 0] * (28.0 - y[..., 2]) - y[..., 1],
                     y[..., 0] * y[..., 1] - 8.0 / 3.0 * y[..., 2]], -1)


def van_der_pol(mu):
    return lambda t, y: np.stack([y[..., 1], mu * (1.0 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


def pendulum(t, y):
    return np.stack([y[..., 1], -np.sin(y[..., 0])], -1)


def lotka_volterra(t, y):
    return np.stack([1.5 * y[..., 0] - y[..., 0] * y[..., 1], -3.0 * y[..., 1] + y[..., 0] * y[..., 1]], -1)


def rigid_body(t, y):
    return np.stack([y[..., 1] * y[..., 2], -y[..., 0] * y[..., 2], -0.51 * y[..., 0] * y[..., 1]], -1)


def stiff(rate: float):
    """dy/dt = [[-rate, 1], [0, -0.5]] y: a fast mode and a slow one; Euler and Heun are stable from
    rate / 2 steps to t = 1, but a coarse jump over many steps is not."""
    a = np.array([[-rate, 1.0], [0.0, -0.5]])
    return lambda t, y: y @ a.T


#: name -> (vector field, initial states, end time)
ODES = {
    "lorenz": (lorenz, [[1.0, 1.0, 1.0], [-5.0, 3.0, 20.0]], 1.5),
    "van der pol 2": (van_der_pol(2.0), [[2.0, 0.0], [0.5, 1.0]], 8.0),
    "van der pol 0.5": (van_der_pol(0.5), [[2.0, 0.0], [0.5, 1.0]], 10.0),
    "pendulum": (pendulum, [[1.0, 0.0], [2.5, 0.3]], 10.0),
    "lotka-volterra": (lotka_volterra, [[10.0, 5.0], [3.0, 2.0]], 6.0),
    "rigid body": (rigid_body, [[0.0, 1.0, 1.0], [0.3, 0.8, 0.5]], 12.0),
    "stiff linear": (stiff(50.0), [[1.0, 1.0], [2.0, -1.0]], 1.0),
}
#: ``--stiff``: the stiff system at several rates instead
STIFF = {f"stiff, rate {r:g}": (stiff(r), [[1.0, 1.0]], 1.0) for r in (10.0, 20.0, 30.0, 50.0, 80.0)}


def duffing(t, y):
    """A forced, damped double-well oscillator (chaotic at this forcing); ``t`` (N,) for y (N, states, 2)."""
    force = 0.3 * np.cos(1.2 * np.reshape(t, np.shape(t) + (1,) * (y.ndim - 2)))
    return np.stack([y[..., 1], -0.2 * y[..., 1] + y[..., 0] - y[..., 0] ** 3 + force], -1)


def fitzhugh_nagumo(t, y):
    v, w = y[..., 0], y[..., 1]
    return np.stack([v - v ** 3 / 3.0 - w + 0.5, 0.08 * (v + 0.7 - 0.8 * w)], -1)


def brusselator(t, y):
    return np.stack([1.0 + y[..., 0] ** 2 * y[..., 1] - 4.0 * y[..., 0], 3.0 * y[..., 0] - y[..., 0] ** 2 * y[..., 1]],
                    -1)


def rossler(t, y):
    return np.stack([-y[..., 1] - y[..., 2], y[..., 0] + 0.2 * y[..., 1], 0.2 + y[..., 2] * (y[..., 0] - 5.7)], -1)


def kepler(t, y):
    """A planar orbit (position, velocity; from periapsis at eccentricity 0.5 and 0.3), period 2 pi."""
    r3 = (y[..., 0] ** 2 + y[..., 1] ** 2) ** 1.5
    return np.stack([y[..., 2], y[..., 3], -y[..., 0] / r3, -y[..., 1] / r3], -1)


#: ``--more``: ODEs added after a user trial found the default above the criterion on Van der Pol at
#: mu = 5 and the forced Duffing oscillator (none of the defaults was tuned on them)
MORE = {
    "van der pol 5": (van_der_pol(5.0), [[2.0, 0.0], [0.5, 1.0]], 6.0),
    "duffing": (duffing, [[1.0, 0.0], [-0.5, 0.5]], 20.0),
    "fitzhugh-nagumo": (fitzhugh_nagumo, [[-1.0, 1.0], [1.0, 0.0]], 40.0),
    "brusselator": (brusselator, [[1.5, 3.0], [0.5, 1.0]], 10.0),
    "rossler": (rossler, [[1.0, 1.0, 0.0], [0.0, -2.0, 0.1]], 20.0),
    "kepler": (kepler, [[0.5, 0.0, 0.0, 3.0 ** 0.5], [0.7, 0.0, 0.0, (1.3 / 0.7) ** 0.5]], 6.0),
}


def forced_cubic(a: float, b: float, w: float):
    """dy/dt = -a y^3 + b sin(w t): strongly contracting while |y| is large (Jacobian -3 a y^2), then
    driven; ``t`` (N,) for y (N, ...)."""
    def f(t, y):
        return -a * y ** 3 + b * np.sin(w * np.reshape(t, np.shape(t) + (1,) * (y.ndim - 1)))
    return f


def _forced() -> dict:
    """``--forced``: a user trial's dy/dt = -y^3 + sin(2 t) from y = 2 to t = 5, where CHORDS' default
    stop accepted an output 1.40x the sequential error with Heun at 40 steps on 8 cores, and 12 of the
    trial's random (a, b, w, y0, t_end) drawn with seed 5."""
    odes = {"forced cubic 1 1 2": (forced_cubic(1.0, 1.0, 2.0), [[2.0]], 5.0)}
    rng = np.random.default_rng(5)
    for _ in range(12):
        a, b, w, y0, t_end = (float(v) for v in (rng.uniform(0.5, 2), rng.uniform(0.5, 2), rng.uniform(1, 4),
                                                  rng.uniform(1, 3), rng.uniform(3, 6)))
        odes[f"forced cubic {a:.2f} {b:.2f} {w:.2f} y0 {y0:.2f}"] = (forced_cubic(a, b, w), [[y0]], t_end)
    return odes



def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int_at_least(1), nargs="+", default=[50, 100, 200])
    ap.add_argument("--cores", type=int_at_least(1), nargs="+", default=[2, 4, 8])
    ap.add_argument("--solver", nargs="+", default=["euler", "heun"], choices=["euler", "heun"],
                    help="a plain ODE's solvers (the others need a diffusion model)")
    ap.add_argument("--peers", action="store_true", help="also the peers at their own defaults")
    which = ap.add_mutually_exclusive_group()  # (a user trial: --stiff --forced ran the stiff set alone, silently)
    which.add_argument("--stiff", action="store_true", help="the stiff linear system at rates 10-80 instead")
    which.add_argument("--more", action="store_true", help=f"the ODEs {sorted(MORE)} instead (none tuned on)")
    which.add_argument("--forced", action="store_true",
                       help="forced cubic decays, dy/dt = -a y^3 + b sin(w t), instead")
    ap.add_argument("--tols", type=positive_float, nargs="+", default=[1.0, 0.5], metavar="TOL",
                    help="columns of the local-error scale at these tolerances (default 1 0.5)")
    ap.add_argument("--no-chords", action="store_true", help="leave out the CHORDS column")
    ap.add_argument("--rel", type=positive_float, default=None,
                    help="CHORDS' stop StopWhenConverged(rel) (default: its default stop, rel 0.1)")
    a = ap.parse_args(argv)
    runs = {n: (lambda m, y, g, s, k, kw=kw: cc.parallel(m, y, g, s, cores=k, **kw))
            for n, kw in {"default": {}, **{f"tol {t:g}": {"scale": "error", "tol": t} for t in a.tols}}.items()}
    if not a.no_chords:
        stop = {} if a.rel is None else {"stop": cc.StopWhenConverged(a.rel)}
        runs["chords"] = lambda m, y, g, s, k: cc.chords(m, y, g, s, cores=k, **stop)
    if a.peers:
        runs["srds"] = lambda m, y, g, s, k: cc.srds(m, y, g, s, blocks=k)
        for name, fn in (("paradigms", cc.paradigms), ("parasolver", cc.parasolver), ("parataa", cc.parataa)):
            runs[name] = lambda m, y, g, s, k, fn=fn: fn(m, y, g, s, window=k)
    print("| ode | solver | steps | " + " | ".join(f"{n}, {k} lanes" for n in runs for k in a.cores) + " |")
    print("|---|---|---|" + "---|" * (len(runs) * len(a.cores)))
    misses = {n: 0 for n in runs}
    worst = {n: 0.0 for n in runs}
    rounds = {n: 0 for n in runs}
    raised = {n: 0 for n in runs}
    cut = {n: 0 for n in runs}
    moved = {n: 0.0 for n in runs}  # the largest |parallel - sequential| / the sequential error
    count = skipped = unresolved = sequential = 0
    for name, (f, y0, t_end) in (STIFF if a.stiff else MORE if a.more else _forced() if a.forced else ODES).items():
        model, y0 = cc.VectorField(f, batched=True), np.asarray(y0)
        for solver in a.solver:
            for steps in a.steps:
                grid = np.linspace(0.0, t_end, steps + 1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        seq = cc.solve(model, y0, grid, solver)
                    except cc.ModelOutputError:
                        skipped += 1
                        continue
                    ref = cc.solve(model, y0, np.linspace(0.0, t_end, 40 * steps + 1), "heun")
                err = rms(seq - ref)
                if not err < rms(ref):  # not an approximation: no degradation to judge (any change moves the
                    unresolved += 1  # error by as much as the solution's size; Euler on Duffing at 50 steps: 1e24x)
                    continue
                seq_rounds = sum(cc.make_solver(solver, model, grid).evals_per_step())
                sequential += seq_rounds * len(a.cores)
                cells = []
                for n, run in runs.items():
                    for k in a.cores:
                        count += n == "default"
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            try:
                                r = run(model, y0, grid, solver, k)
                            except cc.ModelOutputError:
                                raised[n] += 1
                                misses[n] += 1
                                rounds[n] += seq_rounds  # (left out, it made the method's total look small)
                                cells.append("E")
                                continue
                        q = rms(r.x - ref) / err
                        worst[n] = max(worst[n], q)
                        moved[n] = max(moved[n], rms(r.x - seq) / err)
                        misses[n] += q > 1.05
                        rounds[n] += r.rounds
                        cut[n] += "cut where" in r.stopped_by or "retired" in r.stopped_by
                        ratio = f"{q:.3f}" if q < 1e3 else f"{q:.3g}"  # (a run-off printed 79 digits)
                        cells.append(f"{ratio}{'*' if q > 1.05 else ''} ({r.rounds})")
                print(f"| {name} | {solver} | {steps} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{count} runs per column ({skipped} (ode, solver, steps) left out: the sequential solve overflows; "
          f"{unresolved} more: its error exceeds the solution's RMS)")
    for n in runs:
        worst_n = f"{worst[n]:.3f}" if worst[n] < 1e3 else f"{worst[n]:.3g}"
        print(f"{n}: above 1.05 or raised {misses[n]} (raised {raised[n]}), worst {worst_n}, "
              f"largest deviation from the sequential output {moved[n]:.3f} x its error, rounds {rounds[n]} (a run "
              f"that raised counted as the sequential solve's), "
              f"runs with a cut sweep or a retired core {cut[n]}, sequential rounds {sequential}")


if __name__ == "__main__":
    main()
