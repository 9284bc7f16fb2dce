"""How well the local error estimates that the cascade sampler scores against track the real error.

The cascade sampler accepts a point when its change is at most ``tol`` x the solver's local error
estimate e_j there (``chords_core.local_error``); ``StopWhenConverged`` compares CHORDS' outputs with
their sum. A fixed ``tol`` transfers across workloads only as far as the estimates keep one ratio to
the error they stand for. For each workload and solver this prints, along the sequential trajectory
x_j (float64):

- **true / estimated local error**, median [min-max] over the steps with an estimate: the true local
  error l_j = |x_{j+1} - flow(x_j; t_j -> t_{j+1})| (RMS over samples; the flow from a fine solve of
  ``--fine`` DPM-Solver++(2M) sub-steps on the same step) against the estimate |e_{j+1}|;
- **estimated / true global error**: RMS(sum_j e_j) (``stopping.estimate_error``, the estimate
  ``StopWhenConverged`` compares CHORDS' outputs with: local errors propagated with the identity)
  over the sequential solver's error against the workload's reference. Near 1: a tolerance relative
  to the estimates is about that fraction of the real error; below 1: acceptance stricter than it
  needs to be on that workload (more rounds); above 1: laxer.

    .venv/bin/python benchmarks/error_scale.py                       # every workload, Euler 50 and DPM++ 20
    .venv/bin/python benchmarks/error_scale.py --workloads gmm_cosv --solvers dpmpp_2m:20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from timing import rms

import chords_core as cc
from chords_core.demo import int_at_least
from chords_core.history import move
from chords_core.local_error import LocalError

sys.path.insert(0, str(Path(__file__).parent))
from workloads import WORKLOADS  # noqa: E402


def trajectory(model: cc.Model, x: np.ndarray, sol) -> tuple[list, list]:
    """The sequential solve step by step: (points x_0..x_T, stage-0 quantities q_0..q_{T-1})."""
    st, xs, qs = sol.begin(x), [x], []
    for m in range(sol.steps):
        xm = xs[-1]
        out = model.evaluate([xm], [float(sol.t[m])])[0]
        q = sol.quantity_of(xm, out, m)
        qs.append(q)
        st = sol.step(move(st, xm), [q], m, m + 1)
        xs.append(st.x)
    return xs, qs


def check(name: str, solver: str, steps: int, fine: int) -> dict:
    w = WORKLOADS[name]()
    grid = w.grid(solver, steps)
    sol = cc.make_solver(solver, w.model, grid)
    if sol.history_size == 0 and max(sol.evals_per_step()) > 1:
        raise ValueError(f"solver {solver!r}: one evaluation per step only")
    xs, qs = trajectory(w.model, w.x, sol)
    seq_err = rms(xs[-1] - w.reference())
    local = LocalError(sol)
    ratios, total = [], 0.0
    for j in range(local.needs - 1, sol.steps):
        e = local.at(j, qs[j - local.needs + 1: j + 1][::-1])
        total = total + e
        if j >= 1 and sol.t[j] > 0 and rms(e) > 0:
            # the true local error of the step j-1 -> j from the sequential point x_{j-1}
            sub = w.grid(solver, fine)  # the workload's spacing for this solver, finer
            sub = sub[(sub < sol.t[j - 1]) & (sub > sol.t[j])]
            flow = cc.solve(w.model, xs[j - 1], np.concatenate([[sol.t[j - 1]], sub, [sol.t[j]]]), "dpmpp_2m")
            ratios.append(rms(xs[j] - flow) / rms(e))
    estimated = cc.stopping.estimate_error(total, sol.steps - local.needs + 1, sol.steps)
    assert estimated is not None  # every step but the first p has an estimate
    return dict(workload=name, solver=f"{solver} {steps}", seq_err=seq_err, global_ratio=estimated / seq_err,
                ratio_med=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))


def solver_steps(text: str) -> tuple[str, int]:
    """The ``--solvers`` option's ``solver:steps`` (e.g. ``euler:50``); an argparse error otherwise."""
    solver, _, steps = text.partition(":")
    if solver not in cc.SOLVERS:
        raise argparse.ArgumentTypeError(f"{text!r}: want solver:steps with a solver of {sorted(cc.SOLVERS)}")
    try:
        return solver, int_at_least(1)(steps)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: want solver:steps with steps an integer >= 1") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=sorted(WORKLOADS), choices=sorted(WORKLOADS))
    ap.add_argument("--solvers", nargs="+", type=solver_steps, default=[("euler", 50), ("dpmpp_2m", 20)],
                    help="solver:steps (default euler:50 dpmpp_2m:20)")
    ap.add_argument("--fine", type=int_at_least(1), default=2000,
                    help="sub-grid of the fine solve (its points inside a step)")
    a = ap.parse_args(argv)
    print("| workload | solver | sequential error | true / estimated local error, median [min-max] | "
          "estimated / true global error |")
    print("|---|---|---|---|---|")
    for name in a.workloads:
        for solver, steps in a.solvers:
            r = check(name, solver, steps, a.fine)
            print(f"| {r['workload']} | {r['solver']} | {r['seq_err']:.3g} | {r['ratio_med']:.2f} "
                  f"[{r['ratio_min']:.2f}-{r['ratio_max']:.2f}] | {r['global_ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
