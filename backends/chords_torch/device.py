"""``DeviceExecutor``: one model replica per device, a thread per device, evaluations concurrent.

For a round of n points (point k = core k, see ``_common``), point k runs on device k mod D; each
device's thread moves its points to its device, evaluates them with its replica (one call per point,
or one batched call for its share with ``batched=True``) and moves the outputs back to the device of
the driver's state. The engine keeps all states on the driver's device, because a rectification
combines a core's state with its slower neighbour's; what stays put on a device is the replica (its
weights), so per round each device receives its points' states and returns their outputs.

Threads overlap because torch releases the GIL inside its kernels (and CUDA launches are
asynchronous); with tiny CPU models the Python overhead between kernels still serializes, which is
what ``ProcessExecutor`` is for.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chords_core import _backend as B
from chords_core.call import warn_caller
from chords_core.checks import check_bool
from chords_core.executors import Executor
from chords_core.models import Model, ModelOutputError, raised_in, resolve_check

from ._common import (
    UNSET,
    ExecutorClosed,
    RoundTimeout,
    WorkerTimeout,
    assign,
    autocast_context,
    autocast_state,
    bind,
    check_points,
    first_failure,
    fn_attr,
    model_settings,
    one_round_at_a_time,
    place,
    round_timeout_of,
    worker_failure,
)

__all__ = ["DeviceExecutor", "replicate", "resolve_device"]


def replicate(fn: Callable, device: torch.device) -> Callable:
    """The default replica of a network for ``device``.

    Args:
        fn: the network: an ``nn.Module`` or any callable.
        device: the target device (a bare ``"cuda"`` means the current CUDA device).

    Returns:
        An ``nn.Module``: itself if its parameters and buffers already live on ``device``, or if it has
        none (only registered parameters and buffers are moved: a network reached through a plain
        attribute, a ``functools.partial`` or a list, is not, and such a module was deep-copied on its
        own device, copies that then missed its weight updates), else a copy built there directly (its
        tensors are moved into the copy; never a full copy on the source device first); an object
        with a ``to(device)`` method (the diffusers ``Denoiser``, which holds its network and
        conditioning tensors) what that returns; any other callable as is (it must work on tensors of
        any device).
    """
    if not isinstance(fn, torch.nn.Module):
        to = getattr(fn, "to", None)
        # (without it, an executor=DeviceExecutor(...) given to chords_diffusers ran the first device's
        # network and conditioning on every device's points)
        return to(device) if callable(to) and not isinstance(fn, torch.Tensor) else fn
    device = resolve_device(device)
    tensors = [*fn.parameters(), *fn.buffers()]
    if all(t.device == device for t in tensors):
        return fn  # inference only: the device's threads share the weights (none: nothing a copy could move)
    memo: dict[int, Any] = {id(t): t.detach().to(device) for t in fn.buffers()}
    memo.update({id(p): torch.nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
                 for p in fn.parameters()})
    return copy.deepcopy(fn, memo).to(device)


class _Weights:
    """A network's parameters (weak references) and their in-place version counters when its replicas
    were made, and its modules with their train / eval modes: ``load_state_dict``, an optimiser step or
    an in-place update under ``no_grad`` bump a counter, a parameter replaced by a new object
    (``load_state_dict(assign=True)``, ``module.weight = Parameter(...)``) is freed once nothing else
    holds it, ``net.eval()`` flips a mode and an added or replaced submodule (an adapter) changes the
    modules; the copies on other devices are then stale (they kept evaluating in training mode: about
    270 off the serial answer). Parameters only (a buffer that the forward pass updates, BatchNorm's
    statistics in training mode, would make the copies again every round); updates through ``.data``
    (diffusers' ``EMAModel.copy_to``), a replaced parameter still held elsewhere (by an optimiser) and
    plain attributes (a scale stored on a module) are not seen: ``DeviceExecutor.refresh()`` after
    those. The check walks the parameters and the modules at every call (about 0.3 µs a parameter and
    0.5 µs a module: 1.2 ms for 2,400 modules, small beside a GPU forward pass)."""

    def __init__(self, fn: Any) -> None:
        params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
        try:
            self.versions = [p._version for p in params]
        except RuntimeError:  # inference tensors (made under torch.inference_mode) keep no counter
            params, self.versions = [], []
        self.params = [weakref.ref(p) for p in params]
        self.fn = weakref.ref(fn) if isinstance(fn, torch.nn.Module) else None
        self.modules = self._modules()  # (module, training) pairs: a module held, its id not reused

    def _modules(self) -> list:
        fn = self.fn() if self.fn is not None else None
        return [] if fn is None else [(m, m.training) for m in fn.modules()]

    def state(self) -> tuple[bool, bool]:
        """(whether a parameter was replaced or updated in place since, a module's mode changed or a
        submodule was added or replaced, whether a parameter requires gradients now), in one pass over
        the parameters; the modules are compared as they are walked, stopping at the first change
        (another network: ``_models`` compares the network itself). ``requires_grad`` is read at every
        call: ``requires_grad_(False)`` changes no version counter."""
        trains = False
        for ref, v in zip(self.params, self.versions):
            p = ref()
            if p is None or p._version != v:
                return True, False
            trains = trains or p.requires_grad
        fn = self.fn() if self.fn is not None else None
        for pair, m in itertools.zip_longest(self.modules, fn.modules() if fn is not None else ()):
            if pair is None or m is None or m is not pair[0] or m.training != pair[1]:
                return True, False
        return False, trains


class _Call:
    """A call submitted to a ``_DeviceThread``: its function and arguments, its state (``QUEUED``,
    ``RUNNING``, ``FINISHED``, ``CANCELLED``), its result or exception, and the queue it is put on when
    finished or cancelled (``done``). The caller waits on that queue (``queue.SimpleQueue``, in C),
    never on a lock of the call's: a Ctrl-C inside ``concurrent.futures.wait`` left a future's lock
    held, and its device thread blocked for ever in ``set_result`` (a trial: 10 hangs in 12 runs of
    interrupted rounds)."""

    QUEUED, RUNNING, FINISHED, CANCELLED = range(4)
    __slots__ = ("fn", "args", "done", "state", "result", "error")

    def __init__(self, fn: Callable, args: tuple, done: queue.SimpleQueue) -> None:
        self.fn: Callable | None = fn
        self.args = args
        self.done: queue.SimpleQueue | None = done
        self.state: int = _Call.QUEUED
        self.result: Any = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Cancel a call not started (the thread's lock held), and hand it to its waiter."""
        self.state, self.fn, self.args = _Call.CANCELLED, None, ()
        self.hand_back()

    def hand_back(self) -> None:
        """Put the call on its queue, which it then no longer refers to: a call the waiter left on the queue
        (a round that timed out) and the queue would be a cycle, holding the call's outputs until the
        cyclic garbage collector ran (a review: 234 of 1,600 outputs)."""
        done, self.done = self.done, None
        if done is not None:
            done.put(self)

    def over(self) -> bool:
        """Whether it finished or was cancelled."""
        return self.state >= _Call.FINISHED


class _DeviceThread:
    """One daemon thread running submitted calls in order: a thread stuck in a model call never keeps
    the interpreter from exiting (a ``ThreadPoolExecutor`` thread would: it is joined at exit)."""

    def __init__(self, name: str) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock, self._stopped = threading.Lock(), False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            call = self._tasks.get()
            if call is None:
                return
            with self._lock:
                if call.state != _Call.QUEUED:  # (cancelled by a shutdown meanwhile)
                    continue
                call.state = _Call.RUNNING
            try:
                call.result = call.fn(*call.args)
            except BaseException as e:  # delivered to the caller through the call
                call.error = e
            finally:  # not held while the thread waits: the call's model (a replica) is freed with it
                call.fn, call.args = None, ()
                call.state = _Call.FINISHED
                call.hand_back()
                del call

    def submit(self, done: queue.SimpleQueue, fn: Callable, *args: Any) -> _Call:
        """Run ``fn(*args)`` on this thread after the calls before it, putting the call on ``done`` when it
        finishes; returns the call (cancelled at once after ``shutdown``: a call queued behind the stop
        was never run, and its caller waited for ever)."""
        call = _Call(fn, args, done)
        with self._lock:
            if self._stopped:
                call.cancel()
            else:
                self._tasks.put(call)
        return call

    def shutdown(self, wait: bool) -> None:
        """Cancel the calls not started, stop the thread after the running one (joined if ``wait``)."""
        with self._lock:
            self._stopped = True
            while True:
                try:
                    call = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call.cancel()
            self._tasks.put(None)
        if wait:
            self._thread.join()


def _stop_threads(pools: list[_DeviceThread], owner: int) -> None:
    """Stop a collected executor's threads (not waiting: a thread may be inside a model call); nothing
    in a forked child (at its exit), where the threads do not exist and their locks may be held."""
    if os.getpid() != owner:
        return
    for p in pools:
        p.shutdown(wait=False)


def _wait(calls: list[_Call], done: queue.SimpleQueue, timeout: float | None) -> bool:
    """Wait until every call is over (finished or cancelled) or ``timeout`` seconds have passed;
    whether all are over. Only ``done`` is waited on (see ``_Call``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not all(c.over() for c in calls):
        try:
            done.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return all(c.over() for c in calls)
    return True


def _own_stream(x: torch.Tensor) -> Any:
    """The caller's current CUDA stream on ``x``'s device where it is not the device's default stream
    (the device threads' own current stream, which every thread shares), else ``None``."""
    if not x.is_cuda:
        return None
    s = torch.cuda.current_stream(x.device)
    return None if s == torch.cuda.default_stream(x.device) else s


@contextlib.contextmanager
def _after_in(stream: Any) -> Any:
    """On leaving (an error included: ``ModelOutputError.done`` holds outputs too), the caller's own
    CUDA ``stream`` waits for this thread's stream on its device, where the outputs were made or copied
    to (``None``: nothing to wait for)."""
    try:
        yield
    finally:
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(stream.device))


def resolve_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device``, with its index where it names the current device of its kind
    (a bare ``"cuda"``): the current CUDA device is per thread, so a device thread would take
    ``cuda:0`` where the replica was built on the caller's current device (after
    ``torch.cuda.set_device(3)``, say)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if d.type == "cpu":  # ("cpu:1" is the CPU: its tensors say "cpu", and a network there was copied as if elsewhere)
        return torch.device("cpu")
    return d


def _check_device(d: torch.device) -> None:
    """A ``ValueError`` naming ``devices`` if ``d`` cannot hold a tensor here (a missing GPU, say)."""
    if d.type == "meta":  # (it holds shapes only: accepted, then every call failed)
        raise ValueError("devices: the meta device holds no values to evaluate a model on")
    try:
        torch.empty(0, device=d)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise ValueError(f"devices: {d} is not available here ({type(e).__name__}: {str(e).splitlines()[0]})") from None


class DeviceExecutor(Executor):
    """Evaluate a round's points on several devices at once, one thread and one replica per device.

    Args:
        devices: e.g. ``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]`` for two CPU workers.
        replicate: ``replicate(fn, device) -> fn`` builds a device's replica of the model's network
            (default ``chords_torch.replicate``); it may also return a complete chords_core ``Model``.
        batched: one call per device for its share of the round (faster on GPUs; equal to the
            serial executor only for batch-invariant networks) instead of one call per point (the
            default, bit-for-bit equal to ``SerialExecutor``).
        round_timeout: seconds one round may take, from handing out its points to the last output
            (``None``: no limit). A thread stuck in a model call cannot be stopped: after a timeout
            the executor is closed and raises ``WorkerTimeout``, later calls ``ExecutorClosed``.
        timeout: deprecated name of ``round_timeout``.
    """

    values_checked = True  # (each output by model.evaluate, where it was evaluated: its finiteness checked there)

    # (no ``outputs_checked``: its outputs come back from the other devices, checked against the round's
    # points by the engine)

    round_timeout = RoundTimeout()  # (checked when set)

    def __init__(self, devices: Sequence[Any], *, replicate: Callable = replicate, batched: bool = False,
                 round_timeout: float | None = None, timeout: Any = UNSET) -> None:
        # (None, a number: "object of type 'NoneType' has no len()", naming nothing, a trial)
        if isinstance(devices, (str, torch.device)) or not hasattr(devices, "__len__") or not len(devices):
            raise ValueError(f"devices must be a non-empty list of devices, got {devices!r}")
        try:
            self.devices = [resolve_device(d) for d in devices]
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"devices: {e}") from None
        for d in self.devices:
            _check_device(d)
        if not callable(replicate):
            raise TypeError(f"replicate must be callable, got {type(replicate).__name__}")
        self.replicate, self.batched = replicate, check_bool("batched", batched)
        self.round_timeout = round_timeout_of(round_timeout, timeout, "DeviceExecutor")
        self._pools = [_DeviceThread(f"chords-{d}-{w}") for w, d in enumerate(self.devices)]
        self._threads = frozenset(p._thread.ident for p in self._pools)  # (a call from one: evaluated there)
        # one round at a time: a round's timeout counts from its own start, not from the rounds of other
        # threads queued before it (a round of 1 s timed out at 1.6 s behind another, closing the executor)
        self._lock = threading.Lock()  # (one_round_at_a_time)
        self._abandoned: list[_Call] = []  # the evaluations of a round interrupted while it waited
        # an executor dropped without close() stops its threads when collected (they waited for ever)
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, _stop_threads, list(self._pools), self._owner)
        self._replicas: dict = {}  # see _models
        self._closed = False

    def _models(self, model: Model) -> list[Model]:
        # id(model) -> (model, [replica model per device], the weights of copies (None: all shared), its network)
        entry = self._replicas.get(id(model))
        fn = getattr(model, fn_attr(model))
        # (the network compared by identity whether or not it was copied: replicas that share the driver's
        # network are bound to it, and a model given another network kept evaluating the old one)
        settings = model_settings(model)  # (the replicas are bound to a copy of the model's settings)
        changed, trains = entry[2].state() if entry is not None and entry[2] is not None else (False, False)
        if entry is None or entry[0] is not model or entry[3] is not fn or entry[4] != settings or changed:
            entry, self._replicas = None, {}  # the old copies go before the new ones are made (device memory)
            replicas = [self.replicate(fn, d) for d in self.devices]
            copies = any(r is not fn for r in replicas)  # copies go stale when the network's weights change
            entry = (model, [bind(model, r) for r in replicas], _Weights(fn) if copies else None, fn, settings)
            self._replicas = {id(model): entry}  # keep one model's replicas (the engine uses one)
            trains = entry[2] is not None and entry[2].state()[1]
        if trains and torch.is_grad_enabled():
            warn_caller("DeviceExecutor: the network's parameters require gradients, and the copies on the other "
                        "devices are made from detached weights: gradients reach x, not the parameters (3-17% of "
                        "dL/dW lost in a user trial); run inference under torch.no_grad(), or requires_grad_(False) "
                        "on the parameters", UserWarning)
        return entry[1]

    def refresh(self) -> None:
        """Make the replicas again at the next call: after changing the network's weights in a way the
        version check does not see (through ``.data``, as diffusers' ``EMAModel.copy_to`` does, or by
        replacing parameter objects)."""
        self._replicas = {}

    def _run(self, model: Model, device: torch.device, xs: Sequence[torch.Tensor], ts: Sequence[float],
             idx: list[int], grad: bool, amp: tuple[int, ...], stream: Any = None) -> list[torch.Tensor]:
        on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with torch.set_grad_enabled(grad), on_device, autocast_context(amp), _after_in(stream):
            if stream is not None:  # the caller works in a CUDA stream of its own, where it may still be
                # writing the points: this thread's stream on their device (which the copies and a model on
                # that device run in) waits for it first
                torch.cuda.current_stream(stream.device).wait_stream(stream)
            # (non-blocking only onto an accelerator: a copy into the host's memory returns before it is
            # done, and a CPU model would read it unfinished)
            pts = [xs[k].to(device, non_blocking=device.type != "cpu") for k in idx]
            tts = [ts[k] for k in idx]
            try:
                outs = model.evaluate(pts, tts, batched=self.batched)
            except ModelOutputError:
                raise  # (of this device's points ``idx``: ``__call__`` maps it to the round's)
            except BaseException as e:  # the model's own exception, with its traceback text (KeyboardInterrupt and
                # SystemExit too: raised by the model on this thread, never a signal, which only the main thread gets)
                k = raised_in(e, pts)  # (a call on one point: that point, in the round's terms)
                why = f"{type(e).__name__}: {e}\n--- traceback ---\n{traceback.format_exc()}"
                raise worker_failure(f"DeviceExecutor: the model raised on device {device}", idx,
                                     None if k is None else idx[k], why, xs)[0] from e
            back = [o.to(xs[k].device) for o, k in zip(outs, idx)]
            if stream is not None:  # the caller's stream uses the outputs: their memory is not reused
                for o in back:  # by this thread's stream before it is done with them
                    if o.is_cuda:
                        o.record_stream(stream)
            return back

    def __call__(self, model: Model, xs: Sequence[torch.Tensor], ts: Sequence[float]) -> list[torch.Tensor]:
        """Evaluate the round's points, point k on device k mod D (see ``Executor.__call__``).

        Args:
            model: the call's ``Model`` (replicated once per device, on first use).
            xs: the points, tensors of one shape and dtype on the driver's device.
            ts: their times.

        Returns:
            The raw outputs, in order, on the device of each point.

        Raises:
            ModelOutputError: a bad output, with its point's index (the smallest, if several).
            WorkerError: the model raised (naming the device and the points; the engine adds a note
                naming the round); the executor stays usable.
            WorkerTimeout: no answer within ``round_timeout``; the executor is closed (its threads are
                daemons: a stuck one does not keep the interpreter from exiting).
            ExecutorClosed: the executor was closed.
        """
        if os.getpid() != self._owner:  # (its threads do not exist in a forked child: a call waited for ever)
            raise ExecutorClosed(f"this DeviceExecutor belongs to process {self._owner}; its device threads do not "
                                 "exist in this (forked) one: make a new executor here")
        if self._closed:
            raise ExecutorClosed("this DeviceExecutor is closed")
        check_points(xs, ts, threads="DeviceExecutor")
        if threading.get_ident() in self._threads:
            # a model that itself solves on this executor (its network calls cc.parallel(..., executor=ex)):
            # queued behind the call it is part of, the inner round waited for ever; evaluated here, on
            # this device thread, as SerialExecutor (or batched) would
            return model.evaluate(list(xs), list(ts), batched=self.batched)
        return self._call(model, xs, ts)

    @one_round_at_a_time
    def _call(self, model: Model, xs: Sequence[torch.Tensor], ts: Sequence[float]) -> list[torch.Tensor]:
        """``__call__`` on this executor's device threads, one round at a time."""
        if self._closed:  # (closed while this round waited for another's)
            raise ExecutorClosed("this DeviceExecutor is closed")
        models = self._models(model)
        if model.check_outputs == "auto":  # decided where the outputs go: the driver's points' device
            mode = resolve_check("auto", B.on_accelerator(xs[0]))
            for m in models:
                m.check_outputs = mode
        grad, amp = torch.is_grad_enabled(), autocast_state()  # (thread-local: carried to the device threads)
        groups = assign(len(xs), len(self.devices))
        pools = self._pools  # ([] once closed by another thread: its close() cancels what it queued)
        if not pools:
            raise ExecutorClosed("this DeviceExecutor is closed")
        stream = _own_stream(xs[0])  # (the caller's, where not the default one: see _run)
        done: queue.SimpleQueue = queue.SimpleQueue()
        calls = [(idx, pools[w].submit(done, self._run, models[w], self.devices[w], xs, ts, idx, grad, amp, stream))
                 for w, idx in enumerate(groups) if idx]
        try:
            over = _wait([c for _, c in calls], done, self.round_timeout)
        except BaseException:  # a Ctrl-C: the evaluations run on (their outputs unread); close() does not
            self._abandoned = [c for _, c in calls]  # wait for them where they still run
            raise
        if any(c.state == _Call.CANCELLED for _, c in calls):
            raise ExecutorClosed("this DeviceExecutor was closed while the round waited for its devices")
        if not over:
            self.close(wait=False)
            pending = sum(not c.over() for _, c in calls)
            raise WorkerTimeout(
                f"DeviceExecutor: no answer from {pending} device thread(s) within "
                f"round_timeout={self.round_timeout:g} s")
        outs: list = [None] * len(xs)
        failures: list[tuple[BaseException, int]] = []
        for idx, c in calls:
            exc = c.error
            if exc is None:
                for k, o in zip(idx, c.result):
                    outs[k] = o
            elif isinstance(exc, ModelOutputError):  # at this device's point exc.point: the round's idx[exc.point]
                failures.append((exc, idx[exc.point]))
                place(outs, idx, exc.done or (), xs)  # (its points before the bad one)
            else:  # (at the point whose call raised where it is known, as ProcessExecutor orders them, a review)
                at = raised_in(exc, xs)
                failures.append((exc, idx[0] if at is None else at))
        if failures:
            raise first_failure(failures, outs)  # (with the outputs before its point, where all came)
        return outs

    def close(self, wait: bool = True) -> None:
        """Shut the device threads down (pending evaluations are cancelled); idempotent: a second call
        does nothing, so the ``with`` block's exit after a ``WorkerTimeout`` (which closed the
        executor without waiting) returns at once instead of waiting for the stuck model call.

        Args:
            wait: wait for the running evaluations to finish.
        """
        self._closed = True
        self._finalizer.detach()
        pools, self._pools = self._pools, []
        wait = wait and all(c.over() for c in self._abandoned)  # (a hung model of an interrupted round: no join)
        for p in pools:
            p.shutdown(wait=wait)
        self._replicas = {}

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        """Close, waiting for running evaluations only where the block ended without an exception: a
        Ctrl-C or an error inside the block returns at once (waiting, it joined a device thread stuck in
        a model call, and only a second Ctrl-C got out)."""
        self.close(wait=exc_type is None)

