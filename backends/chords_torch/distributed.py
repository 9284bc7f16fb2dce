"""``DistributedExecutor`` and ``serve``: CHORDS on torch.distributed (gloo on CPU, nccl on GPU).

Layout: rank 0 (the *driver*) runs the unchanged core engine, ``cc.chords(..., executor=ex)``;
every other rank runs ``serve(net)`` and evaluates the points it is sent. Point k of a round
(= core k) goes to rank 1 + (k mod (world - 1)), or with ``local=net`` (rank 0 evaluates too) to
rank k mod world, so core c always runs on the same rank.
The same script works on one machine and across machines; only the torchrun launch differs.

Wire protocol (point-to-point ``send`` / ``recv`` of tensors on the backend's device, so it also
runs on nccl): the driver sends a header ``int64[17] = [cmd, n, dtype, ndim, payload, batched,
autocast on the CPU, autocast on CUDA, memory order, *shape]`` (the driver's ``torch.autocast``, which the
worker enters again: ``_common.autocast_state``; the points' dense memory order, ``_order_code``, or
``MIXED`` where they differ) then, for ``EVAL``, the n stacked states (n, *shape), contiguous (gloo sends
no other layout), which the worker lays out in their orders again, their times (n,) float64 and, for
``MIXED``, their orders' codes (n,) int64; for ``MODEL``, the model *shell* (the driver's
model without its network, see ``_common``) as plain data (JSON: class names and fields; no pickle), with
the round timeout in milliseconds in the header's slot 6; for ``STOP`` nothing. A worker answers an
``EVAL`` with ``int64[5] = [status, point, length, done, memory order]`` and the outputs (status 0;
contiguous, rebuilt by the driver in the orders the network gave them), or the error message as bytes
(1: bad model output at ``point``, 3: non-finite model output at ``point``, 2: exception), followed
for 1 / 3 by the outputs of its ``done`` points before ``point`` (``ModelOutputError.done``; the driver
passes on those of the round's points before the bad one where every one came, so a method goes on with
them), and last, for ``MIXED``, the outputs' order codes. ``_common.load_shell`` instantiates only the
library's model and schedule classes, without running their code: bytes received over the process group
never run code on a worker. The process group itself is not authenticated: run it on a trusted network
(``docs/torch.md``).

Faults: a worker's exception / bad output raises in the driver (``WorkerError`` /
``ModelOutputError``) once every answer of the round is in, and the executor stays usable. A dead
rank raises ``WorkerDied`` as soon as the backend notices the lost connection, a silent one
``WorkerTimeout`` when the round has taken ``round_timeout`` seconds; either collects the other
ranks' answers and closes the executor (the surviving workers are told to stop), so no later call
reads a stale answer; any other exception while a round is in flight
(a second Ctrl-C, another signal handler's: it may land inside a message) cuts the round instead:
the executor is closed and the group refused to new executors. A worker
whose model call outlasts the driver's round timeout by ``HUNG_GRACE`` seconds exits by itself with
status ``HUNG_EXIT``: under torchrun a hung rank therefore ends the job instead of keeping it alive.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from chords_core._backend import laid_out, layouts, own_buffer
from chords_core.call import warn_training
from chords_core.checks import check_bool
from chords_core.executors import Executor
from chords_core.models import Model, ModelOutputError

from ._common import (
    AUTOCAST_DEVICES,
    UNSET,
    ExecutorClosed,
    RoundTimeout,
    WorkerDied,
    WorkerError,
    WorkerTimeout,
    assign,
    autocast_context,
    autocast_state,
    bind,
    check_points,
    check_timeout,
    dump_shell,
    first_failure,
    load_shell,
    model_state,
    one_round_at_a_time,
    place,
    round_timeout_of,
)
from .device import replicate

__all__ = ["DistributedExecutor", "serve"]

STOP, EVAL, MODEL = 0, 1, 2
HEADER = 17
#: int64 fields of a worker's answer status: [status, point, message length, outputs before point, their
#: memory order]
STATUS = 5
MAX_DIMS = HEADER - 7 - len(AUTOCAST_DEVICES)
#: seconds a worker's model call may outlast the driver's round timeout before the worker exits
HUNG_GRACE = 5.0
#: the exit status of a worker that ended itself because its model call outlasted the round timeout
HUNG_EXIT = 75
#: a serving rank's wait for the driver's next message without ``idle_timeout`` (gloo; "no limit")
IDLE_FOREVER = datetime.timedelta(days=365)
#: seconds past ``HUNG_GRACE`` after which ``faulthandler`` ends a serving rank whose model call holds the
#: GIL (native code that never releases it), where the watch thread cannot run: its tracebacks on
#: stderr, exit status 1
HUNG_BACKSTOP = 10.0
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.complex128)


def _order_code(order: tuple[int, ...] | None) -> int:
    """A dense memory order (``_backend.layout``: the axes from the outermost to the innermost; at most
    ``MAX_DIMS`` = 8 of them) as one int64 of the protocol: 0 for C order, else 1 + the axes in base 16."""
    return 0 if order is None else 1 + sum(a << (4 * i) for i, a in enumerate(order))


def _order_of(code: int, ndim: int) -> tuple[int, ...] | None:
    """``_order_code``'s inverse for a state of ``ndim`` axes."""
    return None if code == 0 else tuple(((code - 1) >> (4 * i)) & 15 for i in range(ndim))


#: the order slot of a message whose points (or outputs) differ in memory order: their codes follow
MIXED = -1


def _order_slot(orders: Sequence[tuple[int, ...] | None] | None, device: Any) -> tuple[int, torch.Tensor | None]:
    """(the order slot of a header or status, the int64[n] codes that follow it or ``None``) for n
    points' memory orders (``_backend.layouts``; ``None``: all C-ordered): one order in the slot where
    they share it, else ``MIXED`` and a code a point."""
    if orders is None:
        return 0, None
    codes = [_order_code(o) for o in orders]
    if all(c == codes[0] for c in codes):
        return codes[0], None
    return MIXED, torch.tensor(codes, dtype=torch.int64, device=device)


def _orders(slot: int, n: int, ndim: int, codes: Callable[[int], torch.Tensor]) -> list | None:
    """``_order_slot``'s inverse: the n orders (``None``: all C-ordered), reading the codes that follow
    with ``codes(n)`` where the slot says ``MIXED``."""
    if slot == MIXED:
        return [_order_of(int(c), ndim) for c in codes(n).tolist()]
    order = _order_of(slot, ndim)
    return None if order is None else [order] * n


def _comm_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _wait(start: Callable, timeout: float | None, what: str, rank: int, interruptible: bool = False) -> None:
    """Start a send / recv (``start()`` -> Work) with ``rank`` and wait for it: a lost peer -> WorkerDied,
    no completion within ``timeout`` seconds -> WorkerTimeout (errors may surface at either point);
    the error's ``rank`` is set. ``interruptible``: a Ctrl-C's handler runs during the wait
    (``_interruptible_wait``)."""
    try:
        _wait_once(start, timeout, what, interruptible)
    except WorkerError as e:
        e.rank = rank
        raise


def _send(tensor: torch.Tensor, rank: int, group: Any, timeout: float | None) -> None:
    """Send ``tensor`` to ``rank`` of ``group`` and wait for it (``_wait``: ``WorkerDied`` /
    ``WorkerTimeout`` naming the rank)."""
    _wait(lambda: dist.isend(tensor, rank, group=group), timeout, f"rank {rank} (send)", rank)


def _interruptible_wait(work: Any, timeout: float | None) -> bool:
    """``work.wait(...)`` in a helper thread, the main thread waiting on an event meanwhile. Python runs
    a signal handler only between bytecodes, so while the main thread waits inside the backend a
    Ctrl-C's handler waits too: a second Ctrl-C took effect only once the round's answers were in.
    An event's wait returns to the interpreter, so the handler runs at once; if it raises, the helper
    thread (a daemon) is left to the abandoned wait, whose receive may still be posted, and the
    exception is marked ``abandoned_wait`` (``_abandoned``: passed on as it is, not read as a lost rank
    where it is a ``RuntimeError``; the round is then cut, ``DistributedExecutor.__call__``). For host
    tensors (gloo) only: on a GPU (nccl) a work's wait makes the calling thread's CUDA stream wait, not
    the host."""
    done, box = threading.Event(), {}

    def run() -> None:
        try:
            box["ok"] = work.wait() if timeout is None else work.wait(datetime.timedelta(seconds=timeout))
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="chords-dist-wait", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except BaseException as e:  # a signal handler's exception (any signal's: SIGALRM, SIGTERM, a second Ctrl-C)
        e.abandoned_wait = True  # type: ignore[attr-defined]
        raise
    if "error" in box:
        raise box["error"]
    return bool(box["ok"])


def _wait_work(work: Any, timeout: float | None, interruptible: bool) -> bool:
    """``work.wait`` within ``timeout`` seconds (``None``: the group's own); ``interruptible`` in the main
    thread: ``_interruptible_wait``, where a Ctrl-C's handler runs during the wait. Whether it completed."""
    if interruptible and threading.current_thread() is threading.main_thread():
        return _interruptible_wait(work, timeout)
    if timeout is None:
        work.wait()
        return True
    return bool(work.wait(datetime.timedelta(seconds=timeout)))


def _wait_once(start: Callable, timeout: float | None, what: str, interruptible: bool = False) -> None:
    try:
        if not _wait_work(start(), timeout, interruptible):
            raise WorkerTimeout(f"{what}: no completion within {timeout:g} s")
    except WorkerTimeout:
        raise
    except RuntimeError as e:
        if _abandoned(e):  # a signal handler's own RuntimeError, not the backend's: passed on as it is
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "timeout" in msg.lower() or "timed out" in msg.lower():
            within = "the process group's timeout" if timeout is None else f"{timeout:g} s"
            raise WorkerTimeout(f"{what}: no answer within {within} ({msg})") from None
        raise WorkerDied(f"{what}: connection lost ({msg})") from None


class _GroupState:
    """What the executors of one process group must know of each other.

    Attributes:
        group: the group object, or ``None`` once it is gone (held weakly: the state lives as long as
            the group, which a destroyed group kept alive with its gloo sockets and threads, 4 file
            descriptors and 3 threads a group re-created, until a loop ran out of descriptors, a
            trial; a group destroyed and created again is a new object).
        cut: its protocol was cut mid-round (a second Ctrl-C, a lost or silent rank, an answer left
            uncollected): a new executor would read that round's answers as its own, so none is made.
        open: a weak reference to its open executor: a serving rank holds one model (sent once per
            executor), so a new executor supersedes the open one, which then raises ``ExecutorClosed``
            (without telling the serving ranks to stop).
        stopped: an executor on it has told the serving ranks to stop: they left ``serve``, and a
            later executor's lost or silent rank is reported with that (``_after_stop``).
        serving: (global ranks, device) of the serving ranks while an executor was made and none has
            told them to stop since: told at interpreter exit (``_close_open``), where the executor
            may be gone (a temporary one, ``executor=DistributedExecutor(...)``).
    """

    def __init__(self, group: Any) -> None:
        self._group, self.cut = weakref.ref(group), False
        self.open: weakref.ref | None = None
        self.stopped = False  # an executor on it told the serving ranks to stop (they left serve)
        self.serving: tuple | None = None  # (ranks, device) of the ranks serving its executors, until told to stop
        self.pid = os.getpid()  # the process its executors were made in (not a forked child of it)

    @property
    def group(self) -> Any:
        return self._group()


#: per live process group its state (a group gone, its entry with it)
_GROUPS: weakref.WeakKeyDictionary[Any, _GroupState] = weakref.WeakKeyDictionary()


def _group_state(group: Any) -> _GroupState:
    """The state of the process group ``group`` names (``None``: the default group, ``dist.group.WORLD``)."""
    g = dist.group.WORLD if group is None else group
    state = _GROUPS.get(g)
    if state is None:
        state = _GROUPS[g] = _GroupState(g)
    return state


def _abandoned(e: BaseException) -> bool:
    """Whether ``e`` was raised in the main thread during an interruptible wait (``_interruptible_wait``)."""
    return getattr(e, "abandoned_wait", False) is True


class _Interrupts:
    """Ctrl-C (SIGINT) received while a round was in flight: ``count`` of them."""

    count = 0


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[_Interrupts]:
    """Hold back a Ctrl-C until the block ends, so that a round's messages are never cut in half; a
    second Ctrl-C raises ``KeyboardInterrupt`` at once. A held Ctrl-C is delivered when the block
    ends, also when it ends by an exception. Outside the main thread (where Python does not deliver
    signals), or where the current handler was not installed from Python, this does nothing."""
    got = _Interrupts()
    old = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if old is None or old == signal.SIG_IGN:  # (an ignored Ctrl-C, nohup's or a background job's, stays so)
        yield got
        return

    def held(signum: int, frame: Any) -> None:
        got.count += 1
        if got.count > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, held)
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, old)
        if got.count == 1:  # the round is complete (or failed): now the usual behaviour
            if callable(old):
                old(signal.SIGINT, None)
            elif old == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _after_stop(e: WorkerError) -> WorkerError:
    """``e`` (a lost or silent rank at an executor's first rounds) again, saying that an earlier executor
    on the group had told the serving ranks to stop: they left ``serve`` (its ``close()``, the end of its
    ``with`` block), and a rank that does not call ``serve`` again is lost or silent to the next one."""
    new = type(e)(f"{e} (an earlier DistributedExecutor on this process group was closed, which ends serve() on "
                  "the serving ranks: where they did not call serve() again, do so for each executor, or keep one "
                  "executor open for all calls)")
    new.rank = e.rank
    return new


def _close_open() -> None:
    """At interpreter exit: tell the ranks still serving an executor never closed to stop (its own
    ``close()`` where it is still there, else a ``STOP`` to each), so that they leave ``serve``
    normally: rank 0 of a pattern the README showed, ``cc.chords(..., executor=DistributedExecutor(...))``
    without ``close()``, ended with every serving rank failing "lost the driver", and torchrun's job
    with them. Nothing where the process group is gone already (``destroy_process_group`` first), its
    protocol was cut, a round is in flight on another thread (it stops the ranks itself where a
    ``close()`` was deferred to its end), or this process is a fork of the one that made the executor."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for state in list(_GROUPS.values()):
        if state.serving is None or state.cut or state.pid != os.getpid() or state.group is None:
            continue
        ex = state.open() if state.open is not None else None
        if ex is not None and ex._active:
            continue
        with contextlib.suppress(Exception):
            if ex is not None and not ex._closed:
                ex.close(grace=1.0)
                continue
            ranks, device = state.serving
            state.serving = None
            stop = torch.zeros(HEADER, dtype=torch.int64, device=device)  # (cmd STOP: 0)
            for r in ranks:
                with contextlib.suppress(WorkerError):
                    _send(stop, r, state.group, 1.0)


atexit.register(_close_open)


def _bytes_tensor(b: bytes, device: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).to(device)


class DistributedExecutor(Executor):
    """Evaluate a round's points on the other ranks of a torch.distributed group; use on rank 0.

    The process group must be initialised (``dist.init_process_group``) with at least two ranks, or
    one with ``local`` (rank 0 then evaluates every point: the same script under ``torchrun
    --nproc-per-node=1``);
    ``close()`` stops the workers' ``serve`` loops (the group itself is the caller's).

    Args:
        group: the process group (``None``: the default group).
        round_timeout: seconds one round may take, from sending its points to the last answer
            (``None``: only the process group's own timeout applies). A worker whose model call
            outlasts it by ``HUNG_GRACE`` seconds exits with status ``HUNG_EXIT``.
        batched: each rank evaluates its share in one batched call instead of one call per point.
        local: a network (or Model) on rank 0 to make the driver a slot too: point k then goes to
            rank k mod world (rank 0 evaluates its share while the others compute); without it
            rank 0 only drives and point k goes to rank 1 + k mod (world - 1).
        timeout: deprecated name of ``round_timeout``.
    """

    values_checked = True  # (each output by model.evaluate, where it was evaluated: its finiteness checked there)

    own_network = True  # the serving ranks' networks (and ``local``), not the call's model (``Executor``)

    round_timeout = RoundTimeout()  # (checked when set)

    def __init__(self, *, group: Any = None, round_timeout: float | None = 60.0, batched: bool = False,
                 local: Any = None, timeout: Any = UNSET) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistributedExecutor needs an initialised process group (torch.distributed.init_process_group)")
        # every argument checked before an open executor is superseded (a refused one closed the open
        # executor, whose close() then released no rank: a trial)
        batched = check_bool("batched", batched)
        self.round_timeout = round_timeout_of(round_timeout, timeout, "DistributedExecutor")  # (checked as set)
        if dist.get_rank(group) != 0:
            raise RuntimeError(f"DistributedExecutor runs on rank 0 (the driver); this is rank "
                               f"{dist.get_rank(group)}: call serve(...)")
        world = dist.get_world_size(group)
        if world < 2 and local is None:
            raise ValueError("DistributedExecutor needs a world size >= 2 (rank 0 drives, the others evaluate), "
                             "or local=network: rank 0 then evaluates too, alone on a world of one (torchrun "
                             "--nproc-per-node=1, say)")
        if local is not None and not (callable(local) or isinstance(local, Model)):
            raise TypeError(f"local must be a network (callable) or a chords_core Model, got {type(local).__name__}")
        state = _group_state(group)
        if state.cut:
            raise RuntimeError("this process group's protocol was cut in the middle of a round (a second Ctrl-C, or "
                               "a rank lost or silent): its workers may still send that round's answers, which a new "
                               "executor would read as its own; end the job, or destroy and re-create the process "
                               "group")
        if state.open is not None and (ex := state.open()) is not None and (not ex._closed or ex._active):
            # its model is no longer the serving ranks' (no STOP sent); never while another thread's round
            # is in flight on it (closed by a close() that did not wait for it, too): this executor's messages
            # would interleave with that round's
            if not ex._lock.acquire(timeout=5.0):
                raise RuntimeError("a round of the open DistributedExecutor on this process group is in flight on "
                                   "another thread; close that executor (or let its rounds end) before making a "
                                   "new one")
            try:
                ex._closed = ex._superseded = True
            finally:
                ex._lock.release()
        self.group, self.batched = group, batched
        self.ranks = [self._global(r) for r in range(1, world)]
        self.device = _comm_device(group)
        self.local = local if local is None or isinstance(local, Model) else replicate(local, self.device)
        self._local_model: Model | None = None
        self._sent: tuple | None = None  # model_state of the model whose shell the ranks hold, and round_timeout
        self._answered = False  # a round of this executor was answered (the ranks serve it)
        self._made_after_stop = state.stopped  # made after an executor on the group told the ranks to stop
        state.serving, state.pid = (self.ranks, self.device), os.getpid()
        self._closed = self._superseded = False
        self._why_closed = "closed by the user or after a lost worker"  # (what the refusal of a call says)
        # one round at a time (one_round_at_a_time); re-entrant: a failed round closes the executor under it
        self._lock = threading.RLock()
        # close() from another thread during a round: the round stops the ranks when it ends. ``_state``
        # makes "is a round on" and "stop after it" one decision for the round's end and for close()
        self._state = threading.Lock()
        self._active = False  # a round is in flight (from its first message to its last answer)
        self._stop_after_round = False
        self._owed: dict = {}  # rank -> (n, shape, dtype) of an EVAL not answered yet
        self._statuses: dict = {}  # rank -> (tensor, work): the posted receive of its status (``_post_status``)
        self._in_flight = False
        self._deadline: float | None = None  # time.monotonic() at which the round in flight times out
        state.open = weakref.ref(self)

    def _left(self) -> float | None:
        """Seconds left of the round in flight (at least a millisecond; ``None``: no limit)."""
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 1e-3)

    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def _send(self, tensor: torch.Tensor, rank: int, timeout: float | None) -> None:
        _send(tensor, rank, self.group, timeout)

    def _recv(self, tensor: torch.Tensor, rank: int, what: str, timeout: float | None,
              interruptible: bool = False, work: Any = None) -> torch.Tensor:
        """Receive ``tensor`` from ``rank`` (``work``: its receive, already posted) within ``timeout``."""
        _wait(lambda: dist.irecv(tensor, rank, group=self.group) if work is None else work, timeout,
              f"rank {rank} ({what})", rank, interruptible)
        return tensor

    def _post_status(self, rank: int) -> None:
        """Post the receive of ``rank``'s status for the round in flight as soon as its points are sent:
        whether it answered within the round is then its own doing, not how long the receives before
        its own took (read after rank 0's share and the other ranks' outputs, with what was left of
        the round, at least 1 ms, a rank that had answered in time was blamed, and the group cut, for a
        local share past ``round_timeout``: 3 MiB states, a trial)."""
        status = torch.zeros(STATUS, dtype=torch.int64, device=self.device)
        try:
            work = dist.irecv(status, rank, group=self.group)
        except RuntimeError:  # (a lost rank: the receive is posted again where it is read, which names it)
            work = None
        self._statuses[rank] = (status, work)

    def _answer(self, rank: int, n: int, shape: tuple, dtype: torch.dtype,
                timeout: float | None = None) -> tuple[int, int, Any, Any]:
        """One worker's answer to an EVAL: (0, 0, outputs, None) or (code, point, message, the outputs
        of its points before ``point``: (done, *shape), ``None`` for none). Each wait gets ``timeout``
        seconds; by default the status what is left of the round, and the rest of the answer, which
        follows a status that came, at least ``round_timeout`` (its transfer is not the rank's delay)."""
        status, work = self._statuses.pop(rank, (None, None))
        if status is None:
            status = torch.zeros(STATUS, dtype=torch.int64, device=self.device)
        if timeout is None:
            timeout = self._left()
            rest = None if timeout is None or self.round_timeout is None else max(timeout, self.round_timeout)
        else:
            rest = timeout
        # (the wait for a status is the long one, the model's time: a second Ctrl-C interrupts it at once;
        # on the host only: nccl's wait orders the calling thread's CUDA stream, which must be this one's)
        self._recv(status, rank, "status", timeout, self.device.type == "cpu", work)
        code, point, length, done, slot = (int(v) for v in status.tolist())
        timeout = rest

        def orders(count: int) -> list | None:  # the outputs' orders on the rank: they travel contiguous
            return _orders(slot, count, len(shape), lambda m: self._recv(
                torch.empty(m, dtype=torch.int64, device=self.device), rank, "orders", timeout))

        if code == 0:
            outs = self._recv(torch.empty((n, *shape), dtype=dtype, device=self.device), rank, "outputs", timeout)
            return 0, 0, laid_out(outs, orders(n)), None
        msg = self._recv(torch.empty(length, dtype=torch.uint8, device=self.device), rank, "error", timeout)
        before: Any = None
        if done:
            before = self._recv(torch.empty((done, *shape), dtype=dtype, device=self.device), rank, "outputs", timeout)
            before = laid_out(before, orders(done))
        return code, point, bytes(msg.cpu().tolist()).decode(), before

    def _header(self, cmd: int, n: int = 0, dtype: torch.dtype | None = None, shape: tuple = (),
                payload: int = 0, order: int = 0) -> torch.Tensor:
        """The int64 header of a message (see the module docstring)."""
        if len(shape) > MAX_DIMS:
            raise ValueError(f"states may have at most {MAX_DIMS} dimensions, got shape {shape}")
        amp = autocast_state() if cmd == EVAL else (0,) * len(AUTOCAST_DEVICES)
        h = [cmd, n, DTYPES.index(dtype) if dtype is not None else 0, len(shape), payload, int(self.batched), *amp,
             order, *shape]
        return torch.tensor(h + [0] * (HEADER - len(h)), dtype=torch.int64, device=self.device)

    @one_round_at_a_time
    def __call__(self, model: Model, xs: Sequence[torch.Tensor], ts: Sequence[float]) -> list[torch.Tensor]:
        """Evaluate the round's points on the worker ranks (see ``Executor.__call__``).

        Args:
            model: the call's ``Model``; its shell (plain data) is sent to the workers once.
            xs: the points, tensors of one shape and a dtype in ``DTYPES``.
            ts: their times.

        Returns:
            The raw outputs, in order, on the device of each point.

        Raises:
            ModelOutputError: a bad output, with its point's index.
            WorkerError: a model exception on a rank (with its traceback); the executor stays usable.
            WorkerDied, WorkerTimeout: a rank was lost or silent; the executor is closed.
            ExecutorClosed: the executor was closed.
        """
        if self._closed:
            if self._superseded:
                raise ExecutorClosed("this DistributedExecutor was superseded by a newer one on the same process "
                                     "group (the serving ranks hold one model: use the newer executor)")
            raise ExecutorClosed(f"this DistributedExecutor is closed ({self._why_closed})")
        check_points(xs, ts, "DistributedExecutor")
        if not xs:
            return []
        if xs[0].dtype not in DTYPES:
            raise TypeError(f"states of dtype {xs[0].dtype} are not supported; use one of {DTYPES}")
        self._owed, self._statuses = {}, {}
        self._deadline = None if self.round_timeout is None else time.monotonic() + self.round_timeout
        self._in_flight = False  # from the first message sent until every answer of the round is in
        with self._state:
            self._active = True
        with _sigint_deferred() as interrupts:  # a Ctrl-C takes effect once the round is complete
            try:
                return self._evaluate(model, xs, ts)
            except BaseException as e:  # never leave answers for the next call to read
                if self._in_flight:
                    # only a lost or silent rank, or a rank's model error, leaves the others' messages whole
                    # (drained); any other exception while a round is in flight is asynchronous (a first
                    # Ctrl-C is held back: a second one, or another signal handler's exception) and may
                    # have landed inside a message, part sent or part received: the round is cut where it
                    # stood (a drain's receive took a half-read answer's next message: rank 0 aborted in
                    # gloo, "Received data size doesn't match", a user trial and a review)
                    if interrupts.count > 1 or _abandoned(e) or not isinstance(e, (WorkerDied, WorkerTimeout,
                                                                                     WorkerError)):
                        self._closed = True
                        if not isinstance(e, (WorkerDied, WorkerTimeout)):  # (it said "closed by the user or
                            # after a lost worker" after a timer's KeyboardInterrupt, neither of which, a trial)
                            self._why_closed = (f"a round was cut by {type(e).__name__} while the ranks were "
                                                "evaluating: their answers could not be told from the next call's; "
                                                "end the job, or destroy and re-create the process group")
                        _group_state(self.group).cut = True  # no new executor reads its answers
                    else:
                        self._drain(e.rank if isinstance(e, WorkerError) else None)
                if isinstance(e, (WorkerDied, WorkerTimeout)) and not self._answered and self._made_after_stop:
                    raise _after_stop(e) from None
                raise
            finally:
                with self._state:
                    stop, self._active, self._stop_after_round = self._stop_after_round, False, False
                if stop and not _group_state(self.group).cut:
                    self._stop_ranks(1.0)  # close() from another thread during this round: the ranks stop now

    def _drain(self, failed: int | None, grace: float = 5.0) -> None:
        """After a lost rank: collect the other ranks' pending answers (so they are back in their
        receive loop), then close, which tells them to stop."""
        pending = dict(self._owed)  # the answers not collected (yet)
        try:
            for r, (n, shape, dtype) in self._owed.items():
                if r != failed:
                    try:
                        self._answer(r, n, shape, dtype, grace)
                        del pending[r]
                    except (WorkerError, RuntimeError):
                        pass
        finally:  # a second Ctrl-C here still closes the executor
            self._owed = {}
            if failed is not None or pending:  # a rank's part of the round is lost: no new executor here
                _group_state(self.group).cut = True
            self.close(grace=1.0)

    def _evaluate(self, model: Model, xs: Sequence[torch.Tensor], ts: Sequence[float]) -> list[torch.Tensor]:
        # the shell again where the model or its settings changed (check_outputs), or the round timeout
        # that travels with it (the ranks' hung-call limit: set after a first call, it stayed the old one)
        state = (model_state(model), self.round_timeout)
        if self._sent != state:
            if self.local is not None:
                self._local_model = bind(model, self.local)
            payload = _bytes_tensor(dump_shell(model), self.device)
            header = self._header(MODEL, payload=payload.numel())
            header[6] = 0 if self.round_timeout is None else max(1, round(self.round_timeout * 1000))
            self._sent = None
            self._in_flight = True
            for r in self.ranks:
                self._send(header, r, self._left())
                self._send(payload, r, self._left())
            self._sent = state
            self._in_flight = False  # (no answer owed for a model: a bad state's error below then left the
            # executor usable, as on a later call, where the first call had closed it and stopped the ranks)
        slots = ([None] if self.local is not None else []) + self.ranks  # None: rank 0 itself
        groups = assign(len(xs), len(slots))
        shape, dtype = tuple(xs[0].shape), xs[0].dtype
        active = [(r, idx) for r, idx in zip(slots, groups) if idx and r is not None]
        # the points' dense memory orders (channels_last, say): they travel contiguous (gloo sends no other
        # layout; a channels_last stack failed as "rank 1 (send): connection lost", a healthy rank blamed and
        # the group cut) and the ranks lay each out in its own again (C-ordered, a convolution rounded
        # otherwise: 6e-3 from the serial executor in bfloat16; a round can mix orders, a review: 1.9e-5)
        orders = layouts(xs)
        slots_codes = {r: _order_slot(None if orders is None else [orders[k] for k in idx], self.device)
                       for r, idx in active}
        headers = {r: self._header(EVAL, len(idx), dtype, shape, order=slots_codes[r][0]) for r, idx in active}
        self._in_flight = True  # (the headers may raise: nothing sent)
        for r, idx in active:
            x = torch.stack([xs[k] for k in idx]).to(self.device).contiguous()
            t = torch.tensor([float(ts[k]) for k in idx], dtype=torch.float64, device=self.device)
            self._owed[r] = (len(idx), shape, dtype)
            codes = slots_codes[r][1]
            for tensor in (headers[r], x, t) if codes is None else (headers[r], x, t, codes):
                self._send(tensor, r, self._left())
            self._post_status(r)
        outs: list = [None] * len(xs)
        failures = []
        if self.local is not None and groups[0]:  # the driver's own share, while the others compute
            idx = groups[0]
            try:
                local_model = self._local_model
                assert local_model is not None  # bound with the model, above
                with torch.no_grad():
                    own = local_model.evaluate([xs[k].to(self.device) for k in idx], [ts[k] for k in idx],
                                               batched=self.batched)
                place(outs, idx, own, xs)
            except ModelOutputError as e:  # its kind kept, as a serving rank's status carries it
                failures.append((3 if e.is_nonfinite else 1, idx[e.point], 0, str(e)))
                place(outs, idx, e.done or (), xs)  # its points before the bad one
            except Exception as e:
                failures.append((2, idx[0], 0, f"{type(e).__name__}: {e}\n--- traceback ---\n{traceback.format_exc()}"))
        for r, idx in active:
            code, point, body, before = self._answer(r, len(idx), shape, dtype)
            del self._owed[r]
            if code == 0:
                before = body
            else:
                failures.append((code, idx[point], r, body))
            place(outs, idx, before if before is not None else (), xs)
        self._in_flight = False  # every answer is in: the protocol is in step, the executor usable
        self._answered = True
        if failures:  # (a bad output holds the round's outputs before it where all came: ModelOutputError.done)
            raise first_failure([(self._failure(code, k, r, msg), k) for code, k, r, msg in failures], outs)
        return outs

    @staticmethod
    def _failure(code: int, k: int, r: int, msg: str) -> BaseException:
        """The exception of rank ``r``'s failed answer for point ``k`` (``_answer``'s code: 1 / 3 a bad
        output, finite or not; 2 the model raised)."""
        if code in (1, 3):  # (the rank named: on several machines, the host that made the bad output, a trial)
            return ModelOutputError(k, f"{msg} (evaluated on rank {r})", code == 3)
        err = WorkerError(f"rank {r}: {msg}")
        err.rank = r  # (documented: the rank involved, where known; it was None)
        return err

    def close(self, grace: float = 5.0) -> None:
        """Tell every worker rank to leave ``serve`` (best effort, ``grace`` seconds); idempotent. Called
        from another thread during a round, it waits up to ``grace`` seconds for the round to end; a
        round still in flight then tells the ranks once its answers are in (sent beside the round's
        messages, the stop was read as a point's times: the ranks evaluated garbage and the job stalled),
        and the executor is closed for later calls at once."""
        if self._closed:
            return
        if not self._lock.acquire(timeout=grace):
            with self._state:
                if self._active:  # (read by the round's thread when it ends, under the same lock)
                    self._stop_after_round = self._closed = True
                    return
            self._lock.acquire()  # the round ended meanwhile (a later one is waited for)
        try:
            if not self._closed:
                self._stop_ranks(grace)
        finally:
            self._lock.release()

    def _stop_ranks(self, grace: float) -> None:
        """Close: tell every worker rank to leave ``serve`` (under the round lock)."""
        self._closed, self._stop_after_round = True, False
        state = _group_state(self.group)
        if state.open is not None and state.open() is self:
            state.open = None
        state.stopped, state.serving = True, None
        for r in self.ranks:
            try:
                self._send(self._header(STOP), r, grace)
            except WorkerError:
                pass


def serve(net: Callable | Model, *, group: Any = None, device: Any = None, exit_when_hung: bool = True,
          idle_timeout: float | None = None) -> int:
    """Worker loop for ranks != 0: evaluate the driver's points until it closes its executor.

    Args:
        net: the network (``fn(x, t)`` / ``f(t, y)``; bound to the driver's model
            parametrisation) or a complete chords_core ``Model``.
        group: the process group (``None``: the default group).
        device: where to evaluate (default: the backend's device, ``cuda:<current>`` for nccl,
            else cpu); an ``nn.Module`` is moved there.
        exit_when_hung: end this process (``os._exit(HUNG_EXIT)``, after a line on stderr) when a
            model call outlasts the driver's ``round_timeout`` by ``HUNG_GRACE`` seconds: the
            driver has given up on this rank, and under torchrun a rank that exits non-zero ends
            the job, where a hung one would keep it alive forever. (A model call that holds the GIL
            in native code keeps that check from running: ``faulthandler`` then ends the process
            ``HUNG_BACKSTOP`` seconds later, with its tracebacks and status 1.)
        idle_timeout: seconds to wait for the driver's next message between rounds (up to
            ``MAX_TIMEOUT``; ``None``: no limit, the default). On gloo the wait is not bounded by the
            process group's timeout (a rank without points for that long, or a driver idle between
            calls, ended the rank with "lost the driver" and torchrun the job); a driver that exits or
            dies is noticed at once either way, where its host closes the connections. Set it to bound
            a *hung* driver or a lost host (a network partition, a power loss); when it passes, gloo
            closes the connection: the rank must leave (``WorkerTimeout``). On nccl the group's timeout
            bounds every wait (its watchdog): keep it above the driver's longest idle time.

    Returns:
        The number of rounds served. Raises ``WorkerError`` if the driver is lost.
    """
    if not dist.is_initialized():
        raise RuntimeError("serve needs an initialised process group (torch.distributed.init_process_group)")
    if dist.get_rank(group) == 0:
        raise RuntimeError("serve runs on ranks != 0; rank 0 drives with DistributedExecutor")
    if _group_state(group).cut:
        raise RuntimeError("serve was interrupted on this process group while it waited for the driver: that wait's "
                           "receive is still posted and would take the driver's next message; end the process, or "
                           "destroy and re-create the process group")
    comm = _comm_device(group)
    device = comm if device is None else torch.device(device)
    if not isinstance(net, Model):
        if not callable(net):
            raise TypeError(f"net must be callable or a chords_core Model, got {type(net).__name__}")
        net = replicate(net, device)
    warn_training(net, f"serve (rank {dist.get_rank()})")  # (rank 0 checks the call's model, not this one)
    driver = 0 if group is None else dist.get_global_rank(group, 0)
    exit_when_hung = check_bool("exit_when_hung", exit_when_hung)
    idle_timeout = check_timeout(idle_timeout, "idle_timeout")
    watch = _HungWatch(dist.get_rank()) if exit_when_hung else None
    try:
        return _serve_loop(net, group, comm, device, driver, watch, idle_timeout)
    finally:
        if watch is not None:
            watch.stopped = True


def _serve_loop(net: Callable | Model, group: Any, comm: torch.device, device: torch.device, driver: int,
                watch: _HungWatch | None, idle_timeout: float | None = None) -> int:
    """``serve``'s receive / evaluate / reply loop; returns the number of rounds served."""
    model: Model | None = None
    setup_error: str | None = None  # a refused / unusable shell, reported with the next evaluation
    served = 0

    def recv(t: torch.Tensor, idle: bool = False) -> torch.Tensor:
        """``t`` received from the driver; ``idle``: the wait between rounds, on the host (gloo) bounded
        by ``idle_timeout`` instead of the group's timeout (a wait's own timeout overrides it)."""
        try:
            if idle and comm.type == "cpu":
                wait = IDLE_FOREVER if idle_timeout is None else datetime.timedelta(seconds=idle_timeout)
                work = dist.irecv(t, driver, group=group)
                assert work is not None  # (a rank in the group: a Work)
                # (in the main thread a Ctrl-C's handler runs during the wait, as on the driver: it ran only
                # when the driver's next message came, a trial, never where the driver idled or hung)
                try:
                    ok = _wait_work(work, wait.total_seconds(), True)
                except BaseException as e:
                    if _abandoned(e):  # its receive stays posted: a later serve's first message would go there
                        _group_state(group).cut = True
                    raise
                if not ok:  # (gloo raises; a False would leave the zeros of a STOP header)
                    raise RuntimeError("timed out waiting for the driver")
            else:
                dist.recv(t, driver, group=group)
        except RuntimeError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if idle and idle_timeout is not None and ("timeout" in msg.lower() or "timed out" in msg.lower()):
                raise WorkerTimeout(f"rank {dist.get_rank()}: no message from the driver within "
                                    f"idle_timeout={idle_timeout:g} s ({msg})") from None
            raise WorkerError(f"rank {dist.get_rank()}: lost the driver: {msg}") from None
        return t

    def reply(code: int, point: int, body: torch.Tensor, before: torch.Tensor | None = None,
              orders: list | None = None) -> None:
        try:
            done = 0 if before is None else len(before)
            slot, codes = _order_slot(orders, comm)
            dist.send(torch.tensor([code, point, body.numel(), done, slot], dtype=torch.int64, device=comm), driver,
                      group=group)
            dist.send(body.contiguous(), driver, group=group)
            if before is not None and done:
                dist.send(before.contiguous(), driver, group=group)
            if codes is not None:
                dist.send(codes, driver, group=group)
        except RuntimeError as e:
            raise WorkerError(f"rank {dist.get_rank()}: lost the driver: {str(e).splitlines()[0]}") from None

    while True:
        h = recv(torch.zeros(HEADER, dtype=torch.int64, device=comm), idle=True).tolist()
        cmd, n, dt, ndim, payload, batched = h[:6]
        if cmd == STOP:
            return served
        if cmd == MODEL:
            data = bytes(recv(torch.empty(payload, dtype=torch.uint8, device=comm)).cpu().tolist())
            try:
                shell = load_shell(data)
            except Exception as e:
                model, setup_error = None, f"the model shell was refused: {type(e).__name__}: {e}"
            else:
                try:
                    model, setup_error = bind(shell, net), None
                except Exception as e:  # (the rank's own Model, parametrised otherwise than the call's)
                    model, setup_error = None, f"this rank's model was refused: {type(e).__name__}: {e}"
            if watch is not None:
                watch.limit = h[6] / 1000 if h[6] > 0 else None
            continue
        amp, first = h[6 : 6 + len(AUTOCAST_DEVICES)], 7 + len(AUTOCAST_DEVICES)
        shape, dtype = tuple(h[first : first + ndim]), DTYPES[dt]
        # (the rank's own buffer: the network's in-place write into a point of it is refused, as on rank 0)
        x = own_buffer(recv(torch.empty((n, *shape), dtype=dtype, device=comm)))
        t = recv(torch.empty(n, dtype=torch.float64, device=comm)).tolist()
        points = laid_out(x, _orders(h[first - 1], n, ndim, lambda m: recv(torch.empty(m, dtype=torch.int64,
                                                                                        device=comm))))
        leaving: SystemExit | KeyboardInterrupt | None = None
        try:
            if model is None:
                raise RuntimeError(setup_error or "no model received")
            if watch is not None:
                watch.start()
            with torch.no_grad(), autocast_context(amp):  # (the driver's autocast, as it was)
                # (the points in the driver's memory orders; the outputs go back in the network's own)
                outs = model.evaluate([points[j].to(device) for j in range(n)], t, batched=bool(batched))
                out = torch.stack([o.to(comm, dtype) for o in outs])
            answer: tuple = (0, 0, out, None, layouts(outs))
        except ModelOutputError as e:  # with the outputs of the points before the bad one, where it has them
            try:
                before = torch.stack([o.to(comm, dtype) for o in e.done]) if e.done else None
            except Exception:  # noqa: BLE001 (not passed on, out of memory say: the driver evaluates the round again)
                before = None
            answer = (3 if e.is_nonfinite else 1, e.point, _bytes_tensor(str(e).encode(), comm), before,
                      layouts(e.done) if e.done and before is not None else None)
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # a sys.exit or a Ctrl-C in the model (or a
            # SIGTERM handler's exit) is reported to the driver before the rank leaves: otherwise the rank
            # vanishes (status 0, success to torchrun; a Ctrl-C's reached the driver as "connection lost")
            msg = f"{type(e).__name__}: {e}\n--- worker traceback ---\n{traceback.format_exc()}"
            answer = (2, 0, _bytes_tensor(msg.encode(), comm), None)
            leaving = e if isinstance(e, (SystemExit, KeyboardInterrupt)) else None
        finally:
            if watch is not None:
                watch.end()
        reply(*answer)
        served += 1
        if leaving is not None:
            raise leaving


class _HungWatch:
    """A daemon thread that ends a serving rank whose model call outlasts the driver's round timeout
    (``limit``, seconds; ``None``: no limit) by ``HUNG_GRACE`` seconds; ``since``: when the call in
    progress began (``time.monotonic()``), ``None`` between calls."""

    def __init__(self, rank: int, period: float = 0.5) -> None:
        self.rank, self.period = rank, period
        self.limit: float | None = None
        self.since: float | None = None
        self.stopped = False  # set when serve returns: the thread ends
        self.armed = False  # faulthandler's backstop is armed for the call in progress
        threading.Thread(target=self._run, name="chords-hung-watch", daemon=True).start()

    def start(self) -> None:
        """A model call begins: timed from now, and where there is a limit, ``faulthandler`` armed
        ``HUNG_BACKSTOP`` seconds past the watch's own deadline (a C thread: it runs where the model holds
        the GIL, which the watch thread then waits for; a trial's regex in the model kept a rank alive
        and torchrun's job with it)."""
        self.since, limit = time.monotonic(), self.limit
        if limit is not None:
            try:  # (to file descriptor 2: ``sys.stderr`` may be None or a StringIO, which has none)
                faulthandler.dump_traceback_later(limit + HUNG_GRACE + HUNG_BACKSTOP, exit=True, file=2)
            except (OSError, RuntimeError, ValueError):  # (no usable descriptor 2: the watch thread alone)
                return
            self.armed = True

    def end(self) -> None:
        """The model call ended."""
        self.since = None
        if self.armed:
            faulthandler.cancel_dump_traceback_later()
            self.armed = False

    def _run(self) -> None:
        while not self.stopped:
            time.sleep(self.period)
            since, limit = self.since, self.limit
            if since is not None and limit is not None and time.monotonic() - since > limit + HUNG_GRACE:
                sys.stderr.write(
                    f"chords_torch.serve (rank {self.rank}): a model call has run more than round_timeout={limit:g} s "
                    f"+ {HUNG_GRACE:g} s; the driver has given up on this rank, which now exits with status "
                    f"{HUNG_EXIT} so that the job ends\n")
                sys.stderr.flush()
                os._exit(HUNG_EXIT)
