"""Shared pieces of the torch executors: the point -> worker map, model shells, errors.

Point -> worker map. The engine hands an executor a round's points in core order, and in every
round the active cores are a prefix 0..n-1: core c starts in round c and finishes after
R_c = c + (its ticks) rounds, which does not increase with c (a faster core has fewer ticks left),
so cores leave from the top. Point k of a round is therefore core k, and the round-robin map
``point k -> worker k mod W`` is a *stable* core -> worker map: core c always runs on worker
c mod W, for every round, and every worker gets ceil(n / W) or floor(n / W) points.

Model shells. The engine's ``model`` object (a ``DiffusionModel`` or ``VectorField``) carries the
parametrisation and the output check; only its network ``fn`` (``f``) is replaced per worker.
A *shell* is a shallow copy with the network removed; it is cheap to pickle and is bound to the
worker's replica, so the worker evaluates with the core's own ``Model.evaluate`` (same calling
convention, same shape / finiteness check) and nothing is re-implemented here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import numbers
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from chords_core._backend import in_torch_func
from chords_core.models import Model, ModelOutputError, raised_at, resolve_check
from chords_core.schedules import ByIdentity, Schedule, attributes

__all__ = ["assign", "autocast_state", "autocast_context", "first_failure", "place", "shell_of", "bind", "dump_shell",
           "load_shell", "round_timeout_of", "ShellError", "WorkerError", "WorkerDied", "WorkerTimeout",
           "ExecutorClosed"]

_FN_ATTRS = ("fn", "f")  # DiffusionModel.fn, VectorField.f


class WorkerError(RuntimeError):
    """A worker failed other than by a bad model output (its exception, with the remote traceback).

    ``rank``: the torch.distributed rank involved, where known (``DistributedExecutor``); else ``None``.
    """

    rank: int | None = None


class WorkerDied(WorkerError):
    """A worker process / rank exited while the caller waited for it."""


class WorkerTimeout(WorkerError, TimeoutError):
    """A worker did not answer within the executor's timeout."""


class ExecutorClosed(RuntimeError):
    """The executor was closed (or broken by a dead / hung worker) and cannot evaluate."""


def assign(n: int, workers: int) -> list[list[int]]:
    """Point indices per worker for a round of ``n`` points: point k goes to worker k mod ``workers``.

    Args:
        n: the round's number of points.
        workers: W, the number of workers.

    Returns:
        W lists of point indices (some empty when n < W).
    """
    return [list(range(w, n, workers)) for w in range(workers)]


def first_failure(failures: Sequence[tuple[BaseException, int]], outs: Sequence[Any] | None = None) -> BaseException:
    """The exception a round raises where several of its points failed, each failure given as
    (exception, the round's index of its point): a worker's own failure (the model raised) first, as
    the default ``BatchedExecutor``, whose one call raises before any output is checked; then the
    ``ModelOutputError`` of the smallest point. Ties go to the earlier in ``failures``. With ``outs``
    (the round's outputs that came, ``None`` where none did), a ``ModelOutputError`` is at its round's
    index and holds the outputs before it where all came (``ModelOutputError.done``: a method goes on
    with them)."""
    err, k = min(failures, key=lambda f: (isinstance(f[0], ModelOutputError), f[1]))
    if outs is not None and isinstance(err, ModelOutputError):
        before = list(outs[:k])
        return err.relabel(k, str(err), before if all(o is not None for o in before) else None)
    return err


def worker_failure(who: str, idx: Sequence[int], at: int | None, message: str,
                   xs: Sequence[Any]) -> tuple[BaseException, int]:
    """``(error, the round's index of its point)`` for ``first_failure``: the ``WorkerError`` of ``who``
    (a worker, a device) whose model raised ``message`` on the round's points ``idx``, at point ``at``
    where known (then marked for the engine's note: ``models.raised_at``), else at its first point."""
    err = WorkerError(f"{who} ({f'points {list(idx)}' if at is None else f'point {at}'}): {message}")
    return (err, idx[0]) if at is None else (raised_at(err, xs, at), at)


def place(outs: list, idx: Sequence[int], values: Sequence[Any], xs: Sequence[Any]) -> None:
    """Put a worker's outputs ``values`` for the round's points ``idx`` (in order; fewer where it
    stopped at a bad point: ``ModelOutputError.done``) into the round's ``outs``, each on the device of
    its point in ``xs``, for ``first_failure`` or the caller."""
    for k, o in zip(idx, values):
        outs[k] = o.to(xs[k].device)


def fn_attr(model: Model) -> str:
    """The attribute of ``model`` that holds its network (``fn`` or ``f``)."""
    for name in _FN_ATTRS:
        if hasattr(model, name):
            return name
    raise TypeError(
        f"cannot replace the network of a {type(model).__name__}: it has no 'fn' or 'f' attribute; "
        "let the factory return a complete chords_core Model instead"
    )


def shell_of(model: Model) -> Model:
    """A shallow copy of ``model`` without its network (picklable if the schedule is).

    Args:
        model: a chords_core ``Model`` with an ``fn`` or ``f`` attribute.

    Returns:
        The shell (its network ``None``).
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a chords_core Model, got {type(model).__name__}")
    shell = copy.copy(model)
    setattr(shell, fn_attr(model), None)
    return shell


def model_settings(model: Model) -> tuple:
    """What a model's shell carries besides the network, to tell whether the model changed since its
    shell was sent or its replicas bound (``check_outputs`` set to ``False`` after a first call kept
    raising on nan): its attributes by value (``_by_value``: numbers, strings, numeric arrays up to
    ``SETTINGS_ARRAY_BYTES``, tuples, lists and dicts of them, models and schedules by their
    attributes; a numpy array changed in place is a change: a trial's Model subclass scaled by an
    array field kept the workers' old value, 17 off the serial result), anything else by identity,
    holding the object (``ByIdentity``: a bare id is reused once the object is freed)."""
    net = fn_attr(model)
    budget = [SETTINGS_NODES]
    return tuple(sorted(((k, _by_value(v, budget)) for k, v in attributes(model).items() if k != net),
                        key=lambda kv: kv[0]))


#: numeric arrays in a model's attributes up to this size are compared by value (their bytes copied
#: each round); larger ones by identity (an 80 MB table cost 0.25 s a round), so a large array changed
#: in place is not noticed: assign a new one
SETTINGS_ARRAY_BYTES = 1 << 20
#: values ``model_settings`` compares by value in all (containers and items); past it, by identity (a
#: list holding itself twice was walked for ever)
SETTINGS_NODES = 10_000


def _by_value(v: Any, budget: list[int], depth: int = 0) -> Any:
    """``v`` as a value that compares equal exactly when what a model shell would carry of it is the
    same (``model_settings``); ``budget``: the values left to walk, past which (and past 32 levels of
    nesting, and for objects of other kinds) by identity. Numpy scalars by their bits (a float32 nan
    equals itself)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    budget[0] -= 1
    if budget[0] < 0 or depth > 32:
        return ByIdentity(v)
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return ("scalar", v.dtype.str, v.tobytes())
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.nbytes <= SETTINGS_ARRAY_BYTES:
        return ("array", v.dtype.str, v.shape, v.tobytes())  # (a copy of the bytes: an in-place change shows)
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_by_value(e, budget, depth + 1) for e in v))
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return ("dict", tuple(sorted((k, _by_value(e, budget, depth + 1)) for k, e in v.items())))
    if isinstance(v, (Model, Schedule)):
        return (ByIdentity(type(v)),
                tuple(sorted((k, _by_value(e, budget, depth + 1)) for k, e in attributes(v).items())))
    return ByIdentity(v)


def model_state(model: Model) -> tuple:
    """The model itself (by identity, held) and its ``model_settings``: what the workers' shell was
    made from, compared by the process and distributed executors to know when to send it again."""
    return ByIdentity(model), model_settings(model)


class ShellError(ValueError):
    """Bytes received as a model shell that do not describe one (or a shell that cannot be sent)."""


def _encode(v: Any, where: str) -> Any:
    """``v`` as JSON-ready plain data: numbers, strings, None, lists / tuples / dicts of them, numeric
    numpy arrays, and instances of the library's Model / Schedule classes by class name and fields."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v.item() if isinstance(v, np.generic) else v
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return v.item()
    if isinstance(v, tuple):
        return {"t": [_encode(e, f"{where}[{k}]") for k, e in enumerate(v)]}
    if isinstance(v, list):
        return {"l": [_encode(e, f"{where}[{k}]") for k, e in enumerate(v)]}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"d": {k: _encode(e, f"{where}[{k!r}]") for k, e in v.items()}}
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return {"a": [v.dtype.str, list(v.shape), v.ravel().tolist()]}
    if isinstance(v, (Model, Schedule)):
        cls = type(v)
        return {"o": f"{cls.__module__}:{cls.__qualname__}",
                "s": {k: _encode(e, f"{where}.{k}") for k, e in attributes(v).items()}}
    raise ShellError(f"the model shell holds a {type(v).__name__} at {where}; only numbers, strings, numeric "
                     "arrays and the library's model / schedule objects travel to the workers")


def _decode(v: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ShellError("model shell nested too deeply")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if not isinstance(v, dict) or len(v) not in (1, 2):
        raise ShellError(f"not a model shell: unexpected {type(v).__name__}")
    if "t" in v:
        return tuple(_decode(e, depth + 1) for e in v["t"])
    if "l" in v:
        return [_decode(e, depth + 1) for e in v["l"]]
    if "d" in v:
        return {str(k): _decode(e, depth + 1) for k, e in v["d"].items()}
    if "a" in v:
        try:
            dt, shape, flat = v["a"]
            dtype = np.dtype(dt) if isinstance(dt, str) else None
            if dtype is None or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
                raise ShellError(f"model shell: refused array dtype {dt!r}")
            if not all(isinstance(e, (bool, int, float)) for e in flat):
                raise ShellError("model shell: an array of something else than numbers")
            return np.array(flat, dtype=dtype).reshape([int(n) for n in shape])
        except (TypeError, ValueError) as e:
            if isinstance(e, ShellError):
                raise
            raise ShellError(f"model shell: refused array ({type(e).__name__}: {e})") from None
    if "o" in v:
        module, _, qualname = str(v["o"]).partition(":")
        obj: Any = sys.modules.get(module)  # never import: an import runs code
        for part in qualname.split("."):
            obj = getattr(obj, part, None) if obj is not None and not part.startswith("_") else None
        if not (isinstance(obj, type) and issubclass(obj, (Model, Schedule))):
            raise ShellError(f"refused to load {v['o']}: a model shell may only hold the library's Model / "
                             "Schedule classes (from modules this process has imported)")
        inst = obj.__new__(obj)
        for k, field in dict(v.get("s", {})).items():
            if not isinstance(k, str) or k.startswith("__"):
                raise ShellError(f"model shell: refused field name {k!r}")
            object.__setattr__(inst, k, _decode(field, depth + 1))
        return inst
    raise ShellError("not a model shell: unknown entry")


def dump_shell(model: Model) -> bytes:
    """The shell of ``model`` (``shell_of``) as plain data (JSON bytes) for ``load_shell``: its class
    and fields by name, no pickle.

    Args:
        model: a chords_core ``Model``.

    Returns:
        The encoded shell. ``ShellError`` if a field holds anything but plain data.
    """
    return json.dumps(_encode(shell_of(model), "model")).encode()


def load_shell(data: bytes) -> Model:
    """A model shell from ``dump_shell``'s bytes: plain data, decoded without pickle; the only classes
    it can name are the library's model and schedule classes, instantiated without running their
    code (``__new__``, then the fields), so bytes from the network cannot run code here.

    Args:
        data: the bytes received.

    Returns:
        The shell (a ``Model`` without its network).

    Raises:
        ShellError: the bytes are not a shell, name another class, or do not hold a ``Model``.
    """
    try:
        raw = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ShellError(f"not a model shell ({type(e).__name__}: {e})") from None
    shell = _decode(raw)
    if not isinstance(shell, Model):
        raise ShellError(f"a model shell must be a chords_core Model, got {type(shell).__name__}")
    return shell


def bind(shell: Model, replica: Callable | Model) -> Model:
    """The model a worker evaluates: ``replica`` itself if it is a Model, else ``shell`` with network ``replica``.

    Args:
        shell: the driver's model without its network (``shell_of``).
        replica: the worker's network, or a complete ``Model``.

    Returns:
        The bound ``Model``.
    """
    if isinstance(replica, Model):
        differs = _parametrised_otherwise(shell, replica)
        if differs:
            # (the engine converts every output as the call's model says: a factory's VP / eps Model beside a
            # rectified-flow call gave the flow result bit for bit, its own parametrisation ignored)
            raise ValueError(f"model: the Model a worker was given ({differs[1]}) is parametrised otherwise than the "
                             f"call's ({differs[0]}), which converts its outputs; return the network itself (the "
                             "call's model supplies parametrisation and schedule) or a Model like the call's")
        return replica
    if not callable(replica):
        raise TypeError(f"a worker's model must be callable or a chords_core Model, got {type(replica).__name__}")
    model = copy.copy(shell)
    setattr(model, fn_attr(shell), replica)
    # a worker's outputs leave its device for the host: "auto" checks them at once, in the worker
    model.check_outputs = resolve_check(model.check_outputs, on_accelerator=False)
    return model


def _parametrisation(model: Model) -> tuple | None:
    """What a diffusion model's outputs mean: its prediction and its schedule (by value, but for
    ``t_min``, which only says where grids stop: ``VP.linear(t_min=1e-4)`` beside ``VP()`` was refused;
    by type where the schedule holds an array, which a copy in a worker does not share); ``None`` for
    other models (a plain ODE's outputs are its velocity, whatever its class)."""
    from chords_core.models import DiffusionModel
    from chords_core.schedules import schedule_key

    if not isinstance(model, DiffusionModel):
        return None
    kind, fields = schedule_key(model.schedule)
    if isinstance(fields, ByIdentity):
        return model.prediction, kind
    return model.prediction, kind, tuple(item for item in fields if item[0] != "t_min")


def _parametrised_otherwise(shell: Model, replica: Model) -> tuple[str, str] | None:
    """(the call's, the replica's) parametrisation in words where they differ, else ``None``."""
    a, b = _parametrisation(shell), _parametrisation(replica)
    if a == b:
        return None

    def words(m: Model, p: tuple | None) -> str:
        if p is None:
            return f"a {type(m).__name__}, no diffusion parametrisation"
        shown = repr(m.schedule)  # type: ignore[attr-defined]
        return f"prediction {p[0]!r} on {shown if len(shown) <= 100 else shown[:97] + '...'}"

    return words(shell, a), words(replica, b)


#: the device types whose ``torch.autocast`` state an executor carries to its workers, and the dtypes
#: autocast computes in (``autocast_state``'s codes index them)
AUTOCAST_DEVICES = ("cpu", "cuda")
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # (CUDA takes any floating dtype)


def autocast_state() -> tuple[int, ...]:
    """The calling thread's ``torch.autocast`` settings, as small ints that travel in a message: per
    device type in ``AUTOCAST_DEVICES``, 0 where autocast is off, else 1 + its dtype's index in
    ``AUTOCAST_DTYPES``. Autocast is thread-local: a worker thread or process evaluates in full
    precision unless it enters it again (``autocast_context``); a caller's autocast was silently
    dropped by the device and process executors (1.3e-3 off ``SerialExecutor`` in bfloat16)."""
    codes = []
    for dev in AUTOCAST_DEVICES:
        try:
            on, dtype = torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)
        except (TypeError, AttributeError):  # torch before 2.4: the per-type functions
            if dev == "cpu":
                on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
            else:
                on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        if on and dtype not in AUTOCAST_DTYPES:  # (never dropped in silence)
            raise ValueError(f"torch.autocast({dev!r}, dtype={dtype}): the executors carry autocast in "
                             f"{', '.join(map(str, AUTOCAST_DTYPES))} only")
        codes.append(1 + AUTOCAST_DTYPES.index(dtype) if on else 0)
    return tuple(codes)


def autocast_context(codes: Sequence[int]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` entered as ``codes`` (``autocast_state``) say; nothing where all are 0."""
    if not any(codes):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for dev, code in zip(AUTOCAST_DEVICES, codes):
        if code:
            stack.enter_context(torch.autocast(dev, dtype=AUTOCAST_DTYPES[int(code) - 1]))
    return stack


def one_round_at_a_time(call: Callable) -> Callable:
    """An executor's round run under its ``_lock``: threads that share the executor take turns, for an
    executor whose channels to its workers carry one round at a time (interleaved, two rounds read each
    other's replies: a wrong result without error, or an error naming a live worker), or whose round
    timeout counts from the round's start (``DeviceExecutor``). A caller queued behind another thread's
    round raises ``ExecutorClosed`` once the executor is closed (``_closed``), not when that round ends:
    a round stuck in a model call, which no close can end, held the callers behind it for ever.

    A Ctrl-C can land just as the lock is taken, before the ``try`` that releases it, or inside that
    ``finally``, leaving the lock held by no round (a trial: the next call waited for ever, after
    76-1,840 interrupted calls): a caller that has waited ``ORPHANED_S`` seconds looks for the round
    holding it in every thread's stack (``_round_running``) and, finding none twice in a row, takes the
    lock over; an interrupted round sends nothing more, and its executor is closed or drained by then."""

    @functools.wraps(call)
    def locked(self: Any, model: Any, xs: Sequence[Any], ts: Sequence[float]) -> Any:
        start, orphaned = time.monotonic(), 0
        # (a re-entrant lock an interrupted round left is still its thread's, which re-enters it: not taken
        # over, or two rounds ran at once, a review)
        plain = not isinstance(self._lock, _RLOCK)
        while not self._lock.acquire(timeout=0.05):
            if self._closed:
                raise ExecutorClosed(f"this {type(self).__name__} was closed while the round waited for another "
                                     "thread's")
            if plain and time.monotonic() - start > ORPHANED_S:
                with _TAKEOVER:  # (one waiter at a time looks and takes over: two took it over at once, a review)
                    orphaned = 0 if _round_running(self) else orphaned + 1
                    if orphaned >= 2:
                        holding = self  # (seen by the next waiter's look, under _TAKEOVER)
                        break  # (held by no round: taken over, released below)
        holding = self  # noqa: F841 (what _round_running looks for in the frame)
        try:
            return call(self, model, xs, ts)
        finally:
            try:
                self._lock.release()
            except RuntimeError:  # (a re-entrant lock taken over from the thread that holds it: left to it)
                pass

    global _LOCKED_CODE
    _LOCKED_CODE = locked.__code__  # type: ignore[attr-defined]
    return locked


_LOCKED_CODE: Any = None  # the code of one_round_at_a_time's wrapper (one code object for all)
_TAKEOVER = threading.Lock()  # held by a waiter while it looks for a round holding a lock, and takes it over
_RLOCK = type(threading.RLock())


def _round_running(executor: Any) -> bool:
    """Whether some thread's stack holds a round of ``executor`` past its wait for the round lock
    (``one_round_at_a_time``'s frame with ``holding``): a round interrupted has left every stack, even
    where its traceback keeps the frame."""
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code is _LOCKED_CODE and f.f_locals.get("holding") is executor:
                return True
            f = f.f_back
    return False


#: how long a round lock held by no round (``one_round_at_a_time``) is waited for before it is taken over
ORPHANED_S = 1.0


def check_points(xs: Sequence[Any], ts: Sequence[float], elsewhere: str | None = None, *,
                 threads: str | None = None) -> None:
    """Check a round's points: one time per point, all tensors of one shape and dtype (as the engine's states are).

    Args:
        xs: the points.
        ts: their times.
        elsewhere: the executor's name where it evaluates in other processes, where autograd cannot
            follow: a point that requires gradients (with gradients enabled) is then refused, since
            the outputs would come back without the model's part of the gradient (89% off
            ``SerialExecutor``'s, silently), and so is a point carrying a forward-mode tangent
            (``torch.autograd.forward_ad``: the model's part of it was dropped in transit, 3.96 off
            a tangent of 5.47).
        threads: the executor's name where it evaluates on threads of its own (``DeviceExecutor``).

    A call inside a ``torch.func`` transform (grad, vjp, jvp, vmap) is refused by both kinds
    (``TypeError`` naming ``executor``): the transform does not reach the executor's threads or
    processes, and the model's outputs came back as constants (``torch.func.grad`` through
    ``DeviceExecutor`` 0.605 off a gradient of 2.50, silently).

    Raises ``ValueError`` / ``TypeError`` naming the offending point.
    """
    import torch

    if len(xs) != len(ts):
        raise ValueError(f"xs and ts must have the same length, got {len(xs)} and {len(ts)}")
    if not xs:
        return
    x0 = xs[0]
    for k, x in enumerate(xs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: this executor evaluates torch tensors, and point {k} of the round is a "
                            f"{type(x).__name__}; pass the state as a torch.Tensor (or use a chords_core executor)")
        if x.is_meta:
            raise TypeError(f"x: point {k} of the round is a tensor on the meta device, which holds no values")
        if x.shape != x0.shape or x.dtype != x0.dtype:
            raise ValueError(
                f"xs[{k}] has shape {tuple(x.shape)} {x.dtype}, expected {tuple(x0.shape)} {x0.dtype} like xs[0]")
    name = elsewhere or threads
    if name is not None and in_torch_func(*xs):
        raise TypeError(f"executor: {name} evaluates the model on {'processes' if elsewhere else 'threads'} of its "
                        "own, which the torch.func transform (grad, vjp, jvp, vmap) this call runs in does not reach: "
                        "its derivatives would treat the model as a constant; under torch.func use a chords_core "
                        "executor (SerialExecutor, BatchedExecutor)"
                        f"{'' if elsewhere else ', or differentiate with torch.autograd (backward)'}")
    if elsewhere is not None and torch.autograd.forward_ad._current_level >= 0 and any(
            torch.autograd.forward_ad.unpack_dual(x).tangent is not None for x in xs):
        raise TypeError(f"x: {elsewhere} evaluates the model in other processes, where a forward-mode tangent "
                        "(torch.autograd.forward_ad) cannot follow, and a point of the round carries one; use "
                        "DeviceExecutor or a chords_core executor for forward-mode derivatives")
    if elsewhere is not None and torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        raise TypeError(f"x: {elsewhere} evaluates the model in other processes, where gradients cannot follow, and "
                        "a point of the round requires them; differentiate with DeviceExecutor or a chords_core "
                        "executor, or run under torch.no_grad() (or pass x.detach())")


#: the longest timeout an executor takes, in seconds (about 11.6 days): the waits below pass it to
#: ``poll`` in milliseconds, a C int (2^31 ms, 24.8 days, overflowed deep inside a call)
MAX_TIMEOUT = 1e6


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """An executor's timeout: a positive number of seconds up to ``MAX_TIMEOUT``, or ``None`` (no limit).

    Args:
        timeout: the value to check.
        name: the argument's name, for the error.

    Returns:
        ``float(timeout)`` or ``None``; ``ValueError`` otherwise.
    """
    if timeout is None:
        return None
    # (numpy's numbers too: np.float32(5) was refused, a trial; bools and strings are not numbers here)
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {timeout!r}")
    if not timeout <= MAX_TIMEOUT:
        raise ValueError(f"{name} must be at most {MAX_TIMEOUT:g} seconds, got {timeout!r} (None: no limit)")
    return float(timeout)


#: the default of the deprecated ``timeout`` keyword: "not given"
UNSET: Any = object()


class RoundTimeout:
    """The executors' ``round_timeout`` attribute, checked when set (``check_timeout``) after construction
    too (``ex.round_timeout = "60"`` was taken, and failed at the next round naming nothing)."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else obj.__dict__["_round_timeout"]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["_round_timeout"] = check_timeout(value, "round_timeout")


def round_timeout_of(round_timeout: float | None, timeout: Any, owner: str) -> float | None:
    """An executor's ``round_timeout`` (seconds one round may take, from sending its points to the last
    answer), or the value of the deprecated ``timeout`` keyword that it replaces (with a warning).

    Args:
        round_timeout: the value given (or the default).
        timeout: the deprecated keyword's value, ``UNSET`` if not given.
        owner: the executor's class name, for the messages.

    Returns:
        The value to set (``RoundTimeout`` checks it as it is set).
    """
    if timeout is not UNSET:
        warnings.warn(f"{owner}(timeout=...) is deprecated: use round_timeout= (the same meaning: seconds one round "
                      "may take, from sending its points to the last answer)", DeprecationWarning, stacklevel=3)
        round_timeout = timeout
    return round_timeout
