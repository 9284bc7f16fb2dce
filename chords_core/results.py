"""What every parallel method returns: one ``Result`` type, with its outputs as ``Hit`` records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .plan import Plan, Round

__all__ = ["Hit", "Result", "as_array"]


def as_array(x: Any) -> Any:
    """A 0-d numpy state as a 0-d array: numpy arithmetic on 0-d arrays returns scalars
    (``np.float64``), which are not ``ndarray``; every other value as it is."""
    return np.asarray(x) if isinstance(x, np.generic) else x


@dataclass(frozen=True, eq=False)
class Hit:
    """One output of a run: ``x`` from ``core`` after ``round`` rounds and ``nfe`` model evaluations.

    ``core`` is the producing lane: the CHORDS core, the SRDS iteration, 0 for ParaDiGMS. Compared
    and hashed by identity, as ``Result``: an array has no single truth value to compare by.
    """

    core: int
    round: int
    nfe: int
    x: Any = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", as_array(self.x))


@dataclass(frozen=True, eq=False)
class Result:
    """The result of a parallel method (``chords``, ``paradigms``, ``srds``, ``parallel``); compared
    and hashed by identity.

    Attributes:
        x: the returned output (the stop rule's choice), same array type, shape and dtype as the input
            (a numpy subclass such as ``np.memmap`` comes back as an ``ndarray``, a non-native byte
            order as the native one).
        rounds: rounds until ``x`` was available: the latency in sequential model evaluations.
        nfe: model evaluations made until then (all cores), counting every point of every round sent
            to the executor: a round that failed (a non-finite output that retired a core or cut a
            sweep) counts whole, as on parallel devices, which evaluate its points at once; an
            executor that calls the model one point at a time stops at the failing point, so fewer
            calls are made there than counted.
        hits: the outputs in arrival order up to the returned one (CHORDS: one per core, fastest
            first, with any others of the returned one's round, every core's with ``stop=None``;
            SRDS: one per iteration, up to the returned one, also where later iterations' outputs
            formed in its round, as where iterations share rounds with blocks = steps; the window
            methods: the final one).
        coarse: the zero-cost prediction made before any output (CHORDS' coarse hit, SRDS's
            iteration 0), or ``None``.
        stopped_by: why the run stopped, in words.
        method: the method's name in the ``methods`` registry.
        sequential_rounds: model evaluations of the sequential solver on the same grid.
        width: the most evaluations in one round (the devices the run keeps busy).
        trace: per round, a ``plan.Round`` of the evaluations made (``core`` = the lane).
        log: the method's own per-iteration record (ParaDiGMS: ``Sweep`` per sweep; SRDS:
            ``SrdsIteration`` per iteration; CHORDS: empty).
        plan: CHORDS' static ``Plan`` (``None`` for methods without a static schedule).
    """

    x: Any = field(repr=False)
    rounds: int
    nfe: int
    hits: tuple[Hit, ...]
    coarse: Any = field(repr=False)
    stopped_by: str
    method: str
    sequential_rounds: int
    width: int
    trace: tuple[Round, ...] = field(default=(), repr=False)
    log: tuple = field(default=(), repr=False)
    plan: Plan | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", as_array(self.x))
        object.__setattr__(self, "coarse", as_array(self.coarse))

    @property
    def speedup(self) -> float:
        """Sequential rounds over rounds used: the latency speedup in model evaluations."""
        return self.sequential_rounds / self.rounds

    def diagram(self) -> str:
        """Text picture of the rounds run, one line per round and one column per lane (``plan.diagram``)."""
        from .plan import diagram

        return diagram(self.trace, self.width if self.plan is None else self.plan.cores)
