"""The solver interface: small objects bound to (model, grid), stepping between grid indices.

A solver never holds per-trajectory state. A trajectory's state is a ``State``:

- ``x``: the point whose model output is needed next (at the current grid index i);
- ``hist``: earlier model quantities of the same trajectory, ``((index, q), ...)`` newest first;
- ``aux``: solver specific data carried between steps (UniPC's pending corrector).

Stepping i -> j takes ``evals(i, j)`` model evaluations. Stage 0 is at (state.x, t_i); further
stages are at the points ``stage_point`` gives. ``step`` combines the stage quantities ``qs`` into
the state at j. ``jump_coeffs(i, j)`` = (a, b) define the zero-cost first-order jump
G(x, q; i -> j) = a x + b q from one point and its quantity; it is the coarse propagator of
CHORDS and is exact at a final step to sigma = 0.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._backend import lincomb
from ..checks import LIBRARY_PACKAGES
from ..models import DiffusionModel, Model
from . import contract

Array = Any


class State:
    """A trajectory's state at a grid index: ``x``, ``hist`` and ``aux`` (see the module docstring).

    Moving a trajectory to another point (a rectification) is ``history.move``.

    Args:
        x: the point whose model output is needed next, an array of the state's shape S
            ((B, ...) for a ``DiffusionModel``).
        hist: earlier quantities of the trajectory, ``((grid index, q), ...)`` newest first, each q
            of shape S; at most ``Solver.history_size`` entries.
        aux: solver-specific data carried to the next step (``None`` for most solvers).
    """

    __slots__ = ("x", "hist", "aux")

    def __init__(self, x: Array, hist: tuple = (), aux: Any = None) -> None:
        self.x, self.hist, self.aux = x, hist, aux


class Solver:
    """Base class of the fixed-grid solvers, bound to a model and a time grid.

    A solver holds no per-trajectory state (that is a ``State``); it maps states between grid
    indices. Subclasses implement ``step`` and ``jump_coeffs``, and ``evals`` / ``stage_point`` for
    several stages per step, ``begin`` for a non-trivial initial state.

    Class attributes:
        name: the solver's name in messages. Subclasses set it as a class attribute, or on the
            instance *before* calling ``super().__init__``, since ``__init__`` uses it in its errors.
        quantity: what the solver consumes: ``"velocity"`` (the ODE's right-hand side) or
            ``"data"`` (the data prediction).
        history_size: how many earlier quantities a step may use (``State.hist``; 0 for one-step
            solvers).

    Args:
        model: the ``Model`` whose outputs the solver consumes.
        times: (T + 1,) grid times, noise -> data for a diffusion model.

    Raises ``ValueError`` if the model's output cannot be converted to ``quantity`` at a grid time
    that is evaluated (all but the last).
    """

    name = "solver"
    quantity = "velocity"
    history_size = 0  # how many earlier quantities a step may use (multistep solvers: > 0)
    order = 1  # convergence order with the default options (subclasses override)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A solver written outside the library's packages has its own ``step``, ``begin`` and
        ``jump_coeffs`` checked at each call (``contract``: an extension trial's step returned the new
        point itself, and every method failed with "'numpy.ndarray' object has no attribute 'x'",
        naming no solver; another's wrote into its input)."""
        super().__init_subclass__(**kwargs)
        if cls.__module__.split(".")[0] in LIBRARY_PACKAGES:
            return
        own = cls.__dict__
        if "step" in own:
            cls.step = functools.wraps(own["step"])(contract.checked_step(own["step"], State))  # type: ignore[method-assign]
        if "begin" in own:
            cls.begin = functools.wraps(own["begin"])(contract.checked_begin(own["begin"], State))  # type: ignore[method-assign]
        if "jump_coeffs" in own:
            cls.jump_coeffs = functools.wraps(own["jump_coeffs"])(  # type: ignore[method-assign]
                contract.checked_jump_coeffs(own["jump_coeffs"]))

    def __init__(self, model: Model, times: np.ndarray) -> None:
        self.model = model
        self.times = np.asarray(times, dtype=np.float64)
        self.t = [float(v) for v in self.times]
        self.steps = len(self.t) - 1
        self._coef = model.coefficients(self.times, self.quantity)
        self._jumps: dict = {}
        self._data_table: list | None = None  # the model's data_eps_table on the grid, made on first use
        if self._coef is not None and not np.isfinite(self._coef[:-1]).all():  # the final time is never evaluated
            for i, (a, b) in enumerate(self._coef[:-1]):
                if not (math.isfinite(a) and math.isfinite(b)):
                    raise ValueError(
                        f"grid[{i}]={self.t[i]:g}: the model's output cannot be converted to the {self.quantity} "
                        f"{self.name!r} needs there (e.g. an eps prediction where alpha is 0, or within rounding of "
                        f"0); start the grid inside the schedule (time_grid stops short of pure noise) or use another "
                        f"prediction")

    # -- model outputs -> solver quantity -------------------------------------------------------
    @property
    def converts(self) -> bool:
        """False when the raw model output already is the solver's quantity (no conversion needed)."""
        return self._coef is not None

    def quantity_of(self, x: Array, out: Array, index: int) -> Array:
        """The solver's quantity at grid index ``index`` from a raw model output there.

        Args:
            x: the evaluated point, shape S.
            out: the raw model output at (x, t_index), shape S.
            index: the grid index of the evaluation time.

        Returns:
            q = a x + b out (shape S), with the model's conversion coefficients at ``index``;
            ``out`` itself when the output already is the quantity (``converts`` is False).
        """
        if self._coef is None:
            return out
        a, b = self._coef[index]
        return lincomb((a, b), (x, out))

    # -- stepping ------------------------------------------------------------------------------
    def begin(self, x: Array) -> State:
        """The state of a trajectory starting at ``x``.

        Args:
            x: the initial point at grid index 0 (or a core's start index), shape S.

        Returns:
            ``State(x)`` with an empty history.
        """
        return State(x)

    def evals(self, i: int, j: int) -> int:
        """The number of model evaluations (stages) the step i -> j takes.

        Args:
            i: the start grid index.
            j: the end grid index.

        Returns:
            The stage count, >= 1 (1 unless overridden).
        """
        return 1

    def evals_per_step(self) -> list[int]:
        """Model evaluations of each grid step i -> i + 1 (their sum: the sequential solve's rounds)."""
        return [self.evals(i, i + 1) for i in range(len(self.times) - 1)]

    def stage_point(self, state: State, qs: Sequence[Array], i: int, j: int, k: int) -> tuple[Array, int]:
        """Where stage ``k`` >= 1 of the step i -> j evaluates the model.

        Args:
            state: the trajectory's state at ``i``.
            qs: the quantities of stages 0 .. k-1 (shape S each).
            i: the start grid index.
            j: the end grid index.
            k: the stage, 1 <= k < ``evals(i, j)``.

        Returns:
            (point of shape S, grid index of its time). One-stage solvers raise
            ``NotImplementedError``.
        """
        raise NotImplementedError(f"{self.name} has a single stage")

    def staged(self, state: State, qs: Sequence[Array], i: int, j: int, k: int) -> tuple[Array, int]:
        """``stage_point``, its grid index checked: an integer from 0 to ``steps`` (``ValueError``
        naming the solver otherwise: a user trial's solver returned i - 1 at step 0, and every method
        but CHORDS evaluated that stage at the grid's last time, t[-1], silently; i + 0.5 or j + 5
        failed as an indexing error). What every method's stage points go through."""
        got = self.stage_point(state, qs, i, j, k)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise ValueError(f"solver: {self.name!r}.stage_point returned a {type(got).__name__} for stage {k} of the "
                             f"step {i} -> {j}, not (point, grid index)")
        x, at = got
        try:
            index = operator.index(at)
            if isinstance(at, (bool, np.bool_)):
                raise TypeError
        except TypeError:
            raise ValueError(f"solver: {self.name!r}.stage_point returned grid index {at!r} for stage {k} of the step "
                             f"{i} -> {j}; a grid index is an integer") from None
        if not 0 <= index <= self.steps:
            raise ValueError(f"solver: {self.name!r} evaluates stage {k} of the step {i} -> {j} at grid index {index}, "
                             f"outside the grid (0 .. {self.steps})")
        if index == self.steps and self._coef is not None and not np.isfinite(self._coef[index]).all():
            # (``__init__`` checks the times before the last, which a step starts from; a user trial's two-stage
            # solver evaluated its last step's second stage at sigma = 0, where a v prediction has no velocity:
            # every method returned nan, silently)
            raise ValueError(f"solver: {self.name!r} evaluates stage {k} of the step {i} -> {j} at the grid's final "
                             f"time (grid[{index}]={self.t[index]:g}), where the model's output cannot be converted "
                             f"to the {self.quantity} it needs; end such a step with one evaluation, as 'heun' does "
                             "(Solver.evals)")
        return x, index

    def step(self, state: State, qs: Sequence[Array], i: int, j: int) -> State:
        """Complete the step i -> j from the stage quantities.

        Args:
            state: the trajectory's state at ``i`` (``state.x`` is stage 0's point).
            qs: the solver quantities of the ``evals(i, j)`` stages, in stage order (shape S each).
            i: the start grid index.
            j: the end grid index.

        Returns:
            The new ``State`` at ``j``; ``state`` is not modified.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define step (a Solver subclass must)")

    #: the ``step`` that ``_step_out`` computes (set by a class that implements ``_step_out`` for its
    #: own ``step``); a subclass with another ``step`` is not bypassed
    _step_out_of: Any = None

    def _step_into(self, state: State, qs: Sequence[Array], i: int, j: int, out: Array) -> State:
        """``step``, with the new point written into ``out`` where the solver can (the engine's round
        buffer: the points of the next batched call, no copy). The result is ``step``'s bit for bit;
        its point is ``out`` or, where the solver cannot write there, a new array.

        Internal: a solver class writes into ``out`` with ``_step_out`` (through
        ``_backend.lincomb_into``) where its ``step`` is the one ``_step_out`` computes
        (``_step_out_of``); otherwise, a subclass's own ``step`` included, this calls ``step``.
        """
        if type(self).step is not type(self)._step_out_of:
            return self.step(state, qs, i, j)
        return self._step_out(state, qs, i, j, out)

    def _step_out(self, state: State, qs: Sequence[Array], i: int, j: int, out: Array | None) -> State:
        """``step``'s result with its point written into ``out`` (a new array where ``out`` is ``None``
        or does not fit); see ``_step_into``."""
        raise NotImplementedError(f"{type(self).__name__} does not define _step_out (its step into a given array)")

    def jump_coeffs(self, i: int, j: int) -> tuple[float, float]:
        """Coefficients (a, b) of the zero-cost first-order jump G(x, q; i -> j) = a x + b q.

        Args:
            i: the start grid index (where q was evaluated at x).
            j: the end grid index, any index after ``i``.

        Returns:
            (a, b) as Python floats; exact for a final step to sigma = 0 (it returns the data
            prediction).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define jump_coeffs, the coarse jump every parallel "
                                  "method takes (solve alone needs none)")

    @property
    def accuracy(self) -> int:
        """Order of accuracy of a step, for local-error estimates: ``order`` unless a solver says otherwise."""
        return self.order

    def data_coeffs(self, i: int) -> tuple[float, float] | None:
        """Coefficients of the data prediction from a point and its quantity at grid index ``i``.

        Args:
            i: the grid index.

        Returns:
            (c_x, c_q) with D(x, t_i) = c_x x + c_q q; ``None`` for a model without a data
            prediction (a ``VectorField``).
        """
        if not isinstance(self.model, DiffusionModel):
            return None
        key = ("data", i)
        c = self._jumps.get(key)
        if c is None:
            if self._data_table is None:  # the whole grid's at once (DiffusionModel.data_eps_table: one cache key)
                self._data_table = self.model.data_eps_table(self.t)
            (a_d, b_d), _ = self._data_table[i]
            a_q, b_q = (0.0, 1.0) if self._coef is None else self._coef[i]  # q = a_q x + b_q out
            c = self._jumps[key] = (a_d - b_d * a_q / b_q, b_d / b_q)
        return c

    def history_gains(self) -> np.ndarray | None:
        """How much more a multistep solver's steps weigh each point's quantity than a first-order step.

        rho_p = the largest |coefficient of q_p in x_k| / |b of the jump p -> k| (``jump_coeffs``) over
        the states x_{p+1} .. x_{p+H+1} its steps make (H = ``history_size``): the error a point's
        quantity carries (the model at a point still off by a little) is injected into the trajectory
        times about rho_p. A few at most where neighbouring steps are alike (8.1 for DPM-Solver++(2M)
        and UniPC over the standard grids, 115 for (3M) on a uniform EDM grid:
        ``benchmarks/short_steps.py --standard``); where a step is much shorter than the next one,
        about their ratio (the extrapolation divides a difference of two quantities by it:
        DPM-Solver++(2M) 1,713 at a step of 1e-5 between steps of 0.03). One pass over the grid with
        every point's unit quantity side by side (float64 vectors of T).

        Returns:
            (T,) rho_p (a ratio that is nan, or a jump's b of 0, counts as 1); ``None`` for a solver
            without history or with several stages (no gain to weigh).
        """
        H, T = self.history_size, self.steps
        if not H or T < 1 or max(self.evals_per_step()) > 1:
            return None
        st = self.begin(np.zeros(T))
        gain = np.zeros(T)
        for k in range(T):
            q = np.zeros(T)
            q[k] = 1.0
            st = self.step(st, [q], k, k + 1)
            for p in range(max(0, k - H), k + 1):  # the points whose quantity a step has used by now
                b = self.jump_coeffs(p, k + 1)[1]
                r = abs(float(st.x[p]) / b) if b != 0.0 else 1.0
                gain[p] = max(gain[p], r if r == r else 1.0)
        return gain

    def jump(self, x: Array, q: Array, i: int, j: int) -> Array:
        """The coarse first-order jump G(x, q; i -> j), CHORDS' coarse propagator.

        Args:
            x: the point at grid index ``i``, shape S.
            q: the solver quantity at (x, t_i), shape S.
            i: the start grid index.
            j: the end grid index.

        Returns:
            a x + b q (shape S) with (a, b) = ``jump_coeffs(i, j)``.
        """
        return lincomb(self.jump_coeffs(i, j), (x, q))

    def _push(self, state: State, i: int, q: Array) -> tuple:
        return (((i, q),) + state.hist)[: self.history_size]


class DataSolver(Solver):
    """Base for exponential integrators in the data prediction (DPM-Solver++, UniPC, DDIM).

    Adds the schedule's ``alpha``, ``sigma`` and ``lam`` (half log-SNR) at the grid times as lists
    of floats, and the exponential first-order jump.

    Args:
        model: a ``DiffusionModel`` (``ValueError`` otherwise).
        times: (T + 1,) grid times, noise -> data.
    """

    quantity = "data"

    def __init__(self, model: Model, times: np.ndarray) -> None:
        if not isinstance(model, DiffusionModel):  # (make_solver names the registered ones a VectorField takes)
            raise ValueError(f"solver {self.name!r} needs a DiffusionModel; a VectorField takes a solver of the "
                             "velocity (chords_core.solvers.velocity_solvers())")
        super().__init__(model, times)
        sch = model.schedule
        self.alpha = [float(v) for v in sch.alpha(self.times)]
        self.sigma = [float(v) for v in sch.sigma(self.times)]
        self.lam = [float(v) for v in sch.lam(self.times)]

    def jump_coeffs(self, i: int, j: int) -> tuple[float, float]:
        """(a, b) of the DDIM / DPM-Solver++(1) step i -> j: x_j = (sigma_j/sigma_i) x - alpha_j expm1(-h) D.

        Args:
            i: the start grid index.
            j: the end grid index; h = lambda_j - lambda_i.

        Returns:
            (a, b); (0, alpha_j) for a step to sigma = 0 (the data prediction).
        """
        c = self._jumps.get((i, j))
        if c is None:
            if self.sigma[j] == 0.0:
                c = (0.0, self.alpha[j])  # first order to sigma = 0 returns the data prediction
            else:
                h = self.lam[j] - self.lam[i]
                c = (self.sigma[j] / self.sigma[i], -self.alpha[j] * float(np.expm1(-h)))
            self._jumps[(i, j)] = c
        return c

    def order_at(self, state: State, i: int, j: int, order: int, lower_order_final: bool) -> int:
        """The order a multistep method uses for the step i -> j.

        Args:
            state: the trajectory's state at ``i``; its history bounds the order (warm-up: points at
                lambda = -inf carry no slope information and do not count).
            i: the start grid index.
            j: the end grid index.
            order: the method's nominal order.
            lower_order_final: cap the order by the steps left (``T - i``).

        Returns:
            min(order, usable history + 1, steps left if ``lower_order_final``); 1 on a final step
            to sigma = 0.
        """
        usable = 0  # earlier points at lambda = -inf (alpha = 0, pure noise) carry no slope information
        for k, _ in state.hist:
            if self.lam[k] == -math.inf:
                break
            usable += 1
        p = min(order, usable + 1)
        if self.sigma[j] == 0.0:
            return 1
        if lower_order_final:
            p = min(p, max(1, self.steps - i))
        return p
