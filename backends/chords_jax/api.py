"""``chords_jax.chords`` and ``chords_jax.solve``: the core's CHORDS and sequential solve, compiled.

1. The core engine ``chords_core.chords`` runs once on a symbolic state (``linear.py``): the plan,
   solver coefficients, rectifications and history policy produce a linear DAG (cached per
   model kind / schedule / grid / solver / init / stop / history).
2. ``lower.py`` turns it into per-round index/coefficient arrays grouped in segments of equal
   width, ``run.py`` executes them in one jitted function, a ``lax.scan`` over the rounds of each
   segment with the core slots on a leading axis (sharded over devices). The arrays stay on the
   device between calls (``_device_arrays``).
3. The result is the core's ``Result``: plan, rounds, NFE and hits come from the symbolic run,
   the arrays from the compiled one. The stop rule picks the output on the host
   (``stopping.select_output``); for a rule that uses the error estimate (``StopWhenConverged``,
   the default) the symbolic run also records, per output, the sum of the local error estimates
   as a linear combination (a ``Sym``), the compiled run computes those sums like the outputs, and
   the replay forms the estimate from them as the engine does (``stopping.estimate_error``).
   A rule that decides on the outputs (not ``StopAtCore`` / ``RunAll``) runs the program in chunks
   that end where outputs arrive (``_chunk_plan``), the buffer carried on the device, and stops
   at the first output the rule accepts: the rounds after it are not executed.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import chords_core as cc
from chords_core.call import _method_argument, nonfinite_state, not_floating, solver_label
from chords_core.checks import _is_int, check_grid, check_int
from chords_core.engine import StageTimeError, eval_where, plan_result
from chords_core.inits import validate_init
from chords_core.models import DiffusionModel, ModelOutputError, VectorField, is_plain_ode
from chords_core.results import Hit, Result
from chords_core.schedules import ByIdentity, schedule_key
from chords_core.sequential import step_where
from chords_core.stopping import (
    DEFAULT_STOP,
    ErrorState,
    Outputs,
    StopAtCore,
    StopOnResidual,
    StopRule,
    StopWhenConverged,
    as_stop_rule,
    chosen_output,
    estimate_error,
    first_accepted,
    outputs_needed,
    select_output,
)

from .keys import value_key
from .linear import LinearRecorder, Sym
from .lower import SEGMENT_TIMES, Program, lower
from .multihost import call_parts, in_step, replicated, same_call
from .run import (
    NO_BAD,
    after_run,
    chunk_runner,
    coefficient_dtype,
    first_bad,
    keyable,
    lru_get,
    lru_put,
    make_mesh,
    runner,
    time_dtype,
    tracing,
)
from .run import clear_cache as _run_clear_cache

__all__ = ["chords", "solve", "compile_plan", "SUPPORTED_SOLVERS"]

#: Every core solver compiles, since each is a linear combination of states per step.
SUPPORTED_SOLVERS = tuple(sorted(cc.SOLVERS))

_PROGRAMS: OrderedDict[tuple, tuple] = OrderedDict()
_ARRAYS: OrderedDict[tuple, tuple] = OrderedDict()  # program arrays on the device(s), see _device_arrays
_PROGRAMS_SIZE = 64
#: more caches that ``clear_cache`` empties: modules built on this one register their clearing here
CACHES: list[Callable[[], None]] = []


def _program(key: tuple | None, build: Callable[[], tuple]) -> tuple:
    """The (program, symbolic result) cached under ``key`` (now the most recently used), or
    ``build()``'s, cached (``lru_put``, at most ``_PROGRAMS_SIZE``); ``key`` ``None`` (an init that
    cannot be keyed): built every call."""
    if key is not None:
        got = lru_get(_PROGRAMS, key)
        if got is not None:
            return got
    value = build()
    if key is not None:
        lru_put(_PROGRAMS, key, value, _PROGRAMS_SIZE)
    return value


def solver_key(solver: Any) -> tuple:
    """A cache key's part for a solver: given by name, the name and its registered ``SolverSpec`` (by
    value, or by identity where it cannot be hashed), so that a solver registered anew under the same
    name (``register_solver(..., replace=True)``) is compiled anew; a bound ``Solver``, by identity,
    through a weak reference (a trial: with no key, every call replayed, lowered and uploaded its
    program again, 10-47x a named solver's time per call, and pushed other programs' arrays out; held,
    it kept its model and weights alive in up to 64 entries, a review). A reference to a solver since
    freed equals no other: its entries are never hit again and age out."""
    if isinstance(solver, str):
        return (solver, keyable(cc.SOLVERS.get(solver)))
    try:
        return ("bound", weakref.ref(solver))
    except TypeError:  # (an object that takes no weak reference: held)
        return ("bound", ByIdentity(solver))


def options_key(options: dict) -> tuple:
    """A cache key's part for solver (or method) options: their names and ``value_key``s, sorted."""
    return tuple(sorted((k, value_key(v)) for k, v in options.items()))


#: the ``DiffusionModel`` methods its conversion coefficients come from (a subclass may override them)
_COEFFICIENT_METHODS = ("coefficients", "data_eps_coefficients", "data_eps_table", "_data_eps")


def _model_key(model: Any, times: np.ndarray) -> tuple:
    """What the symbolic run on the grid ``times`` depends on: the model's conversion coefficients,
    not its function. For a subclass with coefficients of its own (``_COEFFICIENT_METHODS``) their
    values on the grid (a subclass's program was the plain model's where that came first: 45 off for
    a ``DiffusionModel``'s, 0.195 for a ``VectorField``'s, silently, in user trials); no reference to
    the model itself."""
    if isinstance(model, DiffusionModel):
        base: type = DiffusionModel
        key: tuple = ("diffusion", schedule_key(model.schedule), model.prediction)  # (by all it holds: schedule_key)
    elif isinstance(model, VectorField):
        base, key = VectorField, ("field",)
    else:
        raise TypeError(f"model must be a chords_core DiffusionModel or VectorField, got {type(model).__name__}")
    if any(getattr(type(model), m, None) is not getattr(base, m, None) for m in _COEFFICIENT_METHODS):
        key += (type(model).__qualname__, _coefficient_values(model, times))
    return key


def _coefficient_values(model: Any, times: np.ndarray) -> tuple:
    """The conversion coefficients a solver reads from ``model`` on the grid, as the bytes of their
    float64 values (nan included: as floats a nan is unequal to itself, and a key holding one never
    matched, so every call replayed and lowered its program again); an exception's type where a
    quantity has none (and a ``VectorField``'s, which has no data prediction: none of its table)."""
    out: list = []
    for quantity in ("data", "velocity"):
        try:
            c = model.coefficients(times, quantity)
        except Exception as e:  # noqa: BLE001 (a quantity the model cannot give: the solvers that need it fail alike)
            out.append(type(e).__name__)
            continue
        out.append(None if c is None else np.asarray(c, np.float64).tobytes())
    table = getattr(model, "data_eps_table", None)
    out.append(None if table is None else np.asarray(table(times), np.float64).tobytes())
    return tuple(out)


def unchecked(model: cc.Model, solver: Any) -> tuple[cc.Model, Any]:
    """(``model``, ``solver``) for a symbolic replay: the model without the output check, whose
    ``"deferred"`` mode reads the outputs, symbols there (it failed on a cold cache only, as
    ``NonLinearOperation``; the compiled run checks the real outputs), and a ``Solver`` bound to
    ``model`` bound to that copy instead (a review: ``make_solver`` refused it as "bound to another
    model" under the default check); a name, or a solver bound elsewhere, as given."""
    if not model.check_outputs:
        return model, solver
    replay = copy.copy(model)
    replay.check_outputs = False
    if isinstance(solver, cc.solvers.Solver) and solver.model is model:
        solver = copy.copy(solver)
        solver.model = replay
    return replay, solver


class _TraceStop(StopAtCore):
    """The symbolic run's stop rule: the ``n``-th output (the last the real rule may need), with the
    engine's error estimates when the real rule uses them (``errors``); keeps each output's
    ``Outputs.error_state`` (its sum a ``Sym``) in ``states``, without forming the estimate."""

    states: list

    def __init__(self, n: int, errors: bool) -> None:
        super().__init__(n)
        object.__setattr__(self, "uses_error_estimate", errors)
        object.__setattr__(self, "states", [])

    def accept(self, outputs: Sequence[Any], coarse: Any) -> bool:
        """Keep the newest output's error state; True at the n-th output."""
        if self.uses_error_estimate:
            assert isinstance(outputs, Outputs)
            self.states.append(outputs.error_state)
        return super().accept(outputs, coarse)


def _init_key(init: Sequence[int] | None, steps: int, cores: int | None) -> tuple[int, ...] | None | bool:
    """``init`` as the core reads it (``validate_init``), for a cache key; ``False`` where the core
    refuses it: no key then, and the build raises the core's error in the core's order (a key of the
    values truncated to ints let a warm cache run init=[0, 2.4, 5] as (0, 2, 5), a review)."""
    if init is None:
        return None
    try:
        return validate_init(init, steps, cores)
    except (TypeError, ValueError):
        return False


def compile_plan(model: cc.Model, shape: tuple, dtype: Any, grid: Any, solver: str | cc.solvers.Solver = "euler", *,
                 cores: int | None = None, init: Sequence[int] | None = None, stop: StopRule | None = DEFAULT_STOP,
                 history: str = "shift", slots_multiple: int = 1, **solver_options: Any) -> tuple[Program, Result]:
    """Replay the core engine symbolically and lower it to the arrays of one compiled run.

    The replay runs until the last output the stop rule may need (``stop.outputs_needed``); the
    caller picks the output on the host with the same rule (``stopping.select_output``). When the
    rule uses the error estimate (``uses_error_estimate``), the replay keeps the engine's local
    error estimates too, and per output its ``Outputs.error_state`` (error sum, steps estimated,
    steps) goes to the result's ``log`` (``None`` where the estimate is ``None``), the sum a
    ``Sym`` whose row the program also computes (not for a rule that needs one output only: that
    output is returned whatever the rule says, and the rule sees ``outputs.error`` ``None``).
    Cached per (model kind, shape, dtype, grid, solver and options, cores, init, outputs needed,
    error estimate, history, slots): a bound solver by identity (``solver_key``).

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` (only its parametrisation matters here).
        shape: the state's shape S.
        dtype: the state's dtype.
        grid: the T + 1 times.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        cores: K (or ``init``).
        init: the cores' start indices.
        stop: the stop rule.
        history: the history policy at a rectification (``HISTORY_POLICIES``).
        slots_multiple: pad the core slots to a multiple of this (the device count).
        solver_options: the solver's options.

    Returns:
        (program arrays, symbolic ``Result``): the result's arrays (and the error sums in its
        ``log``) are ``Sym`` nodes; ``program.outputs`` maps their ids to buffer rows.
    """
    times = check_grid(grid)
    dtype = np.dtype(dtype)  # (a scalar type such as np.float32 failed deep inside: "'<' not supported", a user trial)
    if cores is not None:  # (a jax scalar went into the cache key: "unhashable type"; as an int, the same key)
        cores = check_int("cores", cores, 1)
    K = len(init) if init is not None else cores
    rule = as_stop_rule(stop)
    needed = outputs_needed(rule, int(K)) if _is_int(K) and int(K) >= 1 else None  # type: ignore[arg-type]
    # the error estimate, where the rule uses it and can choose (one output is returned as it is)
    errors = bool(getattr(rule, "uses_error_estimate", False)) and needed is not None and needed > 1
    key = None
    inits = _init_key(init, len(times) - 1, cores)
    if inits is not False:
        key = (_model_key(model, times), tuple(shape), np.dtype(dtype), times.tobytes(), solver_key(solver),
               options_key(solver_options), cores, inits, needed, errors, history, slots_multiple)

    def build() -> tuple[Program, Result]:
        trace_stop = _TraceStop(needed, errors) if needed is not None else None
        tr = LinearRecorder(shape, dtype)
        replay, replay_solver = unchecked(model, solver)
        res = cc.chords(replay, tr.x0, times, replay_solver, cores=cores, init=init, stop=trace_stop, executor=tr,
                        history=history, **solver_options)
        plan = res.plan
        assert plan is not None  # the engine's results carry their plan
        outputs = [h.x for h in res.hits] + [res.coarse]
        states: list = []
        if trace_stop is not None and errors:
            # per output its error state, an output computed in the same round as the last accepted
            # (the rule's last call) sharing that round's; None where the estimate is None anyway
            kept = trace_stop.states + trace_stop.states[-1:] * (len(res.hits) - len(trace_stop.states))
            for st in kept:  # estimate_error of a stand-in sum says whether the estimate exists yet
                usable = (st is not None and isinstance(st.error_sum, Sym)
                          and estimate_error(np.zeros(1), st.estimated, st.steps) is not None)
                states.append(st if usable else None)
            outputs += list({v.id: v for st in states if st is not None for v in _state_syms(st)}.values())
            res = dataclasses.replace(res, log=tuple(states))
        return lower(tr, plan.cores, outputs, float(times[0]), slots_multiple), res

    return _program(key, build)


def chords(
    model: cc.Model,
    x: Any,
    grid: Any,
    solver: str | cc.solvers.Solver = "euler",
    *,
    cores: int | None = None,
    init: Sequence[int] | None = None,
    stop: StopRule | None = DEFAULT_STOP,
    history: str = "shift",
    devices: Any = None,
    executor: None = None,
    progress: bool = False,
    args: Any = None,
    **solver_options: Any,
) -> Result:
    """CHORDS as ``chords_core.chords``, compiled: same arguments, same ``Result`` (jax arrays).

    The scan stops at the round of the last output the stop rule may need; the rule then picks the
    output on the host, as the core engine would (rounds and NFE are where it stops). Every rule
    returns the output the core engine returns, ``StopWhenConverged`` too: its error estimate is
    computed on the device with the outputs (see ``compile_plan``). (Where the outputs round
    differently from the core's, a value-based rule can decide otherwise near its thresholds: seen
    with float16 states, whose outputs XLA and numpy round differently, so that two outputs equal in
    the core differed by 4e-3 here and the rule ran on to core 0.) ``StopAtCore`` and ``None`` run
    as one compiled call; a rule that decides on the outputs runs in chunks ending where outputs
    arrive and stops executing rounds at the first output it accepts (one host round trip and, on
    the first call, one compile per chunk shape). The default is the core's, ``DEFAULT_STOP``
    (``StopWhenConverged(0.1)``): checked, and stopping where the core stops.

    Inside ``jax.jit``, ``vmap`` or ``grad`` it runs with ``stop=None`` or ``StopAtCore(n)`` (one
    compiled call, nothing read on the host; a non-finite output raises when the computation runs:
    the ``ModelOutputError``, under ``jit`` inside a ``JaxRuntimeError``); another rule where there
    are several outputs, or ``devices``, raises ``TypeError`` (``inside_transformation``; docs/jax.md).

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` whose function is jax-traceable
            (``jax.numpy``).
        x: the initial state (shape (B, ...) for a ``DiffusionModel``), floating.
        grid: the T + 1 times.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        cores: K, the number of cores (or ``init``).
        init: the cores' start indices (default ``default_init``).
        stop: the stop rule (default ``DEFAULT_STOP``, as ``chords_core.chords``; ``StopAtCore(1)``:
            the fastest core, unchecked, one compiled call; ``None``: run until core 0 finishes).
        history: the history policy at a rectification (``HISTORY_POLICIES``).
        devices: None (the default device, slots vmapped/batched), a device count, a sequence of
            devices or a ``Mesh`` with an axis ``"cores"``: the K core slots (padded to a multiple
            of the device count) are sharded over it. Under ``jax.distributed`` (one process per
            host) the devices are global: ``devices=jax.device_count()`` or a ``Mesh`` over
            ``jax.devices()`` spans every process; each process makes the same call and gets the
            whole ``Result`` (its arrays are replicated on every device).
        executor: must be None (the compiled scan is the executor).
        progress: accepted and ignored.
        args: a pytree passed to the model function as a traced third argument, ``fn(x, t, args)``
            (``f(t, y, args)`` for a ``VectorField``), as diffrax passes ``args``: new values (new
            weights) give new results without recompiling. Without it the function is called
            ``fn(x, t)``, and whatever it reads from its closure is fixed at the first compile.
        solver_options: the solver's options.

    Returns:
        The core's ``Result``, its arrays jax arrays of x's shape and dtype.
    """
    mesh, ndev = _mesh(executor, devices)
    return _chords(model, _as_state(x), grid, solver, cores, init, stop, history, mesh, ndev, args,
                   "chords_jax.chords", solver_options)


#: ``compile_plan``'s own keywords, which ``_chords`` passes itself (a solver option of one of these names
#: collided with them)
_PLAN_ARGUMENTS = ("cores", "init", "stop", "history", "slots_multiple")


def _chords(model: cc.Model, x: jax.Array, grid: Any, solver: str | cc.solvers.Solver, cores: int | None,
            init: Sequence[int] | None, stop: StopRule | None, history: str, mesh: Any, ndev: int, args: Any,
            name: str, solver_options: dict) -> Result:
    """``chords`` on a checked state (``_as_state``) and mesh (``_mesh``); ``name``: the function an
    error under a transformation names (``chords`` or ``solve``)."""
    rule = as_stop_rule(stop)
    clash = [k for k in solver_options if k in _PLAN_ARGUMENTS]
    if clash:  # (cores= to solve, slots_multiple= to chords: "compile_plan() got multiple values for keyword")
        _method_argument(solver_options, solver)
        raise ValueError(f"{clash[0]}: unknown option (not an argument of {name} nor an option of solver "
                         f"{solver_label(solver)!r})")
    try:
        prog, sym = compile_plan(model, x.shape, x.dtype, grid, solver, cores=cores, init=init, stop=stop,
                                 history=history, slots_multiple=ndev, **solver_options)
    except StageTimeError as err:
        if name != "chords_jax.solve":
            raise
        raise StageTimeError(err.where, "chords_jax.solve compiles the solve as CHORDS on one core, which "
                             "evaluates every later stage at the step's end: use chords_core.solve or "
                             "chords_jax.srds with this solver") from None
    inside = inside_transformation(x, args, mesh, name, rule, len(sym.hits))
    # a traced state's values are checked when the computation runs, with its outputs (``_check_bad``);
    # with the output check off not at all: no host callback, which ``jax.export`` cannot serialize
    check = bool(model.check_outputs)  # "auto" too: the check runs on the device, no transfer per round
    finite = jnp.isfinite(x).all() if check and inside and isinstance(x, jax.core.Tracer) else None
    assert sym.plan is not None  # compile_plan's result carries its plan
    plan = sym.plan
    with in_step(mesh):  # (an interruption from here on leaves the processes out of step)
        same_call(mesh, lambda: {**call_parts(model, x, check_grid(grid), solver, args, solver_options, prog),
                                 "cores, init": tuple(plan.init), "stop": rule, "history": history}, x, args)
        x, args = replicated(mesh, x, args)
        chunks = None if _one_call(rule) else _chunk_plan(prog, sym)
        if chunks is None:  # a rule that decides on the outputs' arrival alone, or one chunk: one call
            outs, bad = _run_once(model, x, prog, mesh, check, args, inside)
            if check:
                _check_bad(bad, inside, lambda bad: _raise_nonfinite(bad, prog, sym, model, name == "chords_jax.solve"),
                           finite)
            vals = dict(zip(prog.outputs, outs))
            hits = tuple(Hit(h.core, h.round, h.nfe, vals[h.x.id]) for h in sym.hits)
            outputs, coarse, states = RuleValues(rule, x).offered(vals, sym, len(sym.hits))
            n, stopped_by = select_output(rule, outputs, [h.core for h in hits], coarse, states, starts=_starts(sym))
            return plan_result(sym.plan, hits[n], hits, vals[sym.coarse.id], stopped_by)
        return _run_chunked(model, x, prog, sym, rule, chunks, mesh, check, args)


#: the library's rules that decide on the outputs' values: they read them through ``chords_core``'s array
#: operations, which on numpy views of CPU arrays cost no eager jax dispatch (a default-stop call at size
#: 64 spent three quarters of its 2.3 ms in them, a profile) and sum as on numpy arrays (float32 in float64)
_HOST_RULES = (StopWhenConverged, StopOnResidual)


class RuleValues:
    """The values a stop rule reads, from a compiled run's outputs: for the library's own rules
    (``_HOST_RULES``, exactly those classes) on float32 / float64 arrays on the CPU, numpy views of
    them (no copy), each made once; otherwise the arrays themselves (a rule of one's own, which may use
    jax operations; arrays on an accelerator, which would be transferred; half precision).

    Args:
        rule: the stop rule.
        x: the run's initial state (``.x``: as the rule reads it).
    """

    def __init__(self, rule: StopRule, x: Any) -> None:
        self.host = type(rule) in _HOST_RULES and not isinstance(x, jax.core.Tracer) and _cpu_float(x)
        self._x = x
        self.x = np.asarray(x) if self.host else x
        self.seen: dict[int, Any] = {}

    def __call__(self, vals: dict[int, Any]) -> dict[int, Any]:
        """``vals`` (node id -> array) as the rule reads them."""
        if self.host and any(isinstance(v, jax.core.Tracer) for v in vals.values()):
            # outputs traced where x is not: traced args, or a model closing over a tracer (grad with respect
            # to the weights: numpy views of them raised TracerArrayConversionError, a trial)
            self.host, self.x = False, self._x
        if not self.host:
            return vals
        for k, v in vals.items():
            if k not in self.seen:
                self.seen[k] = np.asarray(v)
        return self.seen

    def outputs(self, vals: dict[int, Any], sym: Result, m: int) -> tuple[list, Any]:
        """``sym``'s first ``m`` outputs (arrival order) computed in ``vals`` and its coarse prediction
        (``None`` where not yet computed), as the rule reads them (SRDS offers these)."""
        return _picked(self(vals), sym, m)

    def offered(self, vals: dict[int, Any], sym: Result, m: int) -> tuple[list, Any, list | None]:
        """What a CHORDS rule is offered: ``outputs`` and the outputs' ``ErrorState``s (``sym.log``) or
        ``None``, as the rule reads them."""
        rv = self(vals)
        states = [_on_device_state(st, rv, self.x) for st in sym.log[:m]] if sym.log else None
        return (*_picked(rv, sym, m), states)


def _picked(vals: dict[int, Any], sym: Result, m: int) -> tuple[list, Any]:
    """``sym``'s first ``m`` outputs and its coarse prediction (``None`` where not computed) in ``vals``."""
    return [vals[h.x.id] for h in sym.hits[:m]], vals.get(sym.coarse.id)


def _mesh(executor: Any, devices: Any) -> tuple[Any, int]:
    """(the mesh over ``devices`` or ``None``, how many devices it has) for a compiled run, which
    takes no ``executor``."""
    if executor is not None:
        raise ValueError("executor: chords_jax compiles the model evaluation itself; use devices= to shard it")
    mesh = make_mesh(devices)
    return mesh, 1 if mesh is None else mesh.shape["cores"]


#: the arrays of an ``ErrorState`` that the program computes: the error sum and the two newest local
#: error estimates (the initial state is the run's input)
_STATE_ARRAYS = ("error_sum", "newest", "before")


def _state_syms(state: ErrorState) -> list:
    """The ``Sym`` arrays of an ``ErrorState`` (``_STATE_ARRAYS``), which the program computes."""
    return [v for v in (getattr(state, f) for f in _STATE_ARRAYS) if isinstance(v, Sym)]


def _on_device_state(state: ErrorState | None, vals: dict, x: Any) -> ErrorState | None:
    """An output's ``ErrorState`` from the symbolic run's (its sum and newest local errors ``Sym``
    nodes), those replaced by their computed values in ``vals`` (by node id) and the initial state by
    ``x``."""
    if state is None:
        return None
    arrays = {f: vals[v.id] for f in _STATE_ARRAYS if isinstance(v := getattr(state, f), Sym)}
    return state._replace(start=x, **arrays)


def _one_call(rule: StopRule) -> bool:
    """Whether ``rule``'s choice is known before any value (``StopRule.decides_on_values`` false:
    ``StopAtCore``, ``RunAll``, ``StopOnResidual(0)``): the program then runs as one compiled call;
    any other rule in chunks (``_chunk_plan``)."""
    return not getattr(rule, "decides_on_values", True)


def _chunk_plan(prog: Program, sym: Result) -> tuple | None:
    """Where a rule deciding on the outputs may stop: (ready, ends, ids) or ``None`` for one chunk.
    ``sym``: the symbolic result of ``compile_plan`` or ``compile_srds`` (its hits in arrival order).

    ``ready[n]``: the round (1-based) after which output n, the coarse prediction and output n's
    error sum and newest local errors are in the buffer (the latest of their phases: a value of phase
    r is written by round r and, an output of the run, never overwritten); ``ends``: the chunks' last
    rounds, the distinct ``ready`` of every output but the last, and the program's last round;
    ``ids[i]``: the output nodes born in chunk i (``prog.outputs`` keys), read after it.
    """
    phase = {h.x.id: h.x.phase for h in sym.hits}
    phase[sym.coarse.id] = sym.coarse.phase
    log = list(sym.log) if sym.log else [None] * len(sym.hits)
    ready = []
    for h, st in zip(sym.hits, log):
        syms = _state_syms(st) if st is not None else []
        for v in syms:
            phase[v.id] = v.phase
        ready.append(max(h.x.phase, sym.coarse.phase, *(v.phase for v in syms)))
    R = prog.rounds
    ends = sorted({min(max(r, 1), R) for r in ready[:-1]} | {R})
    if len(ends) == 1:
        return None
    ids: list[list[int]] = [[] for _ in ends]
    for nid in prog.outputs:
        p = phase.get(nid, R)
        ids[next(i for i, e in enumerate(ends) if e >= p)].append(nid)
    return tuple(ready), tuple(ends), tuple(tuple(i) for i in ids)


def _run_once(model: cc.Model, x: jax.Array, prog: Program, mesh: Any, check: bool, args: Any,
              inside: bool = False) -> tuple[tuple, Any]:
    """The whole program as one call of ``runner``: (outputs, ``bad``); with ``check``, ``bad`` is
    the exact code of the first non-finite output (``first_bad``: the run's one transfer to the host
    is an int; a run the screen flags is run again, checked exactly). ``inside`` a jax
    transformation (``inside_transformation``): nothing is read on the host, the run is checked
    exactly at once and ``bad`` is a traced int (``_check_bad``)."""
    arrays = _device_arrays(prog, x.size, x.dtype, time_dtype(model, x.dtype), mesh)
    if inside:
        return runner(model, mesh, check, args is not None, exact=True)(x, *arrays, args)
    outs, bad = runner(model, mesh, check, with_args=args is not None)(x, *arrays, args)
    after_run(model)  # (before a flagged run's exact rerun looks its program up)
    if check:
        bad = first_bad(bad, lambda: runner(model, mesh, check, args is not None, exact=True)(x, *arrays, args)[1])
    return outs, bad


def _chunk_outputs(model: cc.Model, x: jax.Array, prog: Program, chunks: tuple, mesh: Any, check: bool, args: Any,
                   raise_bad: Callable[[int], None]) -> Iterator[tuple[dict, int]]:
    """Run the program chunk by chunk (``_chunk_plan``), the buffer carried on the device; after each
    chunk yield (the outputs read so far, node id -> value; how many outputs, in arrival order, are
    in the buffer). The caller offers the new ones to its stop rule and stops iterating where the
    rule accepts: the chunks after are not run. A bad output is raised (``raise_bad(bad)``, ``bad``
    as ``runner``'s, one int per chunk) after the chunk that computed it, before its outputs are
    offered: they arrive at the chunk's last round, and the core raises at a round before it offers
    that round's outputs."""
    ready, ends, ids = chunks
    run = chunk_runner(model, mesh, check, with_args=args is not None)
    buf, no_bad, pieces, rows, zeros = _device_chunks(prog, chunks, x.size, x.dtype, time_dtype(model, x.dtype), mesh)
    bad, slots = no_bad, prog.width
    vals: dict[int, Any] = {}
    m = 0
    for i, end in enumerate(ends):
        start = buf
        buf, bad, outs = run(x, start, bad, pieces[i], rows[i], zeros, args, slots=slots)
        after_run(model)  # (before a bad output is raised, or a flagged chunk run again)
        if check:  # a chunk the screen flags is run again from its start, checked exactly (``first_bad``)
            def rerun(i: int = i, start: Any = start) -> Any:
                exact = chunk_runner(model, mesh, check, args is not None, exact=True)
                return exact(x, start, no_bad, pieces[i], rows[i], zeros, args, slots=slots)[1]

            raise_bad(first_bad(bad, rerun))
            bad = no_bad  # no bad output so far (a flagged chunk may have had none: a row overflowed)
        vals.update(zip(ids[i], outs))
        while m < len(ready) and ready[m] <= end:
            m += 1
        yield vals, m


def _starts(sym: Result) -> list[int]:
    """``Outputs.starts`` of the symbolic run's outputs: the grid index each one's core started from."""
    assert sym.plan is not None
    return [sym.plan.init[h.core] for h in sym.hits]


def _run_chunked(model: cc.Model, x: jax.Array, prog: Program, sym: Result, rule: StopRule, chunks: tuple, mesh: Any,
                 check: bool, args: Any) -> Result:
    """CHORDS run chunk by chunk (``_chunk_outputs``): the outputs that arrived in each handed to
    ``rule`` as ``select_output`` does (output n given outputs ..n, in arrival order); stop at the
    first it accepts."""
    assert sym.plan is not None
    n = 0  # the outputs before n were offered to the rule already
    starts = _starts(sym)
    accepted: int | None = None
    read = RuleValues(rule, x)
    for vals, m in _chunk_outputs(model, x, prog, chunks, mesh, check, args,
                                  lambda bad: _raise_nonfinite(bad, prog, sym, model)):
        outputs, coarse, states = read.offered(vals, sym, m)
        accepted = first_accepted(rule, outputs, coarse, states, start=n, starts=starts)
        if accepted is not None:
            break
        n = m
    chosen = chosen_output(rule, [h.core for h in sym.hits], accepted)
    hits = tuple(Hit(h.core, h.round, h.nfe, vals.get(h.x.id)) for h in sym.hits)
    return plan_result(sym.plan, hits[chosen[0]], hits, vals[sym.coarse.id], chosen[1])


def solve(model: cc.Model, x: Any, grid: Any, solver: str | cc.solvers.Solver = "euler", *, devices: Any = None,
          progress: bool = False, args: Any = None, **solver_options: Any) -> Any:
    """The sequential solve of ``chords_core.solve``, compiled.

    A ``lax.scan`` with one model evaluation per scan step (steps x stages): CHORDS' core 0 alone
    (``cores=1``). It composes with ``jax.jit``, ``vmap`` and ``grad`` (see ``chords``).

    Args:
        model: a ``DiffusionModel`` or ``VectorField`` with a jax-traceable function.
        x: the initial state.
        grid: the T + 1 times.
        solver: a name in ``SOLVERS`` or a bound ``Solver``.
        devices: as for ``chords`` (one core: no sharding gain).
        progress: accepted and ignored.
        args: as for ``chords``.
        solver_options: the solver's options.

    Returns:
        The state at ``grid[-1]``, a jax array of x's shape and dtype.
    """
    mesh, ndev = _mesh(None, devices)
    x = _as_state(x)  # here, so that a dtype warning points at the caller of solve
    return _chords(model, x, grid, solver, 1, None, None, "shift", mesh, ndev, args, "chords_jax.solve",
                   solver_options).x


def clear_cache() -> None:
    """Drop every cached executable and symbolic program (``run.clear_cache`` and the caches of the
    modules that registered in ``CACHES``, the window methods'); models and the arrays their
    functions hold are then released."""
    _run_clear_cache()
    for clear in CACHES:
        clear()
    _PROGRAMS.clear()
    _ARRAYS.clear()


#: what a deleted array given as ``x`` or an ``args`` leaf is told
_DELETED = ("the array has been deleted (donated to a jitted call with donate_argnums, or .delete()); pass one "
            "that is still alive")


def check_alive(x: Any, name: str = "x") -> None:
    """``ValueError`` naming ``name`` for a deleted jax array (JAX's "Array has been deleted" named no
    argument, a trial)."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted():
        raise ValueError(f"{name}: {_DELETED}")


def _as_state(x: Any) -> jax.Array:
    """``x`` as a jax array, refused where it is not a floating array with finite values (not read
    where it is traced), before anything is compiled or run (``_all_finite``)."""
    if not hasattr(x, "shape"):
        raise TypeError(f"x: the initial state must be an array, got {type(x).__name__}")
    if jax.dtypes.canonicalize_dtype(np.float64) != np.float64 and getattr(x, "dtype", None) == np.float64:
        warnings.warn("x: a float64 state with JAX's 64-bit mode off is computed in float32; enable it with "
                      "jax.config.update('jax_enable_x64', True), or pass a float32 state", UserWarning, stacklevel=3)
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise not_floating("x", x.dtype)
    if isinstance(x, jax.core.Tracer):  # a traced state has no values to check
        return x
    check_alive(x)
    with jax.ensure_compile_time_eval():  # values, even under a caller's jit
        _raise_if_nonfinite_state(_all_finite(x))
    return x


#: whether every value of an array is finite on the device: one compiled call (an eager
#: ``isfinite(x).all()`` is two dispatches, 1.5x the time of a call on a small state)
_all_finite_device = jax.jit(lambda x: jnp.isfinite(x).all())


def _all_finite(x: jax.Array) -> Any:
    """Whether every value of ``x`` is finite: for a float32 / float64 array on this process's CPU
    devices, on numpy's view of it (no copy on one device: about 5 µs at 64 elements, where a compiled
    call and its read took 55 µs, most of a small state's call); else on the device (one read)."""
    if x.is_fully_addressable and _cpu_float(x):
        return bool(np.isfinite(np.asarray(x)).all())
    return _all_finite_device(x)


def _cpu_float(x: jax.Array) -> bool:
    """Whether ``x`` is a float32 / float64 array on CPU devices only, whose values numpy views as they
    are (``_all_finite``, ``RuleValues``)."""
    return x.dtype in (jnp.float32, jnp.float64) and all(d.platform == "cpu" for d in x.devices())


def _on_device(prog: Program, kind: str, dtype: Any, tdtype: Any, mesh: Any,
               build: Callable[[Callable], tuple]) -> tuple:
    """``build(cast)``'s host arrays put on the device(s) (replicated over ``mesh``), float64 ones
    cast to ``coefficient_dtype(dtype)`` (float32 for a half-precision state), the segments' times to
    ``tdtype`` (``run.time_dtype``); cached per (program,
    kind, dtype, tdtype, mesh), so a repeated call transfers nothing."""
    key = (id(prog), kind, np.dtype(dtype), np.dtype(tdtype), mesh)
    got = lru_get(_ARRAYS, key)
    if got is not None and got[0] is prog:
        return got[1]

    wide = coefficient_dtype(dtype)

    def cast(a: np.ndarray, times: bool = False) -> np.ndarray:
        return a.astype(tdtype if times else wide) if a.dtype == np.float64 else a

    where = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with jax.ensure_compile_time_eval():  # concrete arrays under a caller's trace too: never a cached tracer
        arrays = jax.device_put(build(cast), where)
    lru_put(_ARRAYS, key, (prog, arrays), _PROGRAMS_SIZE)
    return arrays


def _segment(prog: Program, seg: Any, cast: Callable) -> tuple:
    """A segment's arrays (``Program.segment_arrays``) cast, its times (``SEGMENT_TIMES``) as times."""
    return tuple(cast(a, i == SEGMENT_TIMES) for i, a in enumerate(prog.segment_arrays(seg)))


def _device_arrays(prog: Program, size: int, dtype: Any, tdtype: Any, mesh: Any) -> tuple:
    """The program's arrays for ``runner`` on the device(s), coefficients in ``dtype``, times in
    ``tdtype``: (init, segments, output rows, ``size`` zeros); cached (``_on_device``)."""
    return _on_device(prog, "one call", dtype, tdtype, mesh, lambda cast: (
        cast(prog.init), tuple(_segment(prog, s, cast) for s in prog.segments),
        np.array(list(prog.outputs.values()), dtype=np.int32), np.zeros(size, dtype)))


def _device_chunks(prog: Program, chunks: tuple, size: int, dtype: Any, tdtype: Any, mesh: Any) -> tuple:
    """The chunked run's arrays on the device(s): (init, ``NO_BAD``, per chunk the pieces of the
    segments in its rounds, per chunk its output rows, ``size`` zeros); cached (``_on_device``)."""
    _, ends, ids = chunks

    def build(cast: Callable) -> tuple:
        segs = [(s, _segment(prog, s, cast)) for s in prog.segments]
        pieces, start = [], 0
        for end in ends:  # a chunk: the rounds start .. end - 1 (0-based), sliced out of the segments
            pieces.append(tuple(tuple(a[max(start, s.start) - s.start:min(end, s.stop) - s.start] for a in arrs)
                                for s, arrs in segs if max(start, s.start) < min(end, s.stop)))
            start = end
        rows = tuple(np.array([prog.outputs[i] for i in chunk], dtype=np.int32) for chunk in ids)
        return cast(prog.init), np.asarray(NO_BAD, np.int32), tuple(pieces), rows, np.zeros(size, dtype)

    return _on_device(prog, "chunks", dtype, tdtype, mesh, build)


def check_args(args: Any) -> None:
    """Refuse an ``args`` pytree with a leaf that cannot be a traced argument (a string, a function, an
    object): ``TypeError`` naming ``args`` and the leaf's path (jax's own error speaks of a jit-wrapped
    function's abstract arrays). Arrays and numbers pass; ``None`` is an empty subtree."""
    if args is None:
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        check_alive(leaf, f"args{jax.tree_util.keystr(path)}")
        if not (isinstance(leaf, (jax.Array, jax.core.Tracer, bool, int, float, complex))
                or isinstance(leaf, (np.ndarray, np.generic)) and leaf.dtype.kind in "biufc"
                and leaf.dtype.itemsize <= (16 if leaf.dtype.kind == "c" else 8)):  # (not longdouble: jax has none)
            raise TypeError(f"args{jax.tree_util.keystr(path)}: every leaf of args is passed to the model as a "
                            f"traced array, got a {type(leaf).__name__} ({leaf!r:.60}); bind values that are not "
                            "arrays or numbers into the model's function instead (functools.partial, a closure)")


def inside_transformation(x: jax.Array, args: Any, mesh: Any, name: str, rule: StopRule | None = None,
                          outputs: int = 0) -> bool:
    """Whether the call is inside ``jax.jit``, ``vmap`` or ``grad`` (``x`` or ``args`` traced, a tracer
    in the model's closure, a caller's ``jit`` around it). It can run there only as one compiled call
    that reads nothing on the host: ``TypeError`` naming ``stop`` for a ``rule`` that decides on the
    outputs' values (``decides_on_values``; ``RunAll`` and ``StopAtCore`` do not) where it has more
    than one of ``outputs`` to choose from (``rule`` ``None``: not at all, naming ``x`` or ``args``
    where one is traced), naming ``devices`` for a sharded run. ``args`` is checked first (``check_args``)."""
    check_args(args)
    if not tracing():
        return False
    arg = next((name for name, value in (("x", x), ("args", args))
                if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))), None)
    where = f"{name} inside jax.jit, vmap or grad"
    if rule is None:
        what = (f"{arg}: a traced value: {where}" if arg is not None else
                f"{where} (here a tracer in the model's closure, or a caller's jit around the call)")
        raise TypeError(f"{what} is not supported (it reads values of its run on the host: its rounds, its stop or "
                        "its log); call it outside the transformation")
    if getattr(rule, "decides_on_values", True) and outputs > 1:
        raise TypeError(f"stop: {where} runs as one compiled call and cannot offer the outputs to "
                        f"{type(rule).__name__} on the host; only rules that decide on the outputs' arrival alone "
                        "(decides_on_values = False: stop=None, StopAtCore(n), a tolerance of 0) run there; or call it "
                        "outside the transformation")
    if mesh is not None:
        raise TypeError(f"devices: {where} runs on the default device; shard the transformed function instead, "
                        "or call it outside the transformation")
    return True


def _raise_if_nonfinite_state(finite: Any) -> None:
    """The refusal of a non-finite initial state (``finite``: whether all of it is), at once for a
    state with values (``_as_state``), in a host callback for a traced one."""
    if not bool(finite):  # (a 0-d array, numpy's in the callback, jax's here: numpy's all over a jax array
        raise nonfinite_state("x")  # converted it a second time)


def _check_bad(bad: Any, inside: bool, raise_bad: Callable[[int], None], finite: Any = None) -> None:
    """``raise_bad(bad)`` (``bad``: ``runner``'s exact code, ``NO_BAD`` where every output is finite);
    ``inside`` a transformation, where ``bad`` may be traced, in a host callback when the computation
    runs: a non-finite output then raises the ``ModelOutputError`` (under ``jit``, as
    ``jax.errors.JaxRuntimeError`` carrying its message; under ``vmap``, one bad element's, which
    one unspecified), and so does a non-finite traced state (``finite``: whether all of it is, traced,
    or ``None``). One callback, called only where something is bad (in a ``lax.cond``; under ``vmap``
    at every call): a program holding one costs about 130 µs a call on CPU even where it is not called,
    one called about 400 µs; the two called at every run before made ``jit(chords_jax.chords)`` 1.6x
    slower than the plain call at size 64."""
    if not inside:
        raise_bad(bad)
        return

    def report(code: Any, finite: Any) -> None:
        if finite is not None and not np.all(finite):
            _raise_if_nonfinite_state(False)
        raise_bad(int(np.min(code)))

    ok = jnp.logical_and(True if finite is None else finite, bad == NO_BAD)
    jax.lax.cond(ok, lambda: None, lambda: jax.debug.callback(report, bad, finite))


def _raise_nonfinite(bad: int, prog: Program, sym: Result, model: cc.Model, sequential: bool = False) -> None:
    """Raise ``ModelOutputError`` for the run's first non-finite output (``bad`` from ``runner``), named
    as ``chords_core.chords`` names it, or ``chords_core.solve`` for the ``sequential`` solve; for a
    faster core of a plain ODE (a ``model`` that is not a ``DiffusionModel``) with the hint that it may have
    run off."""
    if bad == NO_BAD:
        return
    r, j = divmod(bad, prog.width)
    assert sym.plan is not None
    evals = sym.plan.rounds[r].evals
    if sequential:
        raise ModelOutputError.nonfinite(0, step_where(evals[j].index, evals[j].stage, float(prog.times[r, j])))
    err = ModelOutputError.nonfinite(j, f"round {r + 1}, {eval_where(evals[j], prog.times[r, j])}")
    c = evals[j].core
    if c == 0:
        raise err  # the core's words
    # a faster core: the core engine retires it and goes on (engine.Survivors); the compiled run cannot
    start = f"{err}; core {c} started at step {sym.plan.init[c]} with a coarse jump from x_0"
    if not is_plain_ode(model):  # (one returning nan at some time fails every method there: no advice)
        raise err.relabel(j, f"{start}: chords_core.chords retires such a core and goes on with the slower ones; "
                          "the compiled run stops at it")
    raise err.relabel(j, f"{start} and may have run off to where the model overflows (a plain ODE with far "
                      "starts): chords_core.chords retires such a core and goes on with the slower ones; compiled, "
                      "the cascade sampler (chords_jax.parallel) or an init with closer starts avoids it")
