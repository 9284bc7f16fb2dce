"""Fault scenarios for ``DistributedExecutor`` run by ``tests/test_torch_distributed.py`` on gloo ranks.

    python tests/dist_scenarios.py SCENARIO      (RANK / WORLD_SIZE / MASTER_* set, as by torchrun)

- ``interrupt``: rank 1 evaluates slowly; rank 0 is interrupted (SIGINT) 1 s into a run, then runs
  again on the same executor, which must give the serial executor's outputs bit for bit (the
  interrupted round was completed before the ``KeyboardInterrupt``: never a stale answer).
- ``interrupt_twice``: rank 1 takes 4 s a call; rank 0 is interrupted at 1 s and again at 1.5 s: the
  second Ctrl-C ends the call at once, without the round's answers, and the executor is closed; a
  new executor on the same group is refused.
- ``interrupt_alarm``: the same, with one ``KeyboardInterrupt`` raised by a SIGALRM handler at 1 s (a
  signal-based timeout; another handler's exception is not held back as a first Ctrl-C is): the same
  outcome (it aborted rank 0 in gloo, SIGABRT: the drain's receive took the abandoned one's message).
- ``interrupt_between``: the same, with the ``KeyboardInterrupt`` raised just after a rank's status
  was received, before its outputs (where a handler runs at the next bytecode): the same outcome (a
  review: the drain asked that rank for a status again while it sent its outputs, SIGABRT).
- ``hung``: the last rank's model hangs at its 2nd call; rank 0 gets ``WorkerTimeout`` after the round
  timeout, reports it and exits 0; rank 2 must end itself (``HUNG_EXIT``) so the job ends.
- ``done``: a plain ODE whose far CHORDS starts run off (``RunsOff``), 4 cores on two serving ranks (two
  points each) and then with rank 0 evaluating too (``local=``): a retirement takes the round's outputs
  before the bad point (``ModelOutputError.done``, a rank's own earlier points included), so the rounds
  and outputs are the serial executor's (a round evaluated again per retirement before).
- ``pickle``: rank 0 sends a model shell whose pickle would run ``os.system``; the workers refuse it
  (no file is created) and rank 0 gets a ``WorkerError`` that says so.
- ``misc`` (two ranks; rank 1 serves three executors in turn, slowly): a second executor open on the
  group supersedes the first, which then raises ``ExecutorClosed``; with ``local=`` a non-finite output of rank 0's own share retires the faster
  cores as a serving rank's does; an ignored SIGINT (``SIG_IGN``, as under nohup) stays ignored; rank
  0's ``torch.autocast`` applies on rank 1; a fourth executor, once rank 1 has left ``serve`` for good,
  reports its lost rank saying that the earlier executor's close ended ``serve``.
- ``idle`` (three ranks, a process group timeout of 3 s; rank 1 evaluates slowly): a call on one core
  (rank 2 without points for longer than the group's timeout), rank 0 idle for longer than it, a call
  with ``round_timeout`` changed (the ranks get it: the shell is sent again), then a second executor
  left open at exit (rank 0 neither closes it nor destroys the group: the README's pattern): every
  rank exits 0 and the outputs are the serial executor's.
- ``serving`` (two ranks): arguments refused by ``DistributedExecutor(...)`` leave the open executor
  open; rank 0's own share (``local=``) runs past ``round_timeout`` on 3 MiB states while rank 1
  answers at once (a healthy rank was blamed, the group cut); a ``KeyboardInterrupt`` in rank 1's
  model reaches rank 0 as a ``WorkerError`` before rank 1 leaves ``serve``; a SIGINT to rank 1, idle in
  ``serve``, interrupts it at once (not when the driver next sends). Rank 1 prints a JSON line too.
- ``idle_timeout`` (two ranks): rank 1 serves with ``idle_timeout=1``, rank 0 sends nothing for 3 s: rank 1
  gets ``WorkerTimeout`` after about 1 s and prints it as its JSON line, with the warnings ``serve`` gave
  (its network holds a batch-norm layer left in training mode).

Rank 0 prints one JSON line.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist
from helpers import conv_net  # (this folder: sys.path[0] for a script)

import chords_core as cc
from chords_torch import DistributedExecutor, ExecutorClosed, WorkerError, WorkerTimeout, serve
from chords_torch import distributed as chords_dist
from chords_torch.testing import Faulty, RunsOff, TorchGMM, gmm_problem


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.path}",))


_NET = TorchGMM()


def _slow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    time.sleep(0.3)
    return _NET(x, t)


_W = torch.linspace(-1.0, 1.0, 16).reshape(4, 4)


def _amp_sensitive(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The GMM network plus a small linear term, which ``torch.autocast`` computes in bfloat16 (float32
    states; float64 ones are not autocast)."""
    return _NET(x, t) + 1e-2 * torch.nn.functional.linear(x, _W.to(x.dtype)).to(x.dtype)


#: the networks of the "layout" scenario (``helpers.conv_net``: output order, channels)
LAYOUT_NETS = (("as given", 4), ("C", 4), ("channels_last", 4), ("channels_last", 1))


def _slow_amp(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    time.sleep(0.3)
    return _amp_sensitive(x, t)


def _very_slow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    time.sleep(4.0)
    return _NET(x, t)


class _SlowOnce:
    """The GMM network on 4-d states (the mixture's 4 features on the channel axis), which sleeps
    ``pause`` seconds at its ``at``-th call and raises ``KeyboardInterrupt`` at its ``interrupt_at``-th."""

    def __init__(self, at: int = 0, pause: float = 0.0, interrupt_at: int = 0) -> None:
        self.at, self.pause, self.interrupt_at, self.calls = at, pause, interrupt_at, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            time.sleep(self.pause)
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return 0.5 * x * (1 - t.view(-1, *([1] * (x.dim() - 1)))).to(x.dtype)


def _serving(rank: int) -> int:
    """The ``serving`` scenario (two ranks; rank 1 serves three times, the second time with a network
    that raises ``KeyboardInterrupt`` at its 2nd call, and is then sent a SIGINT while idle)."""
    pids: list = [None, None]
    dist.all_gather_object(pids, os.getpid())
    model = cc.DiffusionModel(_SlowOnce(), cc.RectifiedFlow(), "x0")
    if rank != 0:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (an interactive process's Ctrl-C)
        serve(_SlowOnce())
        try:
            serve(_SlowOnce(interrupt_at=2))
        except KeyboardInterrupt:
            pass
        t0 = time.monotonic()
        try:
            serve(_SlowOnce())
            got = "returned"
        except KeyboardInterrupt:
            got = "KeyboardInterrupt"
        print(json.dumps({"idle_interrupt": got, "seconds": time.monotonic() - t0}), flush=True)
        return 0
    report: dict = {}
    x = torch.randn(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))  # (3 MiB a state)
    grid = cc.time_grid(model.schedule, 6)
    serial = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=cc.SerialExecutor())
    # rank 0's own share runs past round_timeout once (its 4th call), rank 1 answers at once
    with DistributedExecutor(round_timeout=1.0, local=_SlowOnce(at=4, pause=1.5)) as ex:
        refused = []
        for bad in ({"round_timeout": -1.0}, {"round_timeout": float("nan")}, {"local": "oops"}):
            try:
                DistributedExecutor(**bad)
            except (TypeError, ValueError) as e:
                refused.append(type(e).__name__)
        report["refused"] = refused
        res = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=ex)
        report["slow_local_equal"] = all(torch.equal(a.x, b.x) for a, b in zip(res.hits, serial.hits))
    small = x[:1, :1, :4, :4].contiguous()
    ex = DistributedExecutor(round_timeout=30.0)
    try:
        cc.chords(model, small, grid, "euler", cores=2, stop=None, executor=ex)
        report["model_interrupt"] = "ran"
    except WorkerError as e:
        report["model_interrupt"] = f"{type(e).__name__}: {e}".splitlines()[0]
    ex = DistributedExecutor(round_timeout=30.0)  # (rank 1 serves again; the first executor is superseded)
    res = cc.chords(model, small, grid, "euler", cores=2, stop=None, executor=ex)
    ref = cc.chords(model, small, grid, "euler", cores=2, stop=None, executor=cc.SerialExecutor())
    report["after_equal"] = torch.equal(res.x, ref.x)
    os.kill(pids[1], signal.SIGINT)  # Ctrl-C on the serving rank, idle between calls
    time.sleep(5.0)  # rank 0 busy elsewhere meanwhile
    ex.close()
    print(json.dumps(report), flush=True)
    return 0


def main(scenario: str, path: str) -> int:
    import datetime

    dist.init_process_group("gloo", **({"timeout": datetime.timedelta(seconds=3)} if scenario == "idle" else {}))
    rank = dist.get_rank()
    try:
        if rank != 0 and scenario == "idle_timeout":
            t0 = time.monotonic()
            net = TorchGMM()
            net.norm = torch.nn.BatchNorm1d(4)  # (left in training mode: serve warns on this rank)
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                try:
                    serve(net, idle_timeout=1.0)
                    got = "returned"
                except WorkerTimeout as e:
                    got = f"WorkerTimeout: {e}"
            print(json.dumps({"error": got, "seconds": time.monotonic() - t0,
                              "warnings": [str(w.message) for w in said]}), flush=True)
            return 0
        if scenario == "idle_timeout":
            time.sleep(3.0)
            return 0
        if scenario == "serving":
            return _serving(rank)
        if rank != 0:
            net = TorchGMM()
            if scenario in ("interrupt", "idle") and rank == 1:
                net = _slow  # type: ignore[assignment]
            if scenario in ("interrupt_twice", "interrupt_alarm") and rank == 1:
                net = _very_slow  # type: ignore[assignment]
            if scenario == "done":
                net = RunsOff()  # type: ignore[assignment]
            if scenario == "hung" and rank == dist.get_world_size() - 1:
                net = Faulty(lambda: TorchGMM(), "hang", after=2)()  # type: ignore[assignment]
            for k in range({"misc": 3, "close_race": 4, "layout": len(LAYOUT_NETS), "idle": 2}.get(scenario, 1)):
                if scenario == "misc":  # slow only for the last executor's run, which a SIGINT must meet mid-round
                    net = _slow_amp if k == 2 else _amp_sensitive  # type: ignore[assignment]
                if scenario == "layout":
                    net = conv_net(*LAYOUT_NETS[k])  # type: ignore[assignment]
                serve(net)
            return 0
        model, _ = gmm_problem()
        if scenario == "misc":
            model = cc.DiffusionModel(_amp_sensitive, model.schedule, model.prediction)
        x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        grid = cc.time_grid(model.schedule, 12)
        report: dict = {"scenario": scenario}
        ex = DistributedExecutor(round_timeout=2.0 if scenario == "hung" else 30.0)
        if scenario == "interrupt":
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
                report["first"] = "finished"
            except KeyboardInterrupt:
                report["first"] = "KeyboardInterrupt"
            try:
                res = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
                ref = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=cc.SerialExecutor())
                same = len(res.hits) == len(ref.hits) and all(torch.equal(a.x, b.x) for a, b in zip(res.hits, ref.hits))
                report["second"] = "equal" if same else "DIFFERENT"
            except ExecutorClosed as e:
                report["second"] = f"ExecutorClosed: {e}"
        elif scenario in ("interrupt_twice", "interrupt_alarm", "interrupt_between"):
            if scenario == "interrupt_between":
                recv, statuses = ex._recv, [0]

                def interrupted(tensor: Any, rank: int, what: str, *args: Any) -> Any:
                    got = recv(tensor, rank, what, *args)
                    if what == "status":
                        statuses[0] += 1
                        if statuses[0] == 3:  # (round 2's first status: its outputs not yet received)
                            raise KeyboardInterrupt
                    return got

                ex._recv = interrupted  # type: ignore[method-assign]
            elif scenario == "interrupt_alarm":
                def on_alarm(signum: int, frame: Any) -> None:
                    raise KeyboardInterrupt

                signal.signal(signal.SIGALRM, on_alarm)
                signal.setitimer(signal.ITIMER_REAL, 1.0)
            else:
                for delay in (1.0, 1.5):
                    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
            t0 = time.monotonic()
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
                report["first"] = "finished"
            except KeyboardInterrupt:
                report["first"] = "KeyboardInterrupt"
            report["seconds"] = time.monotonic() - t0
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
                report["second"] = "ran"
            except ExecutorClosed as e:
                report["second"] = "ExecutorClosed"
                report["why"] = str(e)
            try:  # the workers may still send the cut round's answers: no new executor on this group
                DistributedExecutor(round_timeout=30.0)
                report["third"] = "made"
            except RuntimeError as e:
                report["third"] = str(e)
        elif scenario == "hung":
            t0 = time.monotonic()
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
            except WorkerTimeout as e:
                report["error"] = f"WorkerTimeout: {e}".splitlines()[0]
            report["seconds"] = time.monotonic() - t0
        elif scenario == "misc":
            try:  # a state of more than 10 axes on the first call: refused, the executor usable (it was closed
                ex(model, [torch.zeros((1,) * 11, dtype=torch.float64)], [0.5])  # and the ranks told to stop)
            except ValueError as e:
                report["many_axes"] = str(e)
            res = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
            ref = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=cc.SerialExecutor())
            report["after_many_axes"] = all(torch.equal(a.x, b.x) for a, b in zip(res.hits, ref.hits))
            small, x32 = cc.time_grid(model.schedule, 4), x.float()  # rank 0's autocast reaches rank 1
            with torch.autocast("cpu", dtype=torch.bfloat16):
                res = cc.chords(model, x32, small, "euler", cores=2, stop=None, executor=ex)
                ref = cc.chords(model, x32, small, "euler", cores=2, stop=None, executor=cc.SerialExecutor())
            plain = cc.chords(model, x32, small, "euler", cores=2, stop=None, executor=cc.SerialExecutor())
            report["autocast"] = torch.equal(res.x, ref.x) and not torch.equal(ref.x, plain.x)
            newer = DistributedExecutor(round_timeout=30.0, batched=True)  # supersedes ex (no STOP sent)
            unchecked = cc.DiffusionModel(model.fn, model.schedule, model.prediction, check_outputs=False)
            res = cc.chords(unchecked, x, grid, "euler", cores=4, stop=None, executor=newer)
            ref = cc.chords(unchecked, x, grid, "euler", cores=4, stop=None, executor=cc.SerialExecutor())
            report["newer_equal"] = all(torch.equal(a.x, b.x) for a, b in zip(res.hits, ref.hits))
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
                report["second_open"] = "ran"
            except ExecutorClosed as e:
                report["second_open"] = str(e)
            ex.close()  # superseded: no STOP (the serving ranks go on with the newer executor)
            newer.close()
            calls = {"n": 0}

            def nan_4th(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # rank 0's share: cores 0 and 2
                calls["n"] += 1
                out = _NET(x, t)
                return out * float("nan") if calls["n"] == 4 else out

            ex = DistributedExecutor(round_timeout=30.0, local=nan_4th)
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                res = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
            report["local_nan"] = [str(w.message) for w in seen if "retired" in str(w.message)]
            report["local_nan_finite"] = bool(torch.isfinite(res.x).all())
            ex.close()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            ex = DistributedExecutor(round_timeout=30.0)
            for delay in (0.5, 0.55):
                threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
            res = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
            ref = cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=cc.SerialExecutor())
            report["ignored_sigint"] = all(torch.equal(a.x, b.x) for a, b in zip(res.hits, ref.hits))
            ex.close()  # rank 1 leaves its last serve and exits
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=DistributedExecutor(round_timeout=10.0))
                report["after_stop"] = "ran"
            except WorkerError as e:
                report["after_stop"] = f"{type(e).__name__}: {e}"
        elif scenario == "idle":
            sent: list = []  # the round timeout of each model shell sent (header slot 6, ms)

            def record(tensor, rank, timeout, orig=ex._send):
                if tensor.numel() == chords_dist.HEADER and int(tensor[0]) == chords_dist.MODEL:
                    sent.append(int(tensor[6]))
                return orig(tensor, rank, timeout)

            ex._send = record  # type: ignore[method-assign]
            t0 = time.monotonic()
            one = cc.chords(model, x, grid, "euler", cores=1, executor=ex)  # rank 2 without points meanwhile
            report["first_seconds"] = time.monotonic() - t0
            time.sleep(4.0)  # rank 0 idle between calls, past the group's timeout
            ex.round_timeout = 20.0
            two = cc.chords(model, x, grid, "euler", cores=2, stop=None, executor=ex)
            report["timeouts_sent"] = sent
            serial = cc.SerialExecutor()
            report["equal"] = (torch.equal(one.x, cc.chords(model, x, grid, "euler", cores=1, executor=serial).x)
                               and torch.equal(two.x, cc.chords(model, x, grid, "euler", cores=2, stop=None,
                                                                executor=serial).x))
            ex.close()  # the ranks' first serve ends; they serve again for the next executor
            ex = DistributedExecutor(round_timeout=30.0)
            three = cc.chords(model, x, grid, "euler", cores=2, stop=None, executor=ex)
            report["second_executor_equal"] = torch.equal(three.x, two.x)
            print(json.dumps(report), flush=True)
            return 0  # ex left open, the group not destroyed: closed at exit, so the ranks leave serve
        elif scenario == "layout":  # a channels_last state: gloo sends contiguous tensors only (it was refused
            # as "rank 1 (send): connection lost", the group cut); the ranks lay the points out in the state's
            # order again and the outputs come back in the network's own order: the serial executor's bits
            report["layout"] = []
            for k, (out_order, channels) in enumerate(LAYOUT_NETS):  # an executor each (the ranks serve its net)
                if k:
                    ex.close()  # (the ranks go on to their next serve)
                    ex = DistributedExecutor(round_timeout=30.0)
                y = torch.randn(2, channels, 5, 5, generator=torch.Generator().manual_seed(0))
                conv = cc.DiffusionModel(conv_net(out_order, channels), cc.VP.linear(), "eps")
                small = cc.time_grid(conv.schedule, 6)
                # (Heun and DPM++(2M) mix orders within a round where the network's differs from the state's)
                runs = [(dtype, state, solver, method) for dtype in (torch.float32, torch.bfloat16)
                        for state in (y.to(dtype).to(memory_format=torch.channels_last), y.to(dtype))
                        for solver, method in (("euler", "chords"), ("euler", "cascade"), ("heun", "chords"),
                                               ("dpmpp_2m", "cascade"))]
                # a batch of one made from an HWC image: strides (C, 1, W C, C), rebuilt exactly on the ranks
                hwc = torch.randn(5, 5, channels, generator=torch.Generator().manual_seed(1)).permute(2, 0, 1)[None]
                runs += [(torch.float32, hwc, solver, method) for solver, method in (("euler", "chords"),
                                                                                     ("dpmpp_2m", "cascade"))]
                for dtype, state, solver, method in runs:
                    res = cc.parallel(conv, state, small, solver, cores=3, method=method, executor=ex)
                    ref = cc.parallel(conv, state, small, solver, cores=3, method=method, executor=cc.SerialExecutor())
                    report["layout"].append([out_order, channels, str(dtype), state.is_contiguous(), solver, method,
                                             torch.equal(res.x, ref.x), res.x.stride() == ref.x.stride()])
            # (a layout-sensitive network, else the comparison could not fail)
            report["sensitive"] = []
            for channels in (4, 1):
                y = torch.randn(2, channels, 5, 5, generator=torch.Generator().manual_seed(0))
                conv = cc.DiffusionModel(conv_net(channels=channels), cc.VP.linear(), "eps")
                outs = [cc.parallel(conv, s, cc.time_grid(conv.schedule, 6), "euler", cores=3, method="cascade",
                                    executor=cc.SerialExecutor()).x
                        for s in (y.to(memory_format=torch.channels_last), y)]
                report["sensitive"].append(not torch.equal(*outs))
        elif scenario == "done":
            field, y = cc.VectorField(RunsOff(), batched=True), 5.0 * torch.ones(2, 3, dtype=torch.float64)
            plain = torch.linspace(0.0, 1.0, 41).numpy()

            def run(executor: cc.Executor) -> cc.Result:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # (a retirement warns)
                    return cc.chords(field, y, plain, init=(0, 4, 12, 30), stop=None, executor=executor)

            ref = run(cc.SerialExecutor())
            report["serial"] = [ref.rounds, ref.nfe]
            for name in ("ranks", "local"):  # the second executor supersedes the first (one serve on the ranks)
                if name == "local":
                    ex = DistributedExecutor(round_timeout=30.0, local=RunsOff(), batched=True)
                res = run(ex)
                report[name] = [res.rounds, res.nfe, res.stopped_by, len(res.hits) == len(ref.hits)
                                and all(torch.equal(a.x, b.x) for a, b in zip(res.hits, ref.hits))]
        elif scenario == "close_race":
            # close() from another thread while this thread sends a round (a ``with`` block left on the main
            # thread while a worker thread samples): its STOP went out between the round's messages, the
            # serving rank read it as the points' times and evaluated zeros, and the round timed out
            xs, ts = [x + k for k in range(4)], [0.1 * (k + 1) for k in range(4)]
            for grace in (5.0, 0.05):  # (the round ends within the grace / after it: stopped by the round)
                ex = DistributedExecutor(round_timeout=30.0)
                ex(model, xs[:1], ts[:1])  # (the model's shell sent: the next round's first message is EVAL)
                closer: list = []

                def send(tensor, rank, timeout, ex=ex, orig=ex._send, closer=closer, grace=grace):
                    if not closer:
                        closer.append(threading.Thread(target=ex.close, kwargs={"grace": grace}))
                        closer[0].start()
                        time.sleep(0.3)  # (the close runs while the round's messages go out)
                    return orig(tensor, rank, timeout)

                ex._send = send  # type: ignore[method-assign]
                got = ex(model, xs, ts)
                ref = cc.SerialExecutor()(model, xs, ts)
                report[f"equal_{grace}"] = all(torch.equal(a, b) for a, b in zip(got, ref))
                closer[0].join(10)
                try:
                    ex(model, xs, ts)
                    report[f"after_{grace}"] = "ran"
                except ExecutorClosed:
                    report[f"after_{grace}"] = "ExecutorClosed"
            # a round on a worker thread, close() returning before it ends, then a new executor (a re-run
            # cell): the new one waits for the round, which stops the ranks, then runs on them (it did not
            # wait, and the old round's stop reached the ranks serving the new one)
            ex = DistributedExecutor(round_timeout=30.0)
            ex(model, xs[:1], ts[:1])
            slow_send, entered = ex._send, threading.Event()

            def late(tensor, rank, timeout, orig=slow_send):
                entered.set()
                time.sleep(0.2)  # (the round takes about a second: past close's grace)
                return orig(tensor, rank, timeout)

            ex._send = late  # type: ignore[method-assign]
            old: dict = {}
            worker = threading.Thread(target=lambda: old.update(x=ex(model, xs, ts)))
            worker.start()
            entered.wait(10)
            ex.close(grace=0.05)
            newer = DistributedExecutor(round_timeout=30.0)
            report["old_round_done_first"] = not worker.is_alive()
            worker.join(10)
            ref = cc.SerialExecutor()(model, xs, ts)
            report["old_equal"] = all(torch.equal(a, b) for a, b in zip(old["x"], ref))
            report["newer_equal"] = all(torch.equal(a, b) for a, b in zip(newer(model, xs, ts), ref))
            ex = newer
        elif scenario == "pickle":
            chords_dist.dump_shell = lambda model: pickle.dumps(_Evil(path))  # type: ignore[assignment]
            try:
                cc.chords(model, x, grid, "euler", cores=4, stop=None, executor=ex)
            except WorkerError as e:
                report["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                report["error_rank"] = e.rank
            report["file_created"] = os.path.exists(path)
        ex.close()
        print(json.dumps(report), flush=True)
        return 0
    finally:
        if dist.is_initialized() and not (scenario == "idle" and rank == 0):
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
