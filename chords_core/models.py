"""What the solvers integrate: a diffusion model in one of four parametrisations, or a plain ODE.

A *model* turns a list of points (x_k, t_k) into model outputs, in one batched call or one call a
point, and converts an output into the quantity a solver needs, as a linear combination
q = a(t) x + b(t) out with float64 coefficients:

- ``"velocity"``: the right-hand side f(x, t) of the ODE dx/dt = f (Euler, Heun);
- ``"data"``: the data prediction D(x, t) = E[x_0 | x_t = x] (DPM-Solver++, UniPC, DDIM).

For x = alpha x0 + sigma eps the four parametrisations give (x0_hat, eps_hat) as

=======  ==========================================  ==========================================
pred     x0_hat                                      eps_hat
=======  ==========================================  ==========================================
eps      (x - sigma out) / alpha                     out
x0       out                                         (x - alpha out) / sigma
v        (alpha x - sigma out) / (alpha^2+sigma^2)   (sigma x + alpha out) / (alpha^2+sigma^2)
flow     (x - sigma out) / (alpha + sigma)           (x + alpha out) / (alpha + sigma)
=======  ==========================================  ==========================================

(v = alpha eps - sigma x0, flow = eps - x0), and the probability-flow ODE is
dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _backend as B
from .checks import LIBRARY_PACKAGES, check_bool
from .schedules import ByIdentity, RectifiedFlow, Schedule, check_schedule, schedule_key

__all__ = ["Model", "DiffusionModel", "VectorField", "is_plain_ode", "ModelOutputError", "PREDICTIONS", "CHECK_MODES",
           "resolve_check", "check_array", "check_call", "output_problem", "outputs_like"]

PREDICTIONS = ("eps", "x0", "v", "flow")
Array = Any


class ModelOutputError(RuntimeError):
    """A model output had the wrong shape, dtype or non-finite values.

    Args:
        point: the index of the offending point in the call (``xs`` of ``evaluate`` / an executor).
        message: what was wrong.
        nonfinite: whether the output held nan or inf (``is_nonfinite``; ``nonfinite`` makes such an
            error), not a wrong type, shape or dtype.
    """

    def __init__(self, point: int, message: str, nonfinite: bool = False, done: list | None = None) -> None:
        super().__init__(message)
        self.point = point
        self._nonfinite = bool(nonfinite)
        #: the outputs of the call's points before ``point``, checked, where the call made them (a
        #: batched call, or the calls a point before it); ``None`` where unknown (an executor that gives
        #: none, or a distributed round whose outputs before the point did not all come)
        self.done = done

    @property
    def is_nonfinite(self) -> bool:
        """Whether the output held nan or inf (not a wrong type, shape or dtype); kept where the error
        is re-raised with the round and point added (``relabel``), also across processes."""
        return self._nonfinite

    def relabel(self, point: int, message: str, done: list | None = None) -> ModelOutputError:
        """This error, of the same kind, at ``point`` of another call (a round's, a batch part's) and
        with ``message`` (which usually adds where the point is to ``str(self)``); ``done``: the outputs
        before ``point`` in that call, where known."""
        return ModelOutputError(point, message, self._nonfinite, done)

    def __reduce__(self) -> tuple:
        """Pickled with its point and kind (the default would call ``__init__`` with the message alone)."""
        return ModelOutputError, (self.point, str(self), self._nonfinite)

    @classmethod
    def nonfinite(cls, point: int, where: str | None = None) -> ModelOutputError:
        """The error for a nan or inf in the output at ``point``; ``where``: the round and the point in
        the method's own terms (``"round 3, core 2 (step 7, stage 0, t=0.86)"``), leading the message."""
        return cls(point, NONFINITE if where is None else f"{where}: {NONFINITE}", True)

    @classmethod
    def returned(cls, point: int, problem: str) -> ModelOutputError:
        """The error for an output at ``point`` of the wrong kind, shape or dtype (``output_problem``'s
        ``problem``)."""
        return cls(point, f"model returned {problem}")


#: what a non-finite model output is called in every error (``ModelOutputError.nonfinite``)
NONFINITE = "model returned non-finite values (nan or inf)"


CHECK_MODES = (True, False, "auto", "deferred")

_EPS64 = float(np.finfo(np.float64).eps)


def _check_mode(value: Any) -> bool | str:
    """``check_outputs``, checked: one of ``CHECK_MODES``."""
    if not any(value is m if isinstance(m, bool) else (isinstance(value, str) and value == m) for m in CHECK_MODES):
        raise ValueError(f"check_outputs must be True, False, 'auto' or 'deferred', got {value!r}")
    return value


def resolve_check(mode: bool | str, on_accelerator: bool) -> bool | str:
    """A ``check_outputs`` mode with ``"auto"`` decided for outputs that reach the engine on an
    accelerator (``"deferred"``: no device synchronisation per round) or on the host (``True``).

    The one home of the "auto" rule: a model decides it on its own outputs (``Model.deferred_check``);
    an executor whose workers' outputs travel decides it for them where the outputs land (a worker
    process: the host; ``DeviceExecutor``: the driver's device).

    Args:
        mode: one of ``CHECK_MODES``.
        on_accelerator: whether the outputs reach the engine on an accelerator.

    Returns:
        ``mode``, or for ``"auto"`` ``"deferred"`` / ``True``.
    """
    if isinstance(mode, str) and mode == "auto":
        return "deferred" if on_accelerator else True
    return mode


def check_array(out: Any, like: Array) -> bool:
    """Check a model's output against the points it was evaluated at (``output_problem``). Shapes
    and dtypes only, so it runs on traced values too (``chords_jax``).

    Args:
        out: what the model returned.
        like: the (stacked) points of the call.

    Returns:
        Whether ``out`` already has ``like``'s dtype. Raises ``ModelOutputError`` (point 0) otherwise.
    """
    problem = output_problem(out, like)
    if problem is not None:
        raise ModelOutputError.returned(0, problem)
    return out.dtype is like.dtype or out.dtype == like.dtype  # (the common case: the state's dtype)


def output_problem(out: Any, like: Array) -> str | None:
    """What makes ``out`` no output for the points ``like``, in the words that follow "returned" in an
    error (naming the model, ``check_array``, or an executor, ``engine``), or ``None``: an output is an
    array of the points' shape, array library, layout and device, with a floating dtype (another
    floating dtype than theirs is cast to it by the caller)."""
    try:
        shape, dtype = out.shape, out.dtype
    except AttributeError:
        shape = dtype = None
    if shape is None or dtype is None:
        return f"a {type(out).__name__}, expected an array of shape {tuple(like.shape)}"
    if shape != like.shape and tuple(shape) != tuple(like.shape):
        return f"shape {tuple(shape)}, expected {tuple(like.shape)}"
    if type(out) is not type(like) and B.library(out) != B.library(like):
        return (f"a {B.library(out)} array ({type(out).__name__}) for {B.library(like)} points; return the points' "
                "array type")
    if not (dtype is like.dtype or dtype == like.dtype or B.is_floating(out)):
        return f"dtype {dtype}, expected a floating dtype"
    layout = getattr(out, "layout", None)  # (a torch tensor's; a sparse one failed in the engine's arithmetic)
    if layout is not None:
        if layout is not getattr(like, "layout", layout):
            return f"a tensor of layout {layout}, expected {like.layout} (the points'); return out.to_dense()"
        if out.device != like.device:  # (a meta or another device's output failed as three different raw errors)
            return (f"a tensor on device {out.device}, expected {like.device} (the points'); return it on the points' "
                    "device")
    return None


def outputs_like(outs: Sequence[Any], xs: Sequence[Array], error: Callable[[int, str], Exception],
                 finite: Callable[[Any], bool] | None = None) -> Sequence[Any]:
    """Outputs that no library check has seen (a subclass's own ``_call``'s, an executor's), each
    checked against its point (``output_problem``) and cast to its point's dtype where it has another
    floating one (``_backend.cast_like``), point after point.

    Args:
        outs: one output per point.
        xs: the points.
        error: the exception for output k's problem (the words that follow "returned").
        finite: where given, whether an output passes the finiteness check; the first that does not
            raises ``ModelOutputError.nonfinite`` at its point, with the outputs before it (``done``).

    Returns:
        ``outs`` itself where nothing was cast, else a list with the cast outputs.
    """
    cast = None
    for k, (o, x) in enumerate(zip(outs, xs)):
        problem = output_problem(o, x)
        if problem is not None:
            raise error(k, problem)
        if not (o.dtype is x.dtype or o.dtype == x.dtype):
            if cast is None:
                cast = list(outs)
            cast[k] = o = B.cast_like(o, x)
        if finite is not None and not finite(o):
            err = ModelOutputError.nonfinite(k)
            err.done = list((cast or outs)[:k])
            raise err
    return outs if cast is None else cast


_OWN_CALL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model class -> own_call's answer


def own_call(cls: type[Model]) -> bool:
    """Whether model class ``cls`` calls its network through the library's own ``_call`` (which checks
    every output: ``Model._check``); a subclass's own ``_call`` may check nothing."""
    got = _OWN_CALL.get(cls)
    if got is None:
        got = _OWN_CALL[cls] = getattr(cls._call, "__module__", "").split(".")[0] in LIBRARY_PACKAGES
    return got


def input_version(x: Array) -> int | None:
    """A torch tensor's version counter (every in-place write advances it), else ``None``: numpy and jax
    arrays, an inference tensor (it keeps none), and a view of storage the library does not own, whose
    counter every view of that storage shares (a review: another thread writing into another row of
    the caller's buffer was taken for the network's write). Watched: tensors that are no view (the
    methods' states) and views of the library's own round and stacking buffers (``_backend.owned_view``:
    a large round's points are rows of them)."""
    if type(x) is np.ndarray:
        return None
    try:
        return x._version if x._base is None or B.owned_view(x) else None
    except (AttributeError, RuntimeError):
        return None


def watched_call(fn: Callable[..., Array], args: tuple, x: Array, points: int) -> Array:
    """``fn(*args)``, the network's call on its input ``x`` (``points`` points stacked); a
    ``ModelOutputError`` (point 0) where the network wrote into ``x`` (its ``input_version`` moved), a
    tensor the methods may hold as a trajectory's state: a user trial's ``x.mul_(0.5)`` overwrote the
    caller's noise under ``solve`` and put the cascade 1.80 off it."""
    before = input_version(x)
    out = fn(*args)
    if before is not None and x._version != before:
        call = "" if points == 1 else f" (one call on {points} points)"
        raise ModelOutputError(0, "model modified its input in place (a torch in-place operation on x, which may be a "
                               f"trajectory's state{call}, or at the first step the caller's own x, now changed); "
                               "compute out of place, or on x.clone()")
    return out


def plain_ndarray(out: np.ndarray, points: int, rows: int) -> np.ndarray:
    """A model's output of a numpy subclass (``np.matrix``, a masked array, a memmap) for plain numpy
    points, as a plain ``ndarray`` view: a matrix's ``*`` is a matrix product and a masked array's
    reductions skip its masked values, so neither may flow into the solver's arithmetic, and the
    result keeps the state's type. A masked array with masked values has no values there:
    ``ModelOutputError`` naming the first point (of ``points`` stacked, ``rows`` rows each) that
    holds one, whatever ``check_outputs`` says (it is not a finiteness question)."""
    if isinstance(out, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(out)
        if mask.any():
            bad = first_point(points, rows, lambda part: bool(mask[part].any()))
            raise ModelOutputError(bad, f"model returned a masked array with {int(mask.sum())} masked value(s): "
                                   "no values there; return a plain array (fill or compute the masked entries)")
    return out.view(np.ndarray)


def first_point(points: int, rows: int, bad: Callable[[slice], bool]) -> int:
    """The first of ``points`` points stacked ``rows`` rows each whose rows (a slice of the stacked
    output) are ``bad``, where the whole is known to hold a bad value (one point: 0, unasked)."""
    return 0 if points == 1 else next(k for k in range(points) if bad(slice(k * rows, (k + 1) * rows)))


def check_call(out: Any, like: Array, points: int, rows: int, named: str) -> bool:
    """``check_array`` for one call on ``points`` points of ``rows`` rows stacked: an error of a call on
    several points says so, not as if the first alone had failed (``named``: appended to that remark,
    e.g. how the error names the point).

    Returns:
        ``check_array``'s: whether ``out`` already has ``like``'s dtype.
    """
    try:
        return check_array(out, like)
    except ModelOutputError as e:
        if points == 1:
            raise
        raise e.relabel(0, f"{e} (one call on {points} points stacked, {rows} rows each{named})") from None


#: the attribute of a model's own exception that says which point's call raised it, where the call was
#: on that point alone: (the ``id`` of the list of points, the point's index in it) (``raised_at``)
RAISED_AT = "chords_point"


def raised_at(err: BaseException, points: Sequence[Any] | None, k: int = 0) -> BaseException:
    """``err`` marked as raised by the model's call on ``points[k]`` alone (``points=None``: by a call on
    several, unmarked), replacing any earlier mark (an exception object raised again: its mark from
    an earlier list, whose ``id`` a later list may take). The engine names that point where ``points``
    is the very list of the round's points it handed the executor (a mark on a share of them names
    nothing: an executor evaluating a share marks its own exception with the round's list and index),
    and then removes the mark."""
    try:
        setattr(err, RAISED_AT, None if points is None else (id(points), k))
    except AttributeError:  # (an exception type with __slots__)
        pass
    return err


def raised_in(err: BaseException, points: Sequence[Any]) -> int | None:
    """The index in ``points`` (the list handed to an executor) of the point whose call raised ``err``,
    where it was marked on that list (``raised_at``), else ``None``."""
    at = getattr(err, RAISED_AT, None)
    if isinstance(at, tuple) and len(at) == 2 and at[0] == id(points) and 0 <= at[1] < len(points):
        return at[1]
    return None


#: numpy's floating scalar types: what arithmetic on 0-d arrays returns (``Model.evaluate`` hands 0-d arrays on)
_NUMPY_SCALARS = frozenset((np.float16, np.float32, np.float64, np.longdouble))


class Model:
    """Base class of models: subclasses implement ``_call`` (one batched call) and ``coefficients``.
    ``_call`` checks what the model returned itself: ``DiffusionModel`` and ``VectorField`` pass their
    network's output through ``_check(out, stacked points, points, rows)``; a subclass that writes its
    own ``_call`` without it gets no output check (an extension trial's model returned nan unnoticed),
    so subclass ``DiffusionModel`` / ``VectorField`` (wrapping ``fn`` / ``f``) where you can.

    ``check_outputs``: check every output's shape and dtype, and its finiteness (``ModelOutputError``):
    ``True`` at every call; ``"deferred"``: on the device, read back once per CHORDS output (no
    device synchronisation per round; the error still names the round and core of the first bad
    value); ``"auto"`` (the default): at every call for arrays on the host, deferred for torch
    tensors on an accelerator; ``False``: no finiteness check.
    """

    check_outputs: bool | str = "auto"

    def deferred_check(self, out: Array) -> bool:
        """Whether the finiteness of ``out`` is checked later by the caller (``check_outputs``)."""
        c = self.check_outputs
        if c is True or c is False or type(out) is np.ndarray:  # the common cases, decided at once
            return c == "deferred"
        return resolve_check(c, B.on_accelerator(out)) == "deferred"

    def passes_now(self, out: Array) -> bool:
        """Whether ``out`` passes the finiteness check due at once (``check_outputs``): finite, or not
        checked, or checked later (``deferred_check``). For outputs that no library check has seen (a
        subclass's own ``_call``'s, an executor's: ``outputs_like``)."""
        return not self.check_outputs or self.deferred_check(out) or B.all_finite(out)

    #: whether ``_call`` takes a ``workspace`` keyword (the library's models do; a subclass may not)
    uses_workspace = False

    def evaluate(self, xs: Sequence[Array], ts: Sequence[float], batched: bool = True,
                 workspace: B.Workspace | None = None) -> list[Array]:
        """Model outputs at the points (xs[k], ts[k]): one call for all (``batched``) or one call a point.

        Args:
            xs: the points, states of one shape S each.
            ts: their times, one float per point.
            batched: one call for all points (else one call per point, in order).
            workspace: a buffer for the stacked points, reused across calls (``BatchedExecutor``).

        Returns:
            The raw outputs, shape S each, checked (see ``check_outputs``), in the order of ``xs``.

        Raises:
            ModelOutputError: with ``point`` the index in ``xs`` of the first bad output.
        """
        given = xs  # (the list the points came in: a model's own exception is marked on it, ``raised_at``)
        if xs and getattr(xs[0], "ndim", 1) == 0 and any(type(x) in _NUMPY_SCALARS for x in xs):
            # (a 0-d state's arithmetic makes numpy scalars: a function got a 0-d array at its first call
            # and np.float64 after, which torch.from_numpy refused, a trial)
            xs = [np.asarray(x) for x in xs]
        if batched:
            try:
                if workspace is not None and self.uses_workspace and len(xs) > 1:
                    outs = self._call(xs, ts, workspace=workspace)  # type: ignore[call-arg]
                else:
                    outs = self._call(xs, ts)
            except Exception as e:  # (a call on one point: that point's)
                if not isinstance(e, ModelOutputError):
                    raised_at(e, given if len(xs) == 1 else None)
                raise
        else:
            outs = []
            for k, (x, t) in enumerate(zip(xs, ts)):
                try:
                    outs.append(self._call([x], [t])[0])
                except ModelOutputError as e:
                    raise e.relabel(k, str(e), outs if e.done is not None else None) from None  # (outs: those before k)
                except Exception as e:  # the model's own: the point whose call raised (a trial: every executor
                    # named the round's points, or a worker's, not the one)
                    raised_at(e, given, k)
                    raise
        return outs if own_call(type(self)) else self._checked_own(outs, xs)

    def _checked_own(self, outs: Any, xs: Sequence[Array]) -> list[Array]:
        """The outputs of a subclass's own ``_call``, checked as the library's ``_call`` checks its
        network's: one array per point, of its point's shape, library and a floating dtype (another
        floating dtype cast to the point's), finite (``check_outputs``). Unchecked, a raw ``Model``'s nan
        came back from ``solve`` and every method silently, and ``solve`` failed on a wrong shape in
        numpy's words (a researcher's trial)."""
        if not isinstance(outs, (list, tuple)) or len(outs) != len(xs):
            got = f"{len(outs)} outputs" if isinstance(outs, (list, tuple)) else f"a {type(outs).__name__}"
            raise TypeError(f"model: {type(self).__name__}._call returned {got} for {len(xs)} point(s); it returns "
                            "a list of one output per point, in their order")
        return list(outputs_like(outs, xs, ModelOutputError.returned, self.passes_now))

    def _call(self, xs: Sequence[Array], ts: Sequence[float]) -> list[Array]:
        raise NotImplementedError(f"{type(self).__name__} does not define _call (a Model subclass must)")

    def coefficients(self, times: np.ndarray, quantity: str) -> list[tuple[float, float]] | None:
        """Conversion coefficients from a raw output to a solver's quantity, per grid time.

        Args:
            times: (T + 1,) float64 grid times.
            quantity: ``"velocity"`` or ``"data"`` (``Solver.quantity``).

        Returns:
            One (a, b) per time with quantity = a x + b out (non-finite where the conversion does
            not exist); ``None`` when the output already is the quantity. Raises ``ValueError`` if
            the model cannot supply ``quantity``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define coefficients (a Model subclass must)")

    def check_times(self, times: np.ndarray) -> None:
        """Raise ``ValueError`` if the grid does not suit the model (any grid suits a plain ODE).

        Args:
            times: (T + 1,) float64 grid times.
        """

    #: set on the copy of a model that a host-routed call runs with (``host.host_route``): the library's
    #: arithmetic on numpy's views of CPU tensors, the network called on tensors on the same memory
    numpy_engine = False

    def _inputs(self, x: Array, ts: Sequence[float], rows: int, exact: bool) -> tuple[np.ndarray | None, Array, Array]:
        """(``host``, points, times) for a network call on the stacked points ``x``: the times
        (``times_like``, each repeated ``rows`` times); with ``numpy_engine`` both as tensors on numpy's
        memory, the times made on numpy, and ``host`` the numpy array of the points (``_checked``'s),
        else ``None``."""
        if self.numpy_engine:
            return x, B.torch_view(x), B.torch_view(B.times_like(ts, rows, x, exact))
        return None, x, B.times_like(ts, rows, x, exact)

    def _checked(self, out: Array, like: Array, n: int, rows: int, workspace: B.Workspace | None = None,
                 split: Callable[[Array], list] | None = None, host: np.ndarray | None = None) -> Array:
        """The network's output ``out`` at the stacked points ``like`` as the methods take it: ``_check``ed
        (``split`` as there), and copied where it shares memory with ``workspace``'s buffer. ``numpy_engine``:
        its type, shape and dtype checked as the tensor it is, against the tensor the network was given,
        then numpy's view of it (its finiteness checked there); where numpy views it as it is, with the
        points' shape and dtype (``host``: the numpy array ``like`` is a view of), all of it on that view
        (a tensor's own attributes cost a small state's host route about a tenth of a round)."""
        if host is not None and type(out) is type(like):
            o = B.plain_numpy_view(out)
            if o is not None and o.shape == host.shape and o.dtype == host.dtype:
                return self._check(o if workspace is None else workspace.detach(o), host, n, rows, split)
        if self.numpy_engine:
            def view(o: Array) -> Array:
                v = B.numpy_view(o)
                o = B.values_of(o) if v is None else v  # (none: never on the route's float CPU tensors)
                return o if workspace is None else workspace.detach(o)

            return self._check(out, like, n, rows, split, view)
        if workspace is not None:
            out = workspace.detach(out)
        return self._check(out, like, n, rows, split)

    def _check(self, out: Array, like: Array, n: int, rows: int, split: Callable[[Array], list] | None = None,
               view: Callable[[Array], Array] | None = None) -> Array:
        """The raw output ``out`` of one call at the stacked points ``like`` (n points of ``rows`` rows),
        checked: an array of ``like``'s shape, floating (``check_array``), finite (if
        ``check_outputs``); returned in ``like``'s dtype. ``split``: how the call splits its output into
        the points' (the error for a non-finite one then holds the outputs before it, ``done``).
        ``view``: applied to the output in ``like``'s dtype before its finiteness is checked (``_checked``)."""
        same_dtype = check_call(out, like, n, rows, ": named by its first point")
        if type(out) is not type(like) and type(like) is np.ndarray and isinstance(out, np.ndarray):
            out = plain_ndarray(out, n, rows)
        raw = out
        if not same_dtype:  # checked in the state's dtype: a float64 1e6 is inf in float16 (was returned as inf)
            out = B.cast_like(out, like)
        if view is not None:
            out = view(out)
        if self.check_outputs and not self.deferred_check(out) and not B.all_finite(out):
            err = ModelOutputError.nonfinite(first_point(n, rows, lambda part: not B.all_finite(out[part])))
            if not same_dtype and B.all_finite(raw):
                err = err.relabel(err.point, f"{err} in the state's dtype {like.dtype} (finite in the model's "
                                             f"{raw.dtype}: they overflow the state's)")
            if err.point == 0:
                err.done = []  # (no output before the first point)
            elif split is not None:
                err.done = split(out)[:err.point]
            raise err
        return out


#: ``DiffusionModel.data_eps_coefficients`` kept per (schedule_key, prediction) and t, at most this many in all
_DATA_EPS: dict = {}
_DATA_EPS_SIZE = 1 << 14
_DATA_EPS_COUNT = [0]  # the values kept now


def _kept(store: dict, size: int, schedule: Schedule, rest: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``store`` per (``schedule_key(schedule)``, *rest), at most ``size`` entries
    (then emptied, not trimmed: nothing another thread's lookup can trip on). A schedule held by
    identity (an array in it) is not kept: its values may change in place (cached data-prediction
    coefficients came back stale)."""
    sk = schedule_key(schedule)
    if type(sk[1]) is ByIdentity:
        return make()
    key = (sk, *rest)
    got = store.get(key)
    if got is None:
        if len(store) >= size:
            store.clear()
        got = store[key] = make()
    return got


def _kept_many(schedule: Schedule, prediction: str, ts: list[float], make: Callable[[float], Any]) -> list:
    """``make(t)`` for each of ``ts``, kept in ``_DATA_EPS`` per (``schedule_key(schedule)``, ``prediction``)
    and t, at most ``_DATA_EPS_SIZE`` values in all (then emptied, as ``_kept``); the key formed and
    hashed once for all of ``ts``. A schedule held by identity is not kept (see ``_kept``)."""
    sk = schedule_key(schedule)
    if type(sk[1]) is ByIdentity:
        return [make(t) for t in ts]
    inner = _DATA_EPS.get((sk, prediction))
    if inner is None:
        inner = _DATA_EPS.setdefault((sk, prediction), {})
    out = []
    for t in ts:
        got = inner.get(t)
        if got is None:
            if _DATA_EPS_COUNT[0] >= _DATA_EPS_SIZE:
                _DATA_EPS.clear()
                _DATA_EPS_COUNT[0] = 0
                inner = _DATA_EPS.setdefault((sk, prediction), {})
            got = inner[t] = make(t)
            _DATA_EPS_COUNT[0] += 1
        out.append(got)
    return out


class DiffusionModel(Model):
    """A denoiser ``fn(x, t)`` with x of shape (N, ...) and t of shape (N,), on a noise schedule.

    The state a solver carries is a batch x of shape (B, ...). A round's points are concatenated
    along axis 0 into one call of N = points * B rows, with each point's time repeated B times.

    Args:
        fn: the network, ``fn(x (N, ...), t (N,)) -> out (N, ...)`` in the array library of x; t is in
            x's dtype, or float64 where ``fn.exact_times`` is true (a network that maps times to its
            own grid: a half-precision time can fall between, or on the wrong one of, two grid times).
        schedule: the noise schedule (alpha, sigma) the times refer to.
        prediction: what ``fn`` predicts: one of ``PREDICTIONS`` ("eps", "x0", "v", "flow").
        check_outputs: the output check (see ``Model``): ``"auto"``, ``True``, ``"deferred"`` or ``False``.
    """

    def __init__(self, fn: Callable[[Array, Array], Array], schedule: Schedule, prediction: str = "eps", *,
                 check_outputs: bool | str = "auto") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        check_schedule(schedule)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.fn, self.schedule, self.prediction = fn, schedule, prediction
        self.check_outputs = _check_mode(check_outputs)

    uses_workspace = True

    def _call(self, xs, ts, workspace=None):
        rows = int(xs[0].shape[0]) if len(xs[0].shape) else 1
        x = xs[0] if len(xs) == 1 else B.concat(xs) if workspace is None else workspace.join(xs, new_axis=False)
        host, x, t = self._inputs(x, ts, rows, getattr(self.fn, "exact_times", False))
        out = watched_call(self.fn, (x, t), x, len(xs))
        out = self._checked(out, x, len(xs), rows, workspace, lambda o: B.split_rows(o, len(xs)), host)
        if len(xs) == 1:
            return [out]
        return B.split_rows(out, len(xs))

    def check_times(self, times: np.ndarray) -> None:
        """The grid must lie in the schedule's domain and run from noise towards data (the half
        log-SNR lambda strictly increasing along it)."""
        problem = grid_problem(self.schedule, times.tobytes())
        if problem:
            raise ValueError(problem)

    def data_eps_coefficients(self, t: float) -> tuple[tuple[float, float], tuple[float, float]]:
        """The data and noise predictions as linear combinations of the state and the raw output.

        Args:
            t: the time.

        Returns:
            ((a_D, b_D), (a_e, b_e)) with x0_hat = a_D x + b_D out and eps_hat = a_e x + b_e out
            (nan where the conversion does not exist, e.g. eps prediction at alpha = 0). Kept per
            (schedule, prediction, t) across calls (``_DATA_EPS``): a run's solver asks for every grid
            time again, about 6 µs each (a tenth of a small state's cascade round).
        """
        return self._data_eps_at([float(t)])[0]

    def data_eps_table(self, times: Sequence[float] | np.ndarray) -> list[tuple[tuple[float, float], ...]]:
        """``data_eps_coefficients`` at each of ``times``, the schedule's cache key formed once for all
        (a solver asks for a whole grid: the key cost about 3 µs a time); a subclass's own
        ``data_eps_coefficients`` is asked time by time, and one with its own ``_data_eps`` is not
        kept in the cache the schedule's key shares (it got whichever model's values came first)."""
        if type(self).data_eps_coefficients is not DiffusionModel.data_eps_coefficients:
            return [self.data_eps_coefficients(float(t)) for t in times]
        return self._data_eps_at([float(t) for t in times])

    def _data_eps_at(self, ts: list[float]) -> list:
        """``_data_eps`` at each of ``ts``, kept in the cache the schedule's key shares (``_kept_many``),
        except for a subclass with a ``_data_eps`` of its own (it got whichever model's values came first)."""
        if type(self)._data_eps is not DiffusionModel._data_eps:
            return [self._data_eps(t) for t in ts]
        return _kept_many(self.schedule, self.prediction, ts, self._data_eps)

    def _data_eps(self, t: float) -> tuple[tuple[float, float], tuple[float, float]]:
        a, s = float(self.schedule.alpha(t)), float(self.schedule.sigma(t))
        p = self.prediction
        with np.errstate(divide="ignore", invalid="ignore"):
            if p == "eps":  # (none where alpha is 0 or within float64 rounding of it against sigma: the cosine
                # schedule's alpha(1) = 6e-17, 1e16 times the output, 8.5e11 off for a network 0.1% off, a trial)
                return ((1 / a, -s / a) if a > s * _EPS64 else (np.nan, np.nan)), (0.0, 1.0)
            if p == "x0":
                return (0.0, 1.0), ((1 / s, -a / s) if s else (0.0, 0.0))
            if p == "v":
                n = a * a + s * s
                return (a / n, -s / n), (s / n, a / n)
            n = a + s
            return (1 / n, -s / n), (1 / n, a / n)

    def coefficients(self, times: np.ndarray, quantity: str) -> list[tuple[float, float]] | None:
        """Per grid time (a, b) with quantity = a x + b out (see ``Model.coefficients``).

        Args:
            times: (T + 1,) float64 grid times.
            quantity: ``"data"`` (x0_hat; ``None`` for an x0 prediction) or ``"velocity"``
                (alpha' x0_hat + sigma' eps_hat; ``None`` for a flow prediction on ``RectifiedFlow``).

        Returns:
            The coefficients, or ``None`` when the output is the quantity.
        """
        if quantity == "data":
            if self.prediction == "x0":
                return None
            return [de[0] for de in self.data_eps_table(times)]
        if quantity == "velocity":
            if self.prediction == "flow" and isinstance(self.schedule, RectifiedFlow):
                return None  # the flow prediction is dx/dt itself
            out = []
            for t, ((ad, bd), (ae, be)) in zip(times, self.data_eps_table(times)):
                da, ds = float(self.schedule.d_alpha(t)), float(self.schedule.d_sigma(t))
                out.append((da * ad + ds * ae, da * bd + ds * be))
            return out
        raise ValueError(f"unknown quantity {quantity!r}")


class VectorField(Model):
    """A plain ODE dy/dt = f(t, y) (SciPy / torchdiffeq argument order).

    With ``batched=False`` f gets a float t and one state y; with ``batched=True`` it gets t of
    shape (N,) and y of shape (N, *state_shape), the points of a round stacked along a new axis, t in
    y's dtype, or float64 where ``f.exact_times`` is true (as ``DiffusionModel`` takes it: the times
    a float32 field gets unbatched, where a time rounded to float32 would change a time-dependent
    field's values). Only velocity-based solvers (Euler, Heun) apply.

    Args:
        f: the right-hand side ``f(t, y) -> dy/dt`` (same shape as y).
        batched: f takes a round's points stacked (see above).
        check_outputs: the output check (see ``Model``): ``"auto"``, ``True``, ``"deferred"`` or ``False``.
    """

    def __init__(self, f: Callable[[Any, Array], Array], batched: bool = False, *,
                 check_outputs: bool | str = "auto") -> None:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        # (checked: bool("False") ran an unbatched f batched, a silent wrong answer, a trial)
        self.f, self.batched, self.check_outputs = f, check_bool("batched", batched), _check_mode(check_outputs)

    uses_workspace = True

    def _call(self, xs, ts, workspace=None):
        if not self.batched:
            outs: list = []
            for k, (x, t) in enumerate(zip(xs, ts)):
                host, x = (x, B.torch_view(x)) if self.numpy_engine else (None, x)
                try:
                    out = self._checked(watched_call(self.f, (float(t), x), x, 1), x, 1, 1, host=host)
                except ModelOutputError as e:
                    raise e.relabel(k, str(e), outs if e.done is not None else None) from None
                outs.append(out)
            return outs
        y = B.stack(xs) if workspace is None else workspace.join(xs, new_axis=True)
        host, y, t = self._inputs(y, ts, 1, getattr(self.f, "exact_times", False))
        out = watched_call(self.f, (t, y), y, len(xs))
        out = self._checked(out, y, len(xs), 1, workspace, lambda o: [o[k] for k in range(len(xs))], host)
        return [out[k] for k in range(len(xs))]

    def coefficients(self, times: np.ndarray, quantity: str) -> list[tuple[float, float]] | None:
        """``None`` for ``"velocity"`` (f is dy/dt); ``ValueError`` for any other quantity.

        Args:
            times: (T + 1,) float64 grid times (unused).
            quantity: the solver's quantity.

        Returns:
            ``None``.
        """
        if quantity != "velocity":
            raise ValueError("this solver needs the data prediction of a DiffusionModel; a VectorField takes a solver "
                             "of the velocity (chords_core.solvers.velocity_solvers())")
        return None


def is_plain_ode(model: Any) -> bool:
    """Whether ``model`` is a plain ODE: anything but a ``DiffusionModel`` (a ``VectorField``, a
    user's own ``Model``). The one place the rules that differ for one decide it: a plain ODE has no
    noise schedule and data of no known size, and its dynamics may amplify or damp errors far more
    than a diffusion model's, so its CHORDS stop also bounds the error estimate by the newest local
    errors' decay (``engine.run_plan``), the cascade sampler measures changes against the solver's
    local error with a tighter tolerance (``cascade.resolve_scale``, ``cascade.default_tol_for``), and
    the peers' absolute default tolerances warn (``window.absolute_tol``)."""
    return not isinstance(model, DiffusionModel)


_GRID_PROBLEMS: dict = {}


def grid_problem(schedule: Schedule, raw: bytes) -> str:
    """What is wrong with the float64 grid ``raw`` on ``schedule`` ("" if nothing), cached per
    (``schedule_key``, grid): by everything the schedule holds (its dataclass equality missed a
    subclass's own parameters; one holding an array is checked anew each time), at most 64 entries (``_kept``)."""
    return _kept(_GRID_PROBLEMS, 64, schedule, (raw,), lambda: _find_grid_problem(schedule, raw))


def _find_grid_problem(schedule: Schedule, raw: bytes) -> str:
    times = np.frombuffer(raw, dtype=np.float64)
    lo, hi = schedule.domain()
    bad = np.flatnonzero((times < lo) | (times > hi))
    if len(bad):
        k = int(bad[0])
        return schedule.outside(f"grid[{k}]", float(times[k]))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.diff(np.asarray(schedule.lam(times), dtype=np.float64))
    if not np.all(d > 0):
        k = int(np.flatnonzero(~(d > 0))[0])
        return (f"grid must run from noise to data for a diffusion model (the log-SNR increasing), but "
                f"grid[{k}]={times[k]:g} -> grid[{k + 1}]={times[k + 1]:g} goes the other way; "
                f"reverse the grid, e.g. time_grid(schedule, steps)")
    return ""


def check_model(model: Any, name: str = "model") -> Model:
    """``model`` if it is a chords_core ``Model``; a ``TypeError`` that says how to wrap a function otherwise.

    Args:
        model: the value passed as the model.
        name: the argument's name, for the message.

    Returns:
        ``model``.
    """
    if isinstance(model, Model):
        return model
    if callable(model):
        raise TypeError(
            f"{name} must be a chords_core Model; wrap a function: VectorField(f) for dy/dt = f(t, y), "
            f"or DiffusionModel(fn, schedule, prediction) for a denoiser fn(x, t)"
        )
    raise TypeError(f"{name} must be a chords_core Model (DiffusionModel or VectorField), got {type(model).__name__}")
