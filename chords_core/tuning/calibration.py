"""Calibration problems and the measurement of CHORDS init sequences on them.

A ``Calibration`` is a model, inputs ``x``, a grid and a reference solution ``ref`` (exact where
the problem allows: the Gaussian mixture's DOP853 solve, a linear ODE's matrix exponential; a
refined-grid solve for a user's model). ``evaluate`` measures an init sequence on it: for
one-evaluation solvers core c outputs after R_c = T - t_c + c rounds with an error
e_c = rms(x_c - ref); the sequence's score is the round of the first output whose error satisfies
e_c <= budget * e_seq (e_seq: the sequential solver's error), then that output's error ratio.
Errors of a prefix t_0..t_c are cached (an output depends on t_0..t_c only).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..call import check_state
from ..checks import check_float, check_grid, check_int
from ..inits import validate_init
from ..methods.chords import chords
from ..models import Model
from ..plan import make_plan
from ..sequential import solve
from ..solvers import make_solver
from ..stopping import StopAtCore

__all__ = ["Calibration", "calibration", "Candidate", "evaluate", "Evaluator", "check_budget"]


@dataclass(frozen=True)
class Calibration:
    """A calibration problem: ``model`` on ``grid`` from inputs ``x`` with reference solution ``ref``.

    Attributes:
        model: the ``Model``.
        x: the inputs at ``grid[0]`` (a batch, the state's shape S).
        grid: (T + 1,) float64 grid times.
        ref: the reference solution at ``grid[-1]``, shape S.
        solver: the solver's name.
        options: the solver's options.
        seq: the sequential solver's output, shape S.
        seq_error: rms(seq - ref).
        description: a one-line description.
    """

    model: Model
    x: Any = field(repr=False)
    grid: np.ndarray = field(repr=False)
    ref: Any = field(repr=False)
    solver: str
    options: dict
    seq: Any = field(repr=False)
    seq_error: float
    description: str = ""

    @property
    def steps(self) -> int:
        """T, the grid's number of steps."""
        return len(self.grid) - 1


def _rms(a: Any) -> float:
    with np.errstate(over="ignore", invalid="ignore"):  # (a run-off output: inf, scored as such)
        return float(np.sqrt(np.mean(np.square(np.asarray(a, dtype=np.float64)))))


def calibration(
    steps: int | None = None,
    solver: str = "euler",
    *,
    problem: Any = None,
    model: Model | None = None,
    x_cal: Any = None,
    grid: Any = None,
    reference: Any = None,
    dim: int | None = None,
    modes: int | None = None,
    seed: int | None = None,
    samples: int | None = None,
    schedule: Any = None,
    refine: int | None = None,
    **solver_options: Any,
) -> Calibration:
    """Build a calibration problem.

    - default / ``problem=GaussianMixture``: the exact probability-flow ODE of the mixture
      (``GaussianMixture.random(dim, modes, seed)`` if none is given) on ``schedule`` (default
      ``RectifiedFlow``), a uniform grid of ``steps`` (Karras spacing on ``EDM``), ``samples`` noise
      inputs, reference by DOP853;
    - ``problem=LinearODE``: dy/dt = A y on [0, 1], reference the matrix exponential;
    - ``model`` with ``x_cal`` and ``grid``: a user's model; ``reference`` defaults to the same
      solver on the grid refined ``refine`` times (each interval split evenly).

    Args:
        steps: T (required unless ``grid`` is given; with one, it must match the grid's).
        solver: the solver's name.
        problem: a ``GaussianMixture`` or ``LinearODE`` (default: a random mixture).
        model: a user's ``Model`` (not with ``problem``).
        x_cal: the inputs (default: drawn from the problem).
        grid: the grid times (default: ``time_grid(schedule, steps)``, ``"karras"`` spacing on ``EDM``, or
            [0, 1] for a linear ODE).
        reference: the reference solution (a user's model only).
        dim: the random mixture's dimension (default 8; only for the random mixture).
        modes: the random mixture's components (default 3; only for the random mixture).
        seed: the seed of the mixture and the inputs (default 0; not with a user model).
        samples: the number of inputs drawn (>= 1, default 16; not with ``x_cal`` or a user model).
            An option that the chosen problem does not use raises ``ValueError`` naming it (a user
            model ignored all four silently).
        schedule: the mixture's noise schedule (default ``RectifiedFlow()``; a mixture's only).
        refine: the refinement of a user model's reference solve, >= 2 (default 8; without ``reference`` only).
            These three, too, raise ``ValueError`` where the problem does not use them (a user trial's
            reference of zeros was dropped for the mixture's own, silently).
        solver_options: the solver's options.

    Returns:
        The ``Calibration``, with the sequential solve done.
    """
    from ..grid import time_grid
    from ..problems import GaussianMixture, LinearODE
    from ..schedules import EDM, RectifiedFlow

    unused = {"dim": dim, "modes": modes} if model is not None or problem is not None else {}
    if model is not None:
        unused.update(seed=seed, samples=samples)
    elif x_cal is not None:
        unused["samples"] = samples
        if problem is not None:  # (the seed draws the inputs, and the random mixture where none is given)
            unused["seed"] = seed
    mixture = model is None and (problem is None or isinstance(problem, GaussianMixture))
    if model is None:
        unused["reference"] = reference
    if model is None or reference is not None:
        unused["refine"] = refine
    if not mixture:
        unused["schedule"] = schedule
    given = [k for k, v in unused.items() if v is not None]
    if given:
        what = ("a user model" if model is not None else "the given problem" if problem is not None
                else "x_cal" if x_cal is not None else "the random mixture")
        if model is not None and reference is not None and given == ["refine"]:
            what = "a reference given"
        raise ValueError(f"{', '.join(given)}: not used with {what} (dim, modes, seed, samples: the random mixture's "
                         "draw, seed and samples the inputs' too; schedule: a mixture's; reference, refine: a user "
                         "model's)")
    dim, modes = 8 if dim is None else dim, 3 if modes is None else modes
    seed, samples = 0 if seed is None else seed, 16 if samples is None else samples
    rng = np.random.default_rng(check_int("seed", seed, 0))  # (numpy's words for -1 named no argument)
    given_reference = model is not None and reference is not None
    if model is not None and (x_cal is None or grid is None):
        raise ValueError("a model needs calibration inputs x_cal and a grid")
    times = None if grid is None else check_grid(grid)
    if times is not None:
        T = len(times) - 1
        if steps is not None and steps != T:
            raise ValueError(f"steps={steps} does not match the grid's {T} steps (give one of them)")
    elif steps is None:
        raise ValueError("steps: required unless a grid is given")
    else:
        T = check_int("steps", steps, 1)
    if x_cal is None:
        samples = check_int("samples", samples, 1)
    if model is not None:
        if problem is not None:
            raise ValueError("give problem or model, not both")
        check_state(model, x_cal, "x_cal")
        assert times is not None  # (checked above)
        desc = "user model, reference given"
        if reference is None:
            # (refine=1 is the sequential solve itself: error 0, and every budget then admitted only outputs
            # equal to it bit for bit, the search returning the sequential solver, a user trial)
            refine = check_int("refine", 8 if refine is None else refine, 2)
            desc = f"user model, reference refined x{refine}"
            fine = np.concatenate([np.linspace(a, b, refine + 1)[:-1] for a, b in zip(times[:-1], times[1:])]
                                  + [times[-1:]])
            reference = solve(model, x_cal, fine, solver, **solver_options)
        x = x_cal
    else:
        problem = GaussianMixture.random(dim, modes, seed) if problem is None else problem
        if isinstance(problem, LinearODE):
            model = problem.vector_field()
            times = np.linspace(0.0, 1.0, T + 1) if times is None else times
            x = rng.standard_normal((samples, problem.dim)) if x_cal is None else x_cal
            check_state(model, x, "x_cal")
            if np.ndim(x) == 0 or np.shape(x)[-1] != problem.dim:  # (the exact solution named its own y0)
                raise ValueError(f"x_cal must have shape ({problem.dim},) or (samples, {problem.dim}) for this linear "
                                 f"ODE, got {np.shape(x)}")
            reference = problem.exact(x, times[0], times[-1])
            desc = f"linear ODE dim {problem.dim}"
        elif isinstance(problem, GaussianMixture):
            schedule = RectifiedFlow() if schedule is None else schedule
            model = problem.model(schedule, "flow" if isinstance(schedule, RectifiedFlow) else "x0")
            if times is None:  # (uniform in an EDM time put the first step at sigma 80 -> 78: a trial's
                # sequential error was 68% of the data's size, and the tuner reported 5x; its Karras grid instead)
                times = time_grid(schedule, T, "karras" if isinstance(schedule, EDM) else "uniform")
            if x_cal is None:
                a, s = float(schedule.alpha(times[0])), float(schedule.sigma(times[0]))
                x = a * problem.sample(samples, seed + 1) + s * rng.standard_normal((samples, problem.dim))
            else:
                x = x_cal
                check_state(model, x, "x_cal")
                problem._check_x(x, "x_cal")  # (the mixture's own check, named as here: it said x_T)
            reference = problem.reference_solve(x, times[0], times[-1], schedule)
            n = int(np.shape(x)[0]) if np.ndim(x) >= 2 else 1  # (x_cal's, not the default draw's 16: a trial)
            desc = f"Gaussian mixture dim {problem.dim}, {problem.n_modes} modes, {counted(n, 'sample')}"
        else:
            raise TypeError(f"problem must be a GaussianMixture or LinearODE, got {type(problem).__name__}")
    if np.ndim(x) >= 2 and np.shape(x)[0] == 0:  # (it failed on a nan error: "check the model and x_cal")
        raise ValueError(f"x_cal: holds no sample (shape {tuple(np.shape(x))}): the calibration measures errors on "
                         "at least one")
    seq = solve(model, x, times, solver, **solver_options)
    ref_shape, shape = tuple(np.shape(reference)), tuple(np.shape(seq))
    if ref_shape != shape:
        raise ValueError(f"reference: shape {ref_shape} does not match the solution's {shape} (the inputs' shape)")
    if not np.all(np.isfinite(np.asarray(reference, dtype=np.float64))):
        raise ValueError("reference: has non-finite values (nan or inf)")
    seq_error = _rms(seq - reference)
    if not math.isfinite(seq_error):
        raise ValueError(f"the sequential {solver} solve on the calibration problem is not finite: its error "
                         "against the reference cannot be measured (check the model and x_cal)")
    if seq_error == 0.0 and given_reference:  # (the sequential answer given as the reference: as refine=1; a
        # refined reference the solve meets exactly is a problem the solver solves exactly, and stays, a review)
        raise ValueError(f"reference: equals the sequential {solver} solve (error 0), so a budget relative to that "
                         "error admits only bit-exact outputs; give a more accurate reference (an exact or finer "
                         "solution), or leave it out (a solve on a refined grid)")
    return Calibration(model, x, times, reference, solver, dict(solver_options), seq, seq_error, desc)


# ---------------------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One init sequence, measured: per core c its output round R_c and error e_c = rms(x_c - ref).

    Attributes:
        init: the init sequence.
        finish: R_c per core.
        errors: e_c per core.
        ratios: e_c / e_seq per core.
        core: the first output (earliest round) with e_c <= budget * e_seq.
        rounds: its round.
        nfe: model evaluations up to that round.
        speedup: sequential rounds / ``rounds``.
        stop_n: n of ``StopAtCore(n)`` that returns that output: its place in arrival order, the
            surviving cores' outputs arriving fastest first (``K - core`` where no core retires).
        retired: the faster cores retired after a non-finite output (their coarse starts ran off,
            on a plain ODE), from core ``K - retired`` up; their errors are inf.
    """

    init: tuple[int, ...]
    finish: tuple[int, ...]
    errors: tuple[float, ...]
    ratios: tuple[float, ...]
    core: int
    rounds: int
    nfe: int
    speedup: float
    stop_n: int = 0
    retired: int = 0

    def __post_init__(self) -> None:
        if self.stop_n == 0:  # (constructed without it: no core retired)
            object.__setattr__(self, "stop_n", len(self.init) - self.core)

    @property
    def ratio(self) -> float:
        """The chosen output's error ratio e_core / e_seq."""
        return self.ratios[self.core]

    @property
    def error(self) -> float:
        """The chosen output's error e_core."""
        return self.errors[self.core]

    @property
    def key(self) -> tuple[int, float]:
        """The sort key of the search: (rounds, ratio), smaller is better."""
        return (self.rounds, self.ratio)


class Evaluator:
    """Measures init sequences on a calibration, caching the error of every prefix t_0..t_c.

    Args:
        cal: the calibration problem.
        budget: the error budget (allowed error / sequential error), >= 1.
    """

    def __init__(self, cal: Calibration, budget: float) -> None:
        self.cal, self.budget = cal, budget
        self.prefix: dict[tuple[int, ...], float] = {}
        self.retired: set[tuple[int, ...]] = set()  # prefixes whose last core retires (prefix-determined)
        self.seen: dict[tuple[int, ...], Candidate] = {}
        self.runs = 0
        self.evals = make_solver(cal.solver, cal.model, cal.grid, **cal.options).evals_per_step()

    def __call__(self, init: Sequence[int]) -> Candidate:
        """Measure one init sequence (cached per sequence).

        Args:
            init: the init sequence (validated).

        Returns:
            The ``Candidate``.
        """
        init = validate_init(init, self.cal.steps)
        if init in self.seen:
            return self.seen[init]
        K, cal = len(init), self.cal
        first = next((c for c in range(K) if init[: c + 1] not in self.prefix), K)
        if first < K:
            if first == 0:
                self.prefix[(0,)] = cal.seq_error  # core 0 is the sequential solver bit for bit
                first = 1
            if first < K:
                res = self._run(init, StopAtCore(K - first))
                for h in res.hits:
                    self.prefix.setdefault(init[: h.core + 1], _rms(h.x - cal.ref))
                for c in range(first, K):  # a core retired after a non-finite output (its coarse start ran
                    if init[: c + 1] not in self.prefix:  # off) has no output: never chosen
                        self.prefix[init[: c + 1]] = math.inf
                        self.retired.add(init[: c + 1])
        plan = make_plan(cal.steps, init, self.evals)
        errors = tuple(self.prefix[init[: c + 1]] for c in range(K))
        ratios = tuple(e / cal.seq_error if cal.seq_error > 0 else (1.0 if e == 0 else math.inf) for e in errors)
        survivors = next((c for c in range(K) if init[: c + 1] in self.retired), K)
        if survivors == K:
            ok = [c for c in range(K) if ratios[c] <= self.budget]
            core = min(ok, key=lambda c: (plan.finish_round[c], -c))
            R = plan.finish_round[core]
            cand = Candidate(init, plan.finish_round, errors, ratios, core, R, plan.nfe(R), plan.sequential_rounds / R)
        else:
            cand = self._with_retired(init, plan, errors, ratios, survivors)
        self.seen[init] = cand
        return cand

    def _run(self, init: tuple[int, ...], stop: Any) -> Any:
        """CHORDS on the calibration; a faster core's retirement (its coarse start ran off) is scored
        here (error inf) and not warned about, run after run (a trial: 48 warnings in one search)."""
        cal = self.cal
        self.runs += 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*retired after a non-finite", category=RuntimeWarning)
            return chords(cal.model, cal.x, cal.grid, cal.solver, init=init, stop=stop, **cal.options)

    def _with_retired(self, init: tuple[int, ...], plan: Any, errors: tuple, ratios: tuple,
                      survivors: int) -> Candidate:
        """The candidate of a sequence whose cores from ``survivors`` up retire: their round re-evaluated
        without them shifts the slower cores' rounds, and fewer outputs arrive, so rounds and
        ``stop_n`` come from a whole run (a user trial: a search promised 48 rounds where the run took
        55, and ``StopAtCore(K - core)`` returned another core's output, 5.4x the sequential error)."""
        res = self._run(init, None)
        arrival = {h.core: (n + 1, h.round) for n, h in enumerate(res.hits)}
        finish = tuple(arrival[c][1] if c in arrival else plan.finish_round[c] for c in range(len(init)))
        ok = [c for c in range(survivors) if ratios[c] <= self.budget and c in arrival]
        core = min(ok, key=lambda c: (finish[c], -c))
        n, R = arrival[core]
        nfe = sum(len(r.evals) for r in res.trace[:R])
        return Candidate(init, finish, errors, ratios, core, R, nfe, plan.sequential_rounds / R, n,
                         len(init) - survivors)


def evaluate(cal: Calibration, init: Sequence[int], budget: float = 1.05) -> Candidate:
    """Measure one init sequence on a calibration problem (see the module docstring).

    Args:
        cal: the calibration problem.
        init: the init sequence.
        budget: the error budget (allowed error / sequential error), >= 1.

    Returns:
        The ``Candidate``.
    """
    return Evaluator(cal, check_budget(budget))(init)


def check_budget(budget: Any) -> float:
    """The error budget (allowed error / sequential error) as a float >= 1.

    Args:
        budget: the value to check.

    Returns:
        ``float(budget)``; ``ValueError`` naming the budget otherwise.
    """
    return check_float("budget (error relative to the sequential solver)", budget, 1.0)


def counted(n: int, what: str) -> str:
    """``n`` and ``what``, plural unless n is 1 (the tuner printed "1 sequences")."""
    return f"{n} {what}{'' if n == 1 else 's'}"
