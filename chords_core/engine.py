"""The CHORDS engine: K cores on one grid, driven round by round by the static ``Plan``.

Per round the engine gathers every active core's point, asks the executor for all model outputs at
once, converts them to the solver's quantity and applies the plan's updates in core order:

- fine step      F: ``solver.step`` (the same function the sequential ``solve`` uses);
- coarse jump    G(x, q; i -> j) = a x + b q  (``solver.jump_coeffs``), zero evaluations;
- rectification  x_j <- F(own) - G(own anchor; b -> j) + G(slower core at b; b -> j)
                      = F + a (x_slow - x_anchor) + b (q_slow - q_anchor)   (``rectify``).

Core 0 is never rectified, so its output is the sequential solution bit for bit. Multistep solvers
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
from .executors import Executor
from .history import move
from .local_error import LocalError
from .models import Model, ModelOutputError
from .plan import Eval, Plan, Round
from .results import Hit, Result
from .solvers import Solver
from .stopping import Outputs, StopRule

__all__ = ["rectify", "evaluate_round", "ran_off", "DeferredCheck", "CoreRecords", "run_plan", "plan_result"]


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
    """Finiteness flags of the rounds' model outputs, kept where the outputs live until ``verify``.

    Args:
        decorate: ``decorate(err, *context) -> err``, applied to the error ``verify`` raises (the
            CHORDS loop adds its hint for a faster core, ``ran_off``), as to an eager one.
    """

    def __init__(self, decorate: Callable[..., ModelOutputError] | None = None) -> None:
        self.pending: list = []  # (flags, round number, where, context) per round
        self.decorate = decorate

    def add(self, outs: Sequence[Any], round_number: int, where: Callable[..., str], context: tuple) -> None:
        """Keep the round's per-point flags (computed on the device, not read back)."""
        self.pending.append((B.finite_flags(outs), round_number, where, context))

    def verify(self) -> None:
        """Read every pending flag back at once; raise ``ModelOutputError`` naming the round and point
        of the first non-finite output."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        flags = B.to_host(B.concat([f for f, *_ in pending]))
        if flags.all():
            return
        k = int(np.argmin(flags))
        for f, rnd, where, context in pending:
            if k < len(f):
                err = ModelOutputError.nonfinite(k, f"round {rnd}, {where(k, *context)}")
                raise err if self.decorate is None else self.decorate(err, *context)
            k -= len(f)


def eval_where(e: Eval, time: float) -> str:
    """How an error names the evaluation ``e`` of a CHORDS round at ``time``: its core, step and stage."""
    return f"core {e.core} (step {e.index}, stage {e.stage}, t={time:.6g})"


def ran_off(err: ModelOutputError, evals: Sequence[Eval], init: Sequence[int]) -> ModelOutputError:
    """``err`` for a CHORDS round, with a hint where a faster core's output was not finite: that core
    started with a coarse jump from x_0 over ``init[core]`` steps, which on a chaotic or stiff plain
    ODE can land where the model overflows, a place the sequential trajectory (core 0) never goes."""
    c = evals[err.point].core if err.is_nonfinite and 0 <= err.point < len(evals) else 0
    if c == 0:
        return err
    return err.relabel(err.point, f"{err}; core {c} started at step {init[c]} with a coarse jump from x_0 and "
                            "may have run off to where the model overflows (a plain ODE with far starts): the "
                            "cascade sampler (cc.parallel) or an init with closer starts avoids it")


def evaluate_round(executor: Executor, model: Model, xs: Sequence[Any], ts: Sequence[float], round_number: int,
                   where: Callable[..., str], *context: Any, deferred: DeferredCheck | None = None) -> list[Any]:
    """The model outputs at the round's points, from ``executor``.

    A ``ModelOutputError`` is re-raised naming the round and ``where(point, *context)`` (the core,
    step and stage of the point in the method's terms); ``where`` is only called then, so a method
    passes the round's data as ``context`` instead of building a closure every round. Where the
    model defers its finiteness check, the flags go to ``deferred`` (the caller verifies them
    later), or without one are checked here; ``deferred.decorate`` applies to an error raised at once
    as to a deferred one.
    """
    try:
        outs = executor(model, xs, ts)
    except ModelOutputError as err:
        named = err.relabel(err.point, f"round {round_number}, {where(err.point, *context)}: {err}")
        raise (named if deferred is None or deferred.decorate is None else deferred.decorate(named, *context)) from None
    if outs and model.deferred_check(outs[0]):
        check = DeferredCheck() if deferred is None else deferred
        check.add(outs, round_number, where, context)
        if deferred is None:
            check.verify()
    return outs


class CoreRecords:
    """The mutable per-core records of one CHORDS run, updated round by round as the plan says.

    ``states[c]``: the core's solver ``State``; ``anchor[c]``: (index b, point, quantity) of its
    anchor; ``slow[c]``: the slower core's (point, quantity) at b once evaluated; ``qs[c]``: the
    stage quantities of the step in progress; ``coarse``: the coarse hit. With ``widths`` (for an
    executor that stacks a round's points into one call: ``Plan.widths_from``) large rounds' points
    lie in round buffers (``_backend.RoundBuffers``).
    """

    def __init__(self, sol: Solver, x: Any, init: Sequence[int], history: str, errors: bool = False,
                 widths: Sequence[int] | None = None):
        K = len(init)
        self.sol, self.init, self.history = sol, init, history
        self.local = LocalError(sol) if errors else None
        self.recent: list = [[] for _ in range(K)]  # per core: the latest (index, q) of stage 0, newest first
        self.errors: set[int] = set()  # grid indices j with a local error estimate e_j (first core to reach it)
        self.error_sum: Any = None  # the sum of those e_j
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
        return self.buffers.take(rd.number, n, self.widths[rd.number - 1])

    def points(self, rd: Round) -> list:
        """The point each evaluation of round ``rd`` is at (stage 0: the state; later stages: the
        solver's): a ``Stacked`` list of the round buffer's rows where the round has one (points not
        yet there are copied in)."""
        st, sol, qs = self.states, self.sol, self.qs
        pts = [st[c].x if k == 0 else sol.stage_point(st[c], qs[c], i, i + 1, k)[0]
               for c, i, k, _, _, _, _, _, _ in rd.rows]  # plan.Eval's fields in order
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
                if local is not None:
                    self._observe(c, i, q)
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
                    new = move(new, xn, history, qsl - qa if shift and new.hist else None)
                    anchor[c], slow[c] = (i + 1, xn, None), None
                states[c] = new
                if hit:
                    hits.append((c, new.x))
                    states[c] = anchor[c] = slow[c] = None  # a finished core's records are freed
        if len(hits) > 1:
            hits.sort(key=lambda h: -h[0])
        return hits

    def _observe(self, c: int, i: int, q: Any) -> None:
        """Record core c's quantity at index i; estimate e_i once p + 1 consecutive ones exist."""
        rec = self.recent[c]
        if rec and rec[0][0] != i - 1:
            rec.clear()  # not consecutive (cannot happen with one evaluation per step)
        rec.insert(0, (i, q))
        assert self.local is not None
        del rec[self.local.needs:]
        if len(rec) == self.local.needs and i not in self.errors:
            self.errors.add(i)
            e = self.local.at(i, [v for _, v in rec])
            self.error_sum = e if self.error_sum is None else B.add_into(self.error_sum, e)

    def error_state(self) -> tuple[Any, int, int] | None:
        """(summed local error estimates, how many steps have one, steps): ``Outputs.error_state``;
        ``None`` without estimates. The sum is updated in place as the run goes on."""
        if self.local is None:
            return None
        return self.error_sum, len(self.errors), self.sol.steps


def run_plan(model: Model, x: Any, sol: Solver, plan: Plan, rule: StopRule, executor: Executor, history: str,
             progress: bool = False) -> Result:
    """Run ``plan`` from ``x`` until ``rule`` accepts an output or its static limit is reached.

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
    records = CoreRecords(sol, x, plan.init, history, errors=wants_error, widths=plan.widths_from if stack else None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=limit, desc=f"chords {sol.name} x{plan.cores}", unit="round")
    hits: list[Hit] = []
    outputs: list = []
    starts: list[int] = []  # where each output's core started (Outputs.starts)
    result, stopped_by, nfe, t = None, "", 0, sol.t

    def hint(err: ModelOutputError, evs: tuple) -> ModelOutputError:
        return ran_off(err, evs, plan.init)

    deferred = DeferredCheck(hint)  # its hint applies to eager errors too (``evaluate_round``)

    def where(p: int, evs: tuple) -> str:
        e = evs[p]
        return eval_where(e, t[e.time_index])

    rounds = plan.rounds[:limit]
    try:
        for n, rd in enumerate(rounds, 1):
            xs = records.points(rd)
            outs = evaluate_round(executor, model, xs, [t[i] for i in rd.time_indices], rd.number, where, rd.evals,
                                  deferred=deferred)
            nfe += len(xs)
            finished = records.apply(rd, xs, outs, rounds[n] if n < len(rounds) else None)
            del xs, outs  # the round's points and outputs are not kept past it (memory: K states each)
            for c, xh in finished:  # cores finishing this round, fastest first
                deferred.verify()  # before anyone looks at an output
                hits.append(Hit(c, rd.number, nfe, xh))
                outputs.append(xh)
                starts.append(plan.init[c])
                if result is None and rule.accept(Outputs(outputs, error_state=records.error_state(), starts=starts),
                                                  records.coarse):
                    result, stopped_by = hits[-1], rule.describe(len(hits), c, True)
            if bar is not None:
                bar.update(1)
            if result is not None:
                break
    finally:
        if bar is not None:
            bar.close()
    if result is None:
        result = hits[-1]
        stopped_by = rule.describe(len(hits), result.core, False)  # core 0: the sequential solution
    return plan_result(plan, result, hits, records.coarse, stopped_by)


def plan_result(plan: Plan, output: Hit, hits: Sequence[Hit], coarse: Any, stopped_by: str) -> Result:
    """The ``Result`` of a CHORDS run returning ``output``: rounds, NFE, width and trace from ``plan``;
    ``hits`` are kept up to ``output``'s round."""
    R = output.round
    return Result(x=output.x, rounds=R, nfe=plan.nfe(R), hits=tuple(h for h in hits if h.round <= R), coarse=coarse,
                  stopped_by=stopped_by, method="chords", sequential_rounds=plan.sequential_rounds,
                  width=plan.width(R), trace=plan.rounds[:R], plan=plan)
