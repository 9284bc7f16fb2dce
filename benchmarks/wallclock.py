"""Wall-clock speedup of CHORDS on CPU worker processes vs the plan's round speedup (chords_torch).

A seeded tanh MLP (``chords_torch.testing.mlp``, float32) as a rectified-flow velocity, sized so
that one evaluation costs about ``--ms`` milliseconds on one thread. Euler, T = ``--steps``.

- sequential: the plain solve on one worker process (``ProcessExecutor(workers=1)``, cores=1:
  T rounds), and in the driver itself (``cc.solve``, one thread) for reference;
- CHORDS on 2 workers (``ProcessExecutor(workers=2)``), first output (StopAtCore(1)), for
  cores = 2 (init 0, T/2 - 1) and more cores queued on the 2 workers.

Printed per configuration: rounds, the round speedup T / rounds, the 2-worker bound
T / sum_r ceil(n_r / 2) (a round with n_r > 2 points takes ceil(n_r / 2) evaluation times),
the measured wall-clock speedup and its ratio to the bound (target >= 0.9). Each time is the
best of ``--repeats`` runs (the machine is shared). Runtime about a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

try:
    import chords_torch
except ImportError:  # until pyproject lists backends/ in the package search
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
    import chords_torch

import chords_core as cc
from chords_torch import DeviceExecutor, ProcessExecutor
from chords_torch.testing import mlp


def factory(rows: int = 0, dim: int = 256, width: int = 1024, depth: int = 3):
    """Module-level (picklable) factory of the benchmark network."""
    return mlp(dim, width, depth, seed=0)


def _half(x, t):
    return x * 0.5


def near_free():
    """Factory of a near-free network (one multiply): measures the executor's own cost per round."""
    return _half


def per_eval_ms(net, x, n: int = 15) -> float:
    """Median time of one call (after warm-up), in ms."""
    t = torch.full((x.shape[0],), 0.5)
    with torch.no_grad():
        for _ in range(3):
            net(x, t)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            net(x, t)
            times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def worker_bound(plan: cc.Plan, rounds: int, workers: int) -> float:
    return plan.sequential_rounds / sum(-(-len(r.evals) // workers) for r in plan.rounds[:rounds])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="CHORDS wall-clock speedup on CPU worker processes")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--ms", type=float, default=20.0, help="target cost of one evaluation on one thread")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cores", type=int, nargs="*", default=[2, 3, 4])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    net = factory()
    dim = net.weights[0].shape[0]
    rows = 64
    rows = max(1, round(rows * a.ms / per_eval_ms(net, torch.randn(rows, dim))))  # calibrate the batch
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(model.schedule, a.steps)
    T = a.steps
    print(f"model: MLP {dim}-{net.weights[1].shape[0]}x{len(net.weights) - 1}-{dim}, batch {rows}, "
          f"{per_eval_ms(net, x):.1f} ms per evaluation on 1 thread; Euler T={T}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    t_driver = best_of(lambda: cc.solve(model, x, grid, "euler"), a.repeats)
    with ProcessExecutor(factory, workers=1) as ex1:
        t_seq = best_of(lambda: cc.chords(model, x, grid, "euler", cores=1, executor=ex1), a.repeats)
    print(f"sequential: {t_seq * 1e3:.0f} ms on 1 worker process ({t_seq / T * 1e3:.1f} ms/step), "
          f"{t_driver * 1e3:.0f} ms in the driver")
    with ProcessExecutor(near_free, workers=2) as ex:
        free = cc.DiffusionModel(_half, cc.RectifiedFlow(), "flow")
        for n in (1, 2):
            ex(free, [x] * n, [0.5] * n)
            dt = best_of(lambda: [ex(free, [x] * n, [0.5] * n) for _ in range(50)], a.repeats) / 50
            print(f"ProcessExecutor overhead per round, near-free model, {n} point(s) on 2 workers: {dt * 1e3:.2f} ms")
    print()
    print(f"{'executor':<18}{'cores':>5} {'init':<22}{'rounds':>6}{'round x':>9}{'2-worker x':>11}"
          f"{'wall ms':>9}{'wall x':>8}{'ratio':>7}")
    configs = []
    for K in a.cores:
        init = (0, T // 2 - 1) if K == 2 else cc.default_init(T, K)
        configs.append((K, init))
    with ProcessExecutor(factory, workers=2) as ex2, DeviceExecutor(["cpu", "cpu"]) as dev:
        for name, ex in (("ProcessExecutor", ex2), ("DeviceExecutor", dev)):
            for K, init in configs:
                res = cc.chords(model, x, grid, "euler", init=init, executor=ex)
                t = best_of(lambda: cc.chords(model, x, grid, "euler", init=init, executor=ex), a.repeats)
                bound = worker_bound(res.plan, res.rounds, 2)
                wall = t_seq / t
                print(f"{name:<18}{K:>5} {str(tuple(init)):<22}{res.rounds:>6}{res.speedup:>9.2f}{bound:>11.2f}"
                      f"{t * 1e3:>9.0f}{wall:>8.2f}{wall / bound:>7.2f}")
    print("\nround x = T / rounds (the plan's speedup); 2-worker x = T / sum_r ceil(n_r / 2); "
          "wall x = sequential wall time on 1 worker / CHORDS wall time; ratio = wall x / 2-worker x. "
          "DeviceExecutor = 2 threads in one process, for contrast.")


if __name__ == "__main__":
    main()
