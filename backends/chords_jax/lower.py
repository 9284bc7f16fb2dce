"""Lower a ``LinearRecorder`` to the arrays a ``lax.scan`` over rounds consumes.

The scan carry is one buffer ``buf = [0; regs]`` of 1 + L flat rows (x.size each): row 0 is zero,
the L registers hold every value that outlives the step that computed it (states, points,
histories, anchors, recorded slower points, model outputs kept for later, outputs). Round r
(1-based) is one scan step; its evaluations are packed into the first slots (slot j = the round's
j-th evaluation), and the step reads and writes only the rows it needs:

    outs     = model(buf[points[r-1]], times[r-1])                      (w slots, one batched call)
    new[w]   = sum_m coef[r-1, w, m] * buf[idx[r-1, w, m]]
             + sum_m out_coef[r-1, w, m] * outs[out_idx[r-1, w, m]]             (w < W rows)
    buf[dest[r-1, w]] = new[w]                        (all reads before the writes, in place)

A register is written only when a new value is born into it; padding rows write 0 to row 0,
padding terms have coefficient 0 and read their row's first source again (a cache hit). Before
the scan ``buf = init[:, None] * x0`` (every first value is a multiple of x0). Values computed and
consumed within one step are inlined (their coefficients multiplied out); a value read in a later
step (as a term, as a point, or as an output of the run) gets a register, and registers are reused
once their last reader has run (interval colouring). A slot without an evaluation evaluates the
round's first point again (at its time; a round without one reads row 0, a zero point, at t_0); its
output is never read. Every evaluated output has a nonzero
coefficient in some row its round writes (an output nothing uses is written to a last register
that nothing reads), so that the output check can screen the written rows (``run.py``).

The rounds are grouped into *segments* of equal width (a power of two times the device count, at
most Kp) and of terms per row within a power of two (runs shorter than ``MIN_SEGMENT_ROUNDS`` join a
neighbour): a round evaluates only the
slots of its segment's width, so the plan's idle slots (the ramp-up and the tail, where fewer cores
are busy) are skipped with shapes that stay fixed within each segment. ``Program.segments`` lists
them; each is one ``lax.scan`` (``run.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .linear import LinearRecorder, Sym

__all__ = ["Program", "Segment", "lower", "SEGMENT_TIMES"]


@dataclass(frozen=True)
class Segment:
    """Consecutive rounds ``start`` .. ``stop - 1`` (0-based) run by one scan with fixed shapes.

    Attributes:
        start, stop: the rounds, 0-based, ``stop`` excluded.
        width: slots evaluated per round (the busiest round's evaluations, rounded up to a power of
            two times the device count, at most ``Program.slots``).
        rows: W, rows written per round (the most among its rounds).
        terms: M, buffer terms per written row.
        out_terms: model-output terms per written row.
    """

    start: int
    stop: int
    width: int
    rows: int
    terms: int
    out_terms: int


#: where ``Program.segment_arrays`` has the evaluation times (cast to the model's time dtype)
SEGMENT_TIMES = 2


@dataclass(frozen=True)
class Program:
    """Index/coefficient arrays of one compiled CHORDS run (host numpy, float64 coefficients).

    Per-round arrays have the full width; segment s uses ``[start:stop]`` of their rounds and their
    first ``width`` slots / ``rows`` rows / ``terms`` terms (the rest is padding).

    Attributes:
        regs: L, the number of registers.
        slots: Kp, the most slots a round evaluates (K padded to a multiple of the device count).
        init: (1 + L,) the buffer's first rows as multiples of x0.
        points: (R, Kp) the buffer row each slot evaluates (an idle slot: the round's first point's).
        times: (R, Kp) evaluation times per slot.
        active: (R, Kp) slots whose output the plan uses.
        dest: (R, W) rows written per round.
        idx: (R, W, M) buffer rows read per written row.
        coef: (R, W, M) their coefficients.
        out_idx: (R, W, Mo) model-output slots read per written row.
        out_coef: (R, W, Mo) their coefficients.
        segments: the rounds grouped by width (see ``Segment``).
        outputs: buffer row of each requested output node (by node id).
    """

    regs: int
    slots: int
    init: np.ndarray
    points: np.ndarray
    times: np.ndarray
    active: np.ndarray
    dest: np.ndarray
    idx: np.ndarray
    coef: np.ndarray
    out_idx: np.ndarray
    out_coef: np.ndarray
    segments: tuple[Segment, ...]
    outputs: dict

    @property
    def rounds(self) -> int:
        """R, the number of rounds (scan steps)."""
        return self.points.shape[0]

    @property
    def rows(self) -> int:
        """Rows of the buffer: 1 + L."""
        return self.init.shape[0]

    @property
    def width(self) -> int:
        """The widest segment's slots: what a flat slot index (``round * width + slot``) counts in."""
        return max(s.width for s in self.segments)

    def segment_arrays(self, seg: Segment) -> tuple[np.ndarray, ...]:
        """The per-round arrays of one segment, trimmed to its shapes: (rounds, points, times,
        active, dest, idx, coef, out_idx, out_coef), each with a leading axis of its rounds (the
        times at ``SEGMENT_TIMES``)."""
        r, k, w, m, mo = slice(seg.start, seg.stop), slice(0, seg.width), slice(0, seg.rows), slice(0, seg.terms), \
            slice(0, seg.out_terms)
        return (np.arange(seg.start, seg.stop, dtype=np.int32), self.points[r, k], self.times[r, k], self.active[r, k],
                self.dest[r, w], self.idx[r, w, m], self.coef[r, w, m], self.out_idx[r, w, mo],
                self.out_coef[r, w, mo])


# Points in time within step s, for register lifetimes: the round's points are read (model input),
# then its terms, then the new values are written.
_READ_POINT, _READ_TERM, _WRITE = 0, 1, 2


def _time(step: int, what: int) -> int:
    return 3 * step + what


def lower(rec: LinearRecorder, slots: int, outputs: list[Sym], t0: float, multiple: int = 1) -> Program:
    """Lower a recording to the arrays of a ``lax.scan`` over rounds (see the module docstring).

    Args:
        rec: the recording of the symbolic engine run.
        slots: the most evaluations in a round; padded up to a multiple of ``multiple`` (Kp).
        outputs: the nodes read after the last round.
        t0: the time idle slots are evaluated at.
        multiple: segment widths are a power of two times this (the device count).

    Returns:
        The ``Program``.
    """
    slots = -(-slots // multiple) * multiple
    R = len(rec.rounds)
    nodes = rec.nodes
    point_reads: dict[int, int] = {}  # node id -> last round it is evaluated in
    for r, (xs, _) in enumerate(rec.rounds, start=1):
        for x in xs:
            point_reads[x.id] = r

    # last read of every node read after the step that made it: it needs a register until then
    until: dict[int, int] = {}
    for nid, r in point_reads.items():
        until[nid] = max(until.get(nid, -1), _time(r, _READ_POINT))
    for o in outputs:
        until[o.id] = _time(R + 1, _READ_POINT)
    seen: set[int] = set()
    stack: list[Sym] = list(outputs) + [nodes[i] for i in point_reads]
    while stack:
        n = stack.pop()
        if n.id in seen or n.terms is None:
            continue
        seen.add(n.id)
        for _, child in n.terms:
            if child.phase != n.phase:
                until[child.id] = max(until.get(child.id, -1), _time(n.phase, _READ_TERM))
            stack.append(child)

    # registers by interval colouring, in order of birth: a register is free once its last read is done
    order = sorted(until, key=lambda i: (nodes[i].phase, i))
    free_after: list[int] = []  # per register: the time of its occupant's last read
    reg_of: dict[int, int] = {}
    for i in order:
        born = _time(nodes[i].phase, _WRITE)
        reg = next((s for s, f in enumerate(free_after) if f < born), None)
        if reg is None:
            reg = len(free_after)
            free_after.append(0)
        free_after[reg] = until[i]
        reg_of[i] = reg
    L = max(1, len(free_after))
    born_at: list[list[int]] = [[] for _ in range(R + 1)]
    for i in order:
        born_at[nodes[i].phase].append(i)

    K = slots
    points = np.zeros((R, K), dtype=np.int32)
    times = np.full((R, K), t0)
    active = np.zeros((R, K), dtype=bool)
    for r, (xs, ts) in enumerate(rec.rounds):
        for j, (x, t) in enumerate(zip(xs, ts)):
            points[r, j], times[r, j], active[r, j] = 1 + reg_of[x.id], t, True
        if xs:  # idle slots evaluate the round's first point again: a point of the run, not the zero row,
            points[r, len(xs):], times[r, len(xs):] = points[r, 0], times[r, 0]  # where a model's derivative
            # may be singular (|x|: jax.grad through the unused output gave 0 * inf = nan gradients)

    steps: list[list[tuple[int, dict[int, float], dict[int, float]]]] = []
    for step in range(R + 1):
        memo: dict[int, tuple[dict[int, float], dict[int, float]]] = {}

        def resolve(n: Sym, step: int = step, memo: dict = memo) -> tuple[dict[int, float], dict[int, float]]:
            """n as ({buffer row: c}, {output slot: c}) at this step (bound per iteration)."""
            if n.phase != step:
                return {1 + reg_of[n.id]: 1.0}, {}
            if n.terms is None:
                if n.leaf[0] == "x0":
                    return {0: 1.0}, {}  # step 0 only: x0 is the init vector's unit
                return {}, {n.leaf[2]: 1.0}  # ("out", r, j): slot j of this round
            got = memo.get(n.id)
            if got is None:
                buf_terms: dict[int, float] = {}
                out_terms: dict[int, float] = {}
                got = (buf_terms, out_terms)
                for c, child in n.terms:
                    for mine, theirs in zip(got, resolve(child)):
                        for src, w in theirs.items():
                            mine[src] = mine.get(src, 0.0) + c * w
                memo[n.id] = got
            return got

        steps.append([(1 + reg_of[i], *resolve(nodes[i])) for i in born_at[step]])

    L += _cover_outputs(steps, rec, 1 + L)
    init = np.zeros(1 + L)
    for row, buf_terms, _ in steps[0]:
        init[row] = buf_terms.get(0, 0.0)
    dest, idx, coef, out_idx, out_coef, n_terms, n_out = _pack(steps[1:])
    segments = _segments([len(xs) for xs, _ in rec.rounds], n_terms, n_out, K, multiple)
    outs = {o.id: 1 + reg_of[o.id] for o in outputs}
    return Program(L, K, init, points, times, active, dest, idx, coef, out_idx, out_coef, segments, outs)


def _cover_outputs(steps: list[list[tuple[int, dict[int, float], dict[int, float]]]], rec: LinearRecorder,
                   scratch: int) -> int:
    """Make every evaluated output a term of a row its round writes, so that the output check can
    screen the written rows (``run.py``): a round where some output has no coefficient in any row
    that stays nonzero in the states' dtype (it is unused, its coefficients cancel, or they round
    to 0: below 6e-8 in float16) writes their sum to the buffer row ``scratch``, which nothing
    reads. Returns the registers added: 1 if any round needed it, else 0."""
    import jax.numpy as jnp

    # a coefficient at least the dtype's smallest subnormal is nonzero once cast (float16's without a dtype)
    least = float(jnp.finfo(rec.dtype if rec.dtype is not None else jnp.float16).smallest_subnormal)
    added = 0
    for step, (xs, _) in enumerate(rec.rounds, start=1):
        used = {j for _, _, outs in steps[step] for j, c in outs.items() if abs(c) >= least}
        missing = [j for j in range(len(xs)) if j not in used]
        if missing:
            steps[step].append((scratch, {}, {j: 1.0 for j in missing}))
            added = 1
    return added


def _pack(steps: list[list[tuple[int, dict[int, float], dict[int, float]]]]) -> tuple[np.ndarray, ...]:
    """Per step the written rows (row, {buffer row: c}, {output slot: c}) -> padded arrays
    (dest, idx, coef, out_idx, out_coef) and the terms each row uses (buffer, outputs: (R, W) each);
    zero terms dropped."""
    rows = [[(d, [(k, c) for k, c in sorted(b.items()) if c != 0.0], [(k, c) for k, c in sorted(o.items()) if c != 0.0])
             for d, b, o in st] for st in steps]
    W = max(1, max((len(st) for st in rows), default=1))
    M = max(1, max((len(b) for st in rows for _, b, _ in st), default=1))
    Mo = max(1, max((len(o) for st in rows for _, _, o in st), default=1))
    R = len(steps)
    dest, n_terms, n_out = np.zeros((R, W), dtype=np.int32), np.zeros((R, W), dtype=int), np.zeros((R, W), dtype=int)
    idx, coef = np.zeros((R, W, M), dtype=np.int32), np.zeros((R, W, M))
    out_idx, out_coef = np.zeros((R, W, Mo), dtype=np.int32), np.zeros((R, W, Mo))
    for a, st in enumerate(rows):
        for w, (d, b, o) in enumerate(st):
            dest[a, w], n_terms[a, w], n_out[a, w] = d, len(b), len(o)
            # padding terms (coefficient 0) read the row's first source again: a cache hit, where
            # row 0 would be one more pass over a state's worth of memory
            idx[a, w, :], out_idx[a, w, :] = b[0][0] if b else 0, o[0][0] if o else 0
            for m, (src, c) in enumerate(b):
                idx[a, w, m], coef[a, w, m] = src, c
            for m, (src, c) in enumerate(o):
                out_idx[a, w, m], out_coef[a, w, m] = src, c
    return dest, idx, coef, out_idx, out_coef, n_terms, n_out


#: A segment shorter than this many rounds is merged into a neighbour: each segment is one more loop
#: to compile (and trace the model for) and to start per call, which costs more than a few rounds of
#: idle slots save.
MIN_SEGMENT_ROUNDS = 4


def _segments(widths: list[int], n_terms: np.ndarray, n_out: np.ndarray, slots: int,
              multiple: int) -> tuple[Segment, ...]:
    """Group rounds into runs of equal width: each round's evaluations rounded up to a power of two
    times ``multiple``, at most ``slots``, and of terms per row within the same power of two (every
    row of a segment is padded to its widest: the few wide rows of the rounds where the error
    estimate sums many cores' local estimates stay out of the other rounds); a run shorter than
    ``MIN_SEGMENT_ROUNDS`` joins the neighbour that adds the fewest idle slot evaluations. Per
    segment the most rows and terms its rounds use."""
    def width(n: int) -> int:
        w = multiple
        while w < n:
            w *= 2
        return min(w, slots)

    def merged(a: list[int], b: list[int]) -> list[int]:
        return [min(a[0], b[0]), max(a[1], b[1])] + [max(u, v) for u, v in zip(a[2:], b[2:])]

    def waste(a: list[int], b: list[int]) -> int:
        m = merged(a, b)
        return (m[1] - m[0]) * m[2] - (a[1] - a[0]) * a[2] - (b[1] - b[0]) * b[2]

    def heavy(s: list[int]) -> int:
        """Terms per row, to a power of two: a segment pads every row to its widest."""
        return (s[4] + s[5] - 1).bit_length()

    used = [(int(((a + b) > 0).sum()), int(a.max(initial=0)), int(b.max(initial=0))) for a, b in zip(n_terms, n_out)]
    segs: list[list[int]] = []  # [start, stop, width, rows, terms, out_terms]
    for r, (n, (rows, terms, outs)) in enumerate(zip(widths, used)):
        w = width(n)
        new = [r, r + 1, w, rows, terms, outs]
        if segs and segs[-1][2] == w and heavy(segs[-1]) == heavy(new):
            segs[-1] = merged(segs[-1], new)
        else:
            segs.append(new)
    while len(segs) > 1:
        short = [i for i, s in enumerate(segs) if s[1] - s[0] < MIN_SEGMENT_ROUNDS]
        if not short:
            break
        i = min(short, key=lambda i: segs[i][1] - segs[i][0])
        j = min((k for k in (i - 1, i + 1) if 0 <= k < len(segs)), key=lambda k: waste(segs[i], segs[k]))
        lo = min(i, j)
        segs[lo: lo + 2] = [merged(segs[i], segs[j])]
    return tuple(Segment(a, b, w, max(1, rows), max(1, t), max(1, o)) for a, b, w, rows, t, o in segs)
