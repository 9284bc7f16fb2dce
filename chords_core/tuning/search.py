"""Searching CHORDS init sequences on a calibration problem: ``optimize_init``.

It minimises the round of the first output within the error budget (``calibration.evaluate``)
over all init sequences of ``cores`` entries:

- exhaustively when C(T-1, K-1) <= ``exhaustive_limit``;
- otherwise by local search (moves of one start, or of a start and every faster one, by +-1, +-2,
  +-4 steps) from the best of the recipe at every fastest start, the paper's and the uniform
  sequence. The result is never worse than any of those seeds and is a local optimum.

The command line ``python -m chords_core optimize`` runs it on a Gaussian-mixture calibration.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from ..checks import check_int
from ..inits import paper_init, recipe_init, uniform_init
from ..progress import check_progress, progress_bar
from .calibration import Calibration, Candidate, Evaluator, calibration, check_budget, counted

__all__ = ["InitResult", "optimize_init", "pareto_front"]


@dataclass(frozen=True)
class InitResult:
    """The chosen init sequence and how it was found.

    Attributes:
        best: the chosen ``Candidate``; take its output with ``stop=StopAtCore(stop_n)``.
        budget: the error budget used.
        method: how the search ran (exhaustive or local), in words.
        evaluated: how many sequences were measured.
        runs: how many engine runs that took.
        calibration: the calibration problem.
        baselines: "recipe", "paper", "uniform" -> their candidates.
        candidates: every sequence measured.
        improvements: (sequences measured, best rounds) after each improvement.
    """

    best: Candidate
    budget: float
    method: str
    evaluated: int
    runs: int
    calibration: Calibration = field(repr=False)
    baselines: dict = field(default_factory=dict, repr=False)
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)
    improvements: tuple[tuple[int, int], ...] = ()

    @property
    def init(self) -> tuple[int, ...]:
        """The chosen init sequence."""
        return self.best.init

    @property
    def rounds(self) -> int:
        """The round of the chosen output."""
        return self.best.rounds

    @property
    def speedup(self) -> float:
        """Sequential rounds / ``rounds``."""
        return self.best.speedup

    @property
    def stop_n(self) -> int:
        """n of ``StopAtCore(n)`` that returns the chosen output (outputs arrive fastest core first;
        a retired core's make none: ``Candidate.stop_n``)."""
        return self.best.stop_n

    def summary(self) -> str:
        """A multi-line report: the calibration, the chosen sequence, per-core results, the baselines."""
        cal, b = self.calibration, self.best
        lines = [
            f"calibration: {cal.description}; solver {cal.solver}, {cal.steps} steps, {len(b.init)} cores",
            f"budget: error <= {self.budget:g} x sequential error ({cal.seq_error:.3e})",
            f"search: {self.method}, {counted(self.evaluated, 'sequence')} measured "
            f"({counted(self.runs, 'engine run')})",
            f"chosen init: {'-'.join(map(str, b.init))}  (output: core {b.core}, stop=StopAtCore({self.stop_n}))",
            f"  rounds {b.rounds} of {round(b.rounds * b.speedup)}: speedup {b.speedup:.2f}x, NFE {b.nfe}, "
            f"error {b.error:.3e} = {b.ratio:.4f} x sequential",
            "  per core (round, error ratio): "
            + ", ".join(f"c{c}:({b.finish[c]}, {b.ratios[c]:.3g})" for c in range(len(b.init))),
        ]
        for name, c in self.baselines.items():
            lines.append(
                f"{name:>8}: {'-'.join(map(str, c.init)):<28} rounds {c.rounds:3d} ({c.speedup:.2f}x, core {c.core}); "
                f"fastest output: round {min(c.finish)}, ratio {c.ratios[-1]:.3g}"
            )
        return "\n".join(lines)


def _neighbours(init: tuple[int, ...], steps: int) -> Iterator[tuple[int, ...]]:
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
    solver: str | None = None,
    *,
    budget: float = 1.05,
    exhaustive_limit: int = 500,
    max_evals: int = 600,
    cal: Calibration | None = None,
    progress: bool = False,
    **calibration_options: Any,
) -> InitResult:
    """Find the init sequence of ``cores`` starts minimising the round of the first output within budget.

    Budget: rms(output - ref) <= ``budget`` * rms(sequential - ref) on the calibration problem,
    built by ``calibration(steps, solver, **calibration_options)`` (``problem``, ``model``,
    ``x_cal``, ``grid``, ``reference``, ``dim``, ``modes``, ``seed``, ``samples``, ``schedule``,
    solver options), or a prepared ``cal``. Core 0 always qualifies, so the answer exists.
    See the module docstring for the search. The runs use CHORDS' default history policy
    (``"shift"``) and return the chosen output with ``StopAtCore(stop_n)``: its rounds hold for
    that stop rule and that policy (``"keep"`` or ``"restart"`` change the outputs), on the
    calibration problem.

    Args:
        steps: T (for the calibration built here; with ``cal``, ``None`` or ``cal.steps``).
        cores: K, 1 to T.
        solver: the solver's name (default ``"euler"``; with ``cal``, ``None`` or ``cal.solver``).
        budget: allowed error / sequential error, >= 1.
        exhaustive_limit: search exhaustively up to this many sequences.
        max_evals: local search stops once this many sequences have been measured in all; the seeds
            (the recipe's sequences and the candidates of an exhaustive search) are measured first
            whatever it says (a user trial: 95 measured with max_evals=10 at T = 100, K = 8).
        cal: a prepared calibration (not with ``calibration_options``).
        progress: show a bar over the sequences measured (needs tqdm), with tqdm's estimate of the time
            left: each is a whole CHORDS run on the calibration samples, and at T = 2000, 8 cores the
            seeds alone take about 40 minutes here (a user trial waited with nothing printed).
        calibration_options: passed to ``calibration``.

    Returns:
        The ``InitResult``.

    Raises:
        KeyboardInterrupt: a Ctrl-C during the search, carrying ``best_so_far``, the ``InitResult`` of
            the sequences measured until then (the best of them; its ``method`` says it was cut).
    """
    budget = check_budget(budget)
    check_progress(progress)  # (before the calibration's runs: a trial's ValueError came after 1 s of them)
    exhaustive_limit = check_int("exhaustive_limit", exhaustive_limit, 0)
    max_evals = check_int("max_evals", max_evals, 0)
    if cal is None:
        cal = calibration(steps, "euler" if solver is None else solver, **calibration_options)
    elif not isinstance(cal, Calibration):  # (a bare AttributeError on .steps)
        raise TypeError(f"cal must be a Calibration (chords_core.tuning.calibration(...)), got {type(cal).__name__}")
    elif calibration_options:
        raise ValueError(f"give cal or calibration options, not both (got {sorted(calibration_options)})")
    elif steps is not None and steps != cal.steps:
        raise ValueError(f"steps={steps} does not match the calibration's {cal.steps} steps (pass steps=None with cal)")
    elif solver is not None and solver != cal.solver:
        raise ValueError(f"solver={solver!r} is not the calibration's {cal.solver!r} (pass solver=None with cal)")
    T = cal.steps
    cores = check_int("cores", cores, 1, T)
    ev = Evaluator(cal, budget)
    baselines: dict[str, Candidate] = {}
    trace: list[tuple[int, int]] = []

    def better(a: Candidate, b: Candidate | None) -> bool:
        return b is None or a.key < b.key

    best: Candidate | None = None
    space = math.comb(T - 1, cores - 1)
    exhaustive = space <= exhaustive_limit
    method = (f"exhaustive over all {counted(space, 'sequence')}" if exhaustive
              else f"local search from {cores}-core recipe seeds ({counted(space, 'sequence')} in all)")
    baseline_inits = {"recipe": recipe_init(T, cores), "paper": paper_init(T, cores), "uniform": uniform_init(T, cores)}
    seeds = [] if exhaustive else sorted(
        {recipe_init(T, cores, top=top) for top in range(cores - 1, T)} if cores > 1 else {(0,)})
    # (the baselines are in the space; a climb may end before max_evals)
    total = space if exhaustive else max(len({i for i in baseline_inits.values() if i is not None} | set(seeds)),
                                         max_evals)
    try:  # (the baselines too: each is a whole CHORDS run, and a Ctrl-C there carried nothing, a user trial)
        with progress_bar(progress, total, f"optimize_init {cal.solver} T{T} x{cores}", "sequence") as bar:
            def measure(init: tuple[int, ...]) -> Candidate:
                cand = ev(init)
                bar.update(len(ev.seen) - bar.n)
                return cand

            for name, init in baseline_inits.items():
                if init is not None:
                    baselines[name] = measure(init)
            best = min(baselines.values(), key=lambda c: c.key)
            if exhaustive:
                for rest in combinations(range(1, T), cores - 1):
                    cand = measure((0,) + rest)
                    if better(cand, best):
                        best = cand
                        trace.append((len(ev.seen), best.rounds))
            else:
                for s in seeds:
                    cand = measure(s)
                    if better(cand, best):
                        best = cand
                trace.append((len(ev.seen), best.rounds))
                starts = sorted({c.init: c for c in ev.seen.values()}.values(), key=lambda c: c.key)[:3]
                for start in starts:
                    cur = _climb(measure, ev, start, T, max_evals)
                    if better(cur, best):
                        best = cur
                        trace.append((len(ev.seen), best.rounds))
    except KeyboardInterrupt as interrupt:  # (a Ctrl-C: the best measured so far travels with it; the CLI prints
        # it, where it printed only "interrupted", a user trial)
        if not ev.seen:  # (during the first run: nothing measured)
            raise
        cut = f"{method}; interrupted after {counted(len(ev.seen), 'sequence')}: the best so far"
        so_far = min(ev.seen.values(), key=lambda c: c.key)
        if best is not None and better(so_far, best):  # (found by a climb cut short: in the trace too)
            trace.append((len(ev.seen), so_far.rounds))
        interrupt.best_so_far = InitResult(  # type: ignore[attr-defined]
            so_far, budget, cut, len(ev.seen), ev.runs, cal, baselines, tuple(ev.seen.values()), tuple(trace))
        raise
    assert best is not None  # (the baselines set it)
    return InitResult(best, budget, method, len(ev.seen), ev.runs, cal, baselines, tuple(ev.seen.values()),
                      tuple(trace))


def _climb(measure: Any, ev: Any, cur: Any, T: int, max_evals: int) -> Any:
    """First-improvement hill climbing from the candidate ``cur`` over ``_neighbours`` (each measured by
    ``measure``), until no neighbour is better or ``ev`` has measured ``max_evals`` sequences in all;
    the candidate reached."""
    improved = True
    while improved and len(ev.seen) < max_evals:
        improved = False
        for nb in _neighbours(cur.init, T):
            if len(ev.seen) >= max_evals:
                break
            cand = measure(nb)
            if cand.key < cur.key:
                cur, improved = cand, True
                break
    return cur


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (rounds, error) pairs: no other point has both <= and one <.

    Args:
        points: (rounds, error) pairs; a nan in either is refused (``ValueError``: a nan error compared
            below nothing and so dominated every later point, a user trial).

    Returns:
        The front, sorted by rounds (errors decreasing).
    """
    pairs = set((float(r), float(e)) for r, e in points)
    bad = next((p for p in pairs if math.isnan(p[0]) or math.isnan(p[1])), None)
    if bad is not None:
        raise ValueError(f"points: (rounds, error) {bad} has a nan: no order places it on or off the front")
    front: list[tuple[float, float]] = []
    for r, e in sorted(pairs):
        if not front or e < front[-1][1]:
            front.append((r, e))
    return front
