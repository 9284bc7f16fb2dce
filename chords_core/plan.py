"""The static CHORDS schedule: which core evaluates which point in which round.

Cores c = 0..K-1 start at grid indices ``init = [0 = t_0 < t_1 < ... < t_{K-1} < T]``. Step i -> i+1
takes ``evals[i]`` model evaluations ("ticks"); core c walks the ticks of steps t_c .. T-1 one per
round, starting in round c (0-based). Per round, in order of cores (slowest first):

- *spawn*: when core c evaluates its init point (round c), core c+1 is created by the coarse jump
  G(t_c -> t_{c+1}); the fastest core's init point jumps to T instead, the *coarse hit*;
- *record*: when core c-1 evaluates the first stage of core c's anchor index b, its point and
  quantity are kept for core c;
- *step*: a core whose tick was the last stage of step i completes i -> i+1;
- *rectify*: a step completion i -> j of core c with a recorded slower point at b becomes
  x_j <- F(own) - G(own anchor; b -> j) + G(slower core at b; b -> j), and j is the new anchor;
- *hit*: a core reaching T emits its output and retires.

With one evaluation per step this gives the closed forms: core c evaluates t_c + (r - c) in
round r, is rectified every delta_c = t_c - t_{c-1} rounds, and outputs after
R_c = T - t_c + c rounds; the coarse hit comes after K rounds. Rectification costs no evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["Eval", "Round", "Plan", "make_plan", "validate_init", "default_init", "paper_init"]


@dataclass(frozen=True, slots=True)
class Eval:
    """One model evaluation: core ``core`` at stage ``stage`` of its step ``index`` -> ``index + 1``.

    ``time_index`` is the grid index of the evaluated time. After the evaluation: ``spawn`` (the
    next core is created, or the coarse hit if this is the fastest core), ``record_for`` (a faster
    core whose anchor this point is), ``completes`` (the step finishes), ``rectify_from`` (the
    anchor index b of the rectification applied at that completion), ``hit`` (the core reached T).
    """

    core: int
    index: int
    stage: int
    time_index: int
    spawn: bool = False
    record_for: int | None = None
    completes: bool = False
    rectify_from: int | None = None
    hit: bool = False


@dataclass(frozen=True)
class Round:
    number: int  # 1-based: the round count after this round
    evals: tuple[Eval, ...]
    coarse_hit: bool = False

    @property
    def hits(self) -> tuple[int, ...]:
        """Cores finishing this round, in arrival order (fastest first)."""
        return tuple(sorted((e.core for e in self.evals if e.hit), reverse=True))

    @property
    def rectified(self) -> tuple[tuple[int, int, int], ...]:
        """(core, anchor index b, new index j) of the rectifications applied this round."""
        return tuple((e.core, e.rectify_from, e.index + 1) for e in self.evals if e.rectify_from is not None)


@dataclass(frozen=True)
class Plan:
    steps: int
    init: tuple[int, ...]
    evals_per_step: tuple[int, ...]
    rounds: tuple[Round, ...]
    finish_round: tuple[int, ...]  # R_c per core
    hit_order: tuple[int, ...] = field(default=())  # cores in arrival order

    @functools.cached_property
    def round_tuples(self) -> tuple:
        """Per round, the evaluations as plain tuples (core, index, stage, time_index, spawn,
        record_for, completes, rectify_from, hit): the engine's fast path."""
        return tuple(
            tuple((e.core, e.index, e.stage, e.time_index, e.spawn, e.record_for, e.completes, e.rectify_from, e.hit)
                  for e in r.evals)
            for r in self.rounds
        )

    @property
    def cores(self) -> int:
        return len(self.init)

    @property
    def sequential_rounds(self) -> int:
        """Rounds (= sequential model evaluations) of the plain solver: core 0's finishing round."""
        return sum(self.evals_per_step)

    def stop_round(self, stop) -> int:
        """Rounds the run lasts under ``stop``: the n-th output's round for ``StopAtCore(n)``; every
        round otherwise (``StopOnResidual`` may end earlier, which only the outputs can tell)."""
        n = getattr(stop, "n", None)
        return self.finish_round[self.hit_order[n - 1]] if n is not None else len(self.rounds)

    def nfe(self, rounds: int | None = None) -> int:
        """Model evaluations in the first ``rounds`` rounds (all rounds by default)."""
        return sum(len(r.evals) for r in self.rounds[: len(self.rounds) if rounds is None else rounds])

    def rectifications(self, core: int) -> int:
        return sum(1 for r in self.rounds for e in r.evals if e.core == core and e.rectify_from is not None)

    def diagram(self, rounds: int | None = None) -> str:
        """Text picture: one line per round, one column per core; ``i.k`` = step i stage k, ``*`` = rectified."""
        rows = self.rounds[: len(self.rounds) if rounds is None else rounds]
        multi = max(self.evals_per_step) > 1
        w = 6 if multi else 4
        lines = ["round | " + " ".join(f"c{c}".rjust(w) for c in range(self.cores)) + " | events"]
        for r in rows:
            cells = [" " * w] * self.cores
            events = []
            for e in r.evals:
                txt = f"{e.index}.{e.stage}" if multi else f"{e.index}"
                cells[e.core] = (txt + ("*" if e.rectify_from is not None else "")).rjust(w)
                if e.rectify_from is not None:
                    events.append(f"c{e.core}<-c{e.core - 1}@{e.rectify_from}")
            events += [f"hit c{c}" for c in r.hits]
            if r.coarse_hit:
                events.append("coarse hit")
            lines.append(f"{r.number:5d} | " + " ".join(cells) + " | " + ", ".join(events))
        return "\n".join(lines)


def validate_init(init: Sequence[int], steps: int, cores: int | None = None) -> tuple[int, ...]:
    """Check an init sequence: integers, starting at 0, strictly increasing, below ``steps``."""
    try:
        seq = tuple(int(v) for v in init)
    except (TypeError, ValueError):
        raise ValueError(f"init must be a sequence of integers, got {init!r}") from None
    if any(float(a) != float(b) for a, b in zip(seq, init)):
        raise ValueError(f"init must hold integers (grid indices), got {list(init)!r}")
    if cores is not None and len(seq) != cores:
        raise ValueError(f"init has {len(seq)} entries but cores={cores}; give one start index per core")
    if not seq or seq[0] != 0:
        raise ValueError(f"init must start at 0 (core 0 is the sequential solver), got {list(seq)!r}")
    for c in range(1, len(seq)):
        if seq[c] <= seq[c - 1]:
            raise ValueError(f"init must be strictly increasing: init[{c}]={seq[c]} <= init[{c - 1}]={seq[c - 1]}")
    if seq[-1] >= steps:
        raise ValueError(f"init must stay below steps={steps}: init[{len(seq) - 1}]={seq[-1]}")
    return seq


def make_plan(steps: int, init: Sequence[int], evals_per_step: Sequence[int] | None = None) -> Plan:
    """Simulate the schedule symbolically (no arrays) and return every round's evaluations (cached)."""
    eps = tuple(int(e) for e in evals_per_step) if evals_per_step is not None else None
    return _make_plan(steps, tuple(init) if not isinstance(init, tuple) else init, eps)


@functools.lru_cache(maxsize=256)
def _make_plan(steps: int, init: tuple, evals_per_step: tuple | None) -> Plan:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    init = validate_init(init, steps)
    eps = tuple(evals_per_step) if evals_per_step is not None else (1,) * steps
    if len(eps) != steps or any(e < 1 for e in eps):
        raise ValueError("evals_per_step needs one positive count per step")
    K = len(init)
    ticks = [[(i, k) for i in range(init[c], steps) for k in range(eps[i])] for c in range(K)]
    anchor = list(init)
    pending: list[int | None] = [None] * K
    rounds, finish = [], [0] * K
    r = 0
    while r < len(ticks[0]):
        evs = []
        for c in range(min(r + 1, K)):
            n = r - c
            if n >= len(ticks[c]):
                continue
            i, k = ticks[c][n]
            record = c + 1 if (k == 0 and c + 1 < K and c + 1 <= r and anchor[c + 1] == i and n < len(ticks[c])) else None
            if record is not None and r - (c + 1) >= len(ticks[c + 1]):
                record = None  # the faster core has already finished
            if record is not None:
                pending[c + 1] = i
            completes = k == eps[i] - 1
            rect = None
            if completes and pending[c] is not None:
                rect, pending[c] = pending[c], None
                anchor[c] = i + 1
            hit = completes and i + 1 == steps
            if hit:
                finish[c] = r + 1
            evs.append(Eval(c, i, k, i + 1 if k > 0 else i, spawn=(n == 0), record_for=record,
                            completes=completes, rectify_from=rect, hit=hit))
        rounds.append(Round(r + 1, tuple(evs), coarse_hit=(r == K - 1)))
        r += 1
    order = tuple(c for rd in rounds for c in rd.hits)
    return Plan(steps, init, eps, tuple(rounds), tuple(finish), order)


def paper_init(steps: int, cores: int) -> tuple[int, ...] | None:
    """The paper's sequences (K = 4, 6, 8 at T = 50) scaled exactly to ``steps`` (e.g. 75, 100), or None."""
    base = {4: (0, 8, 16, 32), 6: (0, 3, 6, 12, 24, 36), 8: (0, 2, 4, 8, 16, 24, 32, 40)}.get(cores)
    if base is None:
        return None
    if any((v * steps) % 50 for v in base):
        return None  # only exact scalings: rounded ones lose the sequence's structure (measured worse)
    seq = tuple(v * steps // 50 for v in base)
    try:
        return validate_init(seq, steps, cores)
    except ValueError:
        return None


def default_init(steps: int, cores: int) -> tuple[int, ...]:
    """The default init sequence for (steps, cores).

    For K = 4, 6, 8 the paper's sequence where it scales exactly to ``steps`` (T = 50, 75, 100, ...);
    otherwise the recipe that reproduces the paper's sequences (``initopt.recipe_init``: frame end
    E = T - 2, walk down from the fastest start t_{K-1} with t_{k-1} = t_k / 2 if E/(E - t_k) <= 3
    else 2 t_k - E). ``initopt.optimize_init`` finds better sequences for a given error budget.
    Needs steps >= cores.
    """
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be an integer >= 1, got {cores!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if cores > steps:
        raise ValueError(f"cores={cores} needs at least as many steps, got steps={steps}")
    if cores == 1:
        return (0,)
    paper = paper_init(steps, cores)
    if paper is not None:
        return paper
    from .initopt import recipe_init

    return recipe_init(steps, cores)
