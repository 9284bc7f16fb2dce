"""chords_jax across processes (``jax.distributed``): a call made alike on every process, or refused.

Under ``jax.distributed`` every process of a mesh runs the same compiled program and meets the others
in its collectives; a call that differs between them (another ``cores``, grid, stop rule, ``x``),
or that one process does not reach, would hang them or return a silent mix. Before any collective,
``same_call`` compares digests of the call's parts between the processes through JAX's coordination
service, bounded in time, and raises ``ValueError`` naming what differs (``RuntimeError`` where one
does not come); ``in_step`` refuses a process's later calls after one ended there with an error
the others may not share; ``replicated`` places ``x`` and ``args`` on the mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chords_core.models import ModelOutputError
from chords_core.schedules import attributes

from .lower import Program
from .run import time_dtype

__all__ = ["same_call", "in_step", "alike", "replicated", "check_args_devices", "call_parts", "set_sync_timeout",
           "PROGRAM_PART"]


def check_args_devices(x: jax.Array, args: Any) -> None:
    """Refuse, naming ``args``, arrays of ``args`` committed to other devices than the state ``x`` is
    committed to (without a mesh): JAX's own error named the library's inner functions (a user trial);
    and, naming ``x`` or ``args``, a global array spread over other processes' devices too (under
    ``jax.distributed``): a run without a mesh is this process's alone (JAX's error on reading it named
    neither, or the run went on unchecked, each process with its own grid, a trial)."""
    for name, value in (("x", x), ("args", args)):
        if any(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and not leaf.is_fully_addressable
               for leaf in jax.tree_util.tree_leaves(value)):
            raise ValueError(f"{name}: a global array over devices of other processes too; without devices= the run "
                             "is this process's alone: pass devices= a mesh over those devices (chords_jax.chords, "
                             "solve, srds), or each process's own array")
    if args is None or isinstance(x, jax.core.Tracer) or not getattr(x, "committed", False):
        return
    where = x.devices()
    for leaf in jax.tree_util.tree_leaves(args):
        if (isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.committed
                and leaf.devices() != where):
            ids, x_ids = sorted(d.id for d in leaf.devices()), sorted(d.id for d in where)
            raise ValueError(f"args: an array of it lies on device(s) {ids}, the state x on {x_ids}; put args on "
                             "x's devices (jax.device_put(args, x.sharding))")


def replicated(mesh: Any, x: jax.Array, args: Any) -> tuple[jax.Array, Any]:
    """``x`` and ``args`` placed replicated on every device of ``mesh`` (in every process); as they
    are without a mesh. Under ``jax.distributed`` JAX checks that every process passes the same
    values: a difference is a ``ValueError`` naming the argument (JAX's ``AssertionError`` named
    only a type)."""
    if mesh is None:
        check_args_devices(x, args)
        return x, args
    everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def put(name: str, value: Any) -> Any:
        try:
            return _placed(value, everywhere)
        except AssertionError as err:
            if "not the same on each process" not in str(err):
                raise
            raise alike(ValueError(f"{name}: its values differ between the processes; under jax.distributed every "
                                   f"process makes the same call with the same {name}")) from None

    return put("x", x), None if args is None else put("args", args)


def _placed(value: Any, where: Any) -> Any:
    """``value`` (a pytree) placed on ``where``; through the host on a mesh over some processes, where
    JAX places a jax array only from there (a review's run with args)."""
    try:
        return jax.device_put(value, where)
    except ValueError as err:
        if "represents addressable devices" not in str(err):
            raise
        return jax.tree_util.tree_map(_via_host(where), value)


def _via_host(where: Any) -> Callable[[Any], Any]:
    """A leaf placed on ``where`` through the host where it is a jax array of this process's devices (a
    PRNG key by its key data)."""
    def put(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array) or not leaf.is_fully_addressable:
            return jax.device_put(leaf, where)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(leaf)), where)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(np.asarray(leaf), where)

    return put


def same_call(mesh: Any, parts: Callable[[], dict[str, Any]], x: Any = None, args: Any = None) -> None:
    """Under ``jax.distributed``, with a mesh over the devices of several processes: raise ``ValueError``
    naming the arguments (``parts()``: name -> a description) that differ between the processes of
    the mesh, from their digests exchanged through JAX's coordination service (``_exchange``; processes
    outside the mesh take no part), before any collective whose shapes depend on them (a user trial: different
    ``cores`` or ``stop`` aborted the processes in a collective mismatch, one at once and the others
    after about 100 s; a different grid raised JAX's assertion naming ``numpy.ndarray``). The values of
    ``x`` and ``args`` are JAX's to compare (``replicated``) on a mesh over every process; on a mesh
    over some processes only JAX does not compare them (each process returned an answer for its own
    ``x``, 15-48 off, silently, a trial), so there their digests are gathered too. Weights a model
    reads from its closure cannot be compared (pass them as ``args``). Nothing is gathered for one
    process. A call on a process whose earlier call was interrupted (``in_step``), or whose calls were
    found out of step with the others' (a skipped call), is refused."""
    processes = _processes(mesh)
    if len(processes) < 2:
        return
    if _OUT_OF_STEP:
        raise alike(RuntimeError(f"devices: {_OUT_OF_STEP[0]}; restart every process"))
    described = parts()
    # (the mesh's own layout is compared too, over its devices in one order: two processes whose meshes
    # listed the devices in other orders failed in a gloo timeout after 30 s, naming nothing, a review)
    described["devices (the mesh's layout)"] = (tuple(mesh.axis_names), mesh.devices.shape,
                                                tuple(d.id for d in mesh.devices.flat))
    if len(processes) < jax.process_count():
        # (JAX does not compare them there: each leaf by its values, ``_stable``)
        described.update({"x (values)": jax.tree_util.tree_leaves(x),
                          "args (values)": jax.tree_util.tree_leaves(args)})
    names = sorted(described)
    # (the parts' names first: another function's call, chords_jax.srds against chords, has other parts;
    # then the digests of this process's previous call in the group of processes and of this one)
    parts_ = [_digest(repr(names))] + [_digest(_stable(described[n])) for n in names]
    procs = sorted(processes)
    group = ",".join(map(str, procs))
    count, previous = _MEETINGS.get(group, (0, 0))
    mine = np.array(parts_[:1] + [previous, _digest(repr(parts_))] + parts_[1:], np.int32)
    _MEETINGS[group] = (count + 1, int(mine[2]))
    rows = _exchange(procs, group, count + 1, mine, mesh)
    among = (f"{jax.process_count()}" if len(processes) == jax.process_count() else
             f"the mesh's processes {procs}")
    # after calls that differed, a process whose previous call is this one made it already, one whose call is
    # this one's previous makes it late: a process skipped a call (or made one more), and pairing the calls in
    # turn would refuse every later one as differing (a review: four calls in turn, then a timeout). (After a
    # call made alike, a call that is one's previous is a mere difference: refused as one, below.)
    shifted = [(p, row) for p, row in zip(procs, rows) if row.size > 2 and row[2] != mine[2] and row[1] != mine[1]]
    ahead = [p for p, row in shifted if row[1] == mine[2]]
    behind = [p for p, row in shifted if row[2] == mine[1]]
    if ahead or behind:
        said = ", ".join(([f"process(es) {ahead} made this call one call before"] if ahead else []) +
                         ([f"process(es) {behind} make this process's previous call now"] if behind else []))
        _OUT_OF_STEP[:] = [f"the calls over the processes were found out of step ({said}: a process skipped a call, "
                           "or made one more)"]
        raise alike(RuntimeError(f"devices: {_OUT_OF_STEP[0]}; the processes cannot tell which calls belong "
                                 "together now: every later call over them is refused; restart every process"))
    if any(row.size != mine.size or row[0] != mine[0] for row in rows):
        raise alike(ValueError(f"the call: differs between the processes (process {jax.process_index()} of {among}): "
                               "another chords_jax function, or another kind of call; under jax.distributed every "
                               "process makes the same call"))
    every = np.stack(rows)
    differ = [n for k, n in enumerate(names, 3) if (every[:, k] != mine[k]).any()]
    if len(differ) > 1:  # the compiled program follows from the others: named alone only
        differ = [n for n in differ if not n.startswith(PROGRAM_PART)]
    if differ:
        hint = ""
        if any(_by_attributes(described[n]) for n in differ):
            hint = ("; an object whose repr holds its address (a plain class's stop rule, say) is compared by its "
                    "attributes, so one that differs between processes (a time, a counter) differs: give its class "
                    "a __repr__ of what decides (a dataclass has one)")
        raise alike(ValueError(f"{', '.join(differ)}: differ{'s' if len(differ) == 1 else ''} between the processes "
                               f"(process {jax.process_index()} of {among}); under jax.distributed every "
                               f"process makes the same call{hint}"))


def _digest(text: str) -> int:
    """A 32-bit digest of ``text``, the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little", signed=True)


def _processes(mesh: Any) -> set[int]:
    """The processes whose devices ``mesh`` holds (none for no mesh; one under a single process)."""
    if mesh is None or jax.process_count() == 1:
        return set()
    return {d.process_index for d in mesh.devices.flat}


@jax.jit
def _fingerprint_bytes(a: Any) -> Any:
    b = jax.lax.bitcast_convert_type(a.reshape(-1), jnp.uint8).reshape(-1).astype(jnp.uint32)
    weights = jnp.arange(b.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(b * weights, dtype=jnp.uint32)  # (wrapping integer sums: the same in any order)


def _fingerprint(a: jax.Array) -> str:
    """A large array's bytes as one 32-bit sum weighted by position, computed on its device (no copy to
    the host: ``_stable``), with its complex parts apart; a bool array as bytes."""
    if a.dtype == jnp.bool_:
        a = a.astype(jnp.uint8)
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
        a = jnp.stack([a.real, a.imag])
    return str(int(_fingerprint_bytes(a)))


def set_sync_timeout(seconds: float) -> float:
    """Set how long a call over several processes waits for the others to reach it (its check that
    they make the same call, where they meet first), 300 s to begin with; returns the previous value.
    A call that not every process reaches in time raises ``RuntimeError`` on each that waited, and on
    a late one at once.

    Args:
        seconds: a positive number of seconds; ``math.inf`` waits without a limit.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)) or not (
            0 < float(seconds)):
        raise ValueError(f"seconds: a positive number of seconds (math.inf: no limit), not {seconds!r}")
    previous, _SYNC_TIMEOUT[0] = _SYNC_TIMEOUT[0], float(seconds)
    return previous


#: how long ``same_call`` waits for the other processes, in seconds (``set_sync_timeout``)
_SYNC_TIMEOUT = [300.0]
#: per group of processes (their ids, joined): how many checks this process has entered with them, and the
#: digest of its call at the last (``same_call``; the meetings are numbered by the first, ``_exchange``)
_MEETINGS: dict[str, tuple[int, int]] = {}
#: the longest wait the coordination service takes, in milliseconds (about 31,700 years; its int64 overflowed)
_MAX_WAIT_MS = 10**15
#: the prefix of the coordination service's keys and barriers that ``_exchange`` uses
_KEY = "chords_jax/same_call"


def _client() -> Any:
    """JAX's client of the coordination service that ``jax.distributed.initialize`` started, or
    ``None`` where this JAX keeps it elsewhere (a private module)."""
    try:
        from jax._src import distributed
    except ImportError:
        return None
    client = getattr(getattr(distributed, "global_state", None), "client", None)
    needs = ("key_value_set_bytes", "wait_at_barrier", "blocking_key_value_get_bytes", "key_value_delete")
    return client if all(hasattr(client, name) for name in needs) else None


def _exchange(processes: list[int], group: str, n: int, mine: np.ndarray, mesh: Any) -> list[np.ndarray]:
    """``mine`` (an int32 vector) of every process in ``processes``, in their order, through JAX's
    coordination service, not the devices: each posts its own at the group's ``n``-th meeting, all meet
    at a barrier bounded by the sync timeout (``set_sync_timeout``), then each reads the others'. So a
    process that raised before the call, skipped it or is busy elsewhere costs the others a
    ``RuntimeError`` after the timeout, not a wait for ever in a collective (a call on meshes holding
    other devices met in mismatched collectives too); the service fails the barrier for every process at
    once, and one arriving later fails at once (a late one is back in step; one that skipped the call is
    found out of step later, ``same_call``). A Ctrl-C while waiting withdraws this process's digests, so
    that the others refuse the call where the barrier has not passed yet. Without the client (JAX moved
    it), one all-gather over the mesh's devices, not bounded."""
    client = _client()
    if client is None:  # (a row a device; the vectors' lengths must agree there)
        return list(_gather_over(jax.sharding.Mesh(np.array(sorted(mesh.devices.flat, key=lambda d: d.id)), ("all",)),
                                 mine))
    at, me, timeout = f"{_KEY}/{group}/{n}", jax.process_index(), _SYNC_TIMEOUT[0]
    wait_ms = max(1, round(min(timeout * 1000, _MAX_WAIT_MS)))  # (math.inf: the longest)
    failed: list[BaseException] = []
    met = [False]

    def wait() -> None:
        try:
            client.wait_at_barrier(at, wait_ms, processes)
            met[0] = True
        except Exception as err:  # (JAX's error, handed to the caller's thread)
            failed.append(err)

    posted = False
    try:
        client.key_value_set_bytes(f"{at}/{me}", mine.tobytes(), allow_overwrite=True)
        posted = True
        waiting = threading.Thread(target=wait, name="chords_jax: waiting for the other processes", daemon=True)
        waiting.start()
        waiting.join()  # (in a thread: a Ctrl-C reaches this one while the service waits)
    except BaseException:
        if posted and not met[0]:  # (once the barrier passed, the others may have read the digests already)
            client.key_value_set_bytes(f"{at}/{me}", b"", allow_overwrite=True)
        raise
    finally:
        if n > 1:  # (every process that met here has read this one's previous digests)
            client.key_value_delete(f"{_KEY}/{group}/{n - 1}/{me}")
    if failed:
        text = str(failed[0])
        why = text.split("\n")[0]
        if "DEADLINE_EXCEEDED" not in text:  # (not a timeout: the service's own failure, not known to be alike)
            raise RuntimeError(f"devices: the coordination service failed the processes' meeting before this "
                               f"call ({why})") from failed[0]
        raise alike(RuntimeError(
            f"devices: not every process of the call (processes {processes}) reached it within {timeout:g} s "
            "(chords_jax.set_sync_timeout): one raised before it, skipped it, exited, is busy elsewhere or passed "
            "a mesh over other processes; the call is refused on every process that waited, and on one reaching "
            f"it later at once ({why})"))
    rows = [np.frombuffer(client.blocking_key_value_get_bytes(f"{at}/{p}", wait_ms), np.int32) for p in processes]
    gone = [p for p, row in zip(processes, rows) if row.size == 0]
    if gone:
        raise alike(RuntimeError(f"devices: process(es) {gone} withdrew from this call (interrupted while waiting "
                                 "for the others); it is refused on every process"))
    return rows


def _gather_over(mesh: Any, mine: np.ndarray) -> np.ndarray:
    """``mine`` (an int32 vector) of every device of ``mesh``, (devices, n): its process's, from one
    all-gather over the mesh's devices alone (``_exchange`` without JAX's coordination client)."""
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))
    spread = jax.make_array_from_callback((mesh.devices.size, mine.size), rows, lambda _: mine[None, :])
    whole = jax.jit(_same, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))(spread)
    return np.asarray(whole.addressable_data(0))


def _same(a: Any) -> Any:
    return a


#: why this process's calls over several processes are out of step with the others' (``in_step``,
#: ``same_call``): empty, or the reason, which its later calls' refusal gives
_OUT_OF_STEP: list[str] = []


@contextlib.contextmanager
def in_step(mesh: Any) -> Iterator[None]:
    """Around a call over a mesh of several processes: where an exception ends it on this process (a
    ``KeyboardInterrupt``, a failed collective, a stop rule's own error: any that may not be raised
    alike on the others), the processes may be out of step (the others still in its collectives), and
    ``same_call`` refuses this process's later calls: a notebook's caught Ctrl-C in a chunked run, then
    the next call, hung every process for ever, the interrupted one included (a trial; a rule raising
    ``OSError`` on one process alike, a review). The library's own errors raised alike on every process
    (``alike``: a mismatch; a ``ModelOutputError``) leave them in step."""
    if len(_processes(mesh)) < 2:
        yield
        return
    try:
        yield
    except BaseException as err:
        # (a non-finite output is named from the run's check code, the same on every process)
        if not (getattr(err, _ALIKE, False) or isinstance(err, ModelOutputError)):
            _OUT_OF_STEP[:] = [f"a previous call over the processes ended on this one with {type(err).__name__} after "
                               "they started it together: the others may still wait in its collectives, and a new "
                               "call would meet them out of step (every process hung, a trial)"]
        raise


#: the attribute that marks an error raised alike on every process of a call (``alike``)
_ALIKE = "_chords_raised_alike"


def alike(err: BaseException) -> BaseException:
    """``err`` marked as raised alike on every process of a call over several (a difference
    ``same_call`` found, a non-finite output the run's gathered check names): ``in_step`` leaves them
    in step."""
    setattr(err, _ALIKE, True)
    return err


#: what ``_stable`` describes by name (a function, a class) or by its parts (a method, a partial), not by
#: the attributes of an object whose repr holds its address
_NAMED = (types.FunctionType, types.BuiltinFunctionType, type, types.MethodType, functools.partial)


def _by_attributes(obj: Any) -> bool:
    """Whether ``_stable`` describes ``obj`` by its attributes (its repr holds a memory address)."""
    return not isinstance(obj, (*_NAMED, jax.Array)) and " at 0x" in repr(obj)


def _stable(obj: Any, depth: int = 3) -> str:
    """``repr(obj)`` where it describes the value alike in every process: an array by its dtype, shape
    and bytes' digest (a jax array of over 65,536 elements by a position-weighted sum of its bytes
    computed on its device; one spread over processes by its dtype and shape alone), a PRNG key by its
    key data; a numpy scalar as the Python number it equals, so that
    ``np.bool_(True)`` and ``True`` agree; a set in sorted order (its repr's order follows each
    process's string hashing); an object whose repr holds a memory address by its type's name and its
    attributes' descriptions, ``depth`` levels deep (a plain class's stop rule was its type's name
    alone: processes with different tolerances went on to different collectives and hung, a user
    trial); a function by its qualified name. Containers count towards ``depth`` (a dict holding
    itself)."""
    if isinstance(obj, jax.Array):
        if not obj.is_fully_addressable:
            return f"jax.Array {obj.dtype} {obj.shape}"
        if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):  # (by its key data: a key in args failed
            # converting to numpy, a review)
            return f"key {obj.dtype} {_stable(jax.random.key_data(obj))}"
        if obj.size > 1 << 16:  # (by dtype and shape alone, a rule's weights that differed compared equal, a review)
            return f"jax.Array {obj.dtype} {obj.shape} {_fingerprint(obj)}"
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        return f"ndarray {obj.dtype} {obj.shape} {hashlib.blake2b(np.ascontiguousarray(obj).tobytes()).hexdigest()}"
    if isinstance(obj, np.generic):
        return repr(obj.item())
    if depth < 0:
        return type(obj).__qualname__
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(_stable(o, depth - 1) for o in obj) + ")"
    if isinstance(obj, (set, frozenset)):
        return "{" + ", ".join(sorted(_stable(o, depth - 1) for o in obj)) + "}"
    if isinstance(obj, dict):
        items = (f"{_stable(k, depth - 1)}: {_stable(v, depth - 1)}" for k, v in obj.items())
        return "{" + ", ".join(sorted(items)) + "}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and depth > 0:  # (its repr printed an array
        # of over 1,000 elements with "..." and 8 digits: two processes' rules with different weights
        # compared equal and went on to different collectives, a trial)
        return type(obj).__qualname__ + "(" + ", ".join(f"{k}={_stable(v, depth - 1)}"
                                                        for k, v in sorted(attributes(obj).items())) + ")"
    text = repr(obj)
    if " at 0x" not in text:
        return text
    if isinstance(obj, types.MethodType) and depth > 0:
        return f"{obj.__qualname__} of {_stable(obj.__self__, depth - 1)}"
    if isinstance(obj, functools.partial) and depth > 0:
        return f"partial({_stable(obj.func, depth - 1)}, {_stable(obj.args, depth - 1)}, " \
               f"{_stable(obj.keywords, depth - 1)})"
    if isinstance(obj, _NAMED) or depth == 0:
        return getattr(obj, "__qualname__", type(obj).__qualname__)
    fields = sorted(attributes(obj).items())
    return type(obj).__qualname__ + "(" + ", ".join(f"{k}={_stable(v, depth - 1)}" for k, v in fields) + ")"


def call_parts(model: Any, x: jax.Array, times: np.ndarray, solver: Any, args: Any, options: dict,
               prog: Program) -> dict[str, Any]:
    """The parts of a compiled call that every process must give alike (``same_call``) and that the
    methods share: the state's shape and dtype, the grid, the solver and its options, the model's
    kind, prediction, schedule and ``check_outputs``, the structure of ``args``, and the compiled program itself (its
    index and coefficient arrays and its times' dtype: what a bound solver's options, a model
    subclass's coefficients or ``exact_times`` change, which the named parts do not show)."""
    arrays = (prog.init, prog.points, prog.times, prog.active, prog.dest, prog.idx, prog.coef, prog.out_idx,
              prog.out_coef)
    return {"x (shape, dtype)": (tuple(x.shape), str(x.dtype)), "grid": np.asarray(times, np.float64),
            "solver": solver if isinstance(solver, str) else type(solver).__qualname__,
            "solver options": tuple(sorted((k, _stable(v)) for k, v in options.items())),
            "model": (type(model).__qualname__, getattr(model, "prediction", None), getattr(model, "schedule", None)),
            # (whether the outputs are checked: a process with the check off returned, the other waited in
            # the check's collective for ever, a trial)
            "model.check_outputs": str(getattr(model, "check_outputs", None)),
            "args (structure)": None if args is None else jax.tree_util.tree_map(
                lambda a: (getattr(a, "shape", None), str(getattr(a, "dtype", type(a).__name__))), args),
            PROGRAM_PART + " (a bound solver's options, a model's coefficients, exact_times)":
                (*arrays, str(np.dtype(time_dtype(model, x.dtype))))}


#: the name of ``call_parts``' part for the compiled program, which differs wherever another part does
PROGRAM_PART = "the compiled program"
