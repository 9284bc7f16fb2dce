"""Framework time and memory per CHORDS round with a near-free model, against the official code's bookkeeping.

8 cores, T = 50, init 0-2-4-8-16-24-32-40, Euler on a rectified-flow model whose evaluation is one
array op (``x * 0.5``), float32 states of 64 to 1,048,576 elements, every core run (50 rounds), on
numpy arrays and on torch tensors, the torch loops under ``torch.no_grad()`` as samplers run (a
diffusers pipeline's call is), where ``chords_core`` computes on numpy's views of CPU tensors
(``chords_core.host``), and again with gradients on (``torch, grad``), where it keeps to torch
operations (the official-style loop is timed under the same setting). Loops over the same plan,
measured side by side in one process, interleaved repeat by repeat, in a fresh random order every
repeat (no loop always first or always after the same one):

- ``chords``      ``chords_core.chords(..., stop=None)`` with the default ``BatchedExecutor``
                  (on the host, stacked calls of at most 4 MiB, ``HOST_BATCH_BYTES``: one call a
                  round up to 65,536 float32 elements here, one call a point at 1,048,576; output
                  shape / finiteness check on);
- ``one call``    the same with ``BatchedExecutor(max_batch_bytes=None)`` (one stacked call a round
                  at every size);
- ``chords serial`` the same with ``SerialExecutor`` (one call per point, as the official loop);
- ``official``    ``OfficialStyle``: a loop that keeps the official implementation's bookkeeping
                  (per-element torch "ready" tensors, per-core lists, three solver calls per
                  rectification), written anew here, calling the model once per point;
- ``bare``        the array work a round cannot avoid, with no bookkeeping at all;
- ``cascade``     ``chords_core.cascade`` on 8 lanes at its default tolerance (its rounds vary; time
                  per round), numpy only, at sizes 64 and 65,536 only (``CASCADE_SIZES``; "-"
                  elsewhere): issue #9's target is within 1.5x of chords;
- ``cascade bare`` the array work the cascade's sweeps cannot avoid (``run_cascade_bare``: its rounds'
                  evaluations, steps, differences and sums of squares up to acceptance, seeds), on
                  the sweeps of its run, with no bookkeeping: the floor of its time per round.

Printed: microseconds per round, median [min-max] over interleaved repeats, and the ratios taken
repeat by repeat. ``--memory``: peak traced memory (``tracemalloc``; numpy states, whose buffers it
sees) of one run of each executor's ``chords`` and of ``official`` at the largest size, and the memory
held at rounds 10, 20, 30, 40 and 50 (as cores finish: the 8 cores' last rounds are 17-50), in whole
MiB (a size of 262,144 elements and more, 1 MiB a state, shows it). Targets (issue #11): chords at
most 0.5x the official time per round at size 64 and at most 1.0x at every size, numpy and torch
alike; peak memory at most the official's, and falling as cores finish.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tracemalloc

import numpy as np
import torch
from timing import interleaved, spread

import chords_core as cc
from chords_core.demo import int_at_least

torch.set_num_threads(1)  # one thread, as numpy: the machine is shared and the loops are compared per thread

INIT = (0, 2, 4, 8, 16, 24, 32, 40)
#: the sizes with the cascade columns (issue #9's targets are at these; elsewhere they print "-")
CASCADE_SIZES = (64, 65_536)
T = 50


def near_free(x, t):
    return x * np.float32(0.5)


def near_free_torch(x, t):
    return x * 0.5


def run_chords(model, x, grid, executor=None) -> tuple[int, int]:
    r = cc.chords(model, x, grid, "euler", init=INIT, stop=None, executor=executor)
    return r.rounds, r.nfe


def run_cascade(model, x, grid) -> tuple[int, int]:
    """The cascade sampler on 8 lanes at its default tolerance: rounds vary, time is per round."""
    r = cc.cascade(model, x, grid, "euler", cores=len(INIT))
    return r.rounds, r.nfe


def run_cascade_bare(x, grid, sweeps, window: int = 8) -> tuple[int, int]:
    """The cascade sampler's unavoidable array work on the sweeps of its run (``sweeps``: its log,
    (round, start, end, accepted_to)), with no bookkeeping: each round's points in one call, per point
    an Euler step, and up to the first point over tolerance a difference and its sum of squares; then
    the seeds of the new points, each a three-term combination of the window's new end and the data
    predictions of its last two evaluated points (two terms each). Its (rounds, NFE)."""
    steps = len(grid) - 1
    t = [float(v) for v in grid]
    xs = [x] * (window + 1)
    nfe = 0
    rows = x.shape[0]
    buf, scratch = np.empty((window * rows, *x.shape[1:]), x.dtype), np.empty_like(x)  # reused, as the engine's
    for _, b, e, nb in sweeps:
        pts = xs[b:e]
        out = near_free(np.concatenate(pts, axis=0, out=buf[:len(pts) * rows]), None)
        nfe += len(pts)
        new = xs[b]
        for k, m in enumerate(range(b, e)):
            new = (t[m + 1] - t[m]) * out[k * rows:(k + 1) * rows] + new
            if m + 1 <= nb:  # scored: up to the first point over tolerance
                d = np.subtract(new, xs[m + 1], out=scratch)
                np.vdot(d, d)
            xs[m + 1] = new
        end = min(nb + window, steps)
        if end > e:
            last, prev = pts[-1], pts[-2] if len(pts) > 1 else pts[-1]
            d1 = last - t[e - 1] * out[(len(pts) - 1) * rows:]  # the data predictions (flow: x - t v)
            d2 = prev - t[e - 2] * out[(len(pts) - 2) * rows:(len(pts) - 1) * rows] if len(pts) > 1 else d1
            del xs[e + 1:]
            xs.extend(0.9 * xs[e] + 0.05 * d1 + 0.05 * d2 for _ in range(e + 1, end + 1))
        xs[b:nb] = [None] * (nb - b)  # accepted: freed, as the engine frees them
    return sweeps[-1][0], nfe


def run_bare(plan, x, sig):
    """The unavoidable array work of the plan's rounds."""
    xs = [None] * plan.cores
    xs[0] = x
    for rd in plan.rounds:
        pts = [xs[e.core] if xs[e.core] is not None else x for e in rd.evals]
        out = near_free(np.concatenate(pts, axis=0), None)
        rows = x.shape[0]
        for k, e in enumerate(rd.evals):
            v = out[k * rows:(k + 1) * rows]
            h = float(sig[e.index + 1] - sig[e.index])
            new = pts[k] + h * v
            if e.rectify_from is not None:  # same op count as a rectification
                new = new + (pts[k] - x) + h * (v - v)
            xs[e.core] = new
            if e.spawn and e.core + 1 < plan.cores:
                xs[e.core + 1] = pts[k] + h * v


class OfficialStyle:
    """A round loop that keeps the official CHORDS implementation's bookkeeping, written anew here.

    What the official ``CHORDS`` class does per round and is reproduced: a (T+1) x (T+1) torch tensor
    of "score ready" round numbers written element by element, and one read and compared per point
    (its allocation's ``assert``); per-core ``status`` / ``begin`` / ``finish`` lists of
    [t, k, x, score] entries; the compute queue ``to_compute`` rebuilt every round; three solver calls
    per rectification (F, G of the anchor, G of the slower core) and one per fine step, with the
    generic Euler ``solver(x, score, t, s) = x + (sig_s - sig_t) score``; finished cores filtered out
    of the lists by comprehension, and a line printed per hit (into a buffer here). The model is
    called once per point, as the official driver loop does (``per_point_call``).
    """

    def __init__(self, x, sig, init=INIT, steps=T):
        self.sig, self.init, self.T, self.K = sig, list(init), steps, len(init)
        self.scores_ready = torch.ones(steps + 1, steps + 1) * -1
        self.x_ready = torch.ones(steps + 1, steps + 1) * -1
        self.x_ready[0, 0] = 0
        self.status, self.begin, self.finish = [[0, 0, x]], [[0, 0, x, None]], [[None, None, None, None]]
        self.to_compute, self.hits, self.counter = [0], [], 0
        self.log = io.StringIO()

    def solver(self, x, score, t, s):
        return x + score * float(self.sig[s] - self.sig[t])

    def run(self, model_call) -> int:
        """Run to the last core; returns the number of rounds."""
        with contextlib.redirect_stdout(self.log):
            while True:
                alloc = []
                for c in self.to_compute[: self.K]:
                    t, k, x = self.status[c]
                    assert self.scores_ready[t, k] == -1
                    alloc.append((t, k, x))
                if not alloc:
                    break
                outs = model_call([x for _, _, x in alloc])
                for n, ((t, k, _), score) in enumerate(zip(alloc, outs)):
                    c = self.to_compute[n]
                    self.finish[c] = (t, k, self.status[c][2], score)
                    if (self.begin[c][0], self.begin[c][1]) == (t, k):
                        self.begin[c][3] = score
                    self.scores_ready[t, k] = self.counter + 1
                self.counter += 1
                self._update_states(len(alloc))
                done = [c for c, (t, _, _) in enumerate(self.status) if t == self.T]
                for c in done:
                    print("core_hit_idx", done)
                    self.hits.append((self.status[c][1], self.counter, self.status[c][2]))
                self.status = [v for c, v in enumerate(self.status) if c not in done]
                self.begin = [v for c, v in enumerate(self.begin) if c not in done]
                self.finish = [v for c, v in enumerate(self.finish) if c not in done]
                self.to_compute = [c for c in self.to_compute[len(alloc):] if c not in done]
                if not self.status:
                    break
        return self.counter

    def _update_states(self, cnt: int) -> None:
        for c in self.to_compute[:cnt]:
            new = None
            if c == len(self.status) - 1:
                tp, kp, xp, sp = self.finish[c]
                if kp == 0:
                    j = self.init.index(tp)
                    if j + 1 < self.K:
                        tn = self.init[j + 1]
                        xn = self.solver(xp, sp, tp, tn)
                        new = c + 1
                        self.status.append([tn, 0, xn])
                        self.begin.append([tn, 0, xn, None])
                        self.finish.append([None, None, None, None])
                    else:
                        self.hits.append((0, self.counter, self.solver(xp, sp, tp, self.T)))
            tf, kf, xf, sf = self.finish[c]
            F = self.solver(xf, sf, tf, tf + 1)
            if c > 0 and self.begin[c][0] is not None and self.begin[c][0] == self.finish[c - 1][0]:
                G = self.solver(self.begin[c][2], self.begin[c][3], self.begin[c][0], tf + 1)
                tg, _, xg, sg = self.finish[c - 1]
                x = F - G + self.solver(xg, sg, tg, tf + 1)
                self.begin[c] = [self.status[c][0] + 1, self.status[c][1] + 1, x, None]
                self.status[c] = [self.status[c][0] + 1, self.status[c][1] + 1, x]
            else:
                self.status[c] = (self.status[c][0] + 1, self.status[c][1] + 1, F)
            self.to_compute.append(c)
            if new is not None:
                self.to_compute.append(new)


def per_point_call(x):
    """The near-free model called once per point of a round, as the official driver loop does."""
    fn = near_free_torch if isinstance(x, torch.Tensor) else near_free
    return lambda pts: [fn(p, None) for p in pts]


def run_official_style(x, grid) -> int:
    return OfficialStyle(x, grid).run(per_point_call(x))


def per_round(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Time per round and per model evaluation of each loop in every repeat (a loop returns (rounds,
    NFE), or None for T rounds); the loops are interleaved within each repeat so that the machine's
    load affects all alike, and ratios are taken repeat by repeat."""
    secs, results = interleaved(fns, repeats, shuffle=True)
    counts = {k: [r or (T, None) for r in v] for k, v in results.items()}
    rnd = {k: secs[k] / np.array([c[0] for c in counts[k]]) for k in fns}
    ev = {k: secs[k] / np.array([c[1] or np.nan for c in counts[k]], dtype=np.float64) for k in fns}
    return rnd, ev


def measure(size: int, repeats: int, lib: str, cascade: bool) -> tuple[dict, dict]:
    schedule = cc.RectifiedFlow()
    grid = cc.time_grid(schedule, T)
    x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
    fn = near_free
    if lib != "numpy":
        x, fn = torch.from_numpy(x), near_free_torch
    model = cc.DiffusionModel(fn, schedule, "flow")
    plan = cc.make_plan(T, INIT)
    off = OfficialStyle(x, grid)
    assert off.run(per_point_call(x)) == T and sorted(h[1] for h in off.hits[1:]) == sorted(plan.finish_round)
    ours = cc.chords(model, x, grid, "euler", init=INIT, stop=None)
    outputs = sorted((h for h in off.hits if h[0] > 0), key=lambda h: h[1])  # k = 0: the coarse jump
    assert [h[1] for h in outputs] == [h.round for h in ours.hits]
    for h, o in zip(outputs, ours.hits):  # the same outputs, rounding aside
        assert float(abs(h[2] - o.x).max()) <= 1e-5 * float(abs(o.x).max())
    fns = {"chords": lambda: run_chords(model, x, grid),
           "one call": lambda: run_chords(model, x, grid, cc.BatchedExecutor(max_batch_bytes=None)),
           "chords serial": lambda: run_chords(model, x, grid, cc.SerialExecutor()),
           "official": lambda: (run_official_style(x, grid), None)}
    if lib == "numpy":
        fns["bare"] = lambda: run_bare(plan, x, grid)
        if cascade:
            fns["cascade"] = lambda: run_cascade(model, x, grid)
            sweeps = cc.cascade(model, x, grid, "euler", cores=len(INIT)).log
            fns["cascade bare"] = lambda: run_cascade_bare(x, grid, sweeps, len(INIT))
    if lib == "torch, grad":  # (main runs with gradients off)
        fns = {k: _with_grad(f) for k, f in fns.items()}
    return per_round(fns, repeats)


def _with_grad(fn):
    def run():
        with torch.enable_grad():
            return fn()
    return run


class _Recorder(cc.Executor):
    """An executor that records the traced memory in use at each round, then runs ``inner`` (and
    stacks the points as ``inner`` does: the engine then hands it the same points)."""

    values_checked = True  # (``inner``'s outputs, from model.evaluate)

    def __init__(self, inner: cc.Executor) -> None:
        self.trace: list[int] = []
        self.inner = inner
        self.stacks_points = inner.stacks_points

    def __call__(self, model, xs, ts):
        self.trace.append(tracemalloc.get_traced_memory()[0])
        return self.inner(model, xs, ts)


def memory(size: int) -> dict:
    """Peak and per-round traced memory (bytes) of one run of chords and of the official-style loop."""
    schedule = cc.RectifiedFlow()
    grid = cc.time_grid(schedule, T)
    x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
    model = cc.DiffusionModel(near_free, schedule, "flow")
    out = {}
    executors = {"chords": cc.BatchedExecutor, "one call": lambda: cc.BatchedExecutor(max_batch_bytes=None),
                 "chords serial": cc.SerialExecutor}
    for name in (*executors, "official"):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        if name in executors:
            rec = _Recorder(executors[name]())
            run_chords(model, x, grid, rec)
            trace = rec.trace
        else:
            trace = []
            call = per_point_call(x)

            def recording(pts, call=call, trace=trace):
                trace.append(tracemalloc.get_traced_memory()[0])
                return call(pts)

            OfficialStyle(x, grid).run(recording)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = (peak - base, [v - base for v in trace])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int_at_least(1), default=15,
                    help="repeats at size 64 (fewer at larger sizes, but never below min(3, --repeats))")
    ap.add_argument("--sizes", type=int_at_least(1), nargs="+", default=[64, 4096, 65_536, 1_048_576],
                    help="state sizes (the cascade columns at 64 and 65,536 only, numpy only; '-' elsewhere)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory at the largest size")
    args = ap.parse_args(argv)
    with torch.no_grad():  # as samplers run; the ``torch, grad`` rows turn gradients on (``_with_grad``)
        report(args)


def report(args: argparse.Namespace) -> None:
    """Measure and print the tables ``main`` was asked for."""
    print("Median [min-max] over interleaved repeats; ratios repeat by repeat.")
    print("| state size | arrays | chords us/round | chords, one call a round | chords, serial executor | "
          "official-style us/round | chords / official | one call / official | serial / official | bare us/round | "
          "cascade us/round | cascade / chords per round | cascade / chords per evaluation | "
          "cascade bare / chords per round | cascade / cascade bare |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        reps = min(args.repeats, max(3, args.repeats // max(1, int(np.log2(size) - 5) // 3)))
        for lib in ("numpy", "torch", "torch, grad"):
            m, e = measure(size, reps, lib, cascade=size in CASCADE_SIZES)
            row = (f"| {size} | {lib} | {spread(m['chords'], 1e6)} | {spread(m['one call'], 1e6)} | "
                   f"{spread(m['chords serial'], 1e6)} | {spread(m['official'], 1e6)} | "
                   f"{spread(m['chords'] / m['official'], fmt='.2f')} | "
                   f"{spread(m['one call'] / m['official'], fmt='.2f')} | "
                   f"{spread(m['chords serial'] / m['official'], fmt='.2f')} | ")
            row += f"{spread(m['bare'], 1e6)} | " if "bare" in m else "- | "
            if "cascade" in m:
                row += (f"{spread(m['cascade'], 1e6)} | {spread(m['cascade'] / m['chords'], fmt='.2f')} | "
                        f"{spread(e['cascade'] / e['chords'], fmt='.2f')} | "
                        f"{spread(m['cascade bare'] / m['chords'], fmt='.2f')} | "
                        f"{spread(m['cascade'] / m['cascade bare'], fmt='.2f')} |")
            else:
                row += "- | - | - | - | - |"
            print(row, flush=True)
    if args.memory:
        size = max(args.sizes)
        mem = memory(size)
        print(f"\nTraced memory, numpy float32 states of {size} elements ({size * 4 / 2**20:.0f} MiB each), 8 cores:")
        print("| loop | peak MiB | held at rounds 10 / 20 / 30 / 40 / 50, MiB |")
        print("|---|---|---|")
        for name, (peak, trace) in mem.items():
            held = " / ".join(f"{trace[min(r, len(trace)) - 1] / 2**20:.0f}" for r in (10, 20, 30, 40, 50))
            print(f"| {name} | {peak / 2**20:.0f} | {held} |")


if __name__ == "__main__":
    main()
