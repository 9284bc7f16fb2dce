"""The cascade's local-error estimate against the true local error of one step (theory/cascade.md, section 5).

On a single Gaussian, whose probability-flow trajectory is known in closed form, each step j-1 -> j is
taken from the exact state with the exact multistep history, and its error against the exact x_j is
the true local error; the estimate is ``LocalError``'s from the model values at the exact points. The
ratio is the estimate's norm summed over the steps against the true error's (warm-up and last step left
out), with the per-step range beside it.

    python -m theory.local_error_check            # rectified flow / flow and VP / eps, T = 50 to 400
"""

from __future__ import annotations

import argparse

import numpy as np

import chords_core as cc
from chords_core.local_error import LocalError
from chords_core.problems import GaussianMixture
from chords_core.solvers.base import State

SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m")
SETTINGS = {"rf": (cc.RectifiedFlow(), "flow"), "vp": (cc.VP(), "eps")}


def ratios(setting: str, solver: str, steps: int) -> tuple[float, float, float]:
    """(summed estimate / summed true local error, per-step minimum, per-step maximum) for ``solver``
    on ``steps`` steps of ``setting`` ("rf" or "vp")."""
    schedule, prediction = SETTINGS[setting]
    g = GaussianMixture.single(np.array([1.0, -0.5, 0.3]), np.array([0.2, 0.5, 0.3]))
    x_T = np.random.default_rng(1).standard_normal((6, 3))
    model, grid = g.model(schedule, prediction), cc.time_grid(schedule, steps)
    sol = cc.make_solver(solver, model, grid)
    xs = [x_T] + [g.exact_trajectory(x_T, float(grid[0]), float(t), schedule) for t in grid[1:]]

    def quantity(x: np.ndarray, i: int) -> np.ndarray:
        return sol.quantity_of(x, model.evaluate([x], [sol.t[i]])[0], i)

    with np.errstate(invalid="ignore"):  # (VP at t = 1: index 0's data prediction is not finite; never used)
        qs = [quantity(x, i) for i, x in enumerate(xs)]
    local = LocalError(sol)
    est, true, each = [], [], []
    for j in range(max(local.p, 3) + 1, steps - 1):
        e = np.linalg.norm(local.coefficient(j) * local.difference([qs[j - k] for k in range(local.p + 1)]))
        history = tuple((j - 1 - k, qs[j - 1 - k]) for k in range(1, sol.history_size + 1))
        state, stage = State(xs[j - 1], history), [qs[j - 1]]
        for k in range(1, sol.evals(j - 1, j)):
            point, idx = sol.stage_point(state, stage, j - 1, j, k)
            stage.append(quantity(point, idx))
        t = np.linalg.norm(sol.step(state, stage, j - 1, j).x - xs[j])
        est.append(e)
        true.append(t)
        each.append(e / t)
    return sum(est) / sum(true), min(each), max(each)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    args = ap.parse_args(argv)
    print("| setting | solver | " + " | ".join(f"T = {t}" for t in args.steps) + " |")
    print("|---|---|" + "---|" * len(args.steps))
    for setting in SETTINGS:
        for solver in args.solvers:
            cells = [ratios(setting, solver, t) for t in args.steps]
            print(f"| {setting} | {solver} | " + " | ".join(f"{a:.3f} [{lo:.3f}-{hi:.3f}]" for a, lo, hi in cells)
                  + " |")


if __name__ == "__main__":
    main()
