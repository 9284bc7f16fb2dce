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

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .checks import _is_int, check_int
from .inits import validate_init
from .stopping import as_stop_rule, outputs_needed

__all__ = ["Eval", "Round", "Plan", "make_plan", "diagram"]


class Eval(NamedTuple):
    """One model evaluation: core ``core`` at stage ``stage`` of its step ``index`` -> ``index + 1``.

    Attributes:
        core: the evaluating core c (0 = the sequential solver).
        index: i, the start grid index of the step being evaluated.
        stage: k, the stage of that step (0 = at the step's start point).
        time_index: the grid index of the evaluated time.
        spawn: after it the next core is created by the coarse jump (or, for the fastest core,
            the coarse hit forms).
        record_for: a faster core whose anchor this point is (its point and quantity are kept for
            that core's rectification); ``None`` otherwise.
        completes: the step i -> i + 1 finishes with this evaluation.
        rectify_from: the anchor index b of the rectification applied at that completion, or
            ``None``.
        hit: the core reached T and outputs.
    """

    core: int
    index: int  # type: ignore[assignment]  # shadows tuple.index; the field name is the public API
    stage: int
    time_index: int
    spawn: bool = False
    record_for: int | None = None
    completes: bool = False
    rectify_from: int | None = None
    hit: bool = False


class _cached:
    """``functools.cached_property`` without its lock: before Python 3.12 that holds one lock per
    property for all instances, so threads computing different plans' views waited on each other,
    and a fork taken while one was held left the child waiting for ever (a user trial: 52 of 300
    children). Two threads may compute the same value at once; the later store is an equal value."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        val = self.fn(obj)
        obj.__dict__[self.name] = val  # (an instance attribute from now on: this descriptor is not consulted)
        return val


@dataclass(frozen=True)
class Round:
    """One round of the plan: the evaluations that run at once.

    Attributes:
        number: the round's 1-based number (the round count after it).
        evals: the evaluations made, one per busy core, slowest core first.
        coarse_hit: whether the coarse hit formed in this round.
    """

    number: int
    evals: tuple[Eval, ...]
    coarse_hit: bool = False

    def __getstate__(self) -> dict:
        """The fields only: the cached views (``rows``, ``time_indices``, ...) are rebuilt on use."""
        return {k: v for k, v in self.__dict__.items() if k not in _ROUND_CACHE}

    @_cached
    def rows(self) -> tuple[tuple, ...]:
        """``evals`` as plain tuples, fields in ``Eval``'s order: what the engine's hot loop unpacks
        (a plain tuple unpacks in one step, a ``NamedTuple`` through the iterator protocol)."""
        return tuple(tuple(e) for e in self.evals)

    @_cached
    def time_indices(self) -> tuple[int, ...]:
        """The grid index each evaluation of the round is at, in order."""
        return tuple(e.time_index for e in self.evals)

    @_cached
    def starts(self) -> dict[int, int]:
        """{core: position in ``evals``} of the evaluations at a step's first stage (at the core's
        state, which the previous round made)."""
        return {e.core: p for p, e in enumerate(self.evals) if e.stage == 0}

    @_cached
    def rectifying(self) -> frozenset[int]:
        """The cores rectified in this round (each from its slower neighbour's record of this round or
        an earlier one)."""
        return frozenset(e.core for e in self.evals if e.rectify_from is not None)

    @property
    def hits(self) -> tuple[int, ...]:
        """Cores finishing this round, in arrival order (fastest first)."""
        return tuple(sorted((e.core for e in self.evals if e.hit), reverse=True))

    @property
    def rectified(self) -> tuple[tuple[int, int, int], ...]:
        """(core, anchor index b, new index j) of the rectifications applied this round."""
        return tuple((e.core, e.rectify_from, e.index + 1) for e in self.evals if e.rectify_from is not None)


_ROUND_CACHE = ("rows", "time_indices", "starts", "rectifying")  # Round's cached properties


@dataclass(frozen=True)
class Plan:
    """The static CHORDS schedule of ``make_plan``: every round's evaluations, before any array exists.

    Attributes:
        steps: T, the grid's number of steps.
        init: the cores' start indices (t_0 = 0, ..., t_{K-1}).
        evals_per_step: model evaluations of step i -> i + 1, per i.
        rounds: every ``Round`` until core 0 (the sequential solver) finishes.
        finish_round: R_c per core: the round after which core c outputs.
        hit_order: cores in arrival order of their outputs (fastest first).
    """

    steps: int
    init: tuple[int, ...]
    evals_per_step: tuple[int, ...]
    rounds: tuple[Round, ...]
    finish_round: tuple[int, ...]  # R_c per core
    hit_order: tuple[int, ...] = field(default=())  # cores in arrival order

    @_cached
    def _widths(self) -> tuple[int, ...]:
        w, out = 0, []
        for r in self.rounds:
            w = max(w, len(r.evals))
            out.append(w)
        return tuple(out)

    @_cached
    def widths_from(self) -> tuple[int, ...]:
        """Per round (by number - 1): the most evaluations in one round from it to the last."""
        out, w = [], 0
        for r in reversed(self.rounds):
            w = max(w, len(r.evals))
            out.append(w)
        return tuple(reversed(out))

    def width(self, rounds: int) -> int:
        """The most evaluations in one of the first ``rounds`` rounds (the cores busy at once).

        Args:
            rounds: how many rounds, 1 to ``len(self.rounds)``.

        Returns:
            The largest number of evaluations in one round among them.
        """
        return self._widths[check_int("rounds", rounds, 1, len(self.rounds)) - 1]  # (0 and -1 read the last)

    @property
    def cores(self) -> int:
        """K, the number of cores (entries of ``init``)."""
        return len(self.init)

    @property
    def sequential_rounds(self) -> int:
        """Rounds (= sequential model evaluations) of the plain solver: core 0's finishing round."""
        return sum(self.evals_per_step)

    def stop_round(self, stop: Any) -> int:
        """The most rounds a run lasts under a stop rule.

        Args:
            stop: a ``StopRule`` (or ``None``: run all).

        Returns:
            The round of the last output the rule may need (``stop.outputs_needed``). A rule that
            decides on the outputs (``StopOnResidual``) may end earlier, which only the outputs can
            tell.
        """
        n = outputs_needed(as_stop_rule(stop), self.cores)
        return self.finish_round[self.hit_order[n - 1]]

    @_cached
    def _nfes(self) -> tuple[int, ...]:
        """Evaluations in the first n rounds at index n (0 .. R): prefix sums, once per plan."""
        n, out = 0, [0]
        for r in self.rounds:
            n += len(r.evals)
            out.append(n)
        return tuple(out)

    def nfe(self, rounds: int | None = None) -> int:
        """Model evaluations in the first ``rounds`` rounds.

        Args:
            rounds: how many rounds (``None``: all).

        Returns:
            The number of evaluations (NFE) in them.
        """
        if rounds is not None:  # (-1 read as "all but the last")
            check_int("rounds", rounds, 0)
        return self._nfes[len(range(len(self.rounds))[:rounds])]  # (the slice's length: rounds[:rounds]'s)

    def rectifications(self, core: int) -> int:
        """How many rectifications a core receives over the whole plan.

        Args:
            core: the core c.

        Returns:
            The count (0 for core 0).
        """
        core = check_int("core", core, 0, self.cores - 1)  # (a core the plan lacks had 0)
        return sum(1 for r in self.rounds for e in r.evals if e.core == core and e.rectify_from is not None)

    def diagram(self, rounds: int | None = None, legend: bool = False) -> str:
        """Text picture of the plan's first rounds; see the module-level ``diagram``.

        Args:
            rounds: how many rounds (``None``: all).
            legend: open the picture with a line explaining the notation.

        Returns:
            The picture, one line per round.
        """
        shown = len(self.rounds) if rounds is None else check_int("rounds", rounds, 0)  # (-1 drew all but the last)
        return diagram(self.rounds[:shown], self.cores, legend)


def diagram(rounds: Sequence[Round], lanes: int, legend: bool = True) -> str:
    """Text picture of ``rounds``: one line per round, one column per lane (core).

    Cells: ``i`` = the lane evaluates the first stage of step i -> i + 1 (``i.k`` = stage k when a
    step has several), ``*`` = the step's completion is rectified. Events: ``c2<-c1@8`` = core 2
    rectified from core 1's point at grid index 8; ``hit c3`` = core 3 outputs; ``coarse hit``.

    Args:
        rounds: the rounds to draw (e.g. ``plan.rounds``).
        lanes: the number of columns (cores).
        legend: open the picture with a line explaining the notation.

    Returns:
        The picture: a header line, then one line per round.
    """
    lanes = check_int("lanes", lanes, 0)
    widest = max((e.core for r in rounds for e in r.evals), default=-1)
    if widest >= lanes:  # (an IndexError otherwise)
        raise ValueError(f"lanes: {lanes} columns for rounds that evaluate core {widest}; give at least {widest + 1}")
    multi = any(e.stage > 0 for r in rounds for e in r.evals)
    w = 6 if multi else 4
    lines = ["round | " + " ".join(f"c{c}".rjust(w) for c in range(lanes)) + " | events"]
    for r in rounds:
        cells = [" " * w] * lanes
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
    step = "i.k = stage k of step i -> i+1" if multi else "i = evaluates step i -> i+1"
    if legend:  # the notation the picture uses (the window methods and SRDS rectify and hit nothing)
        notes = [step]
        if any(e.rectify_from is not None for r in rounds for e in r.evals):
            notes.append("* = rectified at that step; cA<-cB@b = core A rectified from core B's point at index b")
        if any(r.hits for r in rounds):
            notes.append("hit cN = core N outputs")
        if any(r.coarse_hit for r in rounds):
            notes.append("coarse hit = the chained coarse jumps reach T")
        lines.insert(0, "legend: " + "; ".join(notes))
    return "\n".join(lines)


def make_plan(steps: int, init: Sequence[int], evals_per_step: Sequence[int] | None = None) -> Plan:
    """Simulate the CHORDS schedule symbolically (no arrays) and return it (cached).

    Args:
        steps: T, the grid's number of steps.
        init: the cores' start indices (see ``inits.validate_init``).
        evals_per_step: model evaluations per step (default one each; Heun has two).

    Returns:
        The ``Plan``: every round's evaluations until core 0 finishes.
    """
    # checked before the cache is looked up (a user trial: a key of the values let 10.0 steps or an init of
    # True through once 10 or 1 had been built, and named no argument for an init that is no sequence), as
    # ints of any kind (a 0-d jax one is unhashable, a torch one keyed by identity)
    steps = check_int("steps", steps, 1)
    key = (steps, validate_init(init, steps), _evals_per_step(evals_per_step, steps))
    with _PLANS_LOCK:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    plan = _make_plan(*key)  # (bad input raises here: nothing kept)
    size = plan.nfe()
    with _PLANS_LOCK:
        global _PLANS_EVALS
        if size <= PLAN_CACHE_EVALS and key not in _PLANS:
            _PLANS[key] = plan
            _PLANS_EVALS += size
            while _PLANS_EVALS > PLAN_CACHE_EVALS:
                _PLANS_EVALS -= _PLANS.popitem(last=False)[1].nfe()
    return plan


#: The plans kept for reuse hold at most this many evaluations in all (about 200 bytes each when
#: made, about 315 once a run has filled their row and position tables: some 50-80 MiB, 65-79 MiB
#: measured after CHORDS runs of 1,000-2,000 steps on 64-128 cores), the most recently used first to
#: stay; a larger plan is built and returned, not kept. (A
#: cache of 256 plans whatever their size kept 164 MiB after one ``optimize_init`` at 200 steps on 16
#: cores, and would keep about 10 GiB of plans of 4,000 steps on 128 cores.)
PLAN_CACHE_EVALS = 1 << 18
_PLANS: OrderedDict[tuple, Plan] = OrderedDict()
_PLANS_EVALS = 0  # evaluations in the plans kept
_PLANS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A fresh lock in a forked child: the parent's may have been held by another thread at the fork,
    and that thread does not exist in the child (which then waited for ever on its first plan)."""
    global _PLANS_LOCK
    _PLANS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _evals_per_step(evals_per_step: Sequence[int] | None, steps: int) -> tuple[int, ...] | None:
    """``evals_per_step`` checked: one integer >= 1 per step (``ValueError`` naming it otherwise: a user
    trial's 1.7 was truncated to 1, "12" read as (1, 2), silently), as Python ints; ``None`` as is."""
    if evals_per_step is None:
        return None
    sized = hasattr(evals_per_step, "__len__") and not isinstance(evals_per_step, (str, bytes))
    if not (sized and len(evals_per_step) == steps and all(_is_int(e) and e >= 1 for e in evals_per_step)):
        raise ValueError(f"evals_per_step needs one integer count >= 1 per step ({steps}), got {evals_per_step!r}")
    return tuple(int(e) for e in evals_per_step)


def _make_plan(steps: int, init: tuple, evals_per_step: tuple | None) -> Plan:
    """The plan of checked arguments (``make_plan``)."""
    eps = evals_per_step if evals_per_step is not None else (1,) * steps
    K = len(init)
    ticks = [[(i, k) for i in range(init[c], steps) for k in range(eps[i])] for c in range(K)]
    anchor = list(init)
    pending: list[int | None] = [None] * K
    rounds, finish = [], [0] * K
    lengths = [len(tc) for tc in ticks]
    new = tuple.__new__  # an Eval from its fields in order (a NamedTuple's keyword call costs 3x: 640,000 of them
    # at T = 5000 on 256 cores)
    r = 0
    while r < lengths[0]:
        evs = []
        for c in range(min(r + 1, K)):
            n = r - c
            if n >= lengths[c]:
                continue
            i, k = ticks[c][n]
            d = c + 1
            record = d if (k == 0 and d < K and d <= r and anchor[d] == i and r - d < lengths[d]) else None
            if record is not None:  # (not when the faster core has already finished)
                pending[d] = i
            completes = k == eps[i] - 1
            rect = None
            if completes and pending[c] is not None:
                rect, pending[c] = pending[c], None
                anchor[c] = i + 1
            hit = completes and i + 1 == steps
            if hit:
                finish[c] = r + 1
            evs.append(new(Eval, (c, i, k, i + 1 if k > 0 else i, n == 0, record, completes, rect, hit)))
        rounds.append(Round(r + 1, tuple(evs), coarse_hit=(r == K - 1)))
        r += 1
    order = tuple(c for rd in rounds for c in rd.hits)
    return Plan(steps, init, eps, tuple(rounds), tuple(finish), order)
