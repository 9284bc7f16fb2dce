"""The compiled pipeline: one jitted function, a ``lax.scan`` over the rounds of each segment (see
``lower.py``).

Per scan step the w slots of the segment evaluate the model once each, as one batched call of
w * B rows with per-sample times (``DiffusionModel``), or vmapped (unbatched ``VectorField``); the
rows born in the round are combined in one fused pass and scattered into the register buffer in
place, and the outputs are checked for nan/inf on the device (carried as one int): the check
screens the written rows, which hold every output with a nonzero coefficient (``lower.py``), and
a run the screen flags is run again with the exact check on the outputs (``first_bad``). With a
mesh the slots are sharded over its ``"cores"`` axis and every device evaluates its w / D slots
with ``shard_map``; the buffer of registers is replicated and the linear updates run as GSPMD
decides. The jitted functions are cached per (model function, mesh, output check, exact or
screened, one call or chunked), so a second call with the same shapes reuses the executable;
``chunk_runner``'s runs a chunk of rounds from a carried buffer (a rule that stops early, ``api``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from chords_core.call import warn_caller
from chords_core.models import DiffusionModel, VectorField, check_call
from chords_core.schedules import ByIdentity

from .keys import value_key
from .reads import bound_parts, forget_types, partial_parts, same, tokens, watch

__all__ = ["runner", "chunk_runner", "first_bad", "compilations", "clear_cache", "AXIS", "NO_BAD", "make_mesh",
           "time_dtype"]

AXIS = "cores"
_COMPILATIONS = 0
_CACHE: OrderedDict[tuple, Callable] = OrderedDict()
_CACHE_SIZE = 32
#: ``bad`` of a run whose checked outputs were all finite.
NO_BAD = np.iinfo(np.int32).max


def compilations() -> int:
    """How many times a compiled program (CHORDS, SRDS, the sequential solve, a window method) has
    been traced in this process. A trace is followed by an XLA compile, but XLA also compiles a
    traced program again without a new trace, for arguments on another device or with another
    sharding (a state ``device_put`` on a second device: 4 compiles, about 1 s, this count unchanged);
    ``jax.config.update("jax_log_compiles", True)`` shows those."""
    return _COMPILATIONS


def count_compilation() -> None:
    """Count one trace of a compiled program (``compilations``)."""
    global _COMPILATIONS
    _COMPILATIONS += 1


def make_mesh(devices: Any) -> Mesh | None:
    """A 1-D mesh with axis ``"cores"`` over which the core slots are sharded.

    Args:
        devices: None, a device count (the first n of ``jax.devices()``: under ``jax.distributed``
            the devices of every process), a sequence of jax devices, or a ``Mesh`` (returned as is
            if it has an axis ``"cores"``).

    Returns:
        The mesh, or ``None`` for ``devices=None`` (no sharding). Raises ``ValueError`` otherwise.
    """
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if AXIS not in devices.axis_names:
            raise ValueError(f"devices: a Mesh needs an axis named {AXIS!r}, got axes {devices.axis_names}")
        _once_each(list(devices.devices.flat))
        return devices
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        avail = jax.devices()
        if not 1 <= devices <= len(avail):
            raise ValueError(f"devices={devices}: a device count must be from 1 to the {len(avail)} device(s) jax has "
                             "(jax.devices(), all processes)")
        devices = avail[:devices]
    try:
        devs = list(devices)
    except TypeError:  # a bool, a float, any other non-sequence
        devs = [None]
    if not devs:
        raise ValueError("devices: an empty sequence; give jax devices, a device count, None (one device) or a Mesh")
    if not all(isinstance(d, jax.Device) for d in devs):
        if isinstance(devices, jax.Device):
            got = f"{type(devices).__name__}; for one device, pass a list: devices=[device]"
        elif devs == [None]:  # (not a sequence)
            got = type(devices).__name__
        else:
            k = next(k for k, d in enumerate(devs) if not isinstance(d, jax.Device))
            got = f"a {type(devices).__name__} whose item {k} is a {type(devs[k]).__name__} ({devs[k]!r})"
        raise ValueError(f"devices must be None, a device count, a sequence of jax devices or a Mesh, got {got}")
    _once_each(devs)
    return Mesh(np.array(devs), (AXIS,))


def _once_each(devs: list) -> None:
    """Refuse a device given twice, naming ``devices`` (a mesh over one device twice hung in XLA's
    collectives for about 60 s, then aborted the process), and, under ``jax.distributed``, a mesh
    holding none of this process's devices (a user trial: ``devices=jax.local_device_count()`` is
    the first devices of process 0 on every process; the others failed reading the result, "spans
    non-addressable devices", naming nothing)."""
    seen: set = set()
    for d in devs:
        if d in seen:
            raise ValueError(f"devices: {d} appears more than once; a mesh takes each device once")
        seen.add(d)
    me = jax.process_index()
    if jax.process_count() > 1 and all(d.process_index != me for d in devs):
        raise ValueError(f"devices: the mesh holds none of the devices of this process ({me} of "
                         f"{jax.process_count()}); under jax.distributed a device count takes the first of the global "
                         "jax.devices(): pass jax.device_count() or a Mesh over jax.devices() to span every process")


_NOT_TRACEABLE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerIntegerConversionError)


def _traced(call: Callable, names: str, *operands: Any) -> Any:
    """``call(*operands)`` at trace time (``names``: what the operands are to the user, in order, such as
    ``"x t args"``), a function that jax cannot trace named as the model's (also
    a ``pure_callback`` without ``vmap_method`` in an unbatched field, which chords_jax vmaps: jax's
    ``NotImplementedError`` escaped bare, a user trial; the model's own ``NotImplementedError`` is
    its own); a ``TypeError`` it raises names the operands' shapes (an ``args`` leaf of the wrong
    shape: jax's words named neither ``args`` nor the model)."""
    try:
        return call(*operands)
    except NotImplementedError as err:
        if "vmap_method" not in str(err):
            raise
        raise TypeError("model: its function must be traceable by jax under vmap (an unbatched field is vmapped "
                        f"over the points); tracing it failed with: {err}") from err
    except _NOT_TRACEABLE as err:
        raise TypeError("model: its function must be traceable by jax (jax.numpy operations, no numpy "
                        f"conversion or Python branch on array values); tracing it failed with: {err}") from err
    except TypeError as err:
        raise TypeError(f"model: its function raised a TypeError when traced, called with "
                        f"{_described(names.split(), operands)}: {err}") from err


def _described(names: list[str], operands: tuple) -> str:
    """The operands of a model call as an error names them: each by its name and, as an array (a pytree's
    leaves: ``args``), its shape and dtype, at most 300 characters."""
    def leaf(a: Any) -> str:
        return f"{tuple(a.shape)} {a.dtype}" if hasattr(a, "shape") and hasattr(a, "dtype") else type(a).__name__

    def operand(o: Any) -> str:
        try:
            leaves = jax.tree_util.tree_leaves(o)
        except Exception:  # noqa: BLE001 (a pytree whose flatten raises: named by its type)
            return type(o).__name__
        if len(leaves) == 1 and leaves[0] is o:
            return leaf(o)
        return f"a {type(o).__name__} of leaves [{', '.join(map(leaf, leaves))}]"

    text = ", ".join(f"{n} {operand(o)}" for n, o in zip(names, operands))
    return text if len(text) <= 300 else text[:297] + "..."


def _checked(out: Any, like: Any, points: int, rows: int, vmapped: bool = False) -> Any:
    """The model's output for the points ``like`` (``points`` of ``rows`` rows stacked), checked at
    trace time as the core checks it (``models.check_call``: shape, floating dtype) and cast to their
    dtype; ``vmapped``: an unbatched function vmapped over the points, checked per point, as the core
    calls it (the vmapped shapes, "(4, 2), expected (4, 3)", named no call the user wrote)."""
    if vmapped and len(out.shape) >= 1 and len(like.shape) >= 1:
        check_call(jax.ShapeDtypeStruct(out.shape[1:], out.dtype), jax.ShapeDtypeStruct(like.shape[1:], like.dtype),
                   1, 1, "; checked when the program is compiled")
    check_call(out, like, points, rows, "; checked when the program is compiled")
    return out.astype(like.dtype)


def keyable(obj: Any) -> Any:
    """``obj`` as a part of a cache key: itself where it can be hashed, else by identity (``ByIdentity``: a
    ``@dataclass`` model, an equinox module holding arrays)."""
    try:
        hash(obj)
    except TypeError:
        return ByIdentity(obj)
    return obj


def function_key(fn: Any) -> Any:
    """A model function as a part of a cache key: by identity (``ByIdentity``), unless its equality is
    identity already (a function, a ``functools.partial``, an object without ``__eq__`` of its own) or a
    bound method's (its object by identity). The compiled program bakes in what the function reads at
    trace time, so an object's own equality cannot say two are the same program: a frozen dataclass
    whose weights are left out of its equality (``field(compare=False)``, JAX's static-argument
    pattern) shared the first one's executable, old weights and all (a trial: 0.142 off the core,
    silently). A bound method, or an object whose whole state stands for one (``reads.bound_parts``:
    equinox's ``BoundMethod``, made anew at each access), is keyed by its type, object and function, and
    a partial application (``reads.partial_parts``: a plain ``functools.partial``, equinox's ``Partial``,
    which an ``eqx.filter_jit`` method is) by its type, function and arguments (``value_key``, arrays by identity,
    keywords in their order): by their own identity they compiled again at every call."""
    parts = partial_parts(fn)
    if parts is not None:
        func, args, keywords = parts  # (keywords in their order: a function may fold **kw in order)
        return ("partial", type(fn), function_key(func), tuple(value_key(a, arrays=False) for a in args),
                tuple((k, value_key(a, arrays=False)) for k, a in keywords.items()))
    bound = bound_parts(fn)
    if bound is not None:  # (a bound method too: by its object's identity, as its own equality has it)
        return "bound", type(fn), ByIdentity(bound[0]), keyable(bound[1])
    if type(fn).__eq__ is object.__eq__:
        return keyable(fn)
    return ByIdentity(fn)


def check_signature(model: Any, with_args: bool) -> None:
    """Refuse a function whose signature cannot take the call it gets, ``fn(x, t, args)`` with ``args=``
    (naming ``args``) or ``fn(x, t)`` without (naming the model: Python's "missing 1 required positional
    argument" named neither, a user trial). A function without an inspectable signature is called and
    left to fail in its own words. Run where a program is built for the function, on a cache miss only
    (``inspect.signature`` cost about as much as a call's other host work at size 64). A callable object
    by its class's ``__call__`` (``inspect`` took an object whose ``__getattr__`` forwards to a method
    for that method's function, ``self`` included, and refused a valid ``fn(x, t)``, a review)."""
    fn = _function(model)
    call = inspect.getattr_static(type(fn), "__call__", None)
    if isinstance(call, types.FunctionType) and not isinstance(fn, (type, functools.partial)):
        fn = types.MethodType(call, fn)
    try:
        sig = inspect.signature(fn, follow_wrapped=False)  # (a functools.wraps wrapper may add the argument)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(0, 0, 0) if with_args else sig.bind(0, 0)
    except TypeError as err:
        if with_args:
            raise TypeError(f"args: with args= the model's function is called with a third argument, fn(x, t, args) "
                            f"(f(t, y, args) for a VectorField), and its signature {sig} takes no such argument "
                            f"({err})") from None
        raise TypeError(f"model: its function is called fn(x, t) (f(t, y) for a VectorField) without args=, and its "
                        f"signature {sig} needs more ({err}); pass args=..., which calls it fn(x, t, args)") from None


def _function(model: Any) -> Any:
    """The user's function of ``model``: a ``DiffusionModel``'s ``fn``, a ``VectorField``'s ``f``."""
    return model.fn if isinstance(model, DiffusionModel) else model.f if isinstance(model, VectorField) else model


def _calls_its_function(model: Any) -> None:
    """Refuse a model subclass that changes how its function is called (``_call`` or ``evaluate``
    overridden): the compiled run calls the function itself, and ignored such an override (a subclass
    clamping the outputs: 0.16 off the core's answer, silently)."""
    for base in (DiffusionModel, VectorField):
        if isinstance(model, base):
            changed = [m for m in ("_call", "evaluate") if getattr(type(model), m) is not getattr(base, m)]
            if changed:
                attr = "fn" if base is DiffusionModel else "f"
                raise TypeError(f"model: {type(model).__name__} overrides {' and '.join(changed)}, which chords_jax "
                                f"does not call: it compiles the model's function ({attr}) itself; put the change in "
                                "the function, or run it with chords_core")


def time_dtype(model: Any, dtype: Any) -> Any:
    """The dtype the model's function gets its times in, for states of ``dtype``: the state's, or for a
    function (a ``DiffusionModel``'s network, a ``VectorField``'s f) that sets ``exact_times`` the
    widest jax has (float64 with x64, else float32), as the core's ``_backend.times_like`` (a
    half-precision time fell between the grid times such a network maps to: 0.2 off the core,
    silently, in a user trial)."""
    if getattr(_function(model), "exact_times", False):
        return np.dtype(np.float64 if jax.config.read("jax_enable_x64") else np.float32)
    return np.dtype(dtype)


def _evaluator(model: Any, with_args: bool = False) -> tuple[tuple, Callable]:
    """(cache key, f(pts (k, *S), t (k,), args) -> outs (k, *S)) for a core model with a jax-traceable
    function; with ``with_args`` the function is called ``fn(x, t, args)`` (``f(t, y, args)``). Its
    signature is checked where a program is built for it (``check_signature``), not per call."""
    _calls_its_function(model)
    if isinstance(model, DiffusionModel):
        fn: Any = model.fn

        def evaluate(pts, t, args):
            k, rows = pts.shape[0], pts.shape[1]
            flat = pts.reshape((k * rows,) + pts.shape[2:])
            tt = jnp.repeat(t, rows)
            out = _traced(fn, "x t args", flat, tt, args) if with_args else _traced(fn, "x t", flat, tt)
            return _checked(out, flat, k, rows).reshape(pts.shape)

        return ("diffusion", function_key(fn), with_args), evaluate
    if isinstance(model, VectorField):
        f: Any = model.f
        batched = model.batched

        def evaluate(pts, t, args):
            if with_args:
                out = _traced(f if batched else jax.vmap(f, in_axes=(0, 0, None)), "t y args", t, pts, args)
            else:
                out = _traced(f if batched else jax.vmap(f), "t y", t, pts)
            return _checked(out, pts, pts.shape[0] if batched else 1, 1, vmapped=not batched)

        return ("field", function_key(f), batched, with_args), evaluate
    raise TypeError(f"model must be a chords_core DiffusionModel or VectorField, got {type(model).__name__}")


def coefficient_dtype(dtype: Any) -> np.dtype:
    """The dtype of a compiled program's coefficients and of its rows' sums for states of ``dtype``:
    float32 for half precision (rounded to the state's once per row), the state's own otherwise."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else dtype


def spread(init: Any, x: Any) -> Any:
    """The register buffer's first rows, ``init[:, None] * x`` as flat rows in x's dtype (``init`` in
    ``coefficient_dtype``)."""
    return (init[:, None] * x.reshape(1, -1).astype(init.dtype)).astype(x.dtype)


def _terms(src: Any, idx: Any, coef: Any) -> Any:
    """sum_m coef[w, m] * src[idx[w, m]] for src (S, N), idx/coef (W, M) -> (W, N): the gathers fuse
    into one pass over the rows read. A zero coefficient (padding) gives 0 even where the row it
    reads is not finite (an idle slot's output, a state gone to inf with the output check off)."""
    new = None
    for m in range(idx.shape[1]):
        c = coef[:, m, None]
        term = jnp.where(c != 0, c * src[idx[:, m]].astype(c.dtype), 0)  # (half precision: summed in float32)
        new = term if new is None else new + term
    return new


def clear_cache() -> None:
    """Drop every cached executable (and with it the model functions and whatever they hold: weights
    read from a closure or an object). The cache keeps at most ``_CACHE_SIZE`` executables (one more
    during a call, ``lru_get_compiled``)."""
    _CACHE.clear()
    with _READS_LOCK:
        _READS.clear()
        _VOLATILE_BY.clear()
        _VOLATILE.clear()
    forget_types()


def runner(model: Any, mesh: Mesh | None, check: bool, with_args: bool = False, exact: bool = False) -> Callable:
    """The jitted pipeline ``run(x, init, segments, rows, zeros, args) -> (outputs, bad)``, cached.

    The cache is keyed by the model's function and holds it (and what it closes over) until it is
    evicted (``lru_get_compiled``: beyond ``_CACHE_SIZE`` executables, counted per shape) or
    ``clear_cache()`` is called.
    Values a function reads from its closure at trace time are baked into the executable (one set
    anew since is seen: ``check_reads``); pass changing values (weights) as ``args``, a traced argument.

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` with a jax-traceable function.
        mesh: the device mesh (``make_mesh``) or ``None``.
        check: check on device that the active slots' outputs are finite.
        with_args: call the function with a third argument ``args`` (any pytree).
        exact: check the outputs themselves; by default the rows each round writes are screened
            (see ``bad``).

    Returns:
        The jitted function. ``segments`` holds one tuple of per-round arrays per segment
        (``Program.segment_arrays``), each run as one ``lax.scan``. ``outputs`` are the final
        buffer's ``rows`` (each of x's shape); ``zeros`` is a vector of x.size zeros (the output
        check's operand); ``bad`` (int32) is ``round * slots + slot`` of the first active slot
        whose output was not finite (rounds 0-based, slots as in ``Program.points``), or
        ``NO_BAD`` (also without ``check``). Screened (``exact=False``), ``bad`` is
        ``round * slots`` of the first round that wrote a non-finite row, or ``NO_BAD``, which is
        exact: every output is a term of a written row, and a non-finite term makes its row
        non-finite. A flagged run may have no bad output (a row can overflow); ``first_bad`` runs
        it again with ``exact``.
    """
    return _jitted(model, mesh, check, with_args, exact, chunked=False)


def chunk_runner(model: Any, mesh: Mesh | None, check: bool, with_args: bool = False, exact: bool = False) -> Callable:
    """The jitted pipeline run in chunks of rounds: ``chunk(x, buf, bad, segments, rows, zeros, args,
    slots) -> (buf, bad, outputs)``, cached as ``runner``.

    ``segments`` are pieces of the program's segments (their per-round arrays sliced at round
    boundaries, ``rounds`` absolute), run one after the other from the carried ``buf`` and ``bad``;
    the first chunk passes the program's ``init`` vector (1 + L,) as ``buf``, which starts the
    buffer as ``runner`` does. ``outputs`` are the returned buffer's ``rows``, ``slots`` (static) the
    program's widest segment, so that ``bad`` codes as ``runner``'s do. The buffer stays on the
    device between chunks; each distinct chunk (shapes, ``slots``) compiles once.
    """
    return _jitted(model, mesh, check, with_args, exact, chunked=True)


def first_bad(bad: Any, rerun: Callable[[], Any]) -> int:
    """The code of a run's first non-finite output (``runner``'s ``bad``, exact) from the ``bad`` of
    a screened run: ``NO_BAD`` as it is, else ``rerun()``'s, the same run with ``exact=True``
    (compiled on the first flagged run only)."""
    bad = int(bad)
    return bad if bad == NO_BAD else int(rerun())


def tracing() -> bool:
    """Whether JAX is tracing or transforming here (``jit``, ``vmap``, ``grad``; a model's closed-over
    tracer included, which a call's own arguments do not show): JAX's trace state, a private function
    (0.15 µs); where a JAX version lacks it, a probe, an op that a caller's ``jit`` stages."""
    clean = getattr(getattr(getattr(jax, "_src", None), "core", None), "trace_state_clean", None)
    return not clean() if clean is not None else isinstance(jnp.zeros(()), jax.core.Tracer)


def holds_tracer(fn: Any) -> bool:
    """Whether the function ``fn`` reaches a jax tracer through what it reads (``reads.watch``: its
    closure, bound object, defaults, attributes, such as a network holding its weights in ``self.W``;
    one whose objects cannot be walked counts as reaching one): a runner keyed by it must not be
    cached, or the cache would keep the caller's trace alive."""
    values = watch(fn)
    return values is None or any(isinstance(v, jax.core.Tracer) for v in values.values())


#: per model function (its key, ``function_key``): its ``reads.watch`` at the end of its last trace
_READS: dict = {}
#: the (holder, key) entries a trace or run of each function changed (module ``reads``: what they set is the
#: function's own), and their union over the functions with programs cached, which no function compares
_VOLATILE_BY: dict = {}
_VOLATILE: set = set()
_READS_LOCK = threading.Lock()  # (every change to the three: calls from several threads)
#: the caches of compiled programs, keyed by (the model's key (kind, function key, ...), ...), from which
#: ``check_reads`` drops a function's programs (this module's and the window methods')
PROGRAM_CACHES: list[OrderedDict] = [_CACHE]


def check_reads(fn_key: Any, fn: Any) -> None:
    """Before a cached program of the function ``fn`` is looked up: where an entry it could read when
    last traced (``reads.watch``: an attribute, a closure variable, a default) was set anew since (a
    guidance scale, a network's weights), drop every cached program of it, with a ``UserWarning``,
    so that it is traced and compiled again with the new value (a trial: a wrapper's ``scale`` changed
    between calls kept the first value's program, 3.21 off the core, silently). Entries some trace or
    run set are not compared (``_VOLATILE``); what is not watched: the module ``reads``'s docstring."""
    kept = _READS.get(fn_key)
    if kept is None:
        return
    now = watch(fn)
    if now is None or not _changed(kept, now):  # (None: its objects cannot be walked now: not watched)
        return
    with _READS_LOCK:
        _READS.pop(fn_key, None)
    for cache in PROGRAM_CACHES:
        for k in [k for k in list(cache) if k[0][1] == fn_key]:
            cache.pop(k, None)
    warn_caller("chords_jax: a value the model's function reads from its object, closure or defaults (not passed "
                "as args=) was set anew since it was compiled; compiling it again. Pass values that change between "
                "calls as args= (a traced argument: no compilation); an array changed in place is not seen",
                UserWarning)


def cached_program(cache: OrderedDict, key: tuple, model: Any, size: int) -> Any:
    """``cache[key]``, a jitted program of ``model``'s function keyed (the model's key, ...), or ``None``:
    looked up after ``check_reads`` (what the function reads set anew drops its programs), as
    ``lru_get_compiled`` keeps it."""
    check_reads(key[0][1], _function(model))
    return lru_get_compiled(cache, key, size)


def _changed(kept: dict, now: dict) -> list:
    """The entries of a watch ``now`` that differ from the tokens ``kept`` (or are new, or gone), volatile
    ones aside."""
    volatile = _VOLATILE
    out = [k for k, tok in kept.items() if k not in volatile and (k not in now or not same(tok, now[k]))]
    return out + [k for k in now if k not in kept and k not in volatile]


def _volatile(fn_key: Any, kept: dict, now: dict, lazy: bool) -> None:
    """Mark volatile, for ``fn_key``, the entries a trace (``lazy``) or a run changed: a trace's where it
    changed a value (one it set where there was none or ``None``, a lazy initialisation, is not: a
    later change to it is seen), a run's all (what its callbacks set or add)."""
    if lazy:
        new = [k for k, tok in kept.items() if not (tok[0] == 0 and tok[1] is None)
               and (k not in now or not same(tok, now[k]))]
    else:
        new = _changed(kept, now)
    if new:
        with _READS_LOCK:
            _VOLATILE_BY.setdefault(fn_key, set()).update(new)
            _VOLATILE.update(new)


def after_run(model: Any) -> None:
    """After a run of a cached program of ``model``'s function (its results read): what the run itself
    set (a counter a ``jax.debug.callback`` advances, a log it keeps) is volatile, as what a trace
    sets (``traced``), so that the next lookup does not take it for a change."""
    fn = _function(model)
    fn_key = function_key(fn)
    kept = _READS.get(fn_key)
    if kept is None:
        return
    jax.effects_barrier()  # (the run's callbacks done: about 2 us)
    now = watch(fn)
    if now is not None:
        _volatile(fn_key, kept, now, lazy=False)


def _prune_reads() -> None:
    """Forget the watches of functions no cache holds a program of any more (the keys hold the functions)."""
    global _VOLATILE
    live = {k[0][1] for cache in PROGRAM_CACHES for k in list(cache)}
    with _READS_LOCK:
        for k in [k for k in list(_READS) if k not in live]:
            _READS.pop(k, None)
        gone = [k for k in list(_VOLATILE_BY) if k not in live]
        if gone:  # (their entries' holders may be gone, and their ids another object's)
            for k in gone:
                _VOLATILE_BY.pop(k, None)
            _VOLATILE = set().union(*_VOLATILE_BY.values())  # (a new set: a lookup meanwhile reads the old one)


def traced(body: Callable, fn_key: Any, fn: Any, keep: bool) -> Callable:
    """``body`` as the function a program jits: each trace counted (``compilations``) and, for a program
    that is cached (``keep``), ``fn``'s watch kept at its end (``_READS``), the entries the trace
    changed marked volatile."""

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        count_compilation()
        first = watch(fn) if keep else None
        out = body(*args, **kwargs)
        if keep:
            after = watch(fn)
            if first is None or after is None:  # (objects that cannot be walked: the function is not watched)
                with _READS_LOCK:
                    _READS.pop(fn_key, None)
            else:
                _volatile(fn_key, tokens(first), after, lazy=True)
                kept = tokens(after)
                with _READS_LOCK:
                    _READS[fn_key] = kept
            _prune_reads()
        return out

    return run


def _jitted(model: Any, mesh: Mesh | None, check: bool, with_args: bool, exact: bool, chunked: bool) -> Callable:
    key_model, evaluate = _evaluator(model, with_args)
    key = (key_model, mesh, bool(check), bool(check) and exact, chunked)
    fn = cached_program(_CACHE, key, model, _CACHE_SIZE)
    if fn is not None:
        return fn
    check_signature(model, with_args)
    keep = not (tracing() and holds_tracer(_function(model)))  # (a caller's tracer in its closure: used once)
    if mesh is not None:
        spec = PartitionSpec(AXIS)
        evaluate = jax.shard_map(evaluate, mesh=mesh, in_specs=(spec, spec, PartitionSpec()), out_specs=spec)
        replicated = NamedSharding(mesh, PartitionSpec())

    def pin(buf):
        """Keep the buffer replicated: each device holds all registers, only the outputs travel."""
        return buf if mesh is None else jax.lax.with_sharding_constraint(buf, replicated)

    def scans(x, carry, segments, zeros, args, slots):
        """Run the segments' rounds from ``carry`` = (buf, bad): one ``lax.scan`` per segment, each traced
        with its own copy of ``args`` (rebuilt from its leaves before any trace: equinox's ``nn.State``
        is spent once used, and a run of several segments failed where one segment ran, a trial)."""
        leaves, tree = jax.tree_util.tree_flatten(args)
        for seg in segments:
            carry, _ = jax.lax.scan(_body(x, zeros, jax.tree_util.tree_unflatten(tree, leaves), slots), carry, seg)
        return carry

    def _body(x, zeros, args, slots):
        """One round of a segment's scan (``scans``)."""

        def body(carry, inputs):
            buf, bad = carry
            rnd, points, t, active, dest, idx, coef, out_idx, out_coef = inputs
            outs = evaluate(buf[points].reshape(points.shape + x.shape), t, args).reshape(points.shape[0], -1)
            # (the rows' sums in the coefficients' dtype, float32 for a half-precision state, rounded to the
            # state's once: summed in bfloat16, the folded combinations, whose large terms cancel, came out up
            # to 9.5x the core's error against a float64 reference, a trial)
            new = (_terms(buf, idx, coef) + _terms(outs, out_idx, out_coef)).astype(buf.dtype)
            buf = pin(buf.at[dest].set(new, mode="promise_in_bounds"))
            # a @ 0 is 0 for a finite row of a and nan for a row with a nan or an inf (0 * inf = nan),
            # at any magnitude; a matrix-vector product reads the rows once at full speed (a
            # reduction over the rows ran up to 2x slower on CPU). ``zeros`` is an argument, not a
            # constant, so that no compiler folds the product away.
            if check and exact:
                ok = jnp.isfinite(outs @ zeros) | ~active
                code = rnd * slots + jnp.arange(outs.shape[0], dtype=jnp.int32)
                bad = jnp.minimum(bad, jnp.min(jnp.where(ok, NO_BAD, code)))
            elif check:
                # the screen: the written rows are computed anyway, and reading the outputs a second
                # time would keep XLA from fusing the model into the rows (1.4-1.8x per round with
                # a near-free model on CPU)
                bad = jnp.minimum(bad, jnp.where(jnp.isfinite(new @ zeros).all(), NO_BAD, rnd * slots))
            return (buf, bad), None

        return body

    def run(x, init, segments, rows, zeros, args):
        slots = max(seg[1].shape[1] for seg in segments)  # Program.width, from the arrays at trace time
        # the buffer's rows are flat (1 + L, x.size): gathers and scatters of whole contiguous rows
        buf = pin(spread(init, x))
        buf, bad = scans(x, (buf, jnp.asarray(NO_BAD, jnp.int32)), segments, zeros, args, slots)
        return tuple(buf[rows[i]].reshape(x.shape) for i in range(rows.shape[0])), bad

    def chunk(x, buf, bad, segments, rows, zeros, args, slots):
        if buf.ndim == 1:  # the first chunk: the program's init vector
            buf = pin(spread(buf, x))
        buf, bad = scans(x, (buf, bad), segments, zeros, args, slots)
        return buf, bad, tuple(buf[rows[i]].reshape(x.shape) for i in range(rows.shape[0]))

    body = traced(chunk if chunked else run, key_model[1], _function(model), keep)
    jitted = jax.jit(body, static_argnames="slots") if chunked else jax.jit(body)
    return lru_put(_CACHE, key, jitted, _CACHE_SIZE) if keep else jitted


def lru_get(cache: OrderedDict, key: tuple) -> Any:
    """``cache[key]``, now the most recently used, or ``None``; ``lru_put``'s counterpart. Safe
    against another thread's ``clear_cache`` or eviction between the lookup and the reordering (a
    ``KeyError`` there would fail a call that had its value)."""
    got = cache.get(key)
    if got is not None:
        with contextlib.suppress(KeyError):
            cache.move_to_end(key)
    return got


def _executables(fn: Any) -> int:
    """How many executables the jitted function ``fn`` holds (one per shape and dtype of its
    arguments it was called with)."""
    try:
        return int(fn._cache_size())
    except (AttributeError, TypeError, ValueError):  # (not a jax.jit function: counted as one)
        return 1


def lru_get_compiled(cache: OrderedDict, key: tuple, size: int) -> Any:
    """``lru_get`` for a cache of jitted functions, keeping at most ``size`` executables in all (not
    ``size`` functions: each holds an executable per shape and dtype it was called with, so a new
    batch size compiled one more, never evicted; a user trial's 60 batch sizes held 60, 12 MB each).
    Where ``key``'s own function holds more than ``size`` it is dropped (``None``: the caller builds it
    anew, compiling this call's shapes again; at ``size``, a working set of ``size`` shapes, it is kept:
    dropped there, cycling through them compiled every call, a review); then, beyond ``size`` in all,
    the least recently used other functions are dropped, and their executables with them. A call may
    add one, a chunked run one per chunk length (a trial held 34 with SRDS' two): the bound holds
    between calls to within those."""
    fn = lru_get(cache, key)
    if fn is not None and _executables(fn) > size:
        cache.pop(key, None)
        fn = None
    held = [(k, _executables(f)) for k, f in list(cache.items())]  # oldest first (a snapshot: other threads)
    total = sum(n for _, n in held)
    evicted = False
    for k, n in held:
        if total <= size or k == key:
            break
        cache.pop(k, None)
        total -= n
        evicted = True
    if evicted:
        _prune_reads()
    return fn


def lru_put(cache: OrderedDict, key: tuple, value: Any, size: int) -> Any:
    """``cache[key] = value``, dropping the least recently used entries beyond ``size``; ``value``.
    The eviction rule of chords_jax's caches (``lru_get_compiled`` adds, for jitted functions, the
    count of their executables)."""
    cache[key] = value
    while len(cache) > size:
        try:
            cache.popitem(last=False)
        except KeyError:  # (emptied meanwhile by another thread)
            break
    return value
