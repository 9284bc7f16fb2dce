"""Values as parts of cache keys: a solver's or method's options (``api.options_key``) and a partial
application's arguments (``run.function_key``), one rule for both."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import numpy as np

from chords_core.schedules import ByIdentity, attributes

__all__ = ["value_key", "by_value"]

#: the types a cache key holds by value (a float or complex by its repr, which tells -0.0 and every nan alike)
_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def value_key(v: Any, depth: int = 4, arrays: bool = True) -> Any:
    """A value as a part of a cache key (a solver's or method's option, ``api.options_key``; a partial's
    argument, ``function_key``), by value where it is a value: a number, string or None (with its type:
    1, 1.0 and True are different; a float or complex by its repr), a numpy scalar, with ``arrays`` an
    array by its dtype, shape and a SHA-256 of its bytes (a pass over it per call: 22 ms for 32 MB) and
    a jax PRNG key by its key data, a tuple or list
    (exactly, or a named tuple, with its type), set, dict (its items in their order) or range by its
    items' keys, a dataclass by its type and every attribute's key (``field(compare=False)`` ones too),
    ``depth`` levels deep. Without ``arrays`` (a partial's argument, which ``reads`` also watches) an
    array, and a dataclass but a frozen one of immutable values (numbers, strings, tuples of them), are
    keyed by identity: weights, and state the model may update itself (a log, a counter: by value, a
    new key and a compile at every call, a review). Anything else, or deeper, by identity
    (``ByIdentity``, which holds it: its address is not reused while it is cached; an equal object made
    anew misses the cache). A key of the
    repr, as before, gave a function option freed and made anew at the same address the old one's
    program, and an array over 1,000 elements (printed with "...") or a 0-d array (printed to 8 digits)
    another value's (a user trial: up to 0.87 off, silently); a key of a list subclass's items alone
    left out its own attributes (a review)."""
    t = type(v)
    if t in _PLAIN:
        return t.__name__, repr(v) if t is float or t is complex else v
    if not arrays and isinstance(v, (jax.Array, np.ndarray)):
        return ByIdentity(v)
    if isinstance(v, jax.Array) and not isinstance(v, jax.core.Tracer) and v.is_fully_addressable:
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            return "key", str(v.dtype), value_key(jax.random.key_data(v))
        v = np.asarray(v)
    if isinstance(v, (np.ndarray, np.generic)) and v.dtype != object:
        a = np.ascontiguousarray(v)  # (1-d for a 0-d one: the shape is v's)
        return "array", a.dtype.str, np.shape(v), hashlib.sha256(a.reshape(-1).view(np.uint8).data).digest()
    if depth <= 0:
        return ByIdentity(v)
    if t in (tuple, list) or (isinstance(v, tuple) and hasattr(t, "_fields") and not hasattr(v, "__dict__")):
        return t.__qualname__, t.__module__, tuple(value_key(e, depth - 1, arrays) for e in v)
    if t in (set, frozenset):
        return t.__name__, tuple(sorted((value_key(e, depth - 1, arrays) for e in v), key=repr))
    if t is dict:
        return "dict", tuple((value_key(k, depth - 1, arrays), value_key(e, depth - 1, arrays)) for k, e in v.items())
    if t is range:
        return "range", v.start, v.stop, v.step
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        fields = sorted(attributes(v).items())
        if arrays or (v.__dataclass_params__.frozen and all(_immutable(e) for _, e in fields)):  # type: ignore[attr-defined]
            return "dataclass", t, tuple((k, value_key(e, depth - 1, arrays)) for k, e in fields)
    return ByIdentity(v)


def _immutable(v: Any, depth: int = 3) -> bool:
    """Whether ``v`` is a number, string, numpy scalar, or a tuple or frozenset of such (``depth`` deep)."""
    if type(v) in _PLAIN or isinstance(v, np.generic):
        return True
    return depth > 0 and type(v) in (tuple, frozenset) and all(_immutable(e, depth - 1) for e in v)


def by_value(key: Any) -> bool:
    """Whether a ``value_key`` holds its value whole: no part of it is keyed by identity (a partial's
    argument that the key carries whole is not watched as well, ``reads``: one made anew is the same)."""
    if isinstance(key, ByIdentity):
        return False
    return all(by_value(k) for k in key) if isinstance(key, tuple) else True
