"""Choosing CHORDS init sequences: the paper-fitting recipe and a calibrated optimiser.

*Recipe* (``recipe_times``, ``recipe_init``): the reconstruction that reproduces the paper's
sequences 0-8-16-32, 0-3-6-12-24-36 and 0-2-4-8-16-24-32-40 at T = 50 (reference notes §4.2).
With frame end E = T - 2 and the fastest start t_{K-1}, walk down the cores:
s = E / (E - t_k); t_{k-1} = t_k / 2 if s <= 3 else 2 t_k - E; then E = t_k.

*Optimiser* (``optimize_init``): for one-evaluation solvers core c outputs after
R_c = T - t_c + c rounds, and its output depends on t_0..t_c only. Given a calibration problem
(inputs ``x`` with a reference solution ``ref``) it minimises the round of the first output whose
error e_c = rms(x_c - ref) satisfies e_c <= budget * e_seq (e_seq: the sequential solver's error),
over all init sequences of ``cores`` entries:

- exhaustively when C(T-1, K-1) <= ``exhaustive_limit``;
- otherwise by local search (moves of one start, or of a start and every faster one, by +-1, +-2,
  +-4 steps) from the best of the recipe at every fastest start, the paper's and the uniform
  sequence. The result is never worse than any of those seeds and is a local optimum.

A sequence is scored by (rounds of its first output within budget, that output's error ratio).
Errors of a prefix t_0..t_c are cached, so a move of core c reruns only cores c..K-1 and only
until core c's output.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

import numpy as np

from .models import Model
from .pipeline import chords
from .plan import make_plan, paper_init, validate_init
from .sequential import check_grid, solve
from .solvers import make_solver
from .stopping import StopAtCore

__all__ = [
    "recipe_times", "recipe_init", "Calibration", "calibration", "Candidate", "InitResult", "evaluate",
    "optimize_init", "pareto_front", "cli",
]


# --------------------------------------------------------------------------------------------- recipe
def _check_steps_cores(steps: int, cores: int) -> None:
    for name, v in (("steps", steps), ("cores", cores)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if cores > steps:
        raise ValueError(f"cores={cores} needs at least as many steps, got steps={steps}")


def default_top(steps: int, cores: int) -> float:
    """The recipe's fastest start: T/2 - 1 for K = 2, (0.48 + 0.04 K) T otherwise (24 + 2K at T = 50)."""
    return steps / 2 - 1 if cores == 2 else (0.48 + 0.04 * cores) * steps


def recipe_times(steps: int, cores: int, top: float | None = None) -> list[float]:
    """The recipe's real-valued starts [0, t_1, ..., t_{K-1}] for fastest start ``top`` (unrounded)."""
    _check_steps_cores(steps, cores)
    if cores == 1:
        return [0.0]
    if top is None:
        top = default_top(steps, cores)  # may fall outside (0, T) for tiny T or K >= 13: rounding repairs it
    elif not (isinstance(top, (int, float, np.integer, np.floating)) and 0 < top < steps):
        raise ValueError(f"top (the fastest start) must be a number in (0, steps={steps}), got {top!r}")
    top = float(top)
    E, ts = steps - 2.0, [top]
    for _ in range(cores - 2):
        t = ts[-1]
        s = E / (E - t) if E > t else math.inf
        ts.append(t / 2 if s <= 3 else 2 * t - E)
        E = t
    return [0.0] + list(reversed(ts))


def recipe_init(steps: int, cores: int, speedup: float | None = None, top: float | None = None) -> tuple[int, ...]:
    """The recipe as integer grid indices.

    The fastest start is ``top``, or chosen so that the fastest output comes after T / ``speedup``
    rounds (R_{K-1} = T - t_{K-1} + K - 1), or ``default_top``. Rounding: each start is rounded to
    the nearest integer; then the fastest is clamped to [K-1, T-1] and the sequence is repaired to be
    strictly increasing (first from the top down, t_c <= t_{c+1} - 1, then from the bottom up,
    t_c >= t_{c-1} + 1). With the defaults this equals ``plan.default_init``.
    """
    _check_steps_cores(steps, cores)
    if speedup is not None and top is not None:
        raise ValueError("give speedup or top, not both")
    if speedup is not None:
        if not (isinstance(speedup, (int, float)) and speedup >= 1):
            raise ValueError(f"speedup must be a number >= 1, got {speedup!r}")
        top = min(max(steps + cores - 1 - steps / speedup, 0.5), steps - 0.5)
    seq = [int(round(v)) for v in recipe_times(steps, cores, top)]
    if cores > 1:
        seq[-1] = min(max(seq[-1], cores - 1), steps - 1)
        for c in range(cores - 2, 0, -1):
            seq[c] = min(seq[c], seq[c + 1] - 1)
        for c in range(1, cores):
            seq[c] = max(seq[c], seq[c - 1] + 1)
    return validate_init(seq, steps, cores)


# --------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """A calibration problem: ``model`` on ``grid`` from inputs ``x`` with reference solution ``ref``.

    ``seq`` is the sequential solver's output and ``seq_error`` = rms(seq - ref).
    """

    model: Model
    x: Any = field(repr=False)
    grid: np.ndarray = field(repr=False)
    ref: Any = field(repr=False)
    solver: str
    options: dict
    seq: Any = field(repr=False)
    seq_error: float
    description: str = ""

    @property
    def steps(self) -> int:
        return len(self.grid) - 1


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(a, dtype=np.float64)))))


def calibration(
    steps: int | None = None,
    solver: str = "euler",
    *,
    problem: Any = None,
    model: Model | None = None,
    x_cal: Any = None,
    grid: Any = None,
    reference: Any = None,
    dim: int = 8,
    modes: int = 3,
    seed: int = 0,
    samples: int = 16,
    schedule: Any = None,
    refine: int = 8,
    **solver_options,
) -> Calibration:
    """Build a calibration problem.

    - default / ``problem=GaussianMixture``: the exact probability-flow ODE of the mixture
      (``GaussianMixture.random(dim, modes, seed)`` if none is given) on ``schedule`` (default
      ``RectifiedFlow``), a uniform grid of ``steps``, ``samples`` noise inputs, reference by DOP853;
    - ``problem=LinearODE``: dy/dt = A y on [0, 1], reference the matrix exponential;
    - ``model`` with ``x_cal`` and ``grid``: a user's model; ``reference`` defaults to the same
      solver on the grid refined ``refine`` times (each interval split evenly).
    """
    from .grid import time_grid
    from .problems import GaussianMixture, LinearODE
    from .schedules import RectifiedFlow

    rng = np.random.default_rng(seed)
    if model is not None:
        if problem is not None:
            raise ValueError("give problem or model, not both")
        if x_cal is None or grid is None:
            raise ValueError("a model needs calibration inputs x_cal and a grid")
        times = check_grid(grid)
        if steps is not None and steps != len(times) - 1:
            raise ValueError(f"steps={steps} does not match the grid's {len(times) - 1} steps")
        if reference is None:
            if isinstance(refine, bool) or not isinstance(refine, int) or refine < 1:
                raise ValueError(f"refine must be an integer >= 1, got {refine!r}")
            fine = np.concatenate([np.linspace(a, b, refine + 1)[:-1] for a, b in zip(times[:-1], times[1:])] + [times[-1:]])
            reference = solve(model, x_cal, fine, solver, **solver_options)
        desc = f"user model, reference {'given' if reference is not None else f'refined x{refine}'}"
        x = x_cal
    else:
        if steps is None:
            raise ValueError("steps is required unless a model and grid are given")
        problem = GaussianMixture.random(dim, modes, seed) if problem is None else problem
        if isinstance(problem, LinearODE):
            model = problem.vector_field()
            times = np.linspace(0.0, 1.0, steps + 1) if grid is None else check_grid(grid)
            x = rng.standard_normal((samples, problem.dim)) if x_cal is None else x_cal
            reference = problem.exact(x, times[0], times[-1])
            desc = f"linear ODE dim {problem.dim}"
        elif isinstance(problem, GaussianMixture):
            schedule = RectifiedFlow() if schedule is None else schedule
            model = problem.model(schedule, "flow" if isinstance(schedule, RectifiedFlow) else "x0")
            times = time_grid(schedule, steps) if grid is None else check_grid(grid)
            if x_cal is None:
                a, s = float(schedule.alpha(times[0])), float(schedule.sigma(times[0]))
                x = a * problem.sample(samples, seed + 1) + s * rng.standard_normal((samples, problem.dim))
            else:
                x = x_cal
            reference = problem.reference_solve(x, times[0], times[-1], schedule)
            desc = f"Gaussian mixture dim {problem.dim}, {problem.n_modes} modes, {samples} samples"
        else:
            raise TypeError(f"problem must be a GaussianMixture or LinearODE, got {type(problem).__name__}")
    make_solver(solver, model, times, **solver_options)  # validates the solver name and options
    seq = solve(model, x, times, solver, **solver_options)
    return Calibration(model, x, times, reference, solver, dict(solver_options), seq, _rms(seq - reference), desc)


# ---------------------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One init sequence, measured: per core c its output round R_c and error e_c = rms(x_c - ref).

    ``core`` is the first output (earliest round) with e_c <= budget * e_seq, ``rounds`` its round.
    """

    init: tuple[int, ...]
    finish: tuple[int, ...]
    errors: tuple[float, ...]
    ratios: tuple[float, ...]
    core: int
    rounds: int
    nfe: int
    speedup: float

    @property
    def ratio(self) -> float:
        return self.ratios[self.core]

    @property
    def error(self) -> float:
        return self.errors[self.core]

    @property
    def key(self) -> tuple[int, float]:
        return (self.rounds, self.ratio)


class _Evaluator:
    """Measures init sequences on a calibration, caching the error of every prefix t_0..t_c."""

    def __init__(self, cal: Calibration, budget: float):
        self.cal, self.budget = cal, budget
        self.prefix: dict[tuple[int, ...], float] = {}
        self.seen: dict[tuple[int, ...], Candidate] = {}
        self.runs = 0
        s = make_solver(cal.solver, cal.model, cal.grid, **cal.options)
        self.evals = [s.evals(i, i + 1) for i in range(cal.steps)]

    def __call__(self, init: Sequence[int]) -> Candidate:
        init = validate_init(init, self.cal.steps)
        if init in self.seen:
            return self.seen[init]
        K, cal = len(init), self.cal
        first = next((c for c in range(K) if init[: c + 1] not in self.prefix), K)
        if first < K:
            if first == 0:
                self.prefix[(0,)] = cal.seq_error  # core 0 is the sequential solver bit for bit
                first = 1
            if first < K:
                res = chords(cal.model, cal.x, cal.grid, cal.solver, init=init, stop=StopAtCore(K - first), **cal.options)
                self.runs += 1
                for h in res.hits:
                    self.prefix.setdefault(init[: h.core + 1], _rms(h.x - cal.ref))
        plan = make_plan(cal.steps, init, self.evals)
        errors = tuple(self.prefix[init[: c + 1]] for c in range(K))
        ratios = tuple(e / cal.seq_error if cal.seq_error > 0 else (1.0 if e == 0 else math.inf) for e in errors)
        ok = [c for c in range(K) if ratios[c] <= self.budget]
        core = min(ok, key=lambda c: (plan.finish_round[c], -c))
        R = plan.finish_round[core]
        cand = Candidate(init, plan.finish_round, errors, ratios, core, R, plan.nfe(R), plan.sequential_rounds / R)
        self.seen[init] = cand
        return cand


def evaluate(cal: Calibration, init: Sequence[int], budget: float = 1.05) -> Candidate:
    """Measure one init sequence on a calibration problem."""
    return _Evaluator(cal, _check_budget(budget))(init)


def _check_budget(budget) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 1 or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number >= 1 (error relative to the sequential solver), got {budget!r}")
    return float(budget)


# ----------------------------------------------------------------------------------------- optimiser
@dataclass(frozen=True)
class InitResult:
    """The chosen init sequence and how it was found.

    ``best`` is the chosen ``Candidate``; take its output with ``stop=StopAtCore(stop_n)``.
    ``baselines`` maps "recipe", "paper", "uniform" to their candidates; ``candidates`` holds every
    sequence measured; ``trace`` the (sequences measured, best rounds) after each improvement.
    """

    best: Candidate
    budget: float
    method: str
    evaluated: int
    runs: int
    calibration: Calibration = field(repr=False)
    baselines: dict = field(default_factory=dict, repr=False)
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)
    trace: tuple[tuple[int, int], ...] = ()

    @property
    def init(self) -> tuple[int, ...]:
        return self.best.init

    @property
    def rounds(self) -> int:
        return self.best.rounds

    @property
    def speedup(self) -> float:
        return self.best.speedup

    @property
    def stop_n(self) -> int:
        """n of ``StopAtCore(n)`` that returns the chosen output (outputs arrive fastest core first)."""
        return len(self.best.init) - self.best.core

    def summary(self) -> str:
        cal, b = self.calibration, self.best
        lines = [
            f"calibration: {cal.description}; solver {cal.solver}, {cal.steps} steps, {len(b.init)} cores",
            f"budget: error <= {self.budget:g} x sequential error ({cal.seq_error:.3e})",
            f"search: {self.method}, {self.evaluated} sequences measured ({self.runs} engine runs)",
            f"chosen init: {'-'.join(map(str, b.init))}  (output: core {b.core}, stop=StopAtCore({self.stop_n}))",
            f"  rounds {b.rounds} of {round(b.rounds * b.speedup)}: speedup {b.speedup:.2f}x, NFE {b.nfe}, "
            f"error {b.error:.3e} = {b.ratio:.4f} x sequential",
            "  per core (round, error ratio): " + ", ".join(f"c{c}:({b.finish[c]}, {b.ratios[c]:.3g})" for c in range(len(b.init))),
        ]
        for name, c in self.baselines.items():
            lines.append(
                f"{name:>8}: {'-'.join(map(str, c.init)):<28} rounds {c.rounds:3d} ({c.speedup:.2f}x, core {c.core}); "
                f"fastest output: round {min(c.finish)}, ratio {c.ratios[-1]:.3g}"
            )
        return "\n".join(lines)


def uniform_init(steps: int, cores: int) -> tuple[int, ...]:
    """Evenly spaced starts t_c = round(c T / K)."""
    _check_steps_cores(steps, cores)
    return validate_init([round(c * steps / cores) for c in range(cores)], steps, cores)


def _neighbours(init: tuple[int, ...], steps: int):
    K = len(init)
    for c in range(1, K):
        for d in (1, -1, 2, -2, 4, -4):
            for block in (False, True):
                if block and c == K - 1:
                    continue
                new = list(init)
                for k in range(c, K if block else c + 1):
                    new[k] += d
                if all(new[k] < new[k + 1] for k in range(K - 1)) and new[0] == 0 and new[1] > 0 and new[-1] < steps:
                    yield tuple(new)


def optimize_init(
    steps: int | None,
    cores: int,
    solver: str = "euler",
    *,
    budget: float = 1.05,
    exhaustive_limit: int = 500,
    max_evals: int = 600,
    cal: Calibration | None = None,
    **calibration_options,
) -> InitResult:
    """Find the init sequence of ``cores`` starts minimising the round of the first output within budget.

    Budget: rms(output - ref) <= ``budget`` * rms(sequential - ref) on the calibration problem,
    built by ``calibration(steps, solver, **calibration_options)`` (``problem``, ``model``,
    ``x_cal``, ``grid``, ``reference``, ``dim``, ``modes``, ``seed``, ``samples``, ``schedule``,
    solver options), or a prepared ``cal``. Core 0 always qualifies, so the answer exists.
    Returns an ``InitResult``; see the module docstring for the search.
    """
    budget = _check_budget(budget)
    for name, v in (("exhaustive_limit", exhaustive_limit), ("max_evals", max_evals)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if cal is None:
        cal = calibration(steps, solver, **calibration_options)
    elif calibration_options:
        raise ValueError(f"give cal or calibration options, not both (got {sorted(calibration_options)})")
    T = cal.steps
    _check_steps_cores(T, cores)
    ev = _Evaluator(cal, budget)
    baselines = {"recipe": ev(recipe_init(T, cores))}
    if paper_init(T, cores) is not None:
        baselines["paper"] = ev(paper_init(T, cores))
    baselines["uniform"] = ev(uniform_init(T, cores))
    trace: list[tuple[int, int]] = []

    def better(a: Candidate, b: Candidate | None) -> bool:
        return b is None or a.key < b.key

    best = min(baselines.values(), key=lambda c: c.key)
    space = math.comb(T - 1, cores - 1)
    if space <= exhaustive_limit:
        method = f"exhaustive over all {space} sequences"
        for rest in combinations(range(1, T), cores - 1):
            cand = ev((0,) + rest)
            if better(cand, best):
                best = cand
                trace.append((len(ev.seen), best.rounds))
    else:
        method = f"local search from {cores}-core recipe seeds ({space} sequences in all)"
        seeds = {recipe_init(T, cores, top=top) for top in range(cores - 1, T)} if cores > 1 else {(0,)}
        for s in sorted(seeds):
            cand = ev(s)
            if better(cand, best):
                best = cand
        trace.append((len(ev.seen), best.rounds))
        starts = sorted({c.init: c for c in ev.seen.values()}.values(), key=lambda c: c.key)[:3]
        for start in starts:
            cur = start
            improved = True
            while improved and len(ev.seen) < max_evals:
                improved = False
                for nb in _neighbours(cur.init, T):
                    if len(ev.seen) >= max_evals:
                        break
                    cand = ev(nb)
                    if better(cand, cur):
                        cur, improved = cand, True
                        break
            if better(cur, best):
                best = cur
                trace.append((len(ev.seen), best.rounds))
    return InitResult(best, budget, method, len(ev.seen), ev.runs, cal, baselines, tuple(ev.seen.values()), tuple(trace))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (rounds, error) pairs, sorted by rounds: no other point has both <= and one <."""
    front: list[tuple[float, float]] = []
    for r, e in sorted(set((float(r), float(e)) for r, e in points)):
        if not front or e < front[-1][1]:
            front.append((r, e))
    return front


# ----------------------------------------------------------------------------------------------- CLI
def cli(argv: list[str] | None = None) -> int:
    """``optimize``: choose an init sequence on a Gaussian-mixture calibration problem and print it."""
    p = argparse.ArgumentParser(prog="optimize", description="Find the CHORDS init sequence with the fewest rounds "
                                "whose output stays within an error budget relative to the sequential solver.")
    p.add_argument("--steps", type=int, default=50, help="grid steps T (default 50)")
    p.add_argument("--cores", type=int, default=4, help="cores K (default 4)")
    p.add_argument("--solver", default="euler", help="solver name (default euler)")
    p.add_argument("--budget", type=float, default=1.05, help="allowed error / sequential error (default 1.05)")
    p.add_argument("--dim", type=int, default=8, help="Gaussian mixture dimension (default 8)")
    p.add_argument("--modes", type=int, default=3, help="Gaussian mixture components (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture and the inputs (default 0)")
    p.add_argument("--samples", type=int, default=16, help="calibration samples (default 16)")
    p.add_argument("--max-evals", type=int, default=600, help="sequences measured at most by local search")
    p.add_argument("--exhaustive-limit", type=int, default=500, help="search exhaustively up to this many sequences")
    a = p.parse_args(argv)
    try:
        res = optimize_init(a.steps, a.cores, a.solver, budget=a.budget, dim=a.dim, modes=a.modes, seed=a.seed,
                            samples=a.samples, max_evals=a.max_evals, exhaustive_limit=a.exhaustive_limit)
    except (ValueError, TypeError) as e:
        print(f"optimize: error: {e}", file=sys.stderr)
        return 2
    print(res.summary())
    return 0
