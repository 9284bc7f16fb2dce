"""Map a configured diffusers scheduler onto chords_core: schedule, grid, solver, prediction.

``map_scheduler(scheduler, steps, **set_timesteps_kwargs)`` calls the scheduler's own
``set_timesteps`` and reads back its sigmas / timesteps, so every spacing option (``shift``, dynamic
shifting with ``mu``, Karras / exponential / beta sigmas, ``timestep_spacing``, custom ``sigmas``)
is taken as the scheduler computed it. The chords time variable t and the state per scheduler:

==================================  ==============================  ===========  =================
scheduler                           chords time t, schedule         solver       state
==================================  ==============================  ===========  =================
FlowMatchEulerDiscreteScheduler     sigma, ``RectifiedFlow``        euler        x = (1-s) x0 + s e
EulerDiscreteScheduler              VE sigma~, ``EDM`` (alpha = 1)  euler        x = x0 + s~ e
DDIMScheduler                       VE sigma~, ``VESigmaVP``        ddim         x = a x0 + s e
DPMSolverMultistepScheduler         VE sigma~, ``VESigmaVP``        ddim /       x = a x0 + s e
  (``algorithm_type="dpmsolver++"``)                                dpmpp_2m/3m
UniPCMultistepScheduler             VE sigma~, ``VESigmaVP``        unipc        x = a x0 + s e
==================================  ==============================  ===========  =================

with sigma~ = sigma/alpha = sqrt((1 - alphas_cumprod)/alphas_cumprod) (diffusers' ``sigmas``),
alpha = 1/sqrt(1 + sigma~^2). DPM-Solver and UniPC with ``use_flow_sigmas`` use ``RectifiedFlow``.
Euler in t = sigma~ on the VE-scaled state is k-diffusion's Euler, which EulerDiscreteScheduler
runs (its ``scale_model_input`` divides the state by sqrt(sigma~^2 + 1) before the model call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import chords_core as cc

__all__ = ["VESigmaVP", "SchedulerMap", "map_scheduler", "SUPPORTED_SCHEDULERS"]

# class name -> one-line description (the README table is built from the same facts)
SUPPORTED_SCHEDULERS = {
    "FlowMatchEulerDiscreteScheduler": "euler on sigma (shift, dynamic shift with mu, karras/exponential/beta sigmas)",
    "EulerDiscreteScheduler": "euler on the VE sigma (eps / v / sample prediction, any spacing, s_churn = 0)",
    "DDIMScheduler": "ddim (eta = 0; eps / v / sample prediction; spacing must step onto the next timestep)",
    "DPMSolverMultistepScheduler": "dpmsolver++ orders 1-3, midpoint (eps / v / sample / flow prediction)",
    "UniPCMultistepScheduler": "UniPC bh1/bh2 orders 1-3, predict_x0 (eps / v / sample / flow prediction)",
}

_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}


@dataclass(frozen=True)
class VESigmaVP(cc.Schedule):
    """A variance-preserving path in the VE coordinate t = sigma~ = sigma/alpha (diffusers' ``sigmas``).

    alpha(t) = 1/sqrt(1+t^2), sigma(t) = t/sqrt(1+t^2), lambda(t) = -log t; any discrete DDPM beta
    schedule is this path sampled at its own sigma~ values, so the data-prediction solvers (which only
    use alpha, sigma, lambda at the grid times) reproduce diffusers' steps exactly.
    """

    t_noise: float = 14.6
    t_data: float = 0.0
    t_min: float | None = None

    def alpha(self, t: Any) -> np.ndarray:
        """alpha(t) = 1/sqrt(1 + t^2)."""
        t = np.asarray(t, dtype=np.float64)
        return 1.0 / np.sqrt(1.0 + t * t)

    def sigma(self, t: Any) -> np.ndarray:
        """sigma(t) = t/sqrt(1 + t^2)."""
        t = np.asarray(t, dtype=np.float64)
        return t / np.sqrt(1.0 + t * t)

    def d_alpha(self, t: Any) -> np.ndarray:
        """alpha'(t) = -t (1 + t^2)^(-3/2)."""
        t = np.asarray(t, dtype=np.float64)
        return -t * (1.0 + t * t) ** -1.5

    def d_sigma(self, t: Any) -> np.ndarray:
        """sigma'(t) = (1 + t^2)^(-3/2)."""
        t = np.asarray(t, dtype=np.float64)
        return (1.0 + t * t) ** -1.5

    def domain(self) -> tuple[float, float]:
        """Any VE noise level s = sigma / alpha >= 0."""
        return (0.0, math.inf)

    def lam(self, t: Any) -> np.ndarray:
        """lambda(t) = -log t (+inf at t = 0)."""
        with np.errstate(divide="ignore"):
            return -np.log(np.asarray(t, dtype=np.float64))

    def t_from_lam(self, lam: Any) -> np.ndarray:
        """t = e^-lambda."""
        return np.exp(-np.asarray(lam, dtype=np.float64))


@dataclass(frozen=True)
class SchedulerMap:
    """A diffusers scheduler as chords_core sees it, for ``steps`` sampling steps.

    Attributes:
        scheduler: the scheduler's class name.
        schedule: the chords_core ``Schedule`` of its noise path.
        grid: (steps + 1,) float64 chords times, noise -> data.
        solver: the chords_core solver that reproduces its update rule.
        solver_options: that solver's options.
        prediction: the chords ``prediction`` of the (converted) model output.
        timesteps: (steps,) torch tensor, the model timestep the scheduler passes at grid index i
            (its own dtype).
        sigmas: (steps,) torch tensor, the scheduler's sigma at grid index i (used for
            ``scale_input`` and ``output``).
        scale_input: the model sees x / sqrt(sigma^2 + 1) (EulerDiscrete).
        output: how the raw output becomes the chords ``prediction`` (``None``: as is;
            ``"euler_v"``: VP v-prediction to the VE data prediction
            x0 = -v sigma/sqrt(sigma^2+1) + x/(sigma^2+1), as EulerDiscreteScheduler does).
        init_noise_sigma: the scheduler's ``init_noise_sigma``.
        extra: anything else a mapper records.
    """

    scheduler: str
    schedule: cc.Schedule
    grid: np.ndarray
    solver: str
    solver_options: dict
    prediction: str
    timesteps: Any
    sigmas: Any
    scale_input: bool = False
    output: str | None = None
    init_noise_sigma: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """T, the number of sampling steps."""
        return len(self.grid) - 1


def map_scheduler(scheduler: Any, num_inference_steps: int | None = None, *, device: Any = None,
                  **set_timesteps_kwargs: Any) -> SchedulerMap:
    """Configure ``scheduler`` (``set_timesteps(num_inference_steps, device, **kwargs)``) and map it.

    Args:
        scheduler: a diffusers scheduler in ``SUPPORTED_SCHEDULERS``; configured in place.
        num_inference_steps: T (``None`` with no kwargs: use the scheduler's current timesteps).
        device: the device of ``set_timesteps``.
        set_timesteps_kwargs: further ``set_timesteps`` keywords (``mu``, ``sigmas``, ...).

    Returns:
        The ``SchedulerMap``. Raises ``ValueError`` naming the supported schedulers, or the
        offending config option.
    """
    name = type(scheduler).__name__
    if name not in _MAPPERS:
        raise ValueError(
            f"scheduler {name} is not supported by chords_diffusers; supported: {', '.join(SUPPORTED_SCHEDULERS)}"
        )
    if num_inference_steps is not None or set_timesteps_kwargs:
        n = num_inference_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        scheduler.set_timesteps(num_inference_steps, device=device, **set_timesteps_kwargs)
    elif getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("num_inference_steps is required: the scheduler has no timesteps set yet")
    return _MAPPERS[name](scheduler, scheduler.config)


# -- per scheduler ------------------------------------------------------------------------------

def _reject(cfg: Any, name: str, **bad: Callable[[Any], bool]) -> None:
    """Raise if a config option has a value chords_diffusers does not reproduce; ``bad``: option -> allowed test."""
    for opt, ok in bad.items():
        val = cfg.get(opt, None)
        if not ok(val):
            raise ValueError(f"{name}: config option {opt}={val!r} is not supported by chords_diffusers")


def _prediction(cfg: Any, name: str, allowed: Sequence[str]) -> str:
    p = cfg.get("prediction_type", "epsilon")
    if p not in allowed:
        raise ValueError(f"{name}: prediction_type={p!r} is not supported; use one of {sorted(allowed)}")
    return _PREDICTION[p]


def _sigmas64(scheduler: Any) -> np.ndarray:
    return scheduler.sigmas.detach().cpu().double().numpy()


def _flow_match(s: Any, cfg: Any) -> SchedulerMap:
    name = type(s).__name__
    _reject(cfg, name, stochastic_sampling=lambda v: not v, invert_sigmas=lambda v: not v)
    grid = _sigmas64(s)
    n = len(grid) - 1
    return SchedulerMap(name, cc.RectifiedFlow(), grid, "euler", {}, "flow", s.timesteps[:n], s.sigmas[:n])


def _euler(s: Any, cfg: Any) -> SchedulerMap:
    name = type(s).__name__
    p = _prediction(cfg, name, ("epsilon", "v_prediction", "sample"))
    grid = _sigmas64(s)
    n = len(grid) - 1
    output, pred = ("euler_v", "x0") if p == "v" else (None, p)
    return SchedulerMap(name, cc.EDM(t_noise=float(grid[0]), t_min=None), grid, "euler", {}, pred,
                        s.timesteps[:n], s.sigmas[:n], scale_input=True, output=output,
                        init_noise_sigma=float(s.init_noise_sigma))


def _ddim(s: Any, cfg: Any) -> SchedulerMap:
    name = type(s).__name__
    _reject(cfg, name, clip_sample=lambda v: not v, thresholding=lambda v: not v)
    pred = _prediction(cfg, name, ("epsilon", "v_prediction", "sample"))
    import torch

    ts = [int(t) for t in s.timesteps]
    n = len(ts)
    ratio = cfg.num_train_timesteps // s.num_inference_steps
    ac = s.alphas_cumprod.detach().cpu().double().numpy()
    final = float(s.final_alpha_cumprod)
    prev = [t - ratio for t in ts]
    for k in range(n - 1):
        if prev[k] != ts[k + 1]:
            raise ValueError(
                f"{name}: with timestep_spacing={cfg.timestep_spacing!r} and {n} steps the step from timestep {ts[k]} "
                f"lands on {prev[k]} but the next evaluation is at {ts[k + 1]}; that is not one ODE grid. Use "
                "timestep_spacing='leading' (or 'trailing' with num_train_timesteps divisible by the steps)"
            )
    acs = np.array([ac[t] for t in ts] + [ac[prev[-1]] if prev[-1] >= 0 else final])
    grid = np.sqrt((1.0 - acs) / acs)
    sig = torch.tensor(grid[:n], dtype=torch.float32)
    return SchedulerMap(name, VESigmaVP(t_noise=float(grid[0])), grid, "ddim", {}, pred, s.timesteps[:n], sig)


def _multistep_schedule(s: Any, cfg: Any) -> cc.Schedule:
    if cfg.get("use_flow_sigmas", False):
        return cc.RectifiedFlow()
    return VESigmaVP(t_noise=float(s.sigmas[0]))


def _dpm(s: Any, cfg: Any) -> SchedulerMap:
    name = type(s).__name__
    order = cfg.solver_order
    n = len(s.timesteps)
    _reject(
        cfg, name,
        algorithm_type=lambda v: v == "dpmsolver++",
        solver_order=lambda v: v in (1, 2, 3),
        solver_type=lambda v: v == "midpoint" or order == 1,
        thresholding=lambda v: not v,
        variance_type=lambda v: v is None,
    )
    final_zero = cfg.get("final_sigmas_type", "zero") == "zero"
    if cfg.get("euler_at_final", False) and not (final_zero or (cfg.lower_order_final and n < 15)) and order > 1:
        raise ValueError(f"{name}: config option euler_at_final=True is not supported by chords_diffusers")
    pred = _prediction(cfg, name, ("epsilon", "v_prediction", "sample", "flow_prediction"))
    grid = _sigmas64(s)
    solver = {1: "ddim", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order]
    opts = {} if order == 1 else {"lower_order_final": bool(cfg.lower_order_final)}
    return SchedulerMap(name, _multistep_schedule(s, cfg), grid, solver, opts, pred, s.timesteps[:n], s.sigmas[:n])


def _unipc(s: Any, cfg: Any) -> SchedulerMap:
    name = type(s).__name__
    _reject(
        cfg, name,
        predict_x0=lambda v: bool(v),
        solver_type=lambda v: v in ("bh1", "bh2"),
        solver_order=lambda v: v in (1, 2, 3),
        lower_order_final=lambda v: bool(v),
        disable_corrector=lambda v: not v,
        thresholding=lambda v: not v,
    )
    if getattr(s, "solver_p", None) is not None:
        raise ValueError(f"{name}: solver_p is not supported by chords_diffusers")
    pred = _prediction(cfg, name, ("epsilon", "v_prediction", "sample", "flow_prediction"))
    grid = _sigmas64(s)
    n = len(s.timesteps)
    opts = {"order": cfg.solver_order, "variant": cfg.solver_type}
    return SchedulerMap(name, _multistep_schedule(s, cfg), grid, "unipc", opts, pred, s.timesteps[:n], s.sigmas[:n])


_MAPPERS = {
    "FlowMatchEulerDiscreteScheduler": _flow_match,
    "EulerDiscreteScheduler": _euler,
    "DDIMScheduler": _ddim,
    "DPMSolverMultistepScheduler": _dpm,
    "UniPCMultistepScheduler": _unipc,
}
assert set(_MAPPERS) == set(SUPPORTED_SCHEDULERS)
