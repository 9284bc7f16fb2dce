"""Noise schedules: the Gaussian path x_t = alpha(t) x_0 + sigma(t) eps.

Every schedule maps a time ``t`` (float or float64 array) to ``alpha(t)`` and ``sigma(t)``,
their time derivatives, and the half log-SNR ``lambda(t) = log(alpha/sigma)``. Time runs from
noise (``t_noise``) to data (``t_data``, where sigma = 0); for every schedule here that is
*decreasing* t. All arithmetic is float64.

=====================  ==================  =========================  ==================
schedule               alpha(t)            sigma(t)                   t_noise -> t_data
=====================  ==================  =========================  ==================
``RectifiedFlow``      1 - t               t                          1 -> 0
``VP.linear``          exp(-B(t)/2)        sqrt(1 - alpha^2)          1 -> 0
``VP.cosine``          f(t)/f(0)           sqrt(1 - alpha^2)          0.9946 -> 0
``EDM``                1                   t   (t is sigma)           80 -> 0
=====================  ==================  =========================  ==================

with B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 and f(t) = cos(((t+s)/(1+s)) pi/2).
``t_min`` is where a grid of the schedule stops before its final step to sigma = 0
(``None``: the grid may run to ``t_data`` directly, which needs a finite spacing coordinate).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_float

__all__ = ["Schedule", "RectifiedFlow", "VP", "EDM"]


@dataclass(frozen=True)
class Schedule:
    """Base class of the Gaussian paths x_t = alpha(t) x_0 + sigma(t) eps.

    Subclasses implement ``alpha``, ``sigma``, ``d_alpha`` and ``d_sigma``; ``lam``, ``t_from_lam``
    and ``domain`` have generic versions. Every method takes a float or a float64 array of times
    (any shape) and returns a float64 array of that shape (0-d for a float).

    Attributes:
        t_noise: the noise end of the path (where grids start).
        t_data: the data end, where sigma = 0.
        t_min: where a grid stops before its final step to ``t_data`` (``None``: run to ``t_data``).
    """

    t_noise: float
    t_data: float
    t_min: float | None

    def alpha(self, t: Any) -> np.ndarray:
        """The signal scale alpha(t).

        Args:
            t: a time (float) or an array of times.

        Returns:
            alpha(t), float64, the shape of ``t``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define alpha, the signal scale alpha(t)")

    def sigma(self, t: Any) -> np.ndarray:
        """The noise scale sigma(t).

        Args:
            t: a time (float) or an array of times.

        Returns:
            sigma(t), float64, the shape of ``t``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define sigma, the noise scale sigma(t)")

    def d_alpha(self, t: Any) -> np.ndarray:
        """The time derivative d alpha / dt.

        Args:
            t: a time (float) or an array of times.

        Returns:
            alpha'(t), float64, the shape of ``t``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define d_alpha, d alpha / dt (Euler, Heun and "
                                  "the velocity parametrisations read it)")

    def d_sigma(self, t: Any) -> np.ndarray:
        """The time derivative d sigma / dt (may be infinite where sigma = 0, e.g. VP at t = 0).

        Args:
            t: a time (float) or an array of times.

        Returns:
            sigma'(t), float64, the shape of ``t``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define d_sigma, d sigma / dt (Euler, Heun and "
                                  "the velocity parametrisations read it)")

    def domain(self) -> tuple[float, float]:
        """The times where the schedule is defined (alpha, sigma >= 0).

        Returns:
            (lowest, highest) time: [0, 1] unless overridden.
        """
        return (0.0, 1.0)

    def _check_ends(self, t_noise_high: float) -> None:
        """Check and normalise (to floats) the fields every library schedule has: ``t_data`` 0 (where
        its sigma is 0), ``t_noise`` in (0, ``t_noise_high``], ``t_min`` ``None`` or in [0, t_noise)
        (a frozen dataclass's ``__post_init__``; a string, say, failed later naming no argument)."""
        t_data = check_float("t_data", self.t_data)
        if t_data != 0.0:
            raise ValueError(f"t_data must be 0 for {type(self).__name__} (its sigma is 0 there alone), got "
                             f"{self.t_data!r}")
        t_noise = check_float("t_noise", self.t_noise, 0.0, t_noise_high, low_open=True)
        t_min = None if self.t_min is None else check_float("t_min", self.t_min, 0.0)
        if t_min is not None and not t_min < t_noise:
            raise ValueError(f"t_min must lie below t_noise={t_noise:g}, got {self.t_min!r}")
        for name, v in (("t_data", t_data), ("t_noise", t_noise), ("t_min", t_min)):
            object.__setattr__(self, name, v)

    def outside(self, name: str, t: float) -> str:
        """What is wrong with the time ``t`` given as ``name``: "" inside ``domain()``, else a message
        naming it (the one wording of the grid's and ``time_grid``'s checks)."""
        lo, hi = self.domain()
        if lo <= t <= hi:
            return ""
        shown = f"{t:g}" if not lo <= float(f"{t:g}") <= hi else repr(float(t))  # (all digits where the short
        # form falls inside: 1.0000000000000002 printed as "1" read as if 1 were outside [0, 1])
        return f"{name}={shown} lies outside the schedule's time domain [{lo:g}, {hi:g}] ({type(self).__name__})"

    def lam(self, t: Any) -> np.ndarray:
        """The half log-SNR lambda(t) = log(alpha/sigma).

        Args:
            t: a time (float) or an array of times.

        Returns:
            lambda(t), float64, the shape of ``t``; +inf where sigma = 0, -inf where alpha = 0.
        """
        with np.errstate(divide="ignore"):
            return np.log(np.asarray(self.alpha(t), dtype=np.float64)) - np.log(
                np.asarray(self.sigma(t), dtype=np.float64)
            )

    def ve_sigma(self, t: Any) -> np.ndarray:
        """The variance-exploding noise level sigma/alpha = exp(-lambda) (diffusers' ``sigmas``).

        Args:
            t: a time (float) or an array of times.

        Returns:
            sigma(t) / alpha(t), float64, the shape of ``t``.
        """
        return np.asarray(self.sigma(t), dtype=np.float64) / np.asarray(self.alpha(t), dtype=np.float64)

    def t_from_lam(self, lam: Any) -> np.ndarray:
        """The inverse of ``lam``: the time with the given half log-SNR.

        Numerical bisection on [min(t_noise, t_data), max(t_noise, t_data)] unless overridden.

        Args:
            lam: a half log-SNR (float) or an array of them.

        Returns:
            The times, float64 (at least 1-D in the generic version).
        """
        lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
        lo = np.full_like(lam, min(self.t_noise, self.t_data))
        hi = np.full_like(lam, max(self.t_noise, self.t_data))
        # lambda grows from noise to data: with t too where t_noise < t_data (comparing lambda at t_noise and
        # at the midpoint alone said "decreasing" for every schedule, and such a schedule's times came back
        # at the wrong end: [1, 1, 3e-61] for [0.1, 0.3, 0.7])
        mid_t = self.t_noise * 0.5 + self.t_data * 0.5
        increasing_in_t = (float(self.lam(mid_t)) - float(self.lam(self.t_noise))) * (mid_t - self.t_noise) > 0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = self.lam(mid) > lam
            go_up = above if increasing_in_t else ~above
            lo, hi = np.where(go_up, lo, mid), np.where(go_up, mid, hi)
        return 0.5 * (lo + hi)


class ByIdentity:
    """A cache key's part for an object compared by identity (one that cannot be hashed, or whose
    equality does not tell what a cache depends on): the key holds the object, so its id is not
    reused while cached."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return type(other) is ByIdentity and other.obj is self.obj


def attributes(obj: Any) -> dict[str, Any]:
    """Every attribute an object holds: its ``__dict__`` and the slots set along its class's MRO (a
    ``@dataclass(slots=True)`` subclass keeps its fields in slots, beside an empty ``__dict__``
    inherited from its base; a ``__slots__`` given as one string is one slot)."""
    state = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                state[name] = getattr(obj, name)
    return state


def _attribute_key(v: Any) -> Any:
    """A schedule attribute as a part of its key: itself where it can be hashed, a numpy array by its
    dtype, shape and a SHA-256 of its bytes; ``TypeError`` otherwise."""
    if isinstance(v, np.ndarray) and v.dtype != object:
        a = np.ascontiguousarray(v)
        return "array", a.dtype.str, a.shape, hashlib.sha256(a.reshape(-1).view(np.uint8).data).digest()
    hash(v)
    return v


def schedule_key(schedule: Schedule) -> Any:
    """A hashable key that tells schedules apart by everything they hold: their type and every
    attribute (in ``__dict__`` or slots), a dataclass's fields and any set otherwise (a subclass's parameter set with
    ``object.__setattr__`` escapes the dataclass's equality: two such schedules compared equal and
    shared cached coefficients), a numpy array by its contents (keyed by identity, an array set anew
    on the same schedule ran chords_jax's program for the old one: 8.9 off, silently, a trial); by
    identity where an attribute cannot be hashed otherwise."""
    try:
        items = tuple(sorted((k, _attribute_key(v)) for k, v in attributes(schedule).items()))
    except TypeError:
        return type(schedule), ByIdentity(schedule)
    return type(schedule), items


def check_schedule(schedule: Any) -> Schedule:
    """``schedule`` if it is a ``Schedule`` instance; a ``TypeError`` naming the argument otherwise (the
    class itself, or None, failed later on an attribute, a trial)."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, type) and issubclass(schedule, Schedule):
        raise TypeError(f"schedule: pass an instance, e.g. {schedule.__name__}(), not the class {schedule.__name__}")
    raise TypeError(f"schedule must be a chords_core Schedule, got {type(schedule).__name__}")


@dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t, t from 1 (noise) to 0 (data).

    ``shift`` is not a property of the path but of the time grid; see ``time_grid(shift=...)``.
    """

    t_noise: float = 1.0
    t_data: float = 0.0
    t_min: float | None = None

    def __post_init__(self) -> None:
        self._check_ends(1.0)

    def alpha(self, t: Any) -> np.ndarray:
        """alpha(t) = 1 - t."""
        return 1.0 - np.asarray(t, dtype=np.float64)

    def sigma(self, t: Any) -> np.ndarray:
        """sigma(t) = t."""
        return np.asarray(t, dtype=np.float64) * 1.0

    def d_alpha(self, t: Any) -> np.ndarray:
        """alpha'(t) = -1."""
        return np.full_like(np.asarray(t, dtype=np.float64), -1.0)

    def d_sigma(self, t: Any) -> np.ndarray:
        """sigma'(t) = 1."""
        return np.full_like(np.asarray(t, dtype=np.float64), 1.0)

    def t_from_lam(self, lam: Any) -> np.ndarray:
        """t = 1 / (1 + e^lambda), in closed form."""
        return 1.0 / (1.0 + np.exp(np.asarray(lam, dtype=np.float64)))


@dataclass(frozen=True)
class VP(Schedule):
    """Variance preserving: alpha^2 + sigma^2 = 1.  Build with ``VP.linear()`` or ``VP.cosine()``."""

    t_noise: float = 1.0
    t_data: float = 0.0
    t_min: float | None = 1e-3
    kind: str = "linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    s: float = 0.008

    def __post_init__(self) -> None:
        # (a kind other than "linear" ran the cosine formula, a typo's "Linear" included: 1e15 from t = 1, a trial)
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"kind must be 'linear' or 'cosine' (VP.linear(), VP.cosine()), got {self.kind!r}")
        self._check_ends(1.0)
        if self.kind == "cosine" and not self.t_noise < 1.0:
            raise ValueError(f"t_noise must lie below 1 for the cosine schedule (alpha is 0 at t = 1), got "
                             f"{self.t_noise!r}")
        beta_min = check_float("beta_min", self.beta_min, 0.0)
        beta_max = check_float("beta_max", self.beta_max)
        if not beta_min < beta_max:
            raise ValueError(f"beta_min and beta_max must satisfy 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max), ("s", check_float("s", self.s, 0.0))):
            object.__setattr__(self, name, v)

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> VP:
        """Continuous-time DDPM schedule with beta(t) = beta_min + t (beta_max - beta_min).

        Args:
            beta_min: beta at t = 0, >= 0.
            beta_max: beta at t = 1, > ``beta_min``.
            t_min: where grids stop before the final step to t = 0.

        Returns:
            The ``VP`` schedule (t from 1 to 0).
        """
        return cls(kind="linear", beta_min=beta_min, beta_max=beta_max, t_min=t_min)

    @classmethod
    def cosine(cls, s: float = 0.008, t_max: float = 0.9946, t_min: float = 1e-3) -> VP:
        """Nichol & Dhariwal cosine schedule, alpha(t) = f(t)/f(0), f(t) = cos(((t + s)/(1 + s)) pi/2).

        Args:
            s: the offset s, >= 0 (a negative one makes alpha rise above 1 before it falls).
            t_max: the noise end, in (0, 1); below 1 keeps lambda finite (DPM-Solver uses 0.9946).
            t_min: where grids stop before the final step to t = 0.

        Returns:
            The ``VP`` schedule (t from ``t_max`` to 0).
        """
        if not 0 < check_float("t_max", t_max) < 1:
            raise ValueError(f"t_max must lie in (0, 1) for the cosine schedule, got {t_max}")
        return cls(kind="cosine", s=s, t_noise=t_max, t_min=t_min)

    def _log_alpha(self, t: Any) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "linear":
            return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)
        s = self.s
        return np.log(np.cos((t + s) / (1 + s) * math.pi / 2)) - math.log(math.cos(s / (1 + s) * math.pi / 2))

    def _d_log_alpha(self, t: Any) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "linear":
            return -0.5 * (self.beta_min + (self.beta_max - self.beta_min) * t)
        s = self.s
        return -np.tan((t + s) / (1 + s) * math.pi / 2) * math.pi / (2 * (1 + s))

    def alpha(self, t: Any) -> np.ndarray:
        """alpha(t) = exp(log alpha(t)) (see the module docstring for linear and cosine)."""
        return np.exp(self._log_alpha(t))

    def sigma(self, t: Any) -> np.ndarray:
        """sigma(t) = sqrt(1 - alpha(t)^2)."""
        return np.sqrt(-np.expm1(2.0 * self._log_alpha(t)))

    def d_alpha(self, t: Any) -> np.ndarray:
        """alpha'(t) = alpha(t) (log alpha)'(t)."""
        return self.alpha(t) * self._d_log_alpha(t)

    def d_sigma(self, t: Any) -> np.ndarray:
        """sigma'(t) = -alpha^2 (log alpha)' / sigma; infinite at sigma = 0."""
        a = self.alpha(t)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -a * a * self._d_log_alpha(t) / self.sigma(t)

    def lam(self, t: Any) -> np.ndarray:
        """lambda(t) = log alpha - log(1 - alpha^2) / 2, accurate near both ends."""
        la = self._log_alpha(t)
        with np.errstate(divide="ignore"):
            return la - 0.5 * np.log(-np.expm1(2.0 * la))


@dataclass(frozen=True)
class EDM(Schedule):
    """Karras et al. (EDM) / variance exploding: alpha = 1, sigma = t. Time *is* the noise level.

    EDM's preconditioning (``sigma_data``, c_skip, c_out, c_in, c_noise) belongs to the network: give
    its denoiser D(x; sigma) with ``prediction="x0"`` (a field ``sigma_data`` that nothing read was
    removed: setting it changed nothing).
    """

    t_noise: float = 80.0
    t_data: float = 0.0
    t_min: float | None = 0.002

    def __post_init__(self) -> None:
        self._check_ends(math.inf)

    def alpha(self, t: Any) -> np.ndarray:
        """alpha(t) = 1."""
        return np.ones_like(np.asarray(t, dtype=np.float64))

    def sigma(self, t: Any) -> np.ndarray:
        """sigma(t) = t."""
        return np.asarray(t, dtype=np.float64) * 1.0

    def d_alpha(self, t: Any) -> np.ndarray:
        """alpha'(t) = 0."""
        return np.zeros_like(np.asarray(t, dtype=np.float64))

    def d_sigma(self, t: Any) -> np.ndarray:
        """sigma'(t) = 1."""
        return np.ones_like(np.asarray(t, dtype=np.float64))

    def domain(self) -> tuple[float, float]:
        """Any noise level sigma = t >= 0."""
        return (0.0, math.inf)

    def t_from_lam(self, lam: Any) -> np.ndarray:
        """t = sigma = e^-lambda."""
        return np.exp(-np.asarray(lam, dtype=np.float64))
