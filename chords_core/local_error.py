"""Local error estimates of a fixed-grid solver from model values it has anyway.

For a solver of order p whose step i -> j combines a point and its quantity q (velocity or data
prediction) with the jump coefficient b on q, the local (one-step) error of the step j-1 -> j is
estimated from the p-th difference of the quantities at consecutive grid points,

    e_j = b_{j-1, j} Delta^p q_j / (p + 1)!,    Delta q_j = q_j - q_{j-1},

which for Euler is the Heun - Euler difference (h / 2) (q_j - q_{j-1}). The sum of the e_j over a
trajectory estimates the sequential solver's global error (errors propagated with a Jacobian near
the identity). Parallel methods use these to accept work "within the solver's own error": the
cascade sampler scores a point's change against e_j, and ``StopWhenConverged`` compares CHORDS'
consecutive outputs with the estimated global error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import _backend as B
from .solvers import Solver

__all__ = ["LocalError"]


class LocalError:
    """Local error estimates e_j for a solver bound to a grid (see the module docstring)."""

    def __init__(self, sol: Solver):
        self.sol = sol
        self.p = max(1, int(sol.accuracy))
        self.fact = float(math.factorial(self.p + 1))
        self._coef: dict[int, float] = {}  # j -> the step's coefficient b_{j-1, j} / (p + 1)!

    @property
    def needs(self) -> int:
        """How many consecutive quantities an estimate needs (q_j back to q_{j-p})."""
        return self.p + 1

    def coefficient(self, j: int) -> float:
        """b_{j-1, j} / (p + 1)!, the estimate's coefficient on the p-th difference (cached per j)."""
        c = self._coef.get(j)
        if c is None:
            c = self._coef[j] = self.sol.jump_coeffs(j - 1, j)[1] / self.fact
        return c

    def difference(self, back: Sequence[Any], out: Sequence[Any] | None = None) -> Any:
        """The p-th backward difference of ``back`` = [q_j, q_{j-1}, ..., q_{j-p}]; with ``out`` (p
        scratch arrays like the quantities) the differences are written there
        instead of into new arrays (``_backend.subtract_into``), the same values bit for bit."""
        d = list(back[: self.p + 1])
        for n in range(self.p, 0, -1):  # level by level, in place: d[k] still holds the level above's d[k + 1]
            for k in range(n):
                # the first level into the scratch arrays, the later ones over them
                d[k] = d[k] - d[k + 1] if out is None else B.subtract_into(d[k], d[k + 1], out[k])
        return d[0]

    def sq_at(self, j: int, back: Sequence[Any], out: Sequence[Any] | None = None, one: bool = False) -> Any:
        """|e_j|^2 per sample (``_backend.row_sq``), without forming e_j; ``out`` as for ``difference``.
        ``one``: the quantities are numpy arrays of one sample, whose value is returned as a numpy
        scalar (the same arithmetic as on the one-element array, at a tenth of the cost)."""
        coef = self.coefficient(j)
        diff = self.difference(back, out)
        return (B.row_sq_one(diff) if one else B.row_sq_read(diff)) * (coef * coef)

    def at(self, j: int, back: Sequence[Any]) -> Any:
        """e_j from ``back`` = [q_j, q_{j-1}, ..., q_{j-p}] (stage-0 quantities at consecutive indices)."""
        return self.difference(back) * self.coefficient(j)
