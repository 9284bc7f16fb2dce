"""Test problems with exact answers: analytic diffusion targets and a linear ODE.

``GaussianMixture`` -- data x0 ~ sum_i w_i N(mu_i, diag(s_i^2)) pushed along a schedule's
Gaussian path x_t = alpha(t) x0 + sigma(t) eps. Everything below is exact (float64):

* ``posterior``: the conditional means E[x0 | x_t = x] and E[eps | x_t = x], i.e. the ideal
  denoiser that a perfectly trained network would output;
* ``prediction_fn`` / ``model``: that ideal denoiser as an eps-, x0-, v- or flow-prediction;
* ``velocity``: the probability-flow ODE dx/dt, regular at sigma = 0 and at alpha = 0;
* ``score`` and ``marginal_log_density``: grad log p_t and log p_t of the noised marginal;
* ``sample`` and ``log_density``: samples from, and the log-density of, the data distribution;
* ``exact_trajectory`` (one component only): the closed-form PF-ODE solution
  x_t = alpha_t mu + sqrt(alpha_t^2 s^2 + sigma_t^2) z with z constant along the path;
* ``reference_solve``: a tight DOP853 solution of the PF ODE (for more than one component, where
  no closed form exists).

``LinearODE`` -- dy/dt = A y with the exact flow y(t1) = expm(A (t1 - t0)) y(t0), its vector
field and its Lipschitz constant ||A||_2.

Shapes: ``N`` samples, ``D`` dimensions, ``K`` mixture components. Times ``t`` are a float or
an (N,) array with one time per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.special import logsumexp

from chords_core.schedules import VP, Schedule

if TYPE_CHECKING:
    from chords_core.models import DiffusionModel, VectorField

__all__ = ["GaussianMixture", "LinearODE", "PREDICTIONS"]

PREDICTIONS = ("eps", "x0", "v", "flow")

Array = np.ndarray


def _as_float_array(value: Any, name: str, ndim: int) -> Array:
    """``value`` as a finite float64 array with ``ndim`` dimensions, else a ValueError naming it."""
    arr = np.array(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _half_d_sigma2(schedule: Schedule, t: Any) -> Array:
    """sigma(t) * d sigma/dt = (1/2) d(sigma^2)/dt, finite even where sigma = 0.

    For VP schedules d sigma/dt is infinite at sigma = 0, so use sigma^2 = 1 - alpha^2 instead.
    """
    if isinstance(schedule, VP):
        return -np.asarray(schedule.alpha(t), dtype=np.float64) * schedule.d_alpha(t)
    return np.asarray(schedule.sigma(t), dtype=np.float64) * schedule.d_sigma(t)


class GaussianMixture:
    """Diagonal Gaussian mixture p0(x) = sum_i w_i N(x; mu_i, diag(s_i^2)) as diffusion data.

    Args:
        weights: (K,) positive mixture weights; they are normalised to sum to 1.
        means: (K, D) component means mu_i.
        variances: (K, D) positive per-dimension component variances s_i^2.

    Under a schedule, component i of the noised marginal p_t is N(alpha_t mu_i, diag(c_i)) with
    c_i = alpha_t^2 s_i^2 + sigma_t^2, which is what makes every quantity here exact.
    """

    def __init__(self, weights: Any, means: Any, variances: Any) -> None:
        w = _as_float_array(weights, "weights", 1)
        mu = _as_float_array(means, "means", 2)
        s2 = _as_float_array(variances, "variances", 2)
        if w.size == 0 or np.any(w <= 0):
            raise ValueError("weights must be a non-empty array of positive numbers")
        if mu.shape[0] != w.shape[0] or mu.shape[1] == 0:
            raise ValueError(f"means must have shape (K, D) = ({w.shape[0]}, D>=1), got {mu.shape}")
        if s2.shape != mu.shape:
            raise ValueError(f"variances must have the shape of means {mu.shape}, got {s2.shape}")
        if np.any(s2 <= 0):
            raise ValueError("variances must be positive")
        self.weights = w / w.sum()
        self.means = mu
        self.variances = s2
        for arr in (self.weights, self.means, self.variances):
            arr.flags.writeable = False

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(cls, dim: int, modes: int, seed: int = 0, spread: float = 2.0, scale: float = 0.5) -> GaussianMixture:
        """A random mixture whose modes are separated but overlap a little, in any dimension.

        Means are mu_i = spread * g_i / sqrt(dim) with g_i ~ N(0, I), so |mu_i| ~ spread and two
        modes lie about spread * sqrt(2) apart whatever ``dim`` is; per-dimension standard
        deviations are scale * U(0.7, 1.3); weights are U(0.5, 1.5), normalised. With the defaults
        modes are about 5.7 standard deviations apart.

        Args:
            dim: D, >= 1.
            modes: K, >= 1.
            seed: the random seed.
            spread: the typical distance |mu_i| of a mode from the origin, >= 0.
            scale: the typical per-dimension standard deviation, > 0.

        Returns:
            The mixture.
        """
        if dim < 1 or modes < 1:
            raise ValueError(f"dim and modes must be >= 1, got dim={dim}, modes={modes}")
        if spread < 0 or scale <= 0:
            raise ValueError(f"spread must be >= 0 and scale > 0, got spread={spread}, scale={scale}")
        rng = np.random.default_rng(seed)
        means = spread * rng.standard_normal((modes, dim)) / np.sqrt(dim)
        stds = scale * rng.uniform(0.7, 1.3, size=(modes, dim))
        weights = rng.uniform(0.5, 1.5, size=modes)
        return cls(weights, means, stds**2)

    @classmethod
    def single(cls, mean: Any, variance: Any) -> GaussianMixture:
        """One Gaussian N(mean, diag(variance)) as a one-component mixture.

        Args:
            mean: (D,) mean.
            variance: a positive float or (D,) positive variances.

        Returns:
            The mixture (K = 1).
        """
        mu = _as_float_array(mean, "mean", 1)
        s2 = np.array(variance, dtype=np.float64)
        if s2.ndim > 1 or (s2.ndim == 1 and s2.shape != mu.shape):
            raise ValueError(f"variance must be a float or have the shape of mean {mu.shape}, got {s2.shape}")
        s2 = np.broadcast_to(s2, mu.shape)
        if not np.all(np.isfinite(s2)) or np.any(s2 <= 0):
            raise ValueError("variance must be positive and finite")
        return cls([1.0], mu[None], s2[None])

    # ------------------------------------------------------------------ basic properties
    @property
    def dim(self) -> int:
        """D, the data dimension."""
        return self.means.shape[1]

    @property
    def n_modes(self) -> int:
        """K, the number of components."""
        return self.means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(dim={self.dim}, n_modes={self.n_modes})"

    # ------------------------------------------------------------------ posterior
    def _check_x(self, x: Any, name: str = "x") -> Array:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (N, {self.dim}) for this {self.dim}-D mixture, got {x.shape} (a "
                             "parallel method's call stacks its round's points along axis 0: the state's shape is "
                             "(N / points, ...))")
        return x

    def _check_t(self, t: Any, n: int) -> Array:
        t = np.asarray(t, dtype=np.float64)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != n):
            raise ValueError(f"t must be a float or have shape ({n},), got {t.shape}")
        return t

    def _components(self, x: Array, alpha: Array, sigma: Array) -> tuple[Array, Array, Array, Array, Array]:
        """Responsibilities and per-component terms at noise level (alpha, sigma).

        ``alpha`` and ``sigma`` are () or (N,). Returns log_joint (N, K) = log w_i + log N_i(x),
        gamma (N, K, 1), r = x - alpha mu_i (N, K, D), c (., K, D) and alpha as (., 1, 1).
        """
        a = alpha[..., None, None]
        s = sigma[..., None, None]
        c = a * a * self.variances + s * s
        r = x[:, None, :] - a * self.means
        log_joint = np.log(self.weights) - 0.5 * np.sum(r * r / c + np.log(2 * np.pi * c), axis=-1)
        gamma = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))[..., None]
        return log_joint, gamma, r, c, a

    def _posterior_terms(self, x: Any, t: Any, schedule: Schedule) -> tuple[Array, Array, Array]:
        """(x0_hat, u, sigma) with u = sum_i gamma_i (x - alpha mu_i) / c_i = -grad log p_t(x)."""
        x = self._check_x(x)
        t = self._check_t(t, x.shape[0])
        alpha = np.asarray(schedule.alpha(t), dtype=np.float64)
        sigma = np.asarray(schedule.sigma(t), dtype=np.float64)
        _, gamma, r, c, a = self._components(x, alpha, sigma)
        x0_hat = np.sum(gamma * (self.means + a * self.variances / c * r), axis=1)
        u = np.sum(gamma * r / c, axis=1)
        return x0_hat, u, sigma

    def posterior(self, x: Any, t: Any, schedule: Schedule) -> tuple[Array, Array]:
        """Exact posterior means (E[x0 | x_t = x], E[eps | x_t = x]), each (N, D).

        With responsibilities gamma_i(x) proportional to w_i N(x; alpha mu_i, diag(c_i)):

            E[x0 | x]  = sum_i gamma_i (mu_i + alpha s_i^2 / c_i * (x - alpha mu_i))
            E[eps | x] = sum_i gamma_i sigma (x - alpha mu_i) / c_i  = -sigma grad log p_t(x)

        Both are regular at sigma = 0 (where E[eps | x] = 0 and E[x0 | x] = x) and at alpha = 0
        (where E[x0 | x] is the data mean), since c_i > 0 there.

        Args:
            x: (N, D) points x_t.
            t: a float or (N,) times.
            schedule: gives alpha(t) and sigma(t).

        Returns:
            (E[x0 | x], E[eps | x]), each (N, D) float64.
        """
        x0_hat, u, sigma = self._posterior_terms(x, t, schedule)
        return x0_hat, sigma[..., None] * u

    def score(self, x: Any, t: Any, schedule: Schedule) -> Array:
        """The score grad_x log p_t(x) = -sum_i gamma_i (x - alpha mu_i) / c_i.

        Args:
            x: (N, D) points x_t.
            t: a float or (N,) times.
            schedule: gives alpha(t) and sigma(t).

        Returns:
            (N, D) float64.
        """
        return -self._posterior_terms(x, t, schedule)[1]

    def prediction_fn(self, schedule: Schedule, prediction: str) -> Callable[[Array, Array], Array]:
        """The exact network output as a batched ``fn(x, t)``: x (N, D), t (N,) or float -> (N, D).

        ``prediction`` is one of "eps" (E[eps|x]), "x0" (E[x0|x]), "v" (alpha E[eps|x] - sigma E[x0|x])
        or "flow" (E[eps|x] - E[x0|x], the PF-ODE velocity only for RectifiedFlow).

        Args:
            schedule: the noise schedule.
            prediction: one of ``PREDICTIONS``.

        Returns:
            ``fn(x, t)`` on numpy arrays.
        """
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        return _MixturePrediction(self, schedule, prediction)

    def model(self, schedule: Schedule, prediction: str = "x0") -> DiffusionModel:
        """The ideal denoiser as a ``chords_core.models.DiffusionModel``.

        Args:
            schedule: the noise schedule.
            prediction: one of ``PREDICTIONS``.

        Returns:
            The model, its function ``prediction_fn(schedule, prediction)``.
        """
        from chords_core.models import DiffusionModel

        return DiffusionModel(self.prediction_fn(schedule, prediction), schedule, prediction)

    def velocity(self, x: Any, t: Any, schedule: Schedule) -> Array:
        """Probability-flow ODE dx/dt = alpha'(t) E[x0|x] + sigma'(t) E[eps|x], shape (N, D).

        Computed as alpha' E[x0|x] + (sigma sigma') u with u = E[eps|x] / sigma, which stays
        finite at sigma = 0 even where sigma' is infinite (VP schedules at t = 0).

        Args:
            x: (N, D) points x_t.
            t: a float or (N,) times.
            schedule: gives alpha, sigma and their derivatives.

        Returns:
            (N, D) float64.
        """
        x0_hat, u, _ = self._posterior_terms(x, t, schedule)
        d_alpha = np.asarray(schedule.d_alpha(t), dtype=np.float64)[..., None]
        return d_alpha * x0_hat + _half_d_sigma2(schedule, t)[..., None] * u

    # ------------------------------------------------------------------ densities and samples
    def marginal_log_density(self, x: Any, t: Any, schedule: Schedule) -> Array:
        """log p_t(x) of the noised marginal.

        Args:
            x: (N, D) points x_t.
            t: a float or (N,) times.
            schedule: gives alpha(t) and sigma(t).

        Returns:
            (N,) float64.
        """
        x = self._check_x(x)
        t = self._check_t(t, x.shape[0])
        alpha = np.asarray(schedule.alpha(t), dtype=np.float64)
        sigma = np.asarray(schedule.sigma(t), dtype=np.float64)
        return logsumexp(self._components(x, alpha, sigma)[0], axis=1)

    def log_density(self, x: Any) -> Array:
        """log p0(x) of the data distribution.

        Args:
            x: (N, D) points.

        Returns:
            (N,) float64.
        """
        x = self._check_x(x)
        return logsumexp(self._components(x, np.float64(1.0), np.float64(0.0))[0], axis=1)

    def sample(self, n: int, seed: int | None = 0) -> Array:
        """Samples from the data distribution.

        Args:
            n: how many.
            seed: the random seed (``None``: fresh entropy).

        Returns:
            (n, D) float64.
        """
        rng = np.random.default_rng(seed)
        k = rng.choice(self.n_modes, size=n, p=self.weights)
        return self.means[k] + np.sqrt(self.variances[k]) * rng.standard_normal((n, self.dim))

    # ------------------------------------------------------------------ trajectories
    def reference_solve(
        self, x_T: Any, t_start: float, t_end: float, schedule: Schedule, rtol: float = 1e-10, atol: float = 1e-10
    ) -> Array:
        """The PF-ODE solution at ``t_end`` from x(t_start) = x_T: DOP853 on all samples jointly.

        Args:
            x_T: (N, D) initial points.
            t_start: the initial time.
            t_end: the final time.
            schedule: the noise schedule.
            rtol: DOP853's relative tolerance.
            atol: DOP853's absolute tolerance.

        Returns:
            (N, D) float64. Raises ``RuntimeError`` if the integrator fails.
        """
        x_T = self._check_x(x_T, "x_T")
        n = x_T.shape[0]
        if t_start == t_end:
            return x_T.copy()

        def rhs(t: float, y: Array) -> Array:
            return self.velocity(y.reshape(n, self.dim), float(t), schedule).ravel()

        sol = solve_ivp(rhs, (float(t_start), float(t_end)), x_T.ravel(), method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference_solve failed: {sol.message}")
        return sol.y[:, -1].reshape(n, self.dim)

    def exact_trajectory(self, x_T: Any, t_start: float, t: Any, schedule: Schedule) -> Array:
        """The closed-form PF-ODE solution at time ``t`` for a single Gaussian.

        x_t = alpha_t mu + sqrt(alpha_t^2 s^2 + sigma_t^2) z with z = (x_T - alpha_T mu) /
        sqrt(alpha_T^2 s^2 + sigma_T^2) and T = t_start.

        Args:
            x_T: (N, D) points at ``t_start``.
            t_start: the initial time.
            t: a float or (N,) final times.
            schedule: the noise schedule.

        Returns:
            (N, D) float64. Raises ``ValueError`` for a mixture with more than one component.
        """
        if self.n_modes != 1:
            raise ValueError(f"exact_trajectory needs a single Gaussian (K = 1), this mixture has K = {self.n_modes}")
        x_T = self._check_x(x_T, "x_T")
        t = self._check_t(t, x_T.shape[0])
        mu, s2 = self.means[0], self.variances[0]

        def loc_scale(time: Any) -> tuple[Array, Array]:
            a = np.asarray(schedule.alpha(time), dtype=np.float64)[..., None]
            s = np.asarray(schedule.sigma(time), dtype=np.float64)[..., None]
            return a * mu, np.sqrt(a * a * s2 + s * s)

        loc_T, scale_T = loc_scale(float(t_start))
        loc_t, scale_t = loc_scale(t)
        return loc_t + scale_t * (x_T - loc_T) / scale_T


class LinearODE:
    """The linear ODE dy/dt = A y, with exact flow y(t1) = expm(A (t1 - t0)) y(t0).

    Args:
        A: (D, D) real matrix.
    """

    def __init__(self, A: Any) -> None:
        A = _as_float_array(A, "A", 2)
        if A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise ValueError(f"A must be a non-empty square matrix, got shape {A.shape}")
        self.A = A
        self.A.flags.writeable = False

    @classmethod
    def random(cls, dim: int, seed: int = 0, scale: float = 1.0) -> LinearODE:
        """A = scale (S + W): S symmetric with eigenvalues in [-1.5, -0.5], W skew with |W| ~ 0.5.

        The negative-definite symmetric part makes |y| decay (every eigenvalue has real part in
        [-1.5 scale, -0.5 scale]); the skew part adds rotation. ||A||_2 is O(scale).

        Args:
            dim: D, >= 1.
            seed: the random seed.
            scale: the overall scale, > 0.

        Returns:
            The ODE.
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        sym = -(q * rng.uniform(0.5, 1.5, size=dim)) @ q.T
        g = rng.standard_normal((dim, dim))
        skew = 0.25 * (g - g.T) / np.sqrt(dim)
        return cls(scale * (0.5 * (sym + sym.T) + skew))

    @property
    def dim(self) -> int:
        """D, the state dimension."""
        return self.A.shape[0]

    @property
    def lipschitz(self) -> float:
        """Lipschitz constant of y -> A y in the 2-norm: the spectral norm ||A||_2."""
        return float(np.linalg.norm(self.A, 2))

    def __call__(self, t: Any, y: Any) -> Array:
        """The right-hand side A y, as ``f(t, y)``.

        Args:
            t: the time (ignored).
            y: (D,) or (..., D) states.

        Returns:
            A y along the last axis, float64, the shape of ``y``.
        """
        return np.asarray(y, dtype=np.float64) @ self.A.T

    def exact(self, y0: Any, t0: float, t1: float) -> Array:
        """The exact flow y(t1) = expm(A (t1 - t0)) y0.

        Args:
            y0: (D,), (N, D) or any (..., D) states at ``t0``.
            t0: the initial time.
            t1: the final time.

        Returns:
            y(t1), float64, the shape of ``y0``.
        """
        y0 = np.asarray(y0, dtype=np.float64)
        if y0.ndim == 0 or y0.shape[-1] != self.dim:
            raise ValueError(f"y0 must have shape ({self.dim},) or (..., {self.dim}), got {y0.shape}")
        return y0 @ expm(self.A * (float(t1) - float(t0))).T

    def vector_field(self) -> VectorField:
        """dy/dt = A y as a batched ``chords_core.models.VectorField``.

        The state may be (D,) or a batch (B, D): the field gets y of shape (N, D) or (N, B, D).
        """
        from chords_core.models import VectorField

        return VectorField(self, batched=True)


class _MixturePrediction:
    """``GaussianMixture.prediction_fn``'s function, a module-level callable so that models, calibrations
    and ``optimize_init``'s result pickle (a closure did not)."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, prediction: str) -> None:
        self.mixture, self.schedule, self.prediction = mixture, schedule, prediction

    def __call__(self, x: Any, t: Any) -> Array:
        x0_hat, eps_hat = self.mixture.posterior(x, t, self.schedule)
        if self.prediction == "eps":
            return eps_hat
        if self.prediction == "x0":
            return x0_hat
        if self.prediction == "flow":
            return eps_hat - x0_hat
        alpha = np.asarray(self.schedule.alpha(t), dtype=np.float64)[..., None]
        sigma = np.asarray(self.schedule.sigma(t), dtype=np.float64)[..., None]
        return alpha * eps_hat - sigma * x0_hat
