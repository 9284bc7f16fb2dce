"""Wall-clock speedup of CHORDS on CPU worker processes vs the plan's round speedup (chords_torch).

A seeded tanh MLP (``chords_torch.testing.mlp``, float32) as a rectified-flow velocity, sized so
that one evaluation costs about ``--ms`` milliseconds on one thread. Euler, T = ``--steps``.

- sequential: the plain solve on one worker process (``ProcessExecutor(workers=1)``, cores=1:
  T rounds), and in the driver itself (``cc.solve``, one thread) for reference;
- CHORDS on 2 workers (``ProcessExecutor(workers=2)``), first output (StopAtCore(1)), for
  cores = 2 (init 0, T/2 - 1) and more cores queued on the 2 workers.

Printed per configuration: rounds, the round speedup T / rounds, the 2-worker bound
T / sum_r ceil(n_r / 2) (a round with n_r > 2 points takes ceil(n_r / 2) evaluation times),
the measured wall-clock speedup and its ratio to the bound (target >= 0.9). On a shared machine
the two workers may not get two cores: the benchmark measures the *parallel capacity* (how many
evaluations run at once right now: 2 x time of a 1-point round / time of a 2-point round) and also
prints the bound at that capacity. The jobs run interleaved, ``--repeats`` times; the wall speedup is
taken repeat by repeat (sequential / CHORDS of the same repeat) and printed as median [min-max];
the other times are medians of the repeats (the parallel capacity with its [min-max]). About a
minute at the default 5 repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics

import timing
import torch

import chords_core as cc
from chords_core.demo import int_at_least
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
    with torch.no_grad():
        return timing.per_eval_ms(net, x, torch.full((x.shape[0],), 0.5), n=n)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="CHORDS wall-clock speedup on CPU worker processes")
    p.add_argument("--steps", type=int_at_least(1), default=50)
    p.add_argument("--ms", type=timing.positive_float, default=20.0, help="target cost of one evaluation on one thread")
    p.add_argument("--repeats", type=int_at_least(1), default=5)
    p.add_argument("--cores", type=int_at_least(1), nargs="+", default=[2, 3, 4])
    a = p.parse_args(argv)
    if a.steps < max([4, *a.cores]):  # (cores = 2 starts its second core at T/2 - 1 > 0)
        p.error(f"argument --steps: must be at least 4 and at least every --cores value, got {a.steps}")
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

    free = cc.DiffusionModel(_half, cc.RectifiedFlow(), "flow")
    inits = {K: (0, T // 2 - 1) if K == 2 else cc.default_init(T, K) for K in a.cores}
    with ProcessExecutor(factory, workers=1) as ex1, ProcessExecutor(factory, workers=2) as ex2, \
            ProcessExecutor(near_free, workers=2) as exf, DeviceExecutor(["cpu", "cpu"]) as dev:
        jobs = {
            "driver": lambda: cc.solve(model, x, grid, "euler"),
            "seq": lambda: cc.chords(model, x, grid, "euler", cores=1, executor=ex1),
            "free1": lambda: [exf(free, [x], [0.5]) for _ in range(50)],
            "free2": lambda: [exf(free, [x, x], [0.5, 0.5]) for _ in range(50)],
            "probe1": lambda: [ex2(model, [x], [0.5]) for _ in range(10)],
            "probe2": lambda: [ex2(model, [x, x], [0.5, 0.5]) for _ in range(10)],
        }
        for name, ex in (("ProcessExecutor", ex2), ("DeviceExecutor", dev)):
            for K, init in inits.items():
                jobs[name, K] = lambda ex=ex, init=init: cc.chords(model, x, grid, "euler", init=init,
                                                                   stop=cc.StopAtCore(1), executor=ex)
        times, _ = timing.interleaved(jobs, a.repeats, shuffle=True)  # every job sees the same load
        med = {k: statistics.median(v) for k, v in times.items()}  # every time printed is a median of the repeats
        plans = {K: cc.chords(model, x, grid, "euler", init=init, stop=cc.StopAtCore(1), executor=cc.SerialExecutor())
                 for K, init in inits.items()}
    t_seq = med["seq"]
    print(f"sequential: {t_seq * 1e3:.0f} ms on 1 worker process ({t_seq / T * 1e3:.1f} ms/step), "
          f"{med['driver'] * 1e3:.0f} ms in the driver (medians of {a.repeats} repeats)")
    print("ProcessExecutor overhead per round (near-free model, 2 workers): "
          f"{med['free1'] / 50 * 1e3:.2f} ms with 1 point, "
          f"{med['free2'] / 50 * 1e3:.2f} ms with 2 points")
    caps = [min(2.0, 2 * p1 / p2) for p1, p2 in zip(times["probe1"], times["probe2"])]  # repeat by repeat
    capacity = statistics.median(caps)
    print(f"parallel capacity now: a round of 1 point {med['probe1'] * 100:.1f} ms, of 2 points on 2 workers "
          f"{med['probe2'] * 100:.1f} ms -> {capacity:.2f} [{min(caps):.2f}-{max(caps):.2f}] evaluations at once "
          "(2.00 on an idle 2-core machine)")
    print()
    print(f"{'executor':<18}{'cores':>5} {'init':<22}{'rounds':>6}{'round x':>9}{'2-worker x':>11}"
          f"{'wall ms':>9}{'wall x median [min-max]':>25}{'ratio':>7}{'cap. x':>8}{'ratio':>7}")
    for name in ("ProcessExecutor", "DeviceExecutor"):
        for K, init in inits.items():
            res, t = plans[K], med[name, K]
            bound, capped = timing.worker_bound(res, 2), timing.worker_bound(res, 2, capacity)
            walls = [s / c for s, c in zip(times["seq"], times[name, K])]  # repeat by repeat
            wall = statistics.median(walls)
            spread = timing.spread(walls, fmt=".2f")
            print(f"{name:<18}{K:>5} {str(tuple(init)):<22}{res.rounds:>6}{res.speedup:>9.2f}{bound:>11.2f}"
                  f"{t * 1e3:>9.0f}{spread:>25}{wall / bound:>7.2f}{capped:>8.2f}{wall / capped:>7.2f}")
    print("\nround x = T / rounds (the plan's speedup); 2-worker x = T / sum_r ceil(n_r / 2); "
          "wall x = sequential wall time on 1 worker / CHORDS wall time of the same repeat; "
          "ratio = median wall x / 2-worker x (target >= 0.9); "
          "cap. x = the 2-worker bound at the measured parallel capacity, and wall x / cap. x. "
          "DeviceExecutor = 2 threads in one process, for contrast.")


if __name__ == "__main__":
    main()
