"""What a multistep solver's history becomes when its trajectory is moved (a rectification).

CHORDS moves a faster core's point at each rectification; the model quantities it remembered for
its multistep steps (``State.hist``) were computed along the old trajectory. The policy says what
to do with them, and this module is the one place that applies it:

- ``"shift"`` (default): add the rectification's quantity correction q_slow - q_anchor to every
  earlier quantity, so the divided differences stay consistent with the moved point; it keeps the
  parareal fixed point (a core that agrees with its slower neighbour stays on it) and measured best;
- ``"keep"``: leave them as they are (also what the peers do when a window or block continues);
- ``"restart"``: drop them; the next step is first order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks import check_choice
from .solvers.base import State

__all__ = ["HISTORY_POLICIES", "check_history", "move"]

HISTORY_POLICIES = ("keep", "shift", "restart")


def check_history(policy: Any) -> str:
    """``policy`` if it names a history policy; a ``ValueError`` naming ``history`` otherwise."""
    return check_choice("history", policy, HISTORY_POLICIES)


def move(state: State, x: Any, policy: str = "keep", dq: Any = None,
         begin: Callable[[Any], State] | None = None) -> State:
    """The trajectory ``state`` moved to the point ``x`` under ``policy``.

    Args:
        state: the trajectory's state before the move (its history and solver data).
        x: the new point, same shape as ``state.x``.
        policy: one of ``HISTORY_POLICIES``.
        dq: the quantity correction of the move (``"shift"`` only; ``None`` leaves the history).
        begin: with ``"restart"``, the solver's ``begin`` (the state it starts a trajectory in, with
            the solver data it sets there: a solver of one's own whose ``begin`` sets ``aux`` failed on
            a ``None`` after a restart); ``None``: ``State(x)``.

    Returns:
        A new ``State`` at ``x``; ``state`` is not modified.
    """
    if policy == "restart":
        return State(x) if begin is None else begin(x)
    if policy == "shift" and dq is not None and state.hist:
        return State(x, tuple((k, q + dq) for k, q in state.hist), state.aux)
    return State(x, state.hist, state.aux)
