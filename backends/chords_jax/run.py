"""The compiled pipeline: one jitted function, a ``lax.scan`` over rounds (see ``lower.py``).

Per scan step the Kp core slots evaluate the model once each, as one batched call of Kp * B rows
with per-sample times (``DiffusionModel``), or vmapped (unbatched ``VectorField``). With a mesh the
slots are sharded over its ``"cores"`` axis and every device evaluates its Kp / D slots with
``shard_map``; the buffer of registers is replicated and the linear updates run as GSPMD decides.
The jitted functions are cached per (model function, mesh, output check), so a second call with
the same shapes reuses the executable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from chords_core.models import DiffusionModel, ModelOutputError, VectorField

__all__ = ["runner", "compilations", "clear_cache", "AXIS", "make_mesh"]

AXIS = "cores"
_COMPILATIONS = 0
_CACHE: OrderedDict[tuple, Callable] = OrderedDict()
_CACHE_SIZE = 32


def compilations() -> int:
    """How many times a compiled pipeline has been traced (= compiled) in this process."""
    return _COMPILATIONS


def make_mesh(devices: Any) -> Mesh | None:
    """A 1-D mesh with axis ``"cores"`` over which the core slots are sharded.

    Args:
        devices: None, a device count, a sequence of jax devices, or a ``Mesh`` (returned as is if
            it has an axis ``"cores"``).

    Returns:
        The mesh, or ``None`` for ``devices=None`` (no sharding). Raises ``ValueError`` otherwise.
    """
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if AXIS not in devices.axis_names:
            raise ValueError(f"devices: a Mesh needs an axis named {AXIS!r}, got axes {devices.axis_names}")
        return devices
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        avail = jax.devices()
        if not 1 <= devices <= len(avail):
            raise ValueError(f"devices={devices}: this process has {len(avail)} jax device(s)")
        devices = avail[:devices]
    devs = list(devices)
    if not devs or not all(isinstance(d, jax.Device) for d in devs):
        raise ValueError("devices must be None, a device count, a sequence of jax devices or a Mesh")
    return Mesh(np.array(devs), (AXIS,))


def _evaluator(model: Any, with_args: bool = False) -> tuple[tuple, Callable]:
    """(cache key, f(pts (k, *S), t (k,), args) -> outs (k, *S)) for a core model with a jax-traceable
    function; with ``with_args`` the function is called ``fn(x, t, args)`` (``f(t, y, args)``)."""
    if isinstance(model, DiffusionModel):
        fn: Any = model.fn

        def evaluate(pts, t, args):
            k, rows = pts.shape[0], pts.shape[1]
            flat = pts.reshape((k * rows,) + pts.shape[2:])
            tt = jnp.repeat(t, rows)
            out = fn(flat, tt, args) if with_args else fn(flat, tt)
            if tuple(out.shape) != tuple(flat.shape):
                raise ModelOutputError(0, f"model returned shape {tuple(out.shape)}, expected {tuple(flat.shape)}")
            return out.reshape(pts.shape).astype(pts.dtype)

        return ("diffusion", fn, with_args), evaluate
    if isinstance(model, VectorField):
        f: Any = model.f
        batched = model.batched

        def evaluate(pts, t, args):
            if with_args:
                out = f(t, pts, args) if batched else jax.vmap(f, in_axes=(0, 0, None))(t, pts, args)
            else:
                out = f(t, pts) if batched else jax.vmap(f)(t, pts)
            if tuple(out.shape) != tuple(pts.shape):
                raise ModelOutputError(0, f"model returned shape {tuple(out.shape)}, expected {tuple(pts.shape)}")
            return out.astype(pts.dtype)

        return ("field", f, batched, with_args), evaluate
    raise TypeError(f"model must be a chords_core DiffusionModel or VectorField, got {type(model).__name__}")


def _terms(buf: Any, idx: Any, coef: Any) -> Any:
    """new[w] = sum_m coef[w, m] * buf[idx[w, m]] for buf (S, *X), idx/coef (W, M) -> (W, *X)."""
    shape = (coef.shape[0],) + (1,) * (buf.ndim - 1)
    new = coef[:, 0].reshape(shape) * buf[idx[:, 0]]
    for m in range(1, idx.shape[1]):
        new = new + coef[:, m].reshape(shape) * buf[idx[:, m]]
    return new


def clear_cache() -> None:
    """Drop every cached executable (and with it the model functions and whatever they hold: weights
    read from a closure or an object). The cache keeps at most ``_CACHE_SIZE`` executables."""
    _CACHE.clear()


def runner(model: Any, mesh: Mesh | None, check: bool, with_args: bool = False) -> Callable:
    """The jitted pipeline ``run(x, init, dest, idx, coef, times, args) -> (buf, finite)``, cached.

    The cache is keyed by the model's function and holds it (and what it closes over) until it is
    evicted (least recently used, beyond ``_CACHE_SIZE`` entries) or ``clear_cache()`` is called.
    Values a function reads from its closure at trace time are baked into the executable; pass
    changing values (weights) as ``args``, a traced argument.

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` with a jax-traceable function.
        mesh: the device mesh (``make_mesh``) or ``None``.
        check: also return per round and slot whether the outputs are finite.
        with_args: call the function with a third argument ``args`` (any pytree).

    Returns:
        The jitted function: ``buf`` the final buffer (rows of x's shape), ``finite`` (R, Kp)
        booleans (empty rows without ``check``).
    """
    key_model, evaluate = _evaluator(model, with_args)
    key = (key_model, mesh, bool(check))
    fn = _CACHE.get(key)
    if fn is not None:
        _CACHE.move_to_end(key)
        return fn
    if mesh is not None:
        spec = PartitionSpec(AXIS)
        evaluate = jax.shard_map(evaluate, mesh=mesh, in_specs=(spec, spec, PartitionSpec()), out_specs=spec)
        replicated = NamedSharding(mesh, PartitionSpec())

    def pin(buf):
        """Keep the buffer replicated: each device holds all registers, only the outputs travel."""
        return buf if mesh is None else jax.lax.with_sharding_constraint(buf, replicated)

    def run(x, init, dest, idx, coef, times, args):
        global _COMPILATIONS
        _COMPILATIONS += 1
        slots = times.shape[1]
        pts = init.shape[0] - 2 * slots  # first point row; outputs follow the points
        buf = init.reshape(init.shape + (1,) * x.ndim) * x[None]

        def body(buf, inputs):
            dest_r, idx_r, coef_r, t_r = inputs
            outs = evaluate(buf[pts : pts + slots], t_r, args)
            buf = pin(buf.at[pts + slots :].set(outs))
            buf = pin(buf.at[dest_r].set(_terms(buf, idx_r, coef_r)))
            finite = jnp.isfinite(outs).reshape(slots, -1).all(axis=1) if check else jnp.zeros((0,), bool)
            return buf, finite

        return jax.lax.scan(body, buf, (dest, idx, coef, times))

    fn = _CACHE[key] = jax.jit(run)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn
