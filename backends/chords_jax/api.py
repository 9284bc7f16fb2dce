"""``chords_jax.chords`` and ``chords_jax.solve``: the core's CHORDS and sequential solve, compiled.

1. The core engine ``chords_core.chords`` runs once on a symbolic state (``linear.py``): the plan,
   solver coefficients, rectifications and history policy produce a linear DAG (cached per
   model kind / schedule / grid / solver / init / stop / history).
2. ``lower.py`` turns it into per-round index/coefficient arrays, ``run.py`` executes them as one
   jitted ``lax.scan`` over rounds with the core slots on a leading axis (sharded over devices).
3. The result is the core's ``ChordsResult``: plan, rounds, NFE and hits come from the symbolic run,
   the arrays from the compiled one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import chords_core as cc
from chords_core.models import DiffusionModel, ModelOutputError, VectorField
from chords_core.pipeline import ChordsResult, Hit
from chords_core.sequential import check_grid
from chords_core.stopping import StopAtCore, StopOnResidual

from .linear import LinearTrace
from .lower import Program, lower
from .run import make_mesh, runner

__all__ = ["chords", "solve", "compile_plan", "SUPPORTED_SOLVERS"]

#: Every core solver compiles, since each is a linear combination of states per step.
SUPPORTED_SOLVERS = tuple(sorted(cc.SOLVERS))

_PROGRAMS: "OrderedDict[tuple, tuple]" = OrderedDict()
_PROGRAMS_SIZE = 64


def _model_key(model) -> tuple:
    """What the symbolic run depends on: the model's conversion coefficients, not its function."""
    if isinstance(model, DiffusionModel):
        return ("diffusion", model.schedule, model.prediction)
    if isinstance(model, VectorField):
        return ("field",)
    raise TypeError(f"model must be a chords_core DiffusionModel or VectorField, got {type(model).__name__}")


def compile_plan(model, shape: tuple, dtype, grid, solver="euler", *, cores=None, init=None, stop=StopAtCore(1),
                 history: str = "shift", slots_multiple: int = 1, **solver_options) -> tuple[Program, ChordsResult]:
    """Replay the core engine symbolically and lower it: (program arrays, symbolic ``ChordsResult``).

    ``stop=StopOnResidual`` is replayed as ``stop=None`` (all rounds); the caller selects on the host.
    The symbolic result's arrays are ``Sym`` nodes; ``program.outputs`` maps their ids to registers.
    """
    times = check_grid(grid)
    trace_stop = None if isinstance(stop, StopOnResidual) else stop
    key = None
    if isinstance(solver, str):
        opts = tuple(sorted((k, repr(v)) for k, v in solver_options.items()))
        inits = None if init is None else tuple(int(v) for v in init)
        key = (_model_key(model), tuple(shape), str(dtype), times.tobytes(), solver, opts, cores, inits, trace_stop, history, slots_multiple)
        got = _PROGRAMS.get(key)
        if got is not None:
            _PROGRAMS.move_to_end(key)
            return got
    tr = LinearTrace(shape, dtype)
    res = cc.chords(model, tr.x0, times, solver, cores=cores, init=init, stop=trace_stop, executor=tr,
                    history=history, **solver_options)
    K = res.plan.cores
    slots = -(-K // slots_multiple) * slots_multiple
    slot_of = [[e.core for e in rd.evals] for rd in res.plan.rounds[: len(tr.rounds)]]
    outputs = [h.x for h in res.hits] + [res.coarse]
    prog = lower(tr, slot_of, slots, outputs, float(times[0]))
    if key is not None:
        _PROGRAMS[key] = (prog, res)
        while len(_PROGRAMS) > _PROGRAMS_SIZE:
            _PROGRAMS.popitem(last=False)
    return prog, res


def chords(
    model: cc.Model,
    x: Any,
    grid,
    solver: "str | cc.solvers.Solver" = "euler",
    *,
    cores: int | None = None,
    init: Sequence[int] | None = None,
    stop: "StopAtCore | StopOnResidual | None" = StopAtCore(1),
    history: str = "shift",
    devices: Any = None,
    executor: None = None,
    progress: bool = False,
    **solver_options,
) -> ChordsResult:
    """CHORDS as ``chords_core.chords``, compiled: same arguments, same ``ChordsResult`` (jax arrays).

    ``model``'s function must be jax-traceable (``jax.numpy``). ``devices``: None (the default
    device, slots vmapped/batched), a device count, a sequence of devices or a ``Mesh`` with an axis
    ``"cores"``: the K core slots (padded to a multiple of the device count) are sharded over it.
    ``StopAtCore`` truncates the scan at the plan's round; ``StopOnResidual`` runs every round and
    picks the output on the host (the reported rounds/NFE are where it stops). ``executor`` must be
    None (the compiled scan is the executor); ``progress`` is accepted and ignored.
    """
    if executor is not None:
        raise ValueError("executor: chords_jax compiles the model evaluation itself; use devices= to shard it")
    mesh = make_mesh(devices)
    ndev = 1 if mesh is None else mesh.shape["cores"]
    x = _as_state(x)
    prog, sym = compile_plan(model, x.shape, x.dtype, grid, solver, cores=cores, init=init, stop=stop, history=history,
                             slots_multiple=ndev, **solver_options)
    if mesh is not None:
        x = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    dt = x.dtype
    run = runner(model, mesh, model.check_outputs)
    buf, finite = run(x, prog.init.astype(dt), prog.dest, prog.idx, prog.coef.astype(dt), prog.times.astype(dt))
    if model.check_outputs:
        _raise_nonfinite(np.asarray(finite), prog, sym)
    vals = {nid: buf[row] for nid, row in prog.outputs.items()}
    hits = tuple(Hit(h.core, h.round, h.nfe, vals[h.x.id]) for h in sym.hits)
    coarse = vals[sym.coarse.id]
    if isinstance(stop, StopOnResidual):
        return _select_residual(hits, coarse, sym.plan, stop)
    return ChordsResult(vals[sym.x.id], sym.rounds, sym.nfe, hits, coarse, sym.plan, sym.stopped_by)


def solve(model: cc.Model, x: Any, grid, solver: "str | cc.solvers.Solver" = "euler", *, devices: Any = None,
          progress: bool = False, **solver_options) -> Any:
    """The sequential solve of ``chords_core.solve``, compiled: a ``lax.scan`` with one model
    evaluation per scan step (steps x stages). It is CHORDS' core 0 alone (``cores=1``)."""
    return chords(model, x, grid, solver, cores=1, stop=None, devices=devices, **solver_options).x


def _as_state(x) -> jax.Array:
    if not hasattr(x, "shape"):
        raise TypeError(f"x: the initial state must be an array, got {type(x).__name__}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x: the initial state must have a floating dtype, got {x.dtype}")
    return x


def _raise_nonfinite(finite: np.ndarray, prog: Program, sym: ChordsResult) -> None:
    bad = np.argwhere(prog.active & ~finite)
    if not len(bad):
        return
    r, k = (int(v) for v in bad[0])
    evs = sym.plan.rounds[r].evals
    j = next(j for j, e in enumerate(evs) if e.core == k)
    e = evs[j]
    raise ModelOutputError(j, f"round {r + 1}, core {k} (step {e.index}, stage {e.stage}, t={prog.times[r, k]:.6g}): "
                              "model returned non-finite values (nan or inf)")


def _rms(a) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(a))))


def _select_residual(hits: tuple[Hit, ...], coarse, plan, stop: StopOnResidual) -> ChordsResult:
    """The core's StopOnResidual rule on the host: the first output within ``tol`` (RMS) of the
    previous one (the coarse hit for the first); every output of its round is kept."""
    for n, h in enumerate(hits):
        prev = hits[n - 1].x if n else coarse
        if _rms(h.x - prev) < stop.tol:
            kept = tuple(g for g in hits if g.round <= h.round)
            return ChordsResult(h.x, h.round, plan.nfe(h.round), kept, coarse, plan,
                                f"residual below {stop.tol:g} at core {h.core}")
    last = hits[-1]
    return ChordsResult(last.x, last.round, plan.nfe(last.round), hits, coarse, plan,
                        f"residual never below {stop.tol:g}; core 0")
