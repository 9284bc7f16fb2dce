"""Framework time per CHORDS round with a near-free model (issue: engine overhead).

8 cores, T = 50, Euler on a rectified-flow model whose evaluation is ``x * 0.5`` (one array op),
float32 states of 64 and 65,536 elements, ``BatchedExecutor`` (one stacked call per round).

Printed side by side, per state size:
- engine:     wall time of ``chords(..., stop=None)`` / rounds executed;
- model:      the model calls alone on the same stacked arrays (measured separately);
- arithmetic: the array arithmetic a round needs at minimum, done in a bare numpy loop — per
              active core one fine Euler step (x + h v) and the output conversion-free flow
              velocity, plus the rectifications (three axpy-like ops each) and the concatenation;
- overhead:   engine - model - arithmetic, the bookkeeping the framework adds.
Targets: overhead <= 50 us per round at size 64; at 65,536 the engine within ~1.2x of arithmetic + model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import chords_core as cc


def near_free(x, t):
    return x * np.float32(0.5)


def bare_round_arithmetic(plan, x, h=0.02):
    """The minimum array work of the plan's rounds, without any framework: returns seconds per round."""
    n_active = [len(r.evals) for r in plan.rounds]
    n_rect = [len(r.rectified) for r in plan.rounds]
    xs = [x.copy() for _ in range(plan.cores)]
    vs = [x.copy() for _ in range(plan.cores)]
    t0 = time.perf_counter()
    for na, nr in zip(n_active, n_rect):
        stacked = np.concatenate(xs[:na], axis=0)
        _ = stacked  # the model call is timed separately
        for c in range(na):
            xs[c] = xs[c] + h * vs[c]
        for c in range(nr):
            xs[c] = xs[c] + (vs[c] - xs[c]) + h * (vs[c] - xs[c])
    return (time.perf_counter() - t0) / len(n_active)


def model_only(plan, x):
    t0 = time.perf_counter()
    for r in plan.rounds:
        n = len(r.evals)
        xx = np.concatenate([x] * n, axis=0)
        near_free(xx, np.zeros(xx.shape[0], np.float32))
    return (time.perf_counter() - t0) / len(plan.rounds)


def measure(size: int, repeats: int) -> dict:
    model = cc.DiffusionModel(near_free, cc.RectifiedFlow(), "flow", check_outputs=True)
    grid = cc.time_grid(cc.RectifiedFlow(), 50)
    x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
    init = [0, 2, 4, 8, 16, 24, 32, 40]
    best = {"engine": np.inf, "model": np.inf, "arith": np.inf}
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = cc.chords(model, x, grid, "euler", init=init, stop=None)
        best["engine"] = min(best["engine"], (time.perf_counter() - t0) / res.rounds)
        best["model"] = min(best["model"], model_only(res.plan, x))
        best["arith"] = min(best["arith"], bare_round_arithmetic(res.plan, x))
    best["overhead"] = best["engine"] - best["model"] - best["arith"]
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    print(f"{'size':>7} | {'engine us/round':>15} | {'model':>7} | {'arithmetic':>10} | {'overhead':>8} | engine/(model+arith)")
    for size in (64, 65_536):
        m = measure(size, args.repeats if size == 64 else max(3, args.repeats // 4))
        us = {k: v * 1e6 for k, v in m.items()}
        print(f"{size:>7} | {us['engine']:>15.1f} | {us['model']:>7.1f} | {us['arith']:>10.1f} | {us['overhead']:>8.1f} | "
              f"{m['engine'] / (m['model'] + m['arith']):.2f}x")


if __name__ == "__main__":
    main()
