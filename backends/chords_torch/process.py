"""``ProcessExecutor``: one worker process per core slot, states and outputs in shared memory.

Each worker builds its own model once, by calling ``factory()`` in the worker process; the factory
is pickled at start-up, so it must be a module-level function, a ``functools.partial`` of one or an
instance of a module-level class (see ``chords_torch.testing`` for examples). It returns the network
(``fn(x, t)`` of a ``DiffusionModel`` / ``f(t, y)`` of a ``VectorField``; the driver's model then
supplies the parametrisation) or a complete chords_core ``Model``.

Per round, point k goes to worker k mod W (a stable core -> worker map, see ``_common``). Every
worker owns two shared-memory tensors of shape (slots, *state_shape), allocated once per state
shape (and grown when a round needs more slots) and handed to the worker once: the driver copies
the worker's points into the input slots, sends a small message (how many points, their times),
the worker evaluates them with the core's ``Model.evaluate`` into the output slots and answers
"ok". No tensor is pickled per round.

Faults: a model exception or a bad output (shape, nan / inf) is sent back and raised in the caller
(``ModelOutputError`` with the point's index for bad outputs, ``WorkerError`` with the remote
traceback otherwise); the executor stays usable. A worker that dies (``WorkerDied``) or does not
answer within ``round_timeout`` seconds (``WorkerTimeout``) breaks the executor: all workers are
terminated before the error is raised. Workers exit when the driver closes the executor, when it is
garbage collected or the interpreter exits, and on their own when the driver's end of the pipe
closes (the driver died).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing import process as mp_process
from multiprocessing import resource_sharer
from multiprocessing.connection import wait as _wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, NoReturn

import torch
import torch.multiprocessing as tmp

from chords_core._backend import in_layout, laid_out, layouts, own_buffer
from chords_core.call import training_layers, warn_caller
from chords_core.checks import check_bool, check_int
from chords_core.executors import Executor
from chords_core.models import Model, ModelOutputError, raised_in

from ._common import (
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
    first_failure,
    model_state,
    one_round_at_a_time,
    round_timeout_of,
    shell_of,
    worker_failure,
)

__all__ = ["ProcessExecutor"]

WORKER_ENV = "CHORDS_TORCH_WORKER"  # set to the worker's index in each worker process


#: How often a worker checks that its driver is still alive (seconds).
WATCHDOG_PERIOD = 0.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_driver(driver: int) -> None:
    """``_guard``'s fallback where there is no ``os.fork``: a daemon thread that exits this worker when
    the driver process is gone (it needs the GIL: a model call holding it holds the watch too)."""
    while True:
        time.sleep(WATCHDOG_PERIOD)
        if not _alive(driver) or os.getppid() == 1:
            os._exit(3)


def _guard(driver: int) -> int | None:
    """End this worker at once when the driver process is gone, even in the middle of a model call
    (the pipe is only read between messages; its forkserver parent does not tell it). Where ``os.fork``
    exists, a guardian process forked now (the worker has one thread yet: nothing else is copied)
    watches: it SIGKILLs the worker when the driver is gone and leaves when the worker does. Being
    another process, it runs where the model holds the GIL in native code (a regex that backtracks),
    which kept a watch thread (``_watch_driver``, the fallback) from running: the worker outlived its
    killed driver, and so did the forkserver and the resource tracker. Returns the guardian's pid (the
    worker ends and reaps it when it leaves: where PID 1 reaps nothing, a container's, it stayed a
    zombie), or ``None`` for the thread. The guardian holds none of the worker's files (under fork and
    spawn its copy of the worker's pipes kept the driver from seeing the worker gone, 0.4 s a close)."""
    worker = os.getpid()
    try:
        pid = os.fork() if hasattr(os, "fork") else -1
    except OSError:
        pid = -1
    if pid < 0:
        threading.Thread(target=_watch_driver, args=(driver,), daemon=True, name="chords-watchdog").start()
        return None
    if pid:
        return pid
    try:  # the guardian: plain os calls only, and never the worker's exit handlers
        _close_files()
        while True:
            time.sleep(WATCHDOG_PERIOD)
            if os.getppid() != worker:  # the worker is gone (this process was handed to another parent)
                break
            if not _alive(driver):
                os.kill(worker, signal.SIGKILL)
                break
    finally:
        os._exit(0)


def _close_files() -> None:
    """Close every file descriptor but 0-2 (a guardian's): those listed in /proc/self/fd, or without it
    the first 65,536 (``SC_OPEN_MAX`` can be a billion in a container)."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, 65536)
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)


def _worker_main(conn: Any, factory: Callable, threads: int, index: int, driver: int | None = None) -> None:
    """A worker: ``_worker_loop``, with a guardian process (``_guard``) that watches the driver process
    (``driver``: its pid) and ends the worker when the driver dies, so no worker outlives it, whatever
    it is doing; the worker ends and reaps its guardian when it leaves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's business
    guardian = _guard(driver) if driver is not None else None
    try:
        _worker_loop(conn, factory, threads, index)
    except (BrokenPipeError, ConnectionResetError):  # the driver closed the pipe (a Ctrl-C while it started the
        pass  # workers, say): nothing to tell it, and no traceback on its stderr (a user trial: one per worker)
    finally:
        if guardian is not None:
            with contextlib.suppress(OSError):
                os.kill(guardian, signal.SIGKILL)
                os.waitpid(guardian, 0)


def _worker_loop(conn: Any, factory: Callable, threads: int, index: int) -> None:
    """The worker loop: build the model, then serve "model" / "buffers" / "eval" / "stop" messages."""
    torch.set_num_threads(threads)
    os.environ[WORKER_ENV] = str(index)
    if isinstance(factory, _Sealed):  # ('spawn', 'forkserver') loaded here, where a failure can be told
        try:
            factory = factory.load()
        except Exception as e:
            conn.send(("error", f"factory: the worker could not load it ({type(e).__name__}: {e}); a function or "
                       "class defined under `if __name__ == '__main__':` does not exist when the worker imports the "
                       "script: define it at module level, above the guard (or in a module)", traceback.format_exc()))
            return
    try:
        replica = factory()
        if not (callable(replica) or isinstance(replica, Model)):
            raise TypeError(f"the factory returned a {type(replica).__name__}, not a callable or a chords_core Model")
    except BaseException as e:
        conn.send(("error", f"factory failed: {type(e).__name__}: {e}", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid(), training_layers(replica)))  # (the driver warns: the call's model is not this)
    model: Model | None = None
    xin: Any = None
    xout: Any = None
    setup_error: BaseException | None = None
    points: list | None = None  # (the points of the evaluation in progress: a model's own error names one of them)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone
        op = msg[0]
        if op == "stop":
            return
        try:
            if op == "model":
                setup_error, model = None, None
                model = bind(_load_shell(msg[1]), replica)
            elif op == "buffers":
                # (the worker's own: the network's in-place write into a point of xin is refused, as in the driver)
                xin, xout = own_buffer(msg[1]), msg[2]
            elif op == "eval":
                points = None
                if setup_error is not None:
                    raise setup_error
                n, ts, batched, amp, orders = msg[1], msg[2], msg[3], msg[4], msg[5]
                if model is None:
                    raise RuntimeError("no model received")
                with torch.no_grad(), autocast_context(amp):  # (the driver's autocast, as it was)
                    points = list(laid_out(xin[:n], orders))
                    outs = model.evaluate(points, ts, batched=batched)
                    points = None  # (views of the shared buffer: not kept past the evaluation)
                    for j, o in enumerate(outs):
                        xout[j].copy_(o)
                conn.send(("ok", layouts(outs)))  # (the outputs' own orders: the driver rebuilds them in them)
        except ModelOutputError as e:
            done = -1  # the outputs before the bad one, written to the shared buffer (ModelOutputError.done)
            if e.done is not None and xout is not None:
                try:
                    for j, o in enumerate(e.done):
                        xout[j].copy_(o)
                    done = len(e.done)
                except Exception:  # noqa: BLE001 (not passed on: the driver evaluates the round again)
                    done = -1
            orders = layouts(e.done) if e.done and done > 0 else None
            conn.send(("model_error", e.point, str(e), e.is_nonfinite, done, orders))
        except BaseException as e:
            if op != "eval":
                setup_error = e  # reported with the next evaluation
            else:  # (with the index of the point whose call raised, where the call was on it alone, else -1)
                at, points = raised_in(e, points) if points is not None else None, None
                conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc(), -1 if at is None else at))


def _load_shell(blob: bytes) -> Any:
    """The model's shell from its pickle (``ForkingPickler``), unpickled here so that a failure is the
    next evaluation's error: unpickled with the message, a class the worker cannot import (defined in
    the ``__main__`` of a notebook or of ``python -c``) killed the worker, and the driver saw an
    unexplained ``WorkerDied`` and a closed executor."""
    try:
        return ForkingPickler.loads(blob)
    except Exception as e:
        raise TypeError(f"model: the worker could not load the model's shell ({type(e).__name__}: {e}); a class "
                        "defined in the __main__ of a notebook or of `python -c` cannot be imported by the "
                        "workers: define it in a module, or use start_method='fork'") from None


class _Sealed:
    """The factory for a worker started by 'spawn' or 'forkserver', pickled into bytes while the worker
    is spawned (as multiprocessing pickles a process's arguments: a lock, a queue or a shared tensor
    travels as it would) and loaded by the worker itself, which can then say why it cannot load it (a
    factory defined under the main guard: the forkserver's traceback and an unexplained WorkerDied)."""

    def __init__(self, factory: Callable | None = None, blob: bytes | None = None) -> None:
        self.factory, self.blob = factory, blob

    def __reduce__(self) -> tuple:
        return _Sealed, (None, bytes(ForkingPickler.dumps(self.factory)))

    def load(self) -> Callable:
        """The factory, unpickled from the bytes (in the worker)."""
        assert self.blob is not None
        return ForkingPickler.loads(self.blob)


def _interactive_main(obj: Any) -> bool:
    """Whether ``obj`` (through partials) is defined in a ``__main__`` without a file (a notebook,
    ``python -c``, the REPL), which a worker started by 'spawn' or 'forkserver' cannot import."""
    import sys

    return _module_of(obj) == "__main__" and not hasattr(sys.modules.get("__main__"), "__file__")


def _shutdown(procs: list, conns: list, grace: float, owner: int, wait: bool = True) -> None:
    """Ask the workers to stop, wait up to ``grace`` seconds, then terminate / kill; close the pipes.
    In a process forked from ``owner`` (the driver) only this process's copies of the pipes are closed:
    a forked child's exit stopped the parent's workers (its next call: "worker died while idle").
    ``wait=False`` (an executor garbage collected without ``close``): the stop is sent, the pipes closed
    and the workers still running terminated, nothing waited for (one inside a model call read the stop
    only after it, a review; their guardians leave with them). A
    Ctrl-C inside a finalizer is printed and lost ("Exception ignored"): a user trial's, while the
    finalizer waited for the workers, never reached the caller."""
    if os.getpid() != owner:
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()
        return
    if grace > 0:
        for c in conns:
            try:
                c.send(("stop",))
            except (OSError, ValueError):
                pass
        if not wait:  # (a worker inside a model call would read the stop only after it: ended now, not joined)
            for c in conns:
                c.close()
            for p in procs:
                if p.is_alive():
                    with contextlib.suppress(OSError, ValueError):
                        p.terminate()
            return
        deadline = time.monotonic() + grace
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join()
    for c in conns:
        c.close()


#: The open executors of this process, for ``_after_fork_in_child``.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a child made by ``os.fork()``: the driver's workers are not this process's children, but
    multiprocessing's exit handler still listed them and terminated them (daemons) when the child
    exited: the driver's next call failed with "worker died while idle". Each executor's round lock
    is renewed (a thread of the driver may have held it), so that a call raises ``ExecutorClosed``."""
    children = getattr(mp_process, "_children", None)
    for ex in list(_LIVE):
        ex._lock = threading.Lock()  # (held by a thread mid-round at the fork: the child's call waited for ever)
        if isinstance(children, set):
            for p in ex._procs:
                children.discard(p)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _default_start_method() -> str:
    return "forkserver" if "forkserver" in tmp.get_all_start_methods() else "spawn"


def _shared_key() -> int:
    """The last key multiprocessing's resource sharer gave out (0 where it has none): a tensor in shared
    memory sent over a pipe (torch's "file_descriptor" sharing) leaves a duplicate of its file descriptor
    there until the receiver fetches it."""
    sharer = getattr(resource_sharer, "_resource_sharer", None)
    return int(getattr(sharer, "_key", 0) or 0)


def _drop_shares(keys: range) -> None:
    """Close the duplicates of the sharer's entries ``keys`` that no worker fetched: a worker stopped
    between a buffers message and its unpickling (a Ctrl-C in the first round) left them, and their
    memory, held until the driver exited (a user trial: 313 descriptors, 64 MiB for two 16 MiB
    buffers). A key another thread's share took in the same instant would be closed too: not met."""
    sharer = getattr(resource_sharer, "_resource_sharer", None)
    cache, lock = getattr(sharer, "_cache", None), getattr(sharer, "_lock", None)
    if not keys or not isinstance(cache, dict) or lock is None:
        return
    with lock:
        entries = [cache.pop(k, None) for k in keys]
    for entry in entries:
        if entry is not None:
            with contextlib.suppress(OSError):
                entry[1]()  # (its close: the duplicate descriptor)


class ProcessExecutor(Executor):
    """Evaluate a round's points in ``workers`` processes at once (CPU parallelism without the GIL).

    Args:
        factory: picklable zero-argument callable run once in each worker; returns the network
            (bound to the driver's model parametrisation) or a complete chords_core ``Model``.
        workers: processes (core slots); a round of n points puts point k on worker k mod workers.
        threads: ``torch.set_num_threads`` in each worker (1: one core per worker).
        round_timeout: seconds one round may take, from sending its points to the last reply, before
            the executor gives up (``None``: no limit).
        start_timeout: the same for starting the workers (importing torch, building the model).
        batched: each worker evaluates its share in one batched call instead of one call per point
            (equal to the serial executor only for batch-invariant networks).
        start_method: "forkserver" (default on Linux) or "spawn". The forkserver imports torch,
            chords_core and the factory's module once, when the first executor starts it; later
            workers fork from it in milliseconds (modules imported only by later factories load in
            each worker).

        timeout: deprecated name of ``round_timeout``.

    ``pids`` holds the workers' process ids.
    """

    values_checked = True  # (each output by model.evaluate, where it was evaluated: its finiteness checked there)

    own_network = True  # the factory's network, not the call's model (``Executor``)

    round_timeout = RoundTimeout()  # (checked when set)

    def __init__(self, factory: Callable[[], Any], workers: int = 2, *, threads: int = 1,
                 round_timeout: float | None = 60.0, start_timeout: float | None = 120.0, batched: bool = False,
                 start_method: str | None = None, timeout: Any = UNSET) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be a picklable callable returning the model, got {type(factory).__name__}")
        workers, threads = check_int("workers", workers, 1), check_int("threads", threads, 1)
        self.round_timeout = round_timeout_of(round_timeout, timeout, "ProcessExecutor")
        self.batched = check_bool("batched", batched)
        start_limit = check_timeout(start_timeout, "start_timeout")
        method = self._method = start_method or _default_start_method()
        if method not in tmp.get_all_start_methods():
            raise ValueError(f"start_method must be one of {tmp.get_all_start_methods()}, got {method!r}")
        if method != "fork" and _interactive_main(factory):  # (the worker died at its start: "WorkerDied ... (start)")
            raise TypeError(f"factory: {getattr(factory, '__qualname__', type(factory).__name__)} is defined in the "
                            f"__main__ of a notebook or of `python -c`, which workers started by {method!r} cannot "
                            "import: define it in a module, or use start_method='fork'")
        ctx: Any = tmp.get_context(method)  # a torch.multiprocessing context (typed as BaseContext)
        if method == "forkserver":
            ctx.set_forkserver_preload(["torch", "chords_core", "chords_torch", *_modules_of(factory)])
        self._procs: list = []
        self._conns: list = []
        self._owner = os.getpid()
        _LIVE.add(self)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns, 2.0, self._owner, False)
        self._closed = False
        self._why_closed = "closed by the user or after a dead / hung worker"  # (what the refusal of a call says)
        self._closed_by_user = False  # close() called (from another thread, during a round: ExecutorClosed there)
        self._sent: tuple | None = None  # model_state of the model whose shell the workers hold
        self._lock = threading.Lock()  # one round at a time (one_round_at_a_time)
        self._bufs: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * workers
        self._unfetched: list[range] = [range(0)] * workers  # per worker: its buffers' shares not yet fetched
        try:
            for w in range(workers):
                sent = factory if method == "fork" else _Sealed(factory)
                parent, child = ctx.Pipe(duplex=True)
                p = ctx.Process(target=_worker_main, args=(child, sent, threads, w, os.getpid()), daemon=True,
                                name=f"chords-worker-{w}")
                try:
                    p.start()
                except Exception as e:
                    parent.close()
                    if isinstance(e, RuntimeError) and "bootstrapping phase" in str(e):
                        raise RuntimeError(
                            "ProcessExecutor: created while this process starts up as another executor's worker: "
                            "the main script's code ran on import; put it under `if __name__ == '__main__':`"
                        ) from None
                    raise TypeError(
                        f"factory could not be sent to a worker ({type(e).__name__}: {e}); it must be picklable: "
                        "a module-level function, a functools.partial of one, or an instance of a module-level class"
                    ) from None
                finally:
                    child.close()
                self._procs.append(p)
                self._conns.append(parent)
            replies = self._gather(range(workers), start_limit, "start")
        except BaseException:
            self._break()
            raise
        self.pids = tuple(replies[w][1] for w in range(workers))
        text = replies[0][2]  # (one factory: every worker's network alike)
        if text is not None:
            warn_caller(f"ProcessExecutor: factory: {text}", UserWarning)

    @property
    def workers(self) -> int:
        """The number of worker processes."""
        return len(self._conns)

    def _break(self) -> None:
        """Stop the workers at once, unless another thread's ``close`` is doing it (one shutdown: two
        closed the same pipes, ``OSError: Bad file descriptor``)."""
        self._closed = True
        if self._finalizer.detach() is not None:
            _shutdown(self._procs, self._conns, 0.0, self._owner)
        self._release()

    def _release(self) -> None:
        """Drop the shared-memory buffers (2 x the points of a round's largest share, per worker): a
        closed executor still bound to a name held them (a user trial: 1 GiB after a ``with`` block);
        and the shares of them no worker fetched (``_drop_shares``; called once the workers are stopped:
        none fetches one now)."""
        self._bufs = [None] * len(self._bufs)
        for keys in self._unfetched:
            _drop_shares(keys)
        self._unfetched = [range(0)] * len(self._unfetched)

    def _closed_meanwhile(self) -> ExecutorClosed:
        return ExecutorClosed("this ProcessExecutor was closed (by another thread) while a round waited for "
                              "its workers")

    def _dead(self, w: int, when: str) -> NoReturn:
        """Worker ``w`` is gone: stop every worker and raise ``WorkerDied`` (``ExecutorClosed`` where
        ``close`` stopped it)."""
        if self._closed_by_user:
            raise self._closed_meanwhile()
        self._procs[w].join(1.0)
        code = self._procs[w].exitcode
        self._break()
        hint = ""
        if when == "start" and code == 1 and self._method != "fork":
            # (a user trial: a script without the guard; each worker ran its body and failed there)
            hint = (f" (a worker that fails as it starts most often ran the script's own code: workers started by "
                    f"{self._method!r} import the main script, so code that creates the executor must sit under "
                    "`if __name__ == '__main__':`; the worker's own error is on stderr)")
        raise WorkerDied(f"ProcessExecutor: worker {w} (pid {self._procs[w].pid}) died ({when}) with exit code "
                         f"{code}{_signal_name(code)}; all workers were terminated{hint}")

    def _gather(self, ws: Iterable[int], timeout: float | None, what: str) -> dict:
        """Wait for one reply from each worker in ``ws``; a death or the timeout breaks the executor."""
        pending = {self._conns[w]: w for w in ws}
        sentinels = {self._procs[w].sentinel: w for w in ws}
        replies: dict = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            ready = _wait(list(pending) + [s for s, w in sentinels.items() if w not in replies],
                          timeout=None if left is None else max(left, 0.0))
            if not ready:
                if self._closed_by_user:
                    raise self._closed_meanwhile()
                self._break()
                raise WorkerTimeout(
                    f"ProcessExecutor: worker(s) {sorted(pending.values())} did not answer ({what}) within "
                    f"{timeout:g} s; all workers were terminated")
            dead = None
            for r in ready:
                w = pending.get(r, sentinels.get(r))
                if w is None or w in replies:
                    continue
                conn = self._conns[w]
                try:  # a reply may precede the exit; EOF (or nothing, at the sentinel) means it died
                    if r is conn or conn.poll():
                        replies[w] = conn.recv()
                        del pending[conn]
                        continue
                except (EOFError, OSError):
                    pass
                dead = w
            if dead is not None:
                self._dead(dead, what)
        for w, rep in replies.items():
            if rep[0] == "error" and what == "start":
                self._break()
                raise WorkerError(f"worker {w}: {rep[1]}\n--- worker traceback ---\n{rep[2]}")
        return replies

    @one_round_at_a_time
    def __call__(self, model: Model, xs: Sequence[torch.Tensor], ts: Sequence[float]) -> list[torch.Tensor]:
        """Evaluate the round's points, point k on worker k mod W (see ``Executor.__call__``).

        Args:
            model: the call's ``Model``; its shell (without the network) is sent to the workers once.
            xs: the points, tensors of one shape and dtype.
            ts: their times.

        Returns:
            The raw outputs, in order, on the device of ``xs[0]``.

        Raises:
            ModelOutputError: a bad output, with its point's index (the first in point order).
            WorkerError: a model exception in a worker (with its traceback); the executor stays usable.
            WorkerDied, WorkerTimeout: a worker died or hung; all workers are terminated.
            ExecutorClosed: the executor was closed.
        """
        if os.getpid() != self._owner:
            raise ExecutorClosed(f"this ProcessExecutor belongs to process {self._owner}; its workers answer that "
                                 "process only: make a new executor in this (forked) one")
        if self._closed:
            raise ExecutorClosed(f"this ProcessExecutor is closed ({self._why_closed})")
        check_points(xs, ts, "ProcessExecutor")
        if not xs:
            return []
        if torch.is_grad_enabled():
            net = getattr(model, "fn", getattr(model, "f", None))
            if isinstance(net, torch.nn.Module) and any(p.requires_grad for p in net.parameters()):
                # (the result carried no graph to them, silently, where DeviceExecutor warns: a trial)
                warn_caller("ProcessExecutor: the network's parameters require gradients, and the workers evaluate "
                            "their own copies: no gradient reaches the parameters (nor x); run inference under "
                            "torch.no_grad(), or requires_grad_(False) on the parameters", UserWarning)
        for w, p in enumerate(self._procs):  # a worker that died while idle (the OOM killer, say):
            if not p.is_alive() or self._conns[w].poll():  # its pipe reads EOF before it is reaped
                self._dead(w, "while idle")
        groups = assign(len(xs), self.workers)
        shape, dtype = tuple(xs[0].shape), xs[0].dtype
        # the model's shell goes again where the model or its settings changed (check_outputs=False after a
        # first call kept raising on nan); checked to pickle before anything is sent (a lambda on the model
        # raised a raw PicklingError in the send and closed the executor)
        state = model_state(model)
        shell, first = None, b""
        if self._sent != state:
            shell = shell_of(model)
            try:  # (as the pipe pickles it: torch's reductions refuse what plain pickle takes, a non-leaf tensor)
                first = bytes(ForkingPickler.dumps(shell))  # worker 0's; the others get their own (a tensor's
            except Exception as e:  # storage travels as a descriptor that one unpickle takes): see _load_shell
                raise TypeError(f"model: its shell (the model without its network) must pickle to reach the "
                                f"workers: {type(e).__name__}: {e}") from None
        active: list[int] = []
        amp = autocast_state()  # (thread-local: carried to the workers with each round)
        # the points' dense memory orders (channels_last, say), which the shared buffers do not keep: the
        # workers lay each point out in its own again (a user trial: C-ordered points rounded a convolution
        # otherwise, 6e-3 in bfloat16; a review: one order for a round that mixes them, 1.9e-5), and the outputs
        # come back in the orders the model gave them (a review: in the points', a model returning C order was
        # given channels_last points next round)
        orders = layouts(xs)
        outbufs: dict[int, torch.Tensor] = {}
        w = 0
        try:  # from the first message to the last reply: any failure leaves replies in flight -> break
            if shell is not None:
                self._sent = None
                for w in range(len(self._conns)):  # w: the worker a failed send names
                    self._conns[w].send(("model", first if w == 0 else bytes(ForkingPickler.dumps(shell))))
                self._sent = state
            for w, idx in enumerate(groups):
                if not idx:
                    continue
                xin, outbufs[w] = self._buffers(w, len(idx), shape, dtype)
                with torch.no_grad():
                    for j, k in enumerate(idx):
                        xin[j].copy_(xs[k])
                self._conns[w].send(("eval", len(idx), [float(ts[k]) for k in idx], self.batched, amp,
                                     None if orders is None else [orders[k] for k in idx]))
                active.append(w)
            replies = self._gather(active, self.round_timeout, "evaluate")
            for w in active:  # (a worker that answered has read the messages before: its buffers among them)
                self._unfetched[w] = range(0)
        except (BrokenPipeError, ConnectionResetError, EOFError) as e:
            self._dead(w, f"on send ({type(e).__name__})")
        except BaseException as e:  # KeyboardInterrupt included: the workers' replies would be read by the next call
            if self._closed_by_user and isinstance(e, Exception):  # (its pipes closed under the wait: an OSError
                raise self._closed_meanwhile() from None  # or ValueError here; a Ctrl-C stays a Ctrl-C)
            if not self._closed:
                self._break()
                self._why_closed = (f"a call was interrupted ({type(e).__name__}) while its workers were evaluating: "
                                    "their replies could not be told from the next call's; make a new executor")
            raise
        # all replies are in (each worker reports its own first bad output: worker 0's was raised, point 2 of
        # [ok, nan, nan, ok] where the others name point 1)
        failures: list[tuple[BaseException, int]] = []
        ready = {}  # worker -> (how many of its points' outputs lie in its buffer, their dense memory orders)
        for w in active:
            rep = replies[w]
            if rep[0] == "ok":
                ready[w] = (len(groups[w]), rep[1])
            elif rep[0] == "model_error":
                k = groups[w][rep[1]]
                failures.append((ModelOutputError(k, rep[2], rep[3]), k))
                if len(rep) > 4 and rep[4] >= 0:  # the outputs of its points before the bad one
                    ready[w] = (rep[4], rep[5])
            else:
                trace = rep[2] if len(rep) > 2 else ""
                at = groups[w][rep[3]] if len(rep) > 3 and 0 <= rep[3] < len(groups[w]) else None
                why = f"{rep[1]}\n--- worker traceback ---\n{trace}"
                failures.append(worker_failure(f"worker {w}", groups[w], at, why, xs))
        outs: list = [None] * len(xs)
        dev = xs[0].device
        for w, (count, back) in ready.items():
            xout = outbufs[w]
            for j, k in enumerate(groups[w][:count]):
                order = None if back is None else back[j]  # (in_layout copies; a C-ordered one is copied here)
                outs[k] = xout[j].to(dev, copy=True) if order is None else in_layout(xout[j], order).to(dev)
        if failures:
            raise first_failure(failures, outs)  # (with the outputs before its point, where all came)
        return outs

    def _buffers(self, w: int, need: int, shape: tuple, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cur = self._bufs[w]
        if cur is None or tuple(cur[0].shape[1:]) != shape or cur[0].dtype != dtype or cur[0].shape[0] < need:
            cap = max(need, cur[0].shape[0]) if cur is not None and tuple(cur[0].shape[1:]) == shape else need
            with torch.inference_mode(False):  # (made under inference_mode they were inference tensors, which
                # a later call outside it cannot write: "Inplace update to inference tensor", the executor lost)
                xin = _shared(torch.empty((cap, *shape), dtype=dtype), 2 * cap)
                xout = _shared(torch.empty((cap, *shape), dtype=dtype), 2 * cap)
            first = _shared_key()
            try:
                self._conns[w].send(("buffers", xin, xout))
            finally:  # (a Ctrl-C in the send, after the shares were made, too)
                self._unfetched[w] = range(first + 1, _shared_key() + 1)
            self._bufs[w] = cur = (xin, xout)
            if self._closed:  # (closed by another thread meanwhile: its release may have come before this)
                self._release()
        return cur

    def close(self) -> None:
        """Stop the workers (a short grace period, then terminate); idempotent. A round another thread
        is waiting on raises ``ExecutorClosed`` there. In a process forked from the driver it only
        closes this process's copies of the pipes (the workers are the driver's)."""
        self._closed_by_user = self._closed = True
        if self._finalizer.detach() is not None:  # (waiting here, not in a finalizer)
            _shutdown(self._procs, self._conns, 2.0, self._owner)
        self._release()


def _shared(t: torch.Tensor, points: int) -> torch.Tensor:
    """``t`` moved to shared memory; where the shared-memory file system is full (Docker's default
    /dev/shm is 64 MB), a ``MemoryError`` saying how much a worker's buffers need (``points`` states),
    and the file torch left behind removed (a trial: a bare ``RuntimeError`` from torch, and a
    /dev/shm/torch_<pid>_* file left after the process exited)."""
    try:
        return t.share_memory_()
    except RuntimeError as e:
        if "shared memory" not in str(e) and "shm" not in str(e):
            raise
        _remove_leftover_segment(str(e))
        need = points * t[0].numel() * t.element_size() if t.shape[0] else 0
        raise MemoryError(f"ProcessExecutor: no room in shared memory for a worker's buffers ({need / 2**20:.1f} "
                          "MiB: 2 x its share of a round's points); free space in /dev/shm or enlarge it (Docker: "
                          f"--shm-size), or use fewer points per worker (more workers, smaller batches): {e}") from None


def _remove_leftover_segment(message: str) -> None:
    """Remove the shared-memory file a failed allocation names in its ``message`` ("for file
    </torch_<pid>_...>"), where it is this process's and still in /dev/shm, under torch's
    "file_descriptor" strategy (the default on Linux), where a segment in use is unlinked as soon as it
    is made: a linked one is the failed allocation's leftover (only that one: another thread's segment
    may be being made)."""
    found = re.search(r"<(/torch_(\d+)_[^>/]*)>", message)
    if (found is None or int(found.group(2)) != os.getpid() or not os.path.isdir("/dev/shm")
            or torch.multiprocessing.get_sharing_strategy() != "file_descriptor"):
        return
    with contextlib.suppress(OSError):
        os.unlink("/dev/shm" + found.group(1))


def _module_of(obj: Any) -> str | None:
    """The name of the module defining ``obj`` (through partials; an instance's class's)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    mod = getattr(obj, "__module__", None)
    return mod if isinstance(mod, str) else None


def _modules_of(factory: Any) -> list[str]:
    """The module defining ``factory`` (``_module_of``), for the forkserver to import once."""
    mod = _module_of(factory)
    return [mod] if mod is not None and mod not in ("__main__", "__mp_main__", "builtins") else []


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f" ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return ""
