"""The CHORDS engine: K cores on one grid, driven round by round by the static ``Plan``.

Per round the engine gathers every active core's point, asks the executor for all model outputs at
once, converts them to the solver's quantity and applies the plan's updates in core order:

- fine step      F: ``solver.step`` (the same function the sequential ``solve`` uses);
- coarse jump    G(x, q; i -> j) = a x + b q  (``solver.jump_coeffs``), zero evaluations;
- rectification  x_j <- F(own) - G(own anchor; b -> j) + G(slower core at b; b -> j)
                      = F + a (x_slow - x_anchor) + b (q_slow - q_anchor)   (``rectify``).

Core 0 is never rectified, so its output is the sequential solution bit for bit. A faster core whose
model output is not finite (its far coarse start ran off, on a plain ODE) is retired with the cores
faster than it, and the slower ones go on (``Survivors``); core 0's non-finite output raises. Multistep solvers
keep a per-core history of model quantities; at a rectification the ``history`` policy
(``history.move``) decides what happens to it.

``evaluate_round`` is the one place where any method hands a round to its executor and labels a
bad model output with the round and the point. Where the model defers its finiteness check
(``Model.check_outputs``: torch tensors on an accelerator by default), the CHORDS loop keeps each
round's per-point flags on the device (``DeferredCheck``) and reads them back once per output, so
no round waits for the device; the other methods read values back every round anyway (their
acceptance tests) and check at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _backend as B
from .call import warn_caller
from .checks import _is_int
from .executors import Executor
from .history import move
from .local_error import LocalError
from .models import Model, ModelOutputError, is_plain_ode, outputs_like, own_call, raised_at, raised_in
from .plan import Eval, Plan, Round
from .progress import progress_bar
from .results import Hit, Result
from .solvers import Solver
from .stopping import ErrorState, Outputs, StopRule, accepts, chosen_output, described

__all__ = ["rectify", "evaluate_round", "StageTimeError", "DeferredCheck", "CoreRecords", "Survivors", "run_plan",
           "plan_result"]


def rectify(fine: Any, anchor_x: Any, anchor_q: Any, slow_x: Any, slow_q: Any, a: float, b: float) -> Any:
    """F - G(anchor) + G(slow) for a jump G(x, q) = a x + b q: fine + a (slow_x - anchor_x) + b (slow_q - anchor_q).

    Args:
        fine: the fine step's result F (updated in place where the dtypes allow: the engine owns it).
        anchor_x, anchor_q: the core's own anchor point and its quantity.
        slow_x, slow_q: the slower core's point at the anchor's index and its quantity.
        a, b: the jump coefficients of G over the rectified span.

    Returns:
        The rectified point, same shape and dtype as ``fine``.
    """
    out = B.add_scaled_into(fine, slow_x - anchor_x, a)
    if b != 0.0:
        out = B.add_scaled_into(out, slow_q - anchor_q, b)
    return out


class DeferredCheck:
    """Finiteness flags of the rounds' model outputs, kept where the outputs live until read back
    (``first_bad``)."""

    def __init__(self) -> None:
        self.pending: list = []  # (flags, round number, where, context) per round

    def add(self, outs: Sequence[Any], round_number: int, where: Callable[..., str], context: tuple) -> None:
        """Keep the round's per-point flags (computed on the device, not read back)."""
        self.pending.append((B.finite_flags(outs), round_number, where, context))

    def first_bad(self) -> tuple[ModelOutputError, int, tuple] | None:
        """Read every pending flag back at once: ``None`` if all are finite (they are then dropped),
        else the ``ModelOutputError`` naming the round and point of the first non-finite output, that
        round's number and its context; the flags then stay pending (see ``keep``)."""
        if not self.pending:
            return None
        flags = B.to_host(B.concat([f for f, *_ in self.pending]))
        if flags.all():
            self.pending = []
            return None
        k = int(np.argmin(flags))
        for f, rnd, where, context in self.pending:
            if k < len(f):
                return ModelOutputError.nonfinite(k, f"round {rnd}, {where(k, *context)}"), rnd, context
            k -= len(f)
        raise AssertionError("a flag past the pending rounds")  # (argmin lies within the concatenation)

    def keep(self, count: Callable[..., int]) -> None:
        """Keep of each pending round only its first ``count(*context)`` flags (the points of the
        cores still running, a prefix of the round's points)."""
        self.pending = [(f[:count(*context)], rnd, where, context) for f, rnd, where, context in self.pending]


def eval_where(e: Eval, time: float) -> str:
    """How an error names the evaluation ``e`` of a CHORDS round at ``time``: its core, step and stage."""
    return f"core {e.core} (step {e.index}, stage {e.stage}, t={time:.6g})"


class StageTimeError(ValueError):
    """A solver whose later stage evaluates the model at a time other than its step's end, which
    CHORDS' plan assumes; ``where`` says which stage and time (``chords_jax.solve``, compiled as
    one-core CHORDS, says the rest in its words)."""

    def __init__(self, where: str, advice: str) -> None:
        super().__init__(f"{where}; {advice}")
        self.where, self.advice = where, advice

    def __reduce__(self) -> tuple:
        return type(self), (self.where, self.advice)  # (pickles: its arguments are not its message)


def evaluate_round(executor: Executor, model: Model, xs: Sequence[Any], ts: Sequence[float], round_number: int,
                   where: Callable[..., str], *context: Any, deferred: DeferredCheck | None = None) -> list[Any]:
    """The model outputs at the round's points, from ``executor``.

    A ``ModelOutputError`` is re-raised naming the round and ``where(point, *context)`` (the core,
    step and stage of the point in the method's terms); ``where`` is only called then, so a method
    passes the round's data as ``context`` instead of building a closure every round. Where the
    model defers its finiteness check, the flags go to ``deferred`` (the caller verifies them
    later), or without one are checked here.
    """
    try:
        outs = executor(model, xs, ts)
    except ModelOutputError as err:
        if not (_is_int(err.point) and 0 <= err.point < len(xs)):  # (an executor's own error: an IndexError here,
            # or -1 blamed on the round's last point)
            raise ValueError(f"executor: {type(executor).__name__} raised a ModelOutputError for point {err.point!r}, "
                             f"outside the {len(xs)} point(s) of round {round_number} (an executor that splits a "
                             f"round maps the point back to its index in the round): {err}") from err
        raise err.relabel(err.point, f"round {round_number}, {where(err.point, *context)}: {err}", err.done) from None
    except (Exception, KeyboardInterrupt) as err:  # the model's own exception, or an executor's (a lost worker),
        # or a Ctrl-C during the call (a user trial found it without the note): where it happened
        if hasattr(err, "add_note"):  # (Python 3.11+; shown with the traceback, the message kept as it is)
            at = raised_in(err, xs)
            raised_at(err, None)  # (read once: the same exception object raised again is marked anew)
            if at is not None:  # (the call was on that point alone)
                err.add_note(f"(chords_core: raised by the model's call on {where(at, *context)}, in round "
                             f"{round_number} of {len(xs)} point(s))")
            else:
                shown = ", ".join(where(k, *context) for k in range(min(len(xs), 4)))
                err.add_note(f"(chords_core: raised while evaluating round {round_number}, {len(xs)} point(s): "
                             f"{shown}{', ...' if len(xs) > 4 else ''})")
        raise
    if not isinstance(outs, (list, tuple)) or len(outs) != len(xs):
        got = f"{len(outs)} outputs" if isinstance(outs, (list, tuple)) else f"a {type(outs).__name__}"
        raise ValueError(f"executor: {type(executor).__name__} returned {got} for the {len(xs)} point(s) of round "
                         f"{round_number}; an executor returns a list of one model output per point, in their order")
    if not type(executor).__dict__.get("outputs_checked", False):
        # (Executor.outputs_checked: declared by the class itself, not inherited: its outputs come from
        # model.evaluate, which checks them, a subclass's own _call's too, Model._checked_own)
        outs = _executor_outputs(executor, model, outs, xs, round_number, where, context)
    if outs and model.deferred_check(outs[0]):
        check = DeferredCheck() if deferred is None else deferred
        check.add(outs, round_number, where, context)
        if deferred is None and (bad := check.first_bad()) is not None:
            # (checked now: a bad output carries the round's outputs before it, as the model's own check's
            # does; without them a window method evaluated the stage again, extra rounds for "deferred", a trial)
            first = bad[0]
            raise first.relabel(first.point, str(first), list(outs[:first.point]))
    return outs


def _executor_outputs(executor: Executor, model: Model, outs: Any, xs: Sequence[Any], round_number: int,
                      where: Callable[..., str], context: tuple) -> Any:
    """An executor's outputs that no library check has seen (``evaluate_round``), checked against their
    points as a model's are (``models.output_problem``: a (8,) output for a (2, 8) state was broadcast,
    387 off; a torch tensor for numpy points was blamed on the model, a round later), a ``ValueError``
    naming the executor, the round and the point otherwise; an output of another floating dtype cast
    to its point's (a float64 output for a float32 state made the run float64); and unless the executor's
    class declares ``values_checked``, their finiteness as ``model.check_outputs`` says, a
    ``ModelOutputError`` naming the round and the point (an executor calling the network itself: a nan
    it returned was named a round later at another point, or returned as the result, a trial)."""
    def error(k: int, problem: str) -> ValueError:
        by = ("evaluate with model.evaluate, which checks each output" if own_call(type(model)) else
              f"{type(model).__name__}'s own _call returned it; model.evaluate checks each output")
        return ValueError(f"executor: {type(executor).__name__} returned, for point {k} of round {round_number} "
                          f"({where(k, *context)}), {problem} ({by})")

    # (none where nothing is due: no call per output on the hot path with the check off)
    due = model.check_outputs and not type(executor).__dict__.get("values_checked", False)
    finite = model.passes_now if due else None
    try:
        return outputs_like(outs, xs, error, finite)
    except ModelOutputError as err:
        raise err.relabel(err.point, f"round {round_number}, {where(err.point, *context)}: {err}", err.done) from None


class CoreRecords:
    """The mutable per-core records of one CHORDS run, updated round by round as the plan says.

    ``states[c]``: the core's solver ``State``; ``anchor[c]``: (index b, point, quantity) of its
    anchor; ``slow[c]``: the slower core's (point, quantity) at b once evaluated; ``qs[c]``: the
    stage quantities of the step in progress; ``coarse``: the coarse hit. With ``widths`` (for an
    executor that stacks a round's points into one call: ``Plan.widths_from``) large rounds' points
    lie in round buffers (``_backend.RoundBuffers``).
    """

    def __init__(self, sol: Solver, x: Any, init: Sequence[int], history: str, errors: bool = False,
                 widths: Sequence[int] | None = None, newest: bool = False):
        K = len(init)
        self.sol, self.init, self.history = sol, init, history
        self.local = LocalError(sol) if errors else None
        # the sequential error estimate: core 0's local error estimates e_j (``_observe``)
        self.recent: list = []  # core 0's latest (index, q) of stage 0, newest first
        self.estimated = 0  # how many steps have an estimate e_j
        self.error_sum: Any = None  # the sum of those e_j
        # the two newest e_j, newest first, and the steps after the newest's, where the error state carries
        # them (``newest``: a plain ODE's, ``stopping.estimate_error``)
        self.newest: tuple | None = (None, None, 0) if newest else None
        self.start = x  # the initial state (the estimate scales with the solution's decay from it)
        self.convert = sol.quantity_of if sol.converts else None
        # raw outputs kept past their round are copied out of the round's batched output (B.own),
        # where that output is large enough for pinning it to matter
        self.keep = B.own if self.convert is None and B._nbytes(x) * K >= B.OWN_MIN_BYTES else None
        self.states: list = [sol.begin(x)] + [None] * (K - 1)
        self.anchor: list = [None] + [(init[c], None, None) for c in range(1, K)]
        self.slow: list = [None] * K
        self.qs: list = [None] * K
        self.coarse: Any = None
        # rounds stacked into one batched call get their points written straight into a round buffer
        # (no stacking copy): a point lives in it while it is evaluated and stepped (stages rounds), so
        # one buffer more than that; what is kept longer (anchors, records) is copied out
        self.nbytes = B._nbytes(x)
        stack = widths is not None and B.RoundBuffers.suits(x)
        self.buffers = B.RoundBuffers(x, max(sol.evals_per_step()) + 1) if stack else None
        self.next: tuple[int, B.Rows] | None = None  # (round number, its buffer rows), filled by apply
        self.widths: Sequence[int] = widths or ()  # per round (by number - 1): the most points of a round from it on

    def _buffer(self, rd: Round) -> B.Rows | None:
        """The round buffer rows for ``rd``'s points, or ``None`` where its points are not written into
        one (no buffers, one point, or fewer than ``ROUND_BUFFER_MIN_BYTES``)."""
        n = len(rd.evals)
        if self.buffers is None or n < 2 or n * self.nbytes < B.ROUND_BUFFER_MIN_BYTES:
            return None
        # (a round numbered past the plan's, after rounds evaluated again: the last width, at least n)
        return self.buffers.take(rd.number, n, self.widths[min(rd.number, len(self.widths)) - 1])

    def _stage_point(self, c: int, i: int, k: int, ti: int) -> Any:
        """Stage ``k`` >= 1's point of core ``c``'s step i -> i + 1, evaluated at grid index ``ti`` (the
        plan's: the step's end); a solver whose stage asks for another time is refused (its point was
        evaluated at the step's end regardless: 0.03 off ``solve`` at cores=1, silently)."""
        x, at = self.sol.staged(self.states[c], self.qs[c], i, i + 1, k)
        if at != ti:
            raise StageTimeError(f"solver: {self.sol.name!r} evaluates stage {k} of the step {i} -> {i + 1} at grid "
                                 f"index {at}", f"CHORDS evaluates every later stage at the step's end ({ti}), as "
                                 "Heun's: use chords_core.solve, srds or a window method (cc.parallel) with this "
                                 "solver")
        return x

    def points(self, rd: Round) -> list:
        """The point each evaluation of round ``rd`` is at (stage 0: the state; later stages: the
        solver's): a ``Stacked`` list of the round buffer's rows where the round has one (points not
        yet there are copied in)."""
        st = self.states
        pts = [st[c].x if k == 0 else self._stage_point(c, i, k, ti)
               for c, i, k, ti, _, _, _, _, _ in rd.rows]  # plan.Eval's fields in order
        if self.buffers is None:
            return pts
        nxt, self.next = self.next, None
        rb = nxt[1] if nxt is not None and nxt[0] == rd.number else self._buffer(rd)
        if rb is None:
            return pts
        for x, slot in zip(pts, rb.slots):
            if x is not slot and not B.copy_into(slot, x):
                # a point unlike the buffer (dtype, device, gradients): stacked by the executor; the
                # points a step already wrote into the buffer are copied out, as ``apply`` keeps them
                # (anchors) only for a ``Stacked`` round
                ids = {id(s) for s in rb.slots}
                return [B.clone(p) if id(p) in ids else p for p in pts]
        return B.Stacked(rb)

    def apply(self, rd: Round, xs: Sequence[Any], outs: Sequence[Any],
              nxt: Round | None = None) -> list[tuple[int, Any]]:
        """Take round ``rd``'s model outputs at its points ``xs``: spawn, record, step, rectify; the
        steps write the next round's (``nxt``) points into its round buffer, if it has one.

        Returns:
            The (core, output) of the cores finishing this round, fastest first.
        """
        sol, init, K = self.sol, self.init, len(self.init)
        states, anchor, slow, qs = self.states, self.anchor, self.slow, self.qs
        history, convert, local, keep = self.history, self.convert, self.local, self.keep
        shift = history == "shift"
        stacked = False  # whether the points are the rows of a round buffer (copied where kept)
        slots = starts = None  # the next round's buffer rows, and which of them each core's step fills
        if self.buffers is not None:
            if isinstance(xs, B.Stacked):
                stacked = True
                if not xs.joined:  # not through a workspace (which copies those): an output that is its input, say
                    buf = xs.rows.whole
                    outs = [B.unshared(o, buf) for o in outs]
            rb = self._buffer(nxt) if nxt is not None else None
            if rb is not None and nxt is not None:
                slots, starts = rb.slots, nxt.starts
                self.next = (nxt.number, rb)
        consumed = rd.rectifying
        hits = []
        # the fields of each ``plan.Eval``, in its declared order (unpacked once: the hot loop)
        for (c, i, stage, ti, spawn, record_for, completes, rectify_from, hit), xe, out in zip(rd.rows, xs, outs):
            q = out if convert is None else convert(xe, out, ti)
            if stage == 0:
                qs[c] = [q]
                if local is not None and c == 0:  # (kept for the next steps' estimates: owned, as below; a
                    # view pinned the round's whole output: 54 state copies at the peak against 40, a user trial)
                    self._observe(i, q if keep is None else keep(q))
                kept = c and anchor[c][0] == i
                # kept past the round: owned, not a view pinning the round's whole output or buffer (a
                # record used by a rectification of this round is not)
                if kept or (record_for is not None and record_for not in consumed):
                    if keep is not None:
                        q = keep(q)
                    if stacked:
                        xe = B.clone(xe)
                if kept:
                    anchor[c] = (i, xe, q)
                if record_for is not None:
                    slow[record_for] = (xe, q)
                if spawn:
                    if c + 1 < K:
                        xn = sol.jump(xe, q, init[c], init[c + 1])
                        states[c + 1] = sol.begin(xn)
                        anchor[c + 1] = (init[c + 1], xn, None)
                    else:
                        self.coarse = sol.jump(xe, q, init[c], sol.steps)
            else:
                qs[c].append(q)
            if completes:
                p = None if starts is None else starts.get(c)
                new = (sol.step(states[c], qs[c], i, i + 1) if p is None
                       else sol._step_into(states[c], qs[c], i, i + 1, slots[p]))  # type: ignore[index]
                qs[c] = None  # the step's quantities are done with (nor do they pin the round's output)
                b = rectify_from
                if b is not None:
                    _, xa, qa = anchor[c]
                    xsl, qsl = slow[c]
                    ca, cb = sol.jump_coeffs(b, i + 1)
                    xn = rectify(new.x, xa, qa, xsl, qsl, ca, cb)
                    new = move(new, xn, history, qsl - qa if shift and new.hist else None, sol.begin)
                    anchor[c], slow[c] = (i + 1, xn, None), None
                states[c] = new
                if hit:
                    hits.append((c, new.x))
                    states[c] = anchor[c] = slow[c] = None  # a finished core's records are freed
        if len(hits) > 1:
            hits.sort(key=lambda h: -h[0])
        return hits

    def _observe(self, i: int, q: Any) -> None:
        """Record core 0's quantity at index i; estimate e_i once p + 1 consecutive ones exist.

        Only core 0's values, the sequential solver's own, are estimated from. A faster core's values
        are those of an iterate not yet converged: taken where they came first (as they once were),
        a coarse start that ran wild on a stiff problem gave an estimate thousands of times the
        sequential error, and the rule then accepted two wild outputs that agreed to within it
        (dy/dt = [[-30, 1], [0, -0.5]] y, 40 Euler steps, 4 cores: an output 685 x the sequential
        error away). Core 0 reaches half the steps, when the estimate starts, by round T / 2 (T for a
        two-stage solver), before all but the fastest outputs arrive: 1% more rounds over the benchmark
        suite's 42 rows."""
        rec = self.recent
        rec.insert(0, (i, q))
        assert self.local is not None
        del rec[self.local.needs:]
        if len(rec) == self.local.needs:
            self.estimated += 1
            e = self.local.at(i, [v for _, v in rec])
            if self.newest is not None:  # (e_i: the error of the step i - 1 -> i)
                self.newest = (e, self.newest[0], self.sol.steps - i)
            if self.error_sum is None:  # (e is fresh; the sum is added into in place, so where e stays
                # one of the newest, the sum starts as a copy of its own)
                self.error_sum = e + 0.0 if self.newest is not None else e
            else:
                self.error_sum = B.add_into(self.error_sum, e)

    def retire(self, core: int) -> None:
        """Drop the records of ``core`` and every faster core (``Survivors``). The next round's points
        are gathered anew (the rows ``apply`` prepared were laid out for the cores before, and a round
        evaluated again takes the other buffer), so the running cores' points are copied out of the
        round buffers first: a step never writes into a buffer its own point lies in. (The sequential
        error estimate is core 0's alone: nothing to drop.)"""
        for c in range(core, len(self.init)):
            self.states[c] = self.anchor[c] = self.slow[c] = self.qs[c] = None
        if self.buffers is not None:
            self.states[:core] = [None if st is None else move(st, B.clone(st.x)) for st in self.states[:core]]
        self.next = None

    def error_state(self) -> ErrorState | None:
        """The summed local error estimates, how many steps have one, steps, the initial state and,
        for a plain ODE, the two newest local error estimates and the steps after the newest's:
        ``Outputs.error_state``; ``None`` without estimates. The sum is updated in place as the run
        goes on."""
        if self.local is None:
            return None
        return ErrorState(self.error_sum, self.estimated, self.sol.steps, self.start, *(self.newest or ()))


class Survivors:
    """The cores still running in a CHORDS run. A faster core whose model output is not finite (its
    coarse start, one jump over many steps, ran off to where the model overflows: a plain ODE with
    far starts) is retired with every core faster than it (they rectify from it), and the run goes on
    with the slower ones, whose values never depend on a faster core's; core 0, the sequential
    solution, is never retired (a non-finite output there is the model's failure). The round whose
    call failed goes on with the slower cores' outputs (``ModelOutputError.done``), or, where the
    executor gave none (an executor of one's own), is evaluated again
    without the retired cores, and counts (``extra``)."""

    def __init__(self, plan: Plan, times: Sequence[float]) -> None:
        self.cores = self.alive = plan.cores
        self.times = times
        self.extra = 0  # rounds evaluated again after a failed call
        self.retired: list[tuple[int, str]] = []  # (core, where its non-finite output was) per retirement
        self._last: tuple[tuple[int, int, int], Round] | None = None  # the last round built, by its key

    def retire(self, err: ModelOutputError, rnd: int, evals: Sequence[Eval], records: CoreRecords) -> None:
        """Retire the core of ``err``'s point (of round ``rnd``, with ``evals``) and the faster ones,
        or re-raise ``err``: not a non-finite output, or one of core 0."""
        c = evals[err.point].core if err.is_nonfinite and 0 <= err.point < len(evals) else 0
        if c == 0:
            if self.retired:
                raise err.relabel(err.point, f"{err} ({self._retired_words()})") from None
            raise err
        e = evals[err.point]
        self.retired.append((c, f"round {rnd}, {eval_where(e, self.times[e.time_index])}"))
        self.alive = c
        records.retire(c)

    def round(self, rd: Round | None) -> Round | None:
        """``rd`` as it runs: numbered after the rounds evaluated again, without the retired cores
        (a prefix of its evaluations, slowest core first), their records and spawns dropped."""
        if rd is None or (self.alive == self.cores and not self.extra):
            return rd
        a, K = self.alive, self.cores
        key = (rd.number, a, self.extra)
        if self._last is not None and self._last[0] == key:  # built as the next round one round before
            return self._last[1]
        evals = tuple(e._replace(record_for=None if e.record_for is not None and e.record_for >= a else e.record_for,
                                 spawn=e.spawn and not a <= e.core + 1 < K)
                      for e in rd.evals if e.core < a)
        built = Round(rd.number + self.extra, evals, rd.coarse_hit and a == K)
        self._last = (key, built)
        return built

    def kept(self, evals: Sequence[Eval]) -> int:
        """How many of a round's evaluations are of running cores (a prefix)."""
        return sum(e.core < self.alive for e in evals)

    def _retired_words(self) -> str:
        return "; ".join(f"core {c} and faster retired after a non-finite model output at {w}" for c, w in self.retired)

    def note(self) -> str:
        """What ``stopped_by`` adds after retirements, which a ``RuntimeWarning`` reports too."""
        if not self.retired:
            return ""
        note = (f"; {self._retired_words()} (a faster core's coarse start ran off, as on a plain ODE with far "
                f"starts); the run went on with {'core 0' if self.alive == 1 else f'cores 0-{self.alive - 1}'}")
        warn_caller(f"chords:{note[1:]}", RuntimeWarning)
        return note


def run_plan(model: Model, x: Any, sol: Solver, plan: Plan, rule: StopRule, executor: Executor, history: str,
             progress: bool = False) -> Result:
    """Run ``plan`` from ``x`` until ``rule`` accepts an output or its static limit is reached.

    A faster core whose output is not finite is retired with the cores faster than it, and the run
    goes on with the slower ones (``Survivors``; a ``RuntimeWarning`` and ``stopped_by`` say so).

    Args:
        model: the model the executor evaluates.
        x: the initial state at grid index 0.
        sol: the solver bound to ``model`` and the grid.
        plan: the static schedule (``make_plan``) for ``sol``'s evaluations per step.
        rule: the stop rule (``stopping``).
        executor: evaluates each round's points.
        history: the history policy (``history.HISTORY_POLICIES``).
        progress: show a tqdm progress bar over rounds.

    Returns:
        A ``Result`` (``method="chords"``) with every output up to the stop and the plan.
    """
    limit = plan.stop_round(rule)
    wants_error = bool(getattr(rule, "uses_error_estimate", False))
    # round buffers where the executor stacks the points and the widest round is large enough for them
    stacks = getattr(executor, "stacks_points", False)  # a method; a bool attribute as executors set it before
    stack = ((stacks(x) if callable(stacks) else stacks) is True
             and plan.width(limit) * B._nbytes(x) >= B.ROUND_BUFFER_MIN_BYTES)
    # a plain ODE's error estimate is also bounded by its newest local errors' decay (``estimate_error``)
    records = CoreRecords(sol, x, plan.init, history, errors=wants_error, widths=plan.widths_from if stack else None,
                          newest=is_plain_ode(model))
    hits: list[Hit] = []
    outputs: list = []
    starts: list[int] = []  # where each output's core started (Outputs.starts)
    result, stopped_by, nfe, t = None, "", 0, sol.t
    deferred = DeferredCheck()
    survivors = Survivors(plan, t)
    ran: list[Round] = []  # the rounds as they ran (differ from the plan's after a retirement)

    def where(p: int, evs: tuple) -> str:
        e = evs[p]
        return eval_where(e, t[e.time_index])

    def verify() -> None:
        """Check the deferred flags; retire where a faster core's output was not finite."""
        while (bad := deferred.first_bad()) is not None:
            err, rnd, (evs,) = bad
            survivors.retire(err, rnd, evs, records)
            deferred.keep(survivors.kept)

    rounds = plan.rounds

    def last() -> int:
        """Rounds to run: up to the rule's limit, or after a retirement all (the output the rule
        planned to stop at may not come)."""
        return len(rounds) if survivors.retired else limit

    def tick(bar: Any) -> None:
        """Count a round that ran; after a retirement the total is every round of the plan and the
        rounds evaluated again (before one it is ``limit``)."""
        if survivors.retired and bar.total != len(rounds) + survivors.extra:
            bar.total = len(rounds) + survivors.extra
            bar.refresh()
        bar.update(1)

    n = 0
    with progress_bar(progress, limit, f"chords {sol.name} x{plan.cores}", "round") as bar:
        while n < last():
            rd = survivors.round(rounds[n])
            assert rd is not None  # core 0 evaluates in every round of the plan
            xs = records.points(rd)
            nfe += len(xs)
            ran.append(rd)
            try:
                outs = evaluate_round(executor, model, xs, [t[i] for i in rd.time_indices], rd.number, where, rd.evals,
                                      deferred=deferred)
            except ModelOutputError as err:
                survivors.retire(err, rd.number, rd.evals, records)  # or re-raised
                kept = survivors.kept(rd.evals)  # the running cores' points: those before the failing one
                if err.done is None or len(err.done) < kept:  # (outputs not known: an executor that gives none)
                    survivors.extra += 1  # the round is evaluated again without the retired cores
                    tick(bar)
                    continue
                # the slower cores' outputs of the round are finite and theirs: taken, not evaluated again
                # (a run with a retirement took a round more per retirement than the sequential solver)
                rd, outs = survivors.round(rounds[n]), err.done[:kept]
                assert rd is not None
                xs = xs.part(0, kept) if isinstance(xs, B.Stacked) else xs[:kept]
            nxt = survivors.round(rounds[n + 1]) if n + 1 < last() else None
            finished = records.apply(rd, xs, outs, nxt)
            del xs, outs  # the round's points and outputs are not kept past it (memory: K states each)
            if finished:
                verify()  # before anyone looks at an output
            for c, xh in finished:  # cores finishing this round, fastest first
                if c >= survivors.alive:
                    continue  # retired (its output came after the non-finite one it depends on)
                hits.append(Hit(c, rd.number, nfe, xh))
                outputs.append(xh)
                starts.append(plan.init[c])
                if result is None and accepts(rule, Outputs(outputs, error_state=records.error_state(), starts=starts),
                                              records.coarse):
                    result, stopped_by = hits[-1], described(rule, len(hits), c, True)
            tick(bar)
            if result is not None:
                break
            n += 1
    if result is None:  # the last output: core 0's, the sequential solution, unless the rule needs fewer
        n, stopped_by = chosen_output(rule, [h.core for h in hits], None)  # (then it warns, StopNotMet)
        result = hits[n]
    if not survivors.retired:
        return plan_result(plan, result, hits, records.coarse, stopped_by)
    R = result.round
    run = tuple(rd for rd in ran if rd.number <= R)
    return Result(x=result.x, rounds=R, nfe=result.nfe, hits=tuple(h for h in hits if h.round <= R),
                  coarse=records.coarse, stopped_by=stopped_by + survivors.note(), method="chords",
                  sequential_rounds=plan.sequential_rounds, width=max(len(rd.evals) for rd in run), trace=run,
                  plan=plan)


def plan_result(plan: Plan, output: Hit, hits: Sequence[Hit], coarse: Any, stopped_by: str) -> Result:
    """The ``Result`` of a CHORDS run returning ``output``: rounds, NFE, width and trace from ``plan``;
    ``hits`` are kept up to ``output``'s round."""
    R = output.round
    return Result(x=output.x, rounds=R, nfe=plan.nfe(R), hits=tuple(h for h in hits if h.round <= R), coarse=coarse,
                  stopped_by=stopped_by, method="chords", sequential_rounds=plan.sequential_rounds,
                  width=plan.width(R), trace=plan.rounds[:R], plan=plan)
