"""What a model function reads beyond its arguments, and whether it was set anew since a trace.

A compiled program bakes in the values its model function read from its object, closure or defaults
when it was traced. ``watch`` lists them as (holder, key) -> value: each closure cell, default,
partial argument, bound object and callable object's attribute, and, through objects (their
``__dict__``, slots and their classes' attributes, methods included), tuples, lists and dicts, what
those hold, ``DEPTH`` hops deep, at most ``MAX_VISITS`` values visited; a number or string is
compared by value, an array or any other object by identity. A pytree object within two hops of
the function (an equinox or flax nnx module) is also watched by its leaves, however deep
(``_tree``). A bound method's entries, and a partial application's (``bound_parts``,
``partial_parts``: also the objects that stand for them, made anew at each access), are held by its
function, not by the method or partial object itself, so that one made anew with the same parts
watches the same. ``run.traced`` keeps a watch at the end
of every trace of a cached program, and ``run.check_reads`` compares a fresh one before every lookup
of the function's programs: an entry set anew since drops them all, with a ``UserWarning``.

What a trace or a run changes (a counter of traces, activations kept on the object, an NFE counter a
``jax.debug.callback`` advances) is *volatile* (``run``): such entries, of any live function (two
functions sharing one network, a guidance wrapper's conditional and unconditional calls), are not
compared again. An entry a trace sets where it was missing or ``None`` (a lazy initialisation) is
not volatile: a later change is seen (one a run sets is). Numbers, strings and ``None`` held in a
list, dict or set are not watched (a log or a counter a callback appends to as the program runs);
arrays and objects held there are. Not seen: an array changed in place, a number or string in a list
or dict, module globals and what is reached only through them, values beyond ``DEPTH`` hops or
``MAX_VISITS`` visits, an entry a trace or a run changed from a value, and a function whose objects
cannot be walked (``watch`` is ``None``).
"""

from __future__ import annotations

import functools
import types
import weakref
from typing import Any

import jax
import numpy as np

from .keys import by_value, value_key

__all__ = ["watch", "tokens", "same", "forget_types", "bound_parts", "partial_parts", "DEPTH", "MAX_VISITS"]

#: hops walked below the function (its bound object or a closure value is 1; an attribute, an item of a
#: list, tuple or dict, one more)
DEPTH = 8
#: values visited per watch at most (numbers in lists included): what lies beyond is not watched
MAX_VISITS = 10_000
#: pytree leaves watched per watch at most (``_tree``; a model of 200,000 arrays cost 256 ms a watch)
MAX_LEAVES = 10_000
_SCALARS = (bool, int, float, complex, str, bytes, np.generic)
_ARRAYS = (jax.Array, np.ndarray)
_OPAQUE = (type, types.ModuleType, types.BuiltinFunctionType, weakref.ReferenceType)
_DEAD = (4, None)  # the token of a dead weak proxy


def token(v: Any) -> tuple[int, Any]:
    """How an entry is compared: a number or string by value, else by identity (a weak reference where
    the value takes one: a watch keeps no weights alive; an object's id otherwise)."""
    if v is _DEAD_VALUE:
        return _DEAD
    t = type(v)
    if _kind(t) == _NUMBER or (t is tuple and len(v) <= 64 and all(_kind(type(i)) == _NUMBER for i in v)):
        return 0, v  # (a tuple of numbers by value too: a new one may take a freed one's id)
    try:
        return 1, weakref.ref(v)
    except TypeError:
        return 3, (id(v), type(v))


def tokens(entries: dict) -> dict[tuple[int, Any], tuple[int, Any]]:
    """A watch kept: each value as its ``token`` (no strong reference to an array or object)."""
    return {k: token(v) for k, v in entries.items()}


def same(tok: tuple[int, Any], v: Any) -> bool:
    """Whether the value ``v`` is the one ``tok`` was taken of (nan equals nan: a nan attribute is no change)."""
    kind, kept = tok
    if kind == 0:
        return type(v) is type(kept) and bool(v == kept or (v != v and kept != kept))
    if kind == 1:
        return kept() is v
    if kind == 3:
        return kept == (id(v), type(v))
    return v is _DEAD_VALUE


def watch(fn: Any) -> dict[tuple[int, Any], Any] | None:
    """The entries the function ``fn`` can read (see the module docstring): {(id of the holder, key): value};
    ``None`` where walking them raised (an object whose iteration or attribute raises, a graph too deep
    for Python's recursion): that function is not watched."""
    out: dict[tuple[int, Any], Any] = {}
    try:
        _function(fn, DEPTH, out, _Seen(), keyed=True)
    except Exception:  # (RecursionError included)
        return None
    return out


class _Seen(set):
    """The ids of the objects a watch walked, its visits left (``MAX_VISITS``) and the ids of the
    objects whose pytree leaves it took (``_tree``)."""

    def __init__(self) -> None:
        super().__init__()
        self.left = MAX_VISITS
        self.trees: set[int] = set()
        self.leaves = MAX_LEAVES  # (pytree leaves left to watch)


_DEAD_VALUE = object()  # what a dead weakref.proxy is watched as


#: what each type of value is to the walk, found once per type: a number (by value), a leaf (an array,
#: a tracer, a class, a module: by identity, not walked), a list or tuple, a dict, a set (by
#: identity), a function, a bound method or partial, or an object (its attributes)
_NUMBER, _LEAF, _SEQ, _DICT, _SET, _FUNC, _OBJ = range(7)
_KINDS: dict[type, int] = {type(None): _NUMBER}
_KINDS_SIZE = 10_000  # (then emptied: it holds the classes met, and their class attributes with them)


def _kind(t: type) -> int:
    k = _KINDS.get(t)
    if k is None:
        if t in _SCALARS or issubclass(t, np.generic):  # (a subclass of float, say: by identity, never its __eq__)
            k = _NUMBER
        elif issubclass(t, _ARRAYS + _OPAQUE + (jax.core.Tracer, weakref.ProxyTypes[0], weakref.ProxyTypes[1])):
            k = _LEAF
        elif issubclass(t, (tuple, list)):
            k = _SEQ
        elif issubclass(t, dict):
            k = _DICT
        elif issubclass(t, (set, frozenset)):
            k = _SET
        elif issubclass(t, (types.FunctionType, types.MethodType, functools.partial)):
            k = _FUNC
        else:
            k = _OBJ
        if len(_KINDS) >= _KINDS_SIZE:
            forget_types()
        _KINDS[t] = k
    return k


def forget_types() -> None:
    """Empty the per-type cache of the walk (``chords_jax.clear_cache``: it holds the classes it met)."""
    _KINDS.clear()
    _KINDS[type(None)] = _NUMBER
    _TREES.clear()


def _put(out: dict, holder: Any, key: Any, v: Any, depth: int, seen: _Seen, in_list: bool = False) -> None:
    seen.left -= 1
    if seen.left < 0:
        return
    t = type(v)  # (a weakref.proxy's own type: reading a dead one's class would raise)
    kind = _KINDS.get(t)
    if kind is None:
        kind = _kind(t)
    if kind == _NUMBER:
        if not in_list:  # (a number in a list, dict or set: a log, not watched)
            out[(id(holder), key)] = v
        return
    if kind == _LEAF and t in weakref.ProxyTypes:
        try:
            v = v.__repr__ and v  # (a live proxy: watched by its own identity; a dead one raises)
        except ReferenceError:
            v = _DEAD_VALUE
        out[(id(holder), key)] = v
        return
    out[(id(holder), key)] = v
    if kind == _OBJ and depth >= TREE_DEPTH and id(holder) not in seen.trees:
        _tree(out, holder, key, v, seen)
    if depth > 0 and kind != _LEAF and kind != _SET and id(v) not in seen:
        seen.add(id(v))
        if kind == _SEQ:
            in_l = t is list or issubclass(t, list)
            for i, item in enumerate(v):
                if seen.left <= 0:
                    break
                _put(out, v, i, item, depth - 1, seen, in_l)
        elif kind == _DICT:
            for k, item in list(v.items()):
                if seen.left <= 0:
                    break
                _put(out, v, k if isinstance(k, (str, int)) else ("key", id(k)), item, depth - 1, seen, True)
        elif kind == _FUNC:
            _function(v, depth, out, seen)
        else:
            _object(v, depth, out, seen)


#: what a method or partial object may hold beside its parts: the function's name and docs, copied
#: (``functools.update_wrapper``'s, as equinox's ``BoundMethod`` has them), which its call never reads
_METADATA = frozenset(functools.WRAPPER_ASSIGNMENTS) | {"__wrapped__"}
#: the partial types whose call is their function's on their arguments (no other state)
_PARTIALS = (functools.partial, jax.tree_util.Partial)


def _own_state(fn: Any) -> dict | None:
    """``fn``'s instance ``__dict__`` when it is a plain dict and its class adds no slots, else ``None``
    (read directly: no ``__getattr__`` forwarding)."""
    try:
        d = object.__getattribute__(fn, "__dict__")
    except AttributeError:
        return None
    if type(d) is not dict or any(c.__dict__.get("__slots__") for c in type(fn).__mro__[:-1]
                                  if c not in _PARTIALS):
        return None
    return d


def bound_parts(fn: Any) -> tuple[Any, Any] | None:
    """(object, function) of a bound method, or of an object that stands for one: its whole state (its
    ``__dict__``, no slots) is a ``__func__`` that is a plain function and a ``__self__``, beside the
    function's copied name and docs (equinox's ``BoundMethod``, a new one at each attribute access of a
    module's method); ``None`` for anything else. Keyed and watched as the bound method (with its type:
    ``run.function_key``), not by its own identity (a new key, and a new compilation, at every call)."""
    if isinstance(fn, types.MethodType):
        return fn.__self__, fn.__func__
    if isinstance(fn, (type, types.FunctionType, functools.partial)):
        return None
    d = _own_state(fn)
    if d is None or "__func__" not in d or "__self__" not in d or not d.keys() <= _METADATA | {"__func__", "__self__"}:
        return None
    func = d["__func__"]
    return (d["__self__"], func) if isinstance(func, types.FunctionType) else None


def partial_parts(fn: Any) -> tuple[Any, tuple, dict] | None:
    """(function, arguments, keywords) of a partial application: a ``functools.partial`` or
    ``jax.tree_util.Partial`` (not a subclass of one: it may hold more) with no attributes of its own,
    or an object whose whole state (its ``__dict__``, no slots) is those three (equinox's ``Partial``,
    which an ``eqx.filter_jit`` method is at each access); ``None`` for anything else. Keyed and watched
    by its type and parts (``run.function_key``), not by its own identity (a new key, and a new
    compilation, at every call, a trial: 0.66 s a call)."""
    if type(fn) in _PARTIALS:
        return (fn.func, fn.args, fn.keywords) if not _own_state(fn) else None
    if isinstance(fn, (type, types.FunctionType, types.MethodType, functools.partial)):
        return None
    d = _own_state(fn)
    if d is None or d.keys() != {"func", "args", "keywords"}:
        return None
    func, args, keywords = d["func"], d["args"], d["keywords"]
    if not (callable(func) and type(args) is tuple and type(keywords) is dict):
        return None
    return func, args, keywords


def _holder(func: Any) -> Any:
    """What holds a partial's or a bound-method object's entries in a watch: its innermost plain
    function, the same object however often the partial or method is made anew."""
    bound = bound_parts(func)
    if bound is not None:
        return bound[1]
    parts = partial_parts(func)
    return _holder(parts[0]) if parts is not None else func


#: objects put with at least this much depth left (``_put``: within two hops of the function) are also
#: watched by their pytree leaves (``_tree``), however deep those lie
TREE_DEPTH = DEPTH - 2
_TREES: dict[type, bool] = {}  # per type: whether it is a pytree node (``_KINDS``' companion, emptied with it)


def _tree(out: dict, holder: Any, key: Any, v: Any, seen: _Seen) -> None:
    """Where ``v`` is a pytree node (an equinox or flax nnx module, a registered dataclass): its leaves,
    each by identity (a number by value), under ``(holder, key)`` and its position: a weight set anew
    below ``DEPTH`` hops (a flax nnx model's ``nnx.update`` of a block's kernel, 5 levels of modules and
    lists down, a trial: 0.33 off the core, silently) is seen. Leaves count against ``MAX_LEAVES``, not
    ``MAX_VISITS``: those beyond it are not watched."""
    t = type(v)
    node = _TREES.get(t)
    try:
        if node is None:
            top = jax.tree_util.tree_structure(v, is_leaf=lambda x: x is not v)  # (one level: its children)
            node = _TREES[t] = not jax.tree_util.treedef_is_leaf(top)
        if not node:
            return
        leaves = jax.tree_util.tree_leaves(v)
    except Exception:  # (a flatten that raises: its attributes are walked, as any object's)
        return
    seen.trees.add(id(v))
    hid = id(holder)
    for i, leaf in enumerate(leaves[: max(0, seen.leaves)]):
        out[(hid, (key, "leaf", i))] = leaf
    seen.leaves -= len(leaves)


def _function(fn: Any, depth: int, out: dict, seen: _Seen, keyed: bool = False) -> None:
    """A function's reads: its closure cells, defaults, attributes; a bound method's object (or a
    bound-method object's, ``bound_parts``); a partial's function and arguments; a callable object's
    attributes. ``keyed``: ``fn`` is the function a program's key holds (``run.function_key``)."""
    bound = bound_parts(fn)
    if bound is not None:
        _put(out, bound[1], "__self__", bound[0], depth - 1, seen)
        if not isinstance(fn, types.MethodType):
            _classes(type(fn), out, seen)  # (its call: a method of its class)
        _function(bound[1], depth, out, seen)
        return
    parts = partial_parts(fn)
    if parts is not None or isinstance(fn, functools.partial):
        # its arguments held by its innermost function (a partial made anew with the same parts is the same),
        # or, for a partial with attributes or slots of its own, by itself (keyed by its identity)
        # (where the partial is keyed by its parts, ``keyed``, an argument its key carries whole,
        # ``keys.by_value``, is not watched: one made anew is the same; a partial reached through a
        # closure or an attribute is in no key: watched whole, or a change in place went unseen, a review)
        func, args, keywords = parts if parts is not None else (fn.func, fn.args, fn.keywords)
        holder = _holder(func) if parts is not None else fn
        for name, a in [(("arg", i), a) for i, a in enumerate(args)] + [(("kw", k), a) for k, a in keywords.items()]:
            if not (keyed and parts is not None and by_value(value_key(a, arrays=False))):
                _put(out, holder, name, a, depth - 1, seen)
        if parts is None:
            _put(out, fn, "func", func, depth, seen)
            _object(fn, depth, out, seen)
        else:
            if type(fn) not in _PARTIALS:
                _classes(type(fn), out, seen)
            _function(func, depth, out, seen, keyed)  # (``function_key`` keys a partial's function by its parts too)
        return
    if not isinstance(fn, types.FunctionType):
        _tree(out, fn, "self", fn, seen)
        _object(fn, depth, out, seen)  # a callable object: what its __call__ reads
        return
    for cell in fn.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _put(out, cell, "cell", value, depth - 1, seen)
    for i, d in enumerate(fn.__defaults__ or ()):
        _put(out, fn, ("default", i), d, depth - 1, seen)
    for k, d in (fn.__kwdefaults__ or {}).items():
        _put(out, fn, ("kwdefault", k), d, depth - 1, seen)
    for k, a in fn.__dict__.items():
        _put(out, fn, ("attr", k), a, depth - 1, seen)


def _object(obj: Any, depth: int, out: dict, seen: _Seen) -> None:
    """A plain object's attributes (``__dict__``, slots), and once per watch each class's own attributes
    but dunders, by identity or value and not walked (a class attribute or a method its call reads,
    swapped)."""
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        for k, a in list(d.items()):
            _put(out, obj, k, a, depth - 1, seen)
    for c in type(obj).__mro__:
        slots = c.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                _put(out, obj, name, getattr(obj, name, None), depth - 1, seen)
    _classes(type(obj), out, seen)


def _classes(cls: type, out: dict, seen: _Seen) -> None:
    """Once per watch, each class's own attributes but dunders (its methods too: one monkeypatched is set
    anew), by identity or value and not walked."""
    for c in cls.__mro__:
        if id(c) in seen or c.__module__ == "builtins":
            continue
        seen.add(id(c))
        for k, a in list(c.__dict__.items()):
            if not k.startswith("__"):
                _put(out, c, k, a, 0, seen)
