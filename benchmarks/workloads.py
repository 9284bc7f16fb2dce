"""Offline benchmark workloads: analytic mixtures, the exact empirical denoiser and a trained net on digits.

Every workload is a ``Workload``: a ``DiffusionModel``, the starting noise ``x_T`` (B, 64), the
grid to use per solver, an exact/reference endpoint for ``x_T`` and, for digits, a sample-quality
score. All run in float64 numpy, offline (the digits ship with scikit-learn; the net's weights are
committed in ``benchmarks/data`` and checked against their SHA-256).

==================  =============================================================  ===================
name                model                                                          reference
==================  =============================================================  ===================
gmm_rf              64-D 8-mode Gaussian mixture, rectified flow, flow prediction  DOP853, rtol 1e-10
gmm_vp              the same mixture, VP (linear beta), eps prediction             DOP853, rtol 1e-10
digits_exact        empirical denoiser over the 1797 digits, RF, x0 prediction     DPM++(2M), 400 steps
digits_net          the trained MLP (``train_digits.py``), RF, flow prediction     DPM++(2M), 400 steps
gmm_cosv            64-D 8-mode mixture with very unequal variances (component     DOP853, rtol 1e-10
                    standard deviations 0.02 .. 1), VP cosine, v prediction
==================  =============================================================  ===================

``gmm_cosv`` is the workload no method was designed on; ``CALIBRATION`` (a 32-D 5-mode mixture on
rectified flow, another seed) is where the calibrate-once table chooses each method's knob. Neither
is among the four workloads the earlier benchmarks were tuned on.

Pixels are scaled to [-1, 1] (x / 8 - 1). The empirical denoiser is the exact posterior mean
E[x0 | x_t = x] = sum_n softmax_n(-|x - alpha y_n|^2 / (2 sigma^2)) y_n of the data set itself
(at sigma = 0 the nearest point to x / alpha). Quality: the Frechet distance on raw pixels,
|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)), of the samples against all 1797 digits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import linalg

import chords_core as cc
from chords_core.problems import GaussianMixture

DATA = Path(__file__).parent / "data"
WEIGHTS = DATA / "digits_mlp.npz"
FREQS = tuple(float(f) for f in np.geomspace(0.5, 64.0, 16))  # time-embedding frequencies (shared with training)


# ------------------------------------------------------------------------------------------ data
def load_digits() -> np.ndarray:
    """All 1797 scikit-learn digits as float64 (1797, 64) in [-1, 1] (needs scikit-learn, offline)."""
    from sklearn.datasets import load_digits as _load

    return _load().data.astype(np.float64) / 8.0 - 1.0


def load_digits_split(train: int = 1400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) rows of a seeded permutation of ``load_digits()``."""
    x = load_digits()
    perm = np.random.default_rng(seed).permutation(len(x))
    return x[perm[:train]], x[perm[train:]]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of ``a`` (N, D) and ``b`` (M, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"a and b must be (N>=2, D) and (M>=2, D), got {a.shape} and {b.shape}")
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = linalg.eigh(ca)
    ra = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # C_a^(1/2); tr (C_a C_b)^(1/2) = tr (C_a^(1/2) C_b C_a^(1/2))^(1/2)
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(ra @ cb @ ra), 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    return float(max(d @ d + np.trace(ca) + np.trace(cb) - 2.0 * tr_covmean, 0.0))


# ---------------------------------------------------------------------------------------- models
class EmpiricalDenoiser:
    """Exact x0-prediction of the empirical distribution of ``data`` (N, D) under ``schedule``.

    ``__call__(x (B, D), t (B,)) -> (B, D)``: softmax over data points of
    (alpha x.y_n - alpha^2 |y_n|^2 / 2) / sigma^2, i.e. -|x - alpha y_n|^2 / (2 sigma^2) up to a
    per-row constant; rows with sigma = 0 return the nearest data point to x / alpha.
    """

    def __init__(self, data: np.ndarray, schedule: cc.Schedule):
        self.data = np.asarray(data, np.float64)
        if self.data.ndim != 2:
            raise ValueError(f"data must be (N, D), got shape {self.data.shape}")
        self.schedule = schedule
        self.sq = 0.5 * np.einsum("nd,nd->n", self.data, self.data)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        t = np.broadcast_to(np.asarray(t, np.float64), (x.shape[0],))
        a = np.asarray(self.schedule.alpha(t), np.float64)[:, None]
        s = np.asarray(self.schedule.sigma(t), np.float64)[:, None]
        dots = x @ self.data.T
        out = np.empty_like(x)
        zero = s[:, 0] == 0.0
        if np.any(~zero):
            nz = ~zero
            logits = (a[nz] * dots[nz] - a[nz] ** 2 * self.sq) / s[nz] ** 2
            logits -= logits.max(1, keepdims=True)
            w = np.exp(logits)
            out[nz] = (w @ self.data) / w.sum(1, keepdims=True)
        if np.any(zero):
            out[zero] = self.data[np.argmax(dots[zero] - a[zero] * self.sq, 1)]
        return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class DigitsMLP:
    """The trained flow-matching net in float64 numpy: ``__call__(x (B, 64), t (B,)) -> v (B, 64)``.

    Loads ``path`` (npz of float32 weights) after checking its SHA-256 against the ``.sha256`` file.
    """

    def __init__(self, path: Path = WEIGHTS):
        path = Path(path)
        expected = path.with_suffix(".sha256").read_text().split()[0]
        if sha256(path) != expected:
            raise ValueError(f"{path} does not match its SHA-256 {expected}")
        with np.load(path) as z:
            self.depth = int(z["depth"])
            self.p = {k: z[k].astype(np.float64) for k in z.files if k != "depth"}
        self.freqs = np.array(FREQS)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        p = self.p
        t = np.broadcast_to(np.asarray(t, np.float64), (x.shape[0],))
        ang = 2 * np.pi * t[:, None] * self.freqs
        h = np.concatenate([x, np.sin(ang), np.cos(ang)], 1) @ p["inp.weight"].T + p["inp.bias"]
        for k in range(self.depth):
            h = h + _silu(h) @ p[f"res{k}.weight"].T + p[f"res{k}.bias"]
        return _silu(h) @ p["out.weight"].T + p["out.bias"]


def _silu(h):
    return h / (1.0 + np.exp(-h))


# ------------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """A model, its starting noise ``x`` (B, D), grids per solver, a reference and an optional quality score."""

    name: str
    model: cc.DiffusionModel
    x: np.ndarray
    reference: Callable[[], np.ndarray] = field(repr=False)
    spacing: dict = field(default_factory=dict)
    quality: Callable[[np.ndarray], float] | None = field(default=None, repr=False)

    def grid(self, solver: str, steps: int) -> np.ndarray:
        return cc.time_grid(self.model.schedule, steps, self.spacing.get(solver, "uniform"))


def gmm_workload(schedule_name: str, batch: int = 64, dim: int = 64, modes: int = 8, seed: int = 0) -> Workload:
    """64-D mixture with rectified flow ("rf", flow prediction) or VP linear ("vp", eps prediction)."""
    gmm = GaussianMixture.random(dim, modes, seed=seed)
    if schedule_name == "rf":
        sch, pred, spacing = cc.RectifiedFlow(), "flow", {}
    elif schedule_name == "vp":
        sch, pred, spacing = cc.VP.linear(), "eps", {"dpmpp_2m": "logsnr", "ddim": "logsnr"}
    else:
        raise ValueError(f"schedule_name must be 'rf' or 'vp', got {schedule_name!r}")
    x = np.random.default_rng(seed + 1).standard_normal((batch, dim))
    t0, t1 = cc.time_grid(sch, 2)[[0, -1]]
    return Workload(f"gmm_{schedule_name}", gmm.model(sch, pred), x, lambda: gmm.reference_solve(x, t0, t1, sch),
                    spacing)


def unequal_workload(batch: int = 64, dim: int = 64, modes: int = 8, seed: int = 5) -> Workload:
    """A mixture whose components' standard deviations span 0.02 .. 1, on VP cosine with v prediction."""
    base = GaussianMixture.random(dim, modes, seed=seed)
    scale = np.geomspace(0.02, 1.0, modes)[:, None] ** 2
    gmm = GaussianMixture(base.weights, base.means, base.variances / base.variances.mean() * scale)
    sch = cc.VP.cosine()
    x = np.random.default_rng(seed + 1).standard_normal((batch, dim))
    t0, t1 = cc.time_grid(sch, 2)[[0, -1]]
    spacing = {"euler": "logsnr", "heun": "logsnr", "dpmpp_2m": "logsnr", "ddim": "logsnr"}
    return Workload("gmm_cosv", gmm.model(sch, "v"), x, lambda: gmm.reference_solve(x, t0, t1, sch), spacing)


def calibration_workload(batch: int = 32) -> Workload:
    """The calibration problem of the calibrate-once table: a 32-D 5-mode mixture, rectified flow."""
    gmm = GaussianMixture.random(32, 5, seed=11)
    sch = cc.RectifiedFlow()
    x = np.random.default_rng(12).standard_normal((batch, 32))
    t0, t1 = cc.time_grid(sch, 2)[[0, -1]]
    return Workload("calibration", gmm.model(sch, "flow"), x, lambda: gmm.reference_solve(x, t0, t1, sch))


def _digits_quality() -> Callable[[np.ndarray], float]:
    ref = load_digits()
    return lambda samples: frechet_distance(samples, ref)


def _fine_reference(model, x, steps: int = 400) -> Callable[[], np.ndarray]:
    """The endpoint of DPM-Solver++(2M) on ``steps`` uniform steps (second order: the error falls about
    16x for 4x the steps)."""
    return lambda: cc.solve(model, x, cc.time_grid(model.schedule, steps), "dpmpp_2m")


def digits_exact_workload(batch: int = 128, seed: int = 0) -> Workload:
    """The exact empirical denoiser over all 1797 digits (rectified flow, x0 prediction)."""
    sch = cc.RectifiedFlow()
    model = cc.DiffusionModel(EmpiricalDenoiser(load_digits(), sch), sch, "x0")
    x = np.random.default_rng(seed + 2).standard_normal((batch, 64))
    return Workload("digits_exact", model, x, _fine_reference(model, x), quality=_digits_quality())


def digits_net_workload(batch: int = 128, seed: int = 0, path: Path = WEIGHTS) -> Workload:
    """The trained MLP (rectified flow, flow prediction)."""
    sch = cc.RectifiedFlow()
    model = cc.DiffusionModel(DigitsMLP(path), sch, "flow")
    x = np.random.default_rng(seed + 3).standard_normal((batch, 64))
    # 3200 steps: 2.8e-6 RMS from DOP853 at rtol = atol = 1e-12, 0.02% of Euler 50's error (2.7 s);
    # 400 steps were 1.1e-4 off, 1% of it and 4% of DPM++ 50's, inside the criterion's 5% margin (a review)
    return Workload("digits_net", model, x, _fine_reference(model, x, 3200), quality=_digits_quality())


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "gmm_rf": lambda **kw: gmm_workload("rf", **kw),
    "gmm_vp": lambda **kw: gmm_workload("vp", **kw),
    "digits_exact": digits_exact_workload,
    "digits_net": digits_net_workload,
    "gmm_cosv": unequal_workload,
}
