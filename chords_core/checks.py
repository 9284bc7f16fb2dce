"""Argument checks shared by every entry point: one place, messages that name the argument.

Each ``check_*`` function returns the value normalised (a Python ``int`` for any integer type,
numpy's included; a Python ``float``; a float64 grid) or raises ``ValueError`` / ``TypeError``
whose message starts with the argument's name. This module depends on nothing else in the package;
the start-of-call checks that need models and solvers (``begin``) are in ``call``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B

#: the library's packages: the core and its backends (a warning points past their frames; a solver's
#: ``step`` written elsewhere is checked, ``Solver.__init_subclass__``)
LIBRARY_PACKAGES = ("chords_core", "chords_jax", "chords_torch", "chords_diffusers")

__all__ = ["check_int", "check_bool", "check_float", "check_choice", "check_grid"]


def _is_int(value: Any) -> bool:
    """An integer: Python's or numpy's (not bool), or a 0-d array of an integer dtype in any library (a
    user trial's ``cores=jnp.int32(4)`` was refused as "must be an integer", showing an int32)."""
    if type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))):
        return True
    if getattr(value, "shape", None) != () or not hasattr(value, "__index__"):
        return False
    try:
        return np.dtype(value.dtype).kind in "iu"
    except TypeError:  # (a dtype numpy does not know: a torch one)
        return str(value.dtype).startswith(("torch.int", "torch.uint"))


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int: any integer type (numpy's included; not bool) within [low, high].

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        low: the smallest allowed value (``None``: no bound).
        high: the largest allowed value (``None``: no bound).

    Returns:
        ``int(value)``. Raises ``ValueError`` naming ``name`` otherwise.
    """
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer{_range(low, high)}, got {value!r}")
    try:
        v = int(value)
    except TypeError:  # (a traced jax integer under jax.jit: jax's ConcretizationTypeError, naming nothing)
        raise ValueError(f"{name} must be an integer known when the call is made, got {value!r} (under jax.jit: "
                         "pass it as a static argument)") from None
    except (RuntimeError, NotImplementedError) as err:  # (a torch integer on the meta device: no value, naming nothing)
        raise ValueError(f"{name} must be an integer with a value, got {value!r} ({err})") from None
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be an integer{_range(low, high)}, got {v!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a Python bool: ``True`` or ``False`` (numpy's too), not a string such as ``"False"``
    (truthy) nor a number; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_cores(cores: Any, steps: int) -> int:
    """``cores`` as an int in [1, ``steps``]: ``parallel``'s bound for every method (CHORDS' cores, a
    window, SRDS's blocks: none uses more cores than steps); ``ValueError`` naming ``cores`` otherwise."""
    cores = check_int("cores", cores, 1)
    if cores > steps:
        raise ValueError(f"cores={cores} is more than the grid's {steps} steps: no method uses more cores than steps")
    return cores


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, finite: bool = True) -> float:
    """``value`` as a Python float: a real number (not bool, not a string) within bounds.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        low: the smallest allowed value (``None``: no bound).
        high: the largest allowed value (``None``: no bound).
        low_open: require ``value > low`` instead of ``>=``.
        finite: reject +-inf.

    Returns:
        ``float(value)`` (-0.0 as 0.0). Raises ``ValueError`` naming ``name`` otherwise (NaN always fails).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    try:
        v = float(value) if ok else _scalar_array(value)
    except OverflowError:  # (an int beyond float's range, 10**400: a bare OverflowError, a trial)
        v = math.inf if value > 0 else -math.inf
    ok = ok or not math.isnan(v)
    if ok and not math.isnan(v) and (not finite or math.isfinite(v)):
        if (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high):
            return v + 0.0  # (-0.0 as 0.0: a stop rule said "residual never below -0")
    kind = "a finite number" if finite else "a number"
    bounds = ""
    if low is not None:
        bounds += f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        bounds += (" and" if low is not None else "") + f" <= {high:g}"
    raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}")


def _scalar_array(value: Any) -> float:
    """A 0-d real array's value (numpy, torch, a concrete jax array: a ``tol`` computed with the
    state's library was refused as not a number), else NaN (also for booleans and complex values)."""
    dtype = str(getattr(value, "dtype", ""))
    if getattr(value, "shape", None) != () or not any(k in dtype for k in ("float", "int")):  # (not bool, str, object)
        return math.nan
    try:
        return float(value.detach() if hasattr(value, "detach") else value)
    except Exception:  # (a tracer, an object that will not convert): not a number here
        return math.nan


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; a ``ValueError`` listing them otherwise.

    Args:
        name: the argument's name, for the message.
        value: the value to check.
        choices: the allowed strings.

    Returns:
        ``value``.
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def check_grid(grid: Any, name: str = "grid") -> np.ndarray:
    """The grid as a float64 array: 1-D, at least two points, finite, strictly monotone.

    Args:
        grid: a sequence or array of times.
        name: the argument's name, for the message.

    Returns:
        (T + 1,) float64 array. Raises ``ValueError`` naming ``name`` otherwise.
    """
    if isinstance(grid, (str, bytes)):
        raise ValueError(f"{name} must be a 1-D sequence of times, got a string")
    if np.ma.is_masked(grid):  # (its masked times were used as they lay)
        raise ValueError(f"{name}: a masked array with masked times; pass the times to solve over "
                         f"({name}.compressed(), or {name}.filled(value))")
    if B.library(grid) == "torch":
        # a tensor's times on the host, floating ones as float64: one that requires grad, or is on a
        # device, or is a bfloat16 one (which numpy has not) failed in np.asarray, naming no argument
        # (a bool or complex tensor stays as it is, for the kind check below)
        try:
            grid = grid.detach().cpu()
        except (RuntimeError, NotImplementedError) as err:  # (a tensor on the meta device has no values)
            raise ValueError(f"{name}: a tensor whose times cannot be read on the host ({err})") from None
        # (inside torch.func numpy views no tensor, an integer one neither: a copy)
        grid = B.values_of(grid.double() if grid.dtype.is_floating_point else grid)
    try:
        raw = np.asarray(grid)
    except (TypeError, ValueError) as err:  # (numpy's reason: a jax tracer's said only "must be a 1-D
        # sequence of times" of one that was, a trial)
        why = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{name} must be a 1-D sequence of times; numpy cannot read it ({type(err).__name__}"
                         f"{': ' + why if why else ''})") from None
    if raw.dtype.kind == "V" and raw.dtype.name == "bfloat16":  # (ml_dtypes' bfloat16, as jax gives it; a
        # dtype's name is built on every read: 5 µs, a third of this check's time, a profile)
        raw = raw.astype(np.float64)
    # (booleans, strings, complex numbers and dates converted, silently; so did such objects)
    if raw.dtype.kind not in "iufO" or raw.dtype.kind == "O" and any(
            isinstance(v, (str, bytes, bool, np.bool_, complex, np.complexfloating)) for v in raw.flat):
        kind = raw.dtype if raw.dtype.kind != "O" else "object (str, bool or complex)"
        raise ValueError(f"{name} must hold real numbers (times), got {kind} values")
    try:
        times = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of times") from None
    if times.ndim != 1 or times.size < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 times (1 step), got shape {times.shape}")
    if not np.isfinite(times).all():
        raise ValueError(f"{name} must hold finite times")
    d = times[1:] - times[:-1]
    if not (d.max() < 0 or d.min() > 0):  # (one reduction for a decreasing grid, the diffusion convention)
        raise ValueError(f"{name} must be strictly monotone (all increasing or all decreasing)")
    return times
