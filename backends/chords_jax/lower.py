"""Lower a ``LinearRecorder`` to the arrays a ``lax.scan`` over rounds consumes.

The scan carry is one buffer ``buf = [0; regs; pts; outs]`` of 1 + L + 2 Kp rows of x.shape:
``regs`` (L) registers holding every value that outlives the round that computed it (states,
histories, anchors, recorded slower points, outputs), ``pts`` (Kp) the points the Kp core slots
evaluate next (slot k = core k; slots beyond K pad to a multiple of the device count), ``outs``
(Kp) their model outputs. Round r (1-based) is one scan step, with W rows written per round:

    buf[outs] = model(buf[pts], times[r - 1])             (Kp evaluations, one batched call)
    new[w]    = sum_m coef[r-1, w, m] * buf[idx[r-1, w, m]]          (w < W, m < M)
    buf[dest[r-1, w]] = new[w]                            (all reads before the writes)

Rows that keep their value are not written; padding rows write 0 to row 0 (the zero row), padding
terms read row 0. Before the scan ``buf = init[:, None] * x0`` (every first value is a multiple of
x0). Values computed and consumed within one round are inlined (their coefficients multiplied
out), values used in later rounds get a register; registers are reused once their last reader
has run (interval colouring). A slot idle in a round re-evaluates its previous point (initially
x0 at t_0); its output is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linear import LinearRecorder, Sym

__all__ = ["Program", "lower"]


@dataclass(frozen=True)
class Program:
    """Index/coefficient arrays of one compiled CHORDS run (host numpy, float64 coefficients).

    Attributes:
        regs: L, the number of registers.
        slots: Kp, the number of core slots (K padded to a multiple of the device count).
        init: (1 + L + 2 Kp,) the buffer's first rows as multiples of x0.
        dest: (R, W) rows written per round.
        idx: (R, W, M) buffer rows read per written row.
        coef: (R, W, M) their coefficients.
        times: (R, Kp) evaluation times per slot.
        active: (R, Kp) slots whose output the plan uses.
        outputs: buffer row of each requested output node (by node id).
    """

    regs: int
    slots: int
    init: np.ndarray
    dest: np.ndarray
    idx: np.ndarray
    coef: np.ndarray
    times: np.ndarray
    active: np.ndarray
    outputs: dict

    @property
    def rounds(self) -> int:
        """R, the number of rounds (scan steps)."""
        return self.idx.shape[0]

    @property
    def rows(self) -> int:
        """Rows of the buffer: 1 + L + 2 Kp."""
        return self.init.shape[0]


def lower(rec: LinearRecorder, slot_of: list[list[int]], slots: int, outputs: list[Sym], t0: float) -> Program:
    """Lower a recording to the arrays of a ``lax.scan`` over rounds (see the module docstring).

    Args:
        rec: the recording of the symbolic engine run.
        slot_of: ``slot_of[r-1][j]`` is the slot of round r's j-th point.
        slots: Kp, the number of core slots.
        outputs: the nodes read after the last round.
        t0: the time of idle slots before their first evaluation.

    Returns:
        The ``Program``.
    """
    R = len(rec.rounds)
    K = slots
    point_at: dict[tuple[int, int], Sym] = {}  # (round, slot) -> node
    point_rounds: dict[int, dict[int, int]] = {}  # node id -> {round: slot}
    for r, (xs, _) in enumerate(rec.rounds, start=1):
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
    nodes = rec.nodes
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

        def resolve(n: Sym, step: int = step, memo: dict[int, dict[int, float]] = memo) -> dict[int, float]:
            # step and memo bound per iteration (the closure is only called within it)
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
            occupant = held[step][reg]
            if occupant is None:
                rows.append({})
            elif nodes[occupant].phase == step:
                rows.append(resolve(nodes[occupant]))
            else:
                rows.append({1 + reg: 1.0})
        for k in range(K):
            pt = point_at.get((step + 1, k))
            if pt is not None:
                rows.append(resolve(pt))
            else:
                rows.append({1: 1.0} if step == 0 else {1 + L + k: 1.0})
        rows_all.append(rows)
        if step < R:
            for k in range(K):
                tim[step, k] = tim[step - 1, k] if step else t0
            for j, t in enumerate(rec.rounds[step][1]):
                k = slot_of[step][j]
                tim[step, k], act[step, k] = t, True

    init = np.zeros(1 + L + 2 * K)
    for i, row in enumerate(rows_all[0]):
        init[1 + i] = row.get(1, 0.0)
    dest, idx, coef = _pack(rows_all[1:])
    outs = {o.id: 1 + reg_of[o.id] for o in outputs}
    return Program(L, K, init, dest, idx, coef, tim, act, outs)


def _pack(steps: list[list[dict[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step the rows [regs; pts] as {buffer row: coefficient} -> (dest, idx, coef) arrays,
    leaving out rows that keep their value (a copy of themselves) or are dead (empty)."""
    writes = [[(1 + i, sorted((k, c) for k, c in r.items() if c != 0.0))
               for i, r in enumerate(st) if r and r != {1 + i: 1.0}] for st in steps]
    W = max(1, max((len(w) for w in writes), default=1))
    M = max(1, max((len(t) for w in writes for _, t in w), default=1))
    dest = np.zeros((len(steps), W), dtype=np.int32)
    idx = np.zeros((len(steps), W, M), dtype=np.int32)
    coef = np.zeros((len(steps), W, M))
    for a, w in enumerate(writes):
        for b, (row, terms) in enumerate(w):
            dest[a, b] = row
            for m, (src, c) in enumerate(terms):
                idx[a, b, m], coef[a, b, m] = src, c
    return dest, idx, coef
