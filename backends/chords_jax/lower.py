"""Lower a ``LinearTrace`` to the arrays a ``lax.scan`` over rounds consumes.

The scan carry is ``(regs, pts)``: ``regs`` (L, *x.shape) registers holding every value that
outlives the round that computed it (states, histories, anchors, recorded slower points, hits), and
``pts`` (Kp, *x.shape) the points the Kp core slots evaluate next round (slot k = core k; slots
beyond K pad to a multiple of the device count). Round r (1-based) is one scan step:

    outs = model(pts, times[r - 1])                       (Kp model evaluations, one batched call)
    src  = [0; regs; pts; outs]                           (1 + L + 2 Kp rows)
    [regs'; pts'] = mix[r - 1] @ src                      (mix: (L + Kp, 1 + L + 2 Kp) float64)

Before the scan, ``mix0 @ [0; x0]`` fills the first carry. A dense matrix product compiles faster
than gathers and is one BLAS call; each row has only a handful of non-zeros. Values computed and consumed
within one round are inlined (their coefficients multiplied out), values used in later rounds get
a register; registers are reused once their last reader has run (interval colouring). A slot idle
in a round re-evaluates its previous point (initially x0 at t_0); its output is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linear import LinearTrace, Sym

__all__ = ["Program", "lower"]


@dataclass(frozen=True)
class Program:
    """Index/coefficient arrays of one compiled CHORDS run (host numpy, float64 coefficients).

    mix0: (L + Kp, 2) over [0, x0];  mix: (R, L + Kp, 1 + L + 2 Kp) over [0, regs, pts, outs];
    times: (R, Kp) evaluation times; active: (R, Kp) slots whose output the plan uses;
    outputs: register index of each requested output node (by node id).
    """

    regs: int
    slots: int
    mix0: np.ndarray
    mix: np.ndarray
    times: np.ndarray
    active: np.ndarray
    outputs: dict

    @property
    def rounds(self) -> int:
        return self.mix.shape[0]

    @property
    def terms(self) -> int:
        """The most non-zero coefficients in one row: the longest linear combination per round."""
        return int(max((self.mix != 0).sum(-1).max(initial=0), (self.mix0 != 0).sum(-1).max(initial=0)))


def lower(trace: LinearTrace, slot_of: list[list[int]], slots: int, outputs: list[Sym], t0: float) -> Program:
    """Arrays for ``trace``: ``slot_of[r-1][j]`` is the slot of round r's j-th point, ``outputs`` the
    nodes read after the last round, ``t0`` the time of idle slots before their first evaluation."""
    R = len(trace.rounds)
    K = slots
    point_at: dict[tuple[int, int], Sym] = {}  # (round, slot) -> node
    point_rounds: dict[int, dict[int, int]] = {}  # node id -> {round: slot}
    for r, (xs, _) in enumerate(trace.rounds, start=1):
        for j, x in enumerate(xs):
            k = slot_of[r - 1][j]
            point_at[(r, k)] = x
            point_rounds.setdefault(x.id, {})[r] = k

    def available(n: Sym, step: int) -> bool:
        return n.phase == step or step in point_rounds.get(n.id, ())

    # uses: a node read in a later step than it was made, and not as a carried point, needs a register
    until: dict[int, int] = {}
    seen: set[int] = set()
    stack: list[tuple[Sym, int]] = [(o, R + 1) for o in outputs]
    stack += [(x, r - 1) for (r, _), x in point_at.items()]
    while stack:
        n, step = stack.pop()
        if not available(n, step):
            until[n.id] = max(until.get(n.id, 0), step)
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.terms is not None:
            stack.extend((child, n.phase) for _, child in n.terms)

    # registers: node n occupies a register in carries phase(n) .. until(n) - 1
    nodes = trace.nodes
    order = sorted(until, key=lambda i: (nodes[i].phase, i))
    free_at: list[int] = []  # per register: first carry index where it is free again
    reg_of: dict[int, int] = {}
    for i in order:
        start, end = nodes[i].phase, until[i]
        slot = next((s for s, f in enumerate(free_at) if f <= start), None)
        if slot is None:
            slot = len(free_at)
            free_at.append(0)
        free_at[slot] = end
        reg_of[i] = slot
    L = max(1, len(free_at))
    writes: list[list[tuple[int, int]]] = [[] for _ in range(R + 1)]  # step -> (register, node id)
    held: list[list[int | None]] = [[None] * L for _ in range(R + 1)]  # carry s -> occupant
    for i, slot in reg_of.items():
        writes[nodes[i].phase].append((slot, i))
        for s in range(nodes[i].phase, until[i]):
            held[s][slot] = i

    rows_all, tim, act = [], np.zeros((R, K)), np.zeros((R, K), dtype=bool)
    for step in range(R + 1):
        memo: dict[int, dict[int, float]] = {}

        def resolve(n: Sym) -> dict[int, float]:
            if step >= 1 and step in point_rounds.get(n.id, ()):
                return {1 + L + point_rounds[n.id][step]: 1.0}
            if n.phase != step:
                reg = reg_of[n.id]
                assert held[step - 1][reg] == n.id, "register allocation lost a value"
                return {1 + reg: 1.0}
            if n.terms is None:
                if n.leaf[0] == "x0":
                    return {1: 1.0}
                _, r, j = n.leaf
                return {1 + L + K + slot_of[r - 1][j]: 1.0}
            got = memo.get(n.id)
            if got is None:
                got = {}
                for c, child in n.terms:
                    for src, w in resolve(child).items():
                        got[src] = got.get(src, 0.0) + c * w
                memo[n.id] = got
            return got

        rows: list[dict[int, float]] = []
        for reg in range(L):
            i = held[step][reg]
            if i is None:
                rows.append({})
            elif nodes[i].phase == step:
                rows.append(resolve(nodes[i]))
            else:
                rows.append({1 + reg: 1.0})
        for k in range(K):
            x = point_at.get((step + 1, k))
            if x is not None:
                rows.append(resolve(x))
            else:
                rows.append({1: 1.0} if step == 0 else {1 + L + k: 1.0})
        rows_all.append(rows)
        if step < R:
            for k in range(K):
                tim[step, k] = tim[step - 1, k] if step else t0
            for j, t in enumerate(trace.rounds[step][1]):
                k = slot_of[step][j]
                tim[step, k], act[step, k] = t, True

    mix0 = _pack([rows_all[0]], 2)[0]
    mix = _pack(rows_all[1:], 1 + L + 2 * K)
    outs = {o.id: reg_of[o.id] for o in outputs}
    return Program(L, K, mix0, mix, tim, act, outs)


def _pack(steps: list[list[dict[int, float]]], sources: int) -> np.ndarray:
    """Rows of {source: coefficient} -> a (steps, rows, sources) float64 array."""
    out = np.zeros((len(steps), len(steps[0]) if steps else 0, sources))
    for a, st in enumerate(steps):
        for b, row in enumerate(st):
            for src, c in row.items():
                out[a, b, src] = c
    return out
