"""Stop rules: when a parallel method stops and which of its outputs it returns.

A parallel method produces *outputs* one after another (CHORDS: one per core, fastest first;
SRDS: one per iteration). A stop rule is an object with three methods, and every method, the
compiled JAX path included, consults it the same way:

- ``outputs_needed(available)``: the most outputs the run needs, known before any evaluation
  (``available`` is how many the method can produce). The engine truncates its static schedule
  there; raise ``ValueError`` if the rule cannot be met.
- ``accept(outputs, coarse)``: after each new output (``outputs[-1]``; ``outputs`` in arrival
  order, ``coarse`` the zero-cost prediction made before any output, or ``None``), whether to stop
  and return it.
- ``describe(n, core, accepted)``: the ``stopped_by`` text; ``accepted`` is False when no output
  was accepted and the run returned its last one (the most accurate).

The rules shipped:

- ``StopAtCore(n)``: return the n-th output to arrive (n = 1: the fastest core). Static.
- ``StopOnResidual(tol)``: stop at the first output within ``tol`` of the previous one (the first
  output is compared with the coarse prediction), by the RMS per element sqrt(mean((x - x_prev)^2))
  of each sample, every sample below ``tol`` (the batch's RMS let a slow SRDS sample be accepted
  beside 63 converged ones, at 1.40x its sequential error). Unlike the reference code's
  ||.||_2 / numel this does not depend on the state size (``norm="l2/numel"`` is the reference's, of
  the whole batch, to reproduce its runs). As the paper's rule it accepts
  two outputs that agree to rounding (see ``StopWhenConverged``).
- ``StopWhenConverged(rel)``: stop at the first output within ``rel`` times the *estimated error of
  the sequential solver* of the previous one, sample by sample (the RMS per element of each sample,
  the leading axis the batch: a batch-wide RMS let a slow sample be accepted among converged ones,
  1.2x its sequential error where the batch was within 1.05x), so that the returned output differs
  from the sequential one by a small fraction of the sequential solver's own error. The estimate
  (``outputs.error_state``: the sum of the solver's local error estimates, ``local_error``, scaled
  by the solution's decay from its start and, on a plain ODE, bounded by the decay of the newest
  local errors, ``estimate_error``) comes from the methods that provide it
  (CHORDS); without one the rule runs to the end. Two outputs of
  cores started at most ``NEAR_STARTS`` (2) grid steps apart (``outputs.starts``) are no evidence:
  such a core starts on, or next to, the slower core's own steps and is rectified onto its values,
  so the two finish on the same output (Euler) or close to it (higher orders: 3e-5 to 1e-3 apart
  with Heun or DPM-Solver++ at 10 steps on 8 cores, up to 6.9x the sequential error away; started
  two steps apart, DPM-Solver++(2M) 20 steps on 8 cores, 6.3e-4 apart in RMS and both 3.3x the sequential
  error away) whatever its error. Two outputs that
  agree to rounding (``AGREE_TO_ROUNDING``) confirm nothing by themselves either: cores locked onto
  one attractor (a denoiser that has saturated on one training image) finish identical. Yet a
  converged CHORDS run's outputs agree to rounding too: rectification makes a core exact after
  finitely many steps. So such a pair is accepted only where the method says where its cores
  started, and only where the last earlier pair that moved by more than rounding moved by at most
  the estimated error: a run seen converging onto its fixed point.
  For 16-bit floats, whose 64 epsilons are 6% (float16) or 50% (bfloat16) of the RMS, the unit is
  float32's epsilon: there only outputs equal to that precision (two cores computing the same
  values) agree to rounding.
- ``RunAll()`` (also what ``stop=None`` means): run to the end; the result is the last output,
  which for CHORDS is core 0's, the sequential solution.

``outputs`` is an ``Outputs`` tuple: a rule may read ``outputs.error`` (the method's estimate of
the sequential solver's RMS error, or ``None``) and ``outputs.starts`` (the grid index each output's
core started from: CHORDS' ``init[core]``, in the engine and in chords_jax; ``None`` from other
methods). A rule that sets ``uses_error_estimate = True``
asks the method to compute it (it costs a few array operations per evaluation).

A rule written outside the package subclasses ``StopRule`` (or just has these three methods).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from .checks import _is_int, check_choice, check_float, check_int

__all__ = ["StopRule", "StopAtCore", "StopOnResidual", "StopWhenConverged", "RunAll", "Outputs", "DEFAULT_STOP",
           "StopNotMet", "as_stop_rule", "outputs_needed", "select_output", "first_accepted", "chosen_output",
           "warn_unmet", "estimate_error", "decay", "sample_rms", "residual", "AGREE_TO_ROUNDING", "NEAR_STARTS",
           "RESIDUAL_NORMS", "ErrorState", "library_rule"]

#: ``StopWhenConverged``: two outputs whose RMS difference is at most this many machine epsilons of
#: their dtype (float32's for 16-bit floats) times the newer output's RMS agree to rounding (see the
#: module docstring).
AGREE_TO_ROUNDING = 64


#: ``StopWhenConverged``: two outputs of cores whose starts (``Outputs.starts``) are at most this many
#: grid steps apart are no evidence of convergence (see the module docstring).
NEAR_STARTS = 2

#: float32's machine epsilon: the unit of ``AGREE_TO_ROUNDING`` for 16-bit floats, whose own epsilon
#: (float16 2^-10, bfloat16 2^-7) would make 6% / 50% of the RMS "rounding"
EPS32 = 2.0**-23


def _rounding(x: Any, per_sample: bool = False) -> Any:
    """``AGREE_TO_ROUNDING`` machine epsilons of ``x``'s dtype (float32's for 16-bit floats) times its
    RMS (``per_sample``: each sample's, a 1-d array)."""
    return AGREE_TO_ROUNDING * min(B.eps(x), EPS32) * (sample_rms(x) if per_sample else B.rms(x))


def sample_rms(x: Any) -> np.ndarray:
    """The RMS of each sample of ``x`` (its leading axis the batch; a 0-d or 1-d state is one sample),
    as a 1-d numpy array (float64, or ``np.longdouble`` for sums beyond float64's range:
    ``_backend.row_sq_host``, which also widens a jax or device array's out-of-range sums)."""
    per = max(1, int(np.prod(x.shape[1:])) if len(x.shape) > 1 else int(np.prod(x.shape)))
    return np.sqrt(B.row_sq_host(x) / per)


def estimate_error(error_sum: Any, estimated: int, steps: int, per_sample: bool = False, *, start: Any = None,
                   ends: Sequence[Any] = (), newest: Sequence[Any] | None = None) -> Any:
    """The sequential solver's RMS error estimated from ``error_sum``, the sum of the local error
    estimates of ``estimated`` of its ``steps`` steps (``local_error``): RMS(error_sum) x steps /
    estimated (``per_sample``: of each sample, a 1-d array, ``sample_rms``), times the solution's
    decay where ``start`` (the run's initial state) and ``ends`` (the outputs judged) are given:
    min(1, RMS of the smaller of ``ends`` / RMS of ``start``), per sample with ``per_sample``;
    ``None`` until half the steps have an estimate, and where it is not finite (an overflow), in any
    sample. The one home of this formula: the engine
    (through ``Outputs.error``) and the compiled JAX path, which computes ``error_sum`` on the
    device, both form the estimate here.

    The sum takes the local errors as they were made, as if each reached the end unchanged (a flow
    whose Jacobian is near the identity). Where the solution decays, the errors made while it was
    large decay with it: on dy/dt = -3 y, 40 Heun steps to t = 2, the sum was 100 times the
    sequential error, and the rule accepted two fast cores that a coarse jump had collapsed onto 0
    (26.8x the sequential error away; 156x at -2.08 y to t = 2.95 on 80 steps). The decay of the
    sample's RMS from start to end scales them down with it, as much as an error made at the start
    has decayed (exact for that one only: a later error has decayed less, so on a decaying solution
    the scaled sum undershoots: dy/dt = -3 y, 40 Euler steps, 0.115x the sequential error, where the
    errors each carried to the end make 0.81x; the rule is then stricter, 38 of 40 rounds on 8 cores);
    never up (a growing solution keeps the plain sum), so the factor only makes the rule stricter.

    The decay of the RMS misses a mode that decays faster than the solution: the local errors,
    weighted by the solver's derivatives, sit in the fast mode, and die with it (dy/dt = A y with
    eigenvalues -0.39 and -2.28, Heun, 40 steps on 8 cores: the estimate was 70 times the sequential
    error and the rule accepted two outputs 29 times it away). With ``newest`` = (e_m, e_m-1, n) (CHORDS
    passes them for a plain ODE, a ``VectorField``), the
    two newest local error estimates (of the steps m - 1 -> m and m - 2 -> m - 1) and the steps after
    e_m's, n = steps - m (default ``steps - estimated``), the estimate is at most
    steps x RMS(e_m) x r^n, r = min(1, RMS(e_m) / RMS(e_m-1)), per sample with ``per_sample``: the
    sequential error where the local errors shrink by r a step in a mode that decays by r a step (each
    error then reaches the end as the newest one would, r^n e_m), to the accuracy of the local error
    estimates themselves (on dy/dt = -3 y, 40 steps, 8 cores: this bound alone is 0.81x the
    sequential error with Euler, whose estimate e_j is first order; the decay-scaled sum, 0.115x, is
    the smaller there). It never loosens the rule: local errors that grow keep the
    sum. Not for a ``DiffusionModel`` (chosen by the class: a diffusion ODE written as a
    ``VectorField`` gets it, and pays in rounds, 451 against 396 over 12 runs of a flow mixture with
    Euler in a review, none missing the criterion): there the local errors shrink near the data end
    because the trajectory settles, not because a mode damps the earlier errors, and the bound, 400
    times below the sum on a random-weight latent diffusion pipeline (DDIM, 16 steps), ran CHORDS'
    default to core 0 where it stopped two rounds earlier on an output 3.5e-6 from the sequential one."""
    if error_sum is None or 2 * estimated < steps:
        return None
    rms = sample_rms if per_sample else B.rms
    est = rms(error_sum) * steps / estimated
    if start is not None and len(ends):
        est = est * decay(start, ends, per_sample)
    e_m, e_prev, *rest = newest if newest is not None else (None, None)
    if e_prev is not None:
        after = rest[0] if rest and rest[0] is not None else steps - estimated
        now, prev = rms(e_m), rms(e_prev)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.minimum(1.0, np.where(prev > 0, now / np.where(prev > 0, prev, 1.0), 1.0))
        est = np.minimum(est, now * steps * r ** after)
        if not per_sample:
            est = float(est)
    # an estimate that overflowed (inf, or nan from inf - inf) bounds nothing: a rule reading it as
    # a tolerance accepted any change (outputs 5 apart under an inf estimate), so there is none
    return est if np.all(np.isfinite(est)) else None


def decay(start: Any, ends: Sequence[Any], per_sample: bool = False) -> Any:
    """min(1, RMS of the smallest of ``ends`` / RMS of ``start``), each sample's with ``per_sample`` (a
    1-d array); 1 where ``start`` is zero (see ``estimate_error``)."""
    if per_sample:
        s0 = sample_rms(start)
        end = sample_rms(ends[0])
        for e in ends[1:]:
            end = np.minimum(end, sample_rms(e))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s0 > 0, np.minimum(1.0, end / np.where(s0 > 0, s0, 1.0)), 1.0)
    r0 = B.rms(start)
    r1 = min(B.rms(e) for e in ends)
    return min(1.0, r1 / r0) if r0 > 0 else 1.0


class ErrorState(NamedTuple):
    """What a method hands a rule to estimate the sequential solver's error from (``Outputs.error_state``,
    formed by ``estimate_error``); a plain tuple of the same fields in order is read alike.

    Attributes:
        error_sum: the sum of the local error estimates so far (the method's array: valid while the
            rule's ``accept`` runs).
        estimated: how many steps have an estimate.
        steps: the grid's steps.
        start: the run's initial state (the decay scaling), or ``None``.
        newest, before: the two newest local error estimates e_m and e_m-1, or ``None`` (CHORDS gives
            them for a plain ODE: the bound by their decay).
        after: the steps after e_m's, n = steps - m.
    """

    error_sum: Any
    estimated: int
    steps: int
    start: Any = None
    newest: Any = None
    before: Any = None
    after: int | None = None


class Outputs(tuple):
    """The outputs so far, in arrival order, and ``error``: the method's estimate of the sequential
    solver's RMS error (``None`` when the method gives none or the rule did not ask); ``starts``:
    the grid index each output's core started from (CHORDS' ``init[core]``), or ``None``.

    A method gives ``error`` as a float or as ``error_state``, an ``ErrorState``, what
    ``estimate_error`` forms it from with the last two outputs as its ``ends``; then ``error``
    is formed when a rule first reads it (and ``error_sum``, the method's array, is only valid while
    the rule's ``accept`` runs). A rule that forms the estimate elsewhere reads ``error_state``
    itself (the JAX path's symbolic replay).
    """

    error_state: ErrorState | tuple | None
    starts: tuple[int, ...] | None
    _error: float | None

    def __new__(cls, items: Sequence[Any] = (), error: float | None = None,
                error_state: ErrorState | tuple | None = None, starts: Sequence[int] | None = None) -> Outputs:
        out = super().__new__(cls, items)
        out._error = error
        out.error_state = error_state
        out.starts = None if starts is None else tuple(starts)  # a copy: the caller's list grows
        return out

    @property
    def error(self) -> float | None:
        """The estimated sequential RMS error (formed from ``error_state`` on first read), or ``None``."""
        if self._error is None and self.error_state is not None:
            self._error = self._estimate(False)
        return self._error

    def sample_errors(self) -> np.ndarray | None:
        """The estimated sequential RMS error of each sample (``estimate_error(..., per_sample=True)``),
        or, where the method gave ``error`` as one float, that float for every sample (a 1-element
        array, which broadcasts); ``None`` without an estimate."""
        if self.error_state is not None:
            return self._estimate(True)
        return None if self._error is None else np.array([self._error])

    def _estimate(self, per_sample: bool) -> Any:
        """``estimate_error`` of ``error_state``, the last two outputs its ends."""
        assert self.error_state is not None
        st = ErrorState(*self.error_state)
        newest = None if st.newest is None else (st.newest, st.before, st.after)
        return estimate_error(st.error_sum, st.estimated, st.steps, per_sample, start=st.start, ends=self[-2:],
                              newest=newest)


class StopNotMet(RuntimeWarning):
    """A stop rule that reads the outputs' values (``StopRule.warns_if_unmet``) was never met and the
    run's last output is not the sequential solution (an SRDS run cut short by ``max_iters``, a CHORDS
    run whose rule needs fewer outputs than the cores make). A CHORDS run whose rule is never met
    otherwise returns core 0's output, the sequential solution, and says so in ``stopped_by`` without
    a warning."""


def _warns_if_unmet(rule: Any) -> bool:
    """A rule's ``warns_if_unmet`` where it sets none: whether it reads the outputs' values and may accept."""
    return bool(getattr(rule, "decides_on_values", True)) and not getattr(rule, "never_accepts", False)


class StopRule:
    """Base class of stop rules; see the module docstring for the protocol."""

    #: Ask the method for ``outputs.error`` (the estimated sequential error).
    uses_error_estimate: bool = False
    #: Warn (``StopNotMet``) when no output was accepted and the one returned is not the sequential
    #: solution. By default a rule that reads the outputs' values and may accept does (a rule of one's
    #: own included: a user trial's, never met, returned a faster core's output without a warning); a rule
    #: that returns such an output on purpose sets False.
    warns_if_unmet = property(_warns_if_unmet)
    #: Whether ``accept`` reads the outputs' values; a rule that decides on their arrival alone (or
    #: never accepts) sets False, and a backend that compiles the run then needs no read-back to stop.
    #: SRDS returns, for a rule that reads values, the last output formed in the accepted one's round
    #: (the same round, closer to the sequential solution), and for one that does not the accepted
    #: output itself (``srds_latest``): a rule choosing the n-th output by count sets False.
    decides_on_values: bool = True
    #: Whether the rule accepts no output at all (the run goes to its end whatever its outputs):
    #: ``RunAll``, and a tolerance of 0 (``StopWhenConverged(0)``, ``StopOnResidual(0)``).
    never_accepts: bool = False

    def outputs_needed(self, available: int) -> int:
        """The most outputs the run needs out of the ``available`` ones (static); all by default."""
        return available

    def accept(self, outputs: Sequence[Any], coarse: Any) -> bool:
        """Whether to stop at the newest output ``outputs[-1]``."""
        raise NotImplementedError(f"{type(self).__name__} does not define accept (a StopRule subclass must)")

    def describe(self, n: int, core: int, accepted: bool) -> str:
        """``stopped_by`` text for output number ``n`` (1-based) from core ``core``."""
        name = type(self).__name__
        return f"{name} at output {n} (core {core})" if accepted else f"{name} not met; last output"


@dataclass(frozen=True)
class StopAtCore(StopRule):
    """Return the ``n``-th output to arrive (n = 1: the fastest core's)."""

    n: int = 1
    decides_on_values = False

    def __post_init__(self):
        object.__setattr__(self, "n", check_int("StopAtCore(n): n", self.n, 1))

    def outputs_needed(self, available: int) -> int:
        """The n-th output; a ``ValueError`` if the run makes fewer."""
        if self.n > available:
            raise ValueError(f"stop=StopAtCore({self.n}) asks for more outputs than the run makes, {available} "
                             "(CHORDS: one a core; SRDS: one an iteration, at most its blocks or max_iters)")
        return self.n

    def accept(self, outputs: Sequence[Any], coarse: Any) -> bool:
        """True once the n-th output has arrived."""
        return len(outputs) >= self.n

    def describe(self, n: int, core: int, accepted: bool) -> str:
        """``output n (core c)``; where output ``self.n`` never came (faster cores retired after a
        non-finite output), also that, and which output was returned instead."""
        if accepted:
            return f"output {n} (core {core})"
        last = " (core 0: the sequential solution)" if core == 0 else ""
        return f"output {n} (core {core}), the last: output {self.n} never came{last}"


#: ``decides_on_values`` (and so ``warns_if_unmet``) of a rule with a tolerance: unless it never accepts
#: (a tolerance of 0, ``never_accepts``)
_UNLESS_NEVER = property(lambda self: not self.never_accepts, doc="Unless the rule never accepts (``never_accepts``).")


def residual(diff: Any, norm: str = "rms") -> float:
    """The size of a change between two outputs, as ``StopOnResidual`` judges it: ``"rms"``, the
    largest of the samples' RMS changes (``sample_rms``; the batch's RMS accepted a slow SRDS sample
    beside 63 converged ones, at 6.4x tol, 1.40x its sequential error); ``"l2/numel"``, the reference
    code's, of the whole batch: ||d||_2 / n = RMS / sqrt(n). A state without elements (an empty batch,
    or samples of none: (3, 0)) ``inf`` by either (no evidence, as ``StopWhenConverged`` takes it; a
    user trial found (3, 0) and "l2/numel" accepted at once)."""
    if B._numel(diff) == 0:
        return math.inf
    if norm == "l2/numel":
        return B.rms(diff) / math.sqrt(B._numel(diff))
    return float(sample_rms(diff).max())


#: ``StopOnResidual``'s norms of the change: ``"rms"`` (the RMS per element, independent of the
#: state's size) and ``"l2/numel"`` (the official CHORDS code's ||.||_2 / numel, whose equivalent RMS
#: tolerance grows as sqrt(numel): about 0.2 at its residual criterion's default threshold, 4e-4, on a
#: Flux 768x1360 latent)
RESIDUAL_NORMS = ("rms", "l2/numel")


@dataclass(frozen=True)
class StopOnResidual(StopRule):
    """Stop at the first output whose change from the previous one is below ``tol``, by ``norm``
    (``RESIDUAL_NORMS``: ``"rms"``, the default, the RMS change of each sample, every one below
    ``tol`` (the leading axis the batch; a 0-d or 1-d state one sample, ``sample_rms``); or
    ``"l2/numel"``, the official code's, of the whole batch, to reproduce its runs; its residual
    criterion's default threshold is 4e-4)."""

    tol: float
    norm: str = "rms"

    def __post_init__(self):
        object.__setattr__(self, "tol", check_float("StopOnResidual(tol): tol", self.tol, 0.0))
        check_choice("StopOnResidual(norm): norm", self.norm, RESIDUAL_NORMS)

    @property
    def never_accepts(self) -> bool:  # type: ignore[override]
        """tol = 0 (it means "run to the end": an RMS is not below 0); then nothing to decide on and
        no warning that it was not met."""
        return self.tol == 0

    decides_on_values = _UNLESS_NEVER  # (and so warns_if_unmet)

    def accept(self, outputs: Sequence[Any], coarse: Any) -> bool:
        """Whether the newest output is within ``tol`` (by ``norm``) of the previous one (or the coarse
        prediction). (Outputs that arrive in one round are judged each in turn; the reference code
        judges only the round's last two.)"""
        prev = outputs[-2] if len(outputs) > 1 else coarse
        if prev is None or self.tol <= 0:  # (an RMS is never below 0: nothing read, as decides_on_values says)
            return False
        return residual(outputs[-1] - prev, self.norm) < self.tol

    def describe(self, n: int, core: int, accepted: bool) -> str:
        """Where the residual fell below ``tol``, or that it never did."""
        by = "" if self.norm == "rms" else f" ({self.norm})"
        if accepted:
            return f"residual{by} below {self.tol:g} at core {core}"
        return f"residual{by} never below {self.tol:g}; core {core}"


@dataclass(frozen=True)
class StopWhenConverged(StopRule):
    """Stop at the first output whose RMS change from the previous one is at most ``rel`` times the
    estimated RMS error of the sequential solver, in every sample (``Outputs.sample_errors``), from
    cores started more than ``NEAR_STARTS`` steps apart; a pair that agrees to rounding only after a
    pair that moved by at most the error (see the module docstring). ``rel`` defaults to 0.1, as
    ``DEFAULT_STOP`` (it was 0.05 here while the default stop was 0.1: ``StopWhenConverged()`` was not
    the default). ``rel = 0`` never accepts: the run returns its last output (CHORDS: core 0's, the
    sequential solution)."""

    rel: float = 0.1
    uses_error_estimate = True

    @property
    def never_accepts(self) -> bool:  # type: ignore[override]
        """rel = 0 (it means "run to the end"); then nothing to decide on and no warning that it was
        not met."""
        return self.rel == 0

    decides_on_values = _UNLESS_NEVER  # (and so warns_if_unmet)

    def __post_init__(self):
        object.__setattr__(self, "rel", check_float("StopWhenConverged(rel): rel", self.rel, 0.0))

    def accept(self, outputs: Sequence[Any], coarse: Any) -> bool:
        """Whether the newest output moved by at most ``rel`` x the estimated sequential error from
        the previous one, in every sample (see the class docstring)."""
        # the coarse prediction is no output to converge from; rel = 0 never accepts
        if len(outputs) < 2 or self.rel == 0:
            return False
        if isinstance(outputs, Outputs):
            errors = outputs.sample_errors()
        else:  # (a rule's own Outputs-like sequence: its one estimate)
            error = getattr(outputs, "error", None)
            errors = None if error is None else np.array([error])
        if errors is None:
            return False
        starts = getattr(outputs, "starts", None)
        if starts is not None and abs(starts[-1] - starts[-2]) <= NEAR_STARTS:
            return False  # cores started a step or two apart finish close together whatever the error
        new = outputs[-1]
        diff = new - outputs[-2]
        change = sample_rms(diff)
        # every sample within rel x its own estimate (or moved by rounding only); an empty batch: no evidence
        if not change.size or not np.all(change <= np.maximum(self.rel * errors, _rounding(new, True))):
            return False
        if B.rms(diff) > _rounding(new):
            return True
        # the two agree to rounding: evidence only where the method says where its cores started and
        # the last pair that moved by more than rounding moved by at most the error (a run converging
        # onto its fixed point, not two cores locked together on a wrong value)
        if starts is None:
            return False
        batch = getattr(outputs, "error", None)  # (the batch's estimate, formed here only)
        for k in range(len(outputs) - 2, 0, -1):
            moved = B.rms(outputs[k] - outputs[k - 1])
            if moved > _rounding(outputs[k]):
                return batch is not None and moved <= batch
        return False  # no pair moved: no evidence

    def describe(self, n: int, core: int, accepted: bool) -> str:
        """Which output converged, or that none did."""
        # (core 0's output is the sequential solution itself, in the sequential rounds: no speedup)
        zero = "core 0: the sequential solution, no rounds saved"
        if accepted:
            last = f" ({zero})" if core == 0 else ""
            return (f"converged: output {n} (core {core}) within {self.rel:g} x the estimated sequential "
                    f"error{last}")
        which = zero if core == 0 else f"core {core}"
        return f"not converged within {self.rel:g} x the estimated sequential error; {which}"


#: ``chords``' default: safe on problems it was not tuned on (see ``StopWhenConverged``).
DEFAULT_STOP = StopWhenConverged()


@dataclass(frozen=True)
class RunAll(StopRule):
    """Run every core (every iteration); return the last output. ``stop=None`` means this."""

    decides_on_values = False
    never_accepts = True

    def accept(self, outputs: Sequence[Any], coarse: Any) -> bool:
        """Never: the run goes to its end."""
        return False

    def describe(self, n: int, core: int, accepted: bool) -> str:
        """``ran to the end; output n (core c)``."""
        return f"ran to the end; output {n} (core {core})"


def warn_unmet(rule: StopRule, stopped_by: str) -> None:
    """Warn (``StopNotMet``, at the caller's line) that ``rule`` accepted no output, if it is a rule
    that says so (``StopRule.warns_if_unmet``; an object of the protocol that is no ``StopRule``, by
    the same default)."""
    warns = getattr(rule, "warns_if_unmet", None)
    if warns is None:
        warns = _warns_if_unmet(rule)
    if warns:
        from .call import warn_caller  # (call imports the solvers and models: not at this module's import)

        warn_caller(f"stop rule not met ({stopped_by}): the last output is returned", StopNotMet)


def as_stop_rule(stop: Any) -> StopRule:
    """``stop`` as a rule object: ``None`` -> ``RunAll()``; anything with the protocol's methods as is."""
    if stop is None:
        return RunAll()
    if isinstance(stop, type):
        raise TypeError(f"stop: {stop.__name__} is a class; pass an instance, e.g. stop={stop.__name__}(...)")
    if all(callable(getattr(stop, m, None)) for m in ("outputs_needed", "accept", "describe")):
        return stop
    raise TypeError(f"stop must be a stop rule (StopAtCore, StopOnResidual, RunAll, a StopRule subclass) or None, "
                    f"got {type(stop).__name__}")


def outputs_needed(rule: StopRule, available: int) -> int:
    """``rule.outputs_needed(available)``, checked: an integer in [1, ``available``] (a rule of one's own
    that answers otherwise gets a ``ValueError`` naming ``stop``, not an index error later)."""
    n = rule.outputs_needed(available)
    if not _is_int(n) or not 1 <= n <= available:
        raise ValueError(f"stop: {type(rule).__name__}.outputs_needed({available}) returned {n!r}; it must be an "
                         f"integer in [1, {available}] (the outputs the run makes)")
    return int(n)


def first_accepted(rule: StopRule, outputs: Sequence[Any], coarse: Any,
                   error_states: Sequence[tuple | None] | None = None, start: int = 0,
                   starts: Sequence[int] | None = None) -> int | None:
    """Replay ``rule`` over finished outputs (arrival order) from index ``start`` (the outputs before
    it were offered already): the index of the first it accepts, given the outputs up to it, or
    ``None``. ``error_states[n]``: the ``Outputs.error_state`` as output n arrived (``None``: no
    estimate); ``starts``: ``Outputs.starts`` of all the outputs."""
    if type(rule) is RunAll:  # (accepts nothing: no Outputs to build for it)
        return None
    for n in range(start, len(outputs)):
        state = None if error_states is None else error_states[n]
        if accepts(rule, Outputs(outputs[:n + 1], error_state=state, starts=None if starts is None else starts[:n + 1]),
                   coarse):
            return n
    return None


def library_rule(rule: Any) -> bool:
    """Whether ``rule`` is one of this module's rule classes (not a subclass defined elsewhere): what the
    library knows of how it reads the outputs and says in its description (``host``, ``srds``)."""
    return type(rule).__module__ == __name__


def accepts(rule: StopRule, outputs: Outputs, coarse: Any) -> bool:
    """``rule.accept(outputs, coarse)``, which must answer a bool or a 0-d boolean array or tensor (an
    array answer raised numpy's "truth value of an array is ambiguous", naming nothing; a number, a
    distance a rule forgot to compare with its tolerance, was taken as True where nonzero: a user
    trial's rule returned the fastest core unchecked): a ``TypeError`` naming ``stop`` otherwise."""
    ok = rule.accept(outputs, coarse)
    if isinstance(ok, (bool, np.bool_)):
        return bool(ok)
    if type(ok) in (int, float):  # (a number: a distance not compared with the tolerance, as a 0-d array's; it
        # was told to reduce an array, a researcher's trial)
        raise TypeError(f"stop: {type(rule).__name__}.accept returned a {type(ok).__name__}, not a bool (output "
                        f"{len(outputs)}); compare it with a tolerance, e.g. bool(change < tol)")
    if getattr(ok, "shape", None) == ():  # a 0-d array or tensor: one answer, if it is a truth value
        if str(getattr(ok, "dtype", "")) in ("bool", "torch.bool"):
            return bool(ok)
        raise TypeError(f"stop: {type(rule).__name__}.accept returned a 0-d {type(ok).__name__} of dtype {ok.dtype}, "
                        f"not a bool (output {len(outputs)}); compare it with a tolerance, e.g. bool(change < tol)")
    raise TypeError(f"stop: {type(rule).__name__}.accept returned {type(ok).__name__}, not a bool (output "
                    f"{len(outputs)}); reduce an array to one answer, e.g. bool((x < tol).all())")


def described(rule: StopRule, n: int, core: int, accepted: bool) -> str:
    """``rule.describe(n, core, accepted)``, which must answer a str (``stopped_by``): a ``TypeError``
    naming ``stop`` otherwise (a tuple came back as CHORDS' ``stopped_by`` and failed inside SRDS)."""
    text = rule.describe(n, core, accepted)
    if not isinstance(text, str):
        raise TypeError(f"stop: {type(rule).__name__}.describe returned {type(text).__name__}, not a str (output {n})")
    return text


def chosen_output(rule: StopRule, cores: Sequence[int], n: int | None) -> tuple[int, str]:
    """(index of the returned output, its ``stopped_by`` text) for output ``n`` accepted by ``rule``
    or, with ``n`` ``None``, for the last of the outputs (arrival order) of ``cores``."""
    if n is not None:
        return n, described(rule, n + 1, cores[n], True)
    text = described(rule, len(cores), cores[-1], False)
    if cores[-1] != 0:  # a rule that needs fewer outputs than the cores make: a faster core's unconverged output
        warn_unmet(rule, text)
    return len(cores) - 1, text


def select_output(rule: StopRule, outputs: Sequence[Any], cores: Sequence[int], coarse: Any,
                  error_states: Sequence[tuple | None] | None = None,
                  starts: Sequence[int] | None = None) -> tuple[int, str]:
    """Replay ``rule`` over finished outputs (arrival order): (index of the returned output, its
    ``stopped_by`` text). The engine applies the rule as outputs arrive; this is the same rule for
    backends that run first and pick after (the compiled JAX path; run in chunks, it calls
    ``first_accepted`` and ``chosen_output`` itself)."""
    return chosen_output(rule, cores, first_accepted(rule, outputs, coarse, error_states, starts=starts))
