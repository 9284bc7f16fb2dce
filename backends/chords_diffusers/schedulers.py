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
HeunDiscreteScheduler               VE sigma~, ``EDM`` (alpha = 1)  heun         x = x0 + s~ e
DDIMScheduler,                      VP sigma, ``VPSigma``           ddim         x = a x0 + s e
  CogVideoXDDIMScheduler
DPMSolverMultistepScheduler         VE sigma~, ``VESigmaVP``        ddim /       x = a x0 + s e
  (``algorithm_type="dpmsolver++"``)                                dpmpp_2m/3m
UniPCMultistepScheduler             VE sigma~, ``VESigmaVP``        unipc        x = a x0 + s e
==================================  ==============================  ===========  =================

with sigma~ = sigma/alpha = sqrt((1 - alphas_cumprod)/alphas_cumprod) (diffusers' ``sigmas``),
alpha = 1/sqrt(1 + sigma~^2), and for DDIM the VP sigma = sqrt(1 - alphas_cumprod) read from the
scheduler's own ``alphas_cumprod`` (finite at zero terminal SNR, where sigma~ is infinite). DPM-Solver
and UniPC with ``use_flow_sigmas`` use ``RectifiedFlow``. Euler / Heun in t = sigma~ on the VE-scaled
state is k-diffusion's Euler / Heun, which EulerDiscreteScheduler / HeunDiscreteScheduler run (their
``scale_model_input`` divides the state by sqrt(sigma~^2 + 1) before the model call).

``clip_sample`` and dynamic ``thresholding`` transform the data prediction; the map carries them as
a ``DataTransform`` that the denoiser applies to the model's x0 prediction, so the solvers stay
linear. Stochastic samplers (ancestral, SDE, DDPM, ``eta > 0``, ``s_churn > 0``) raise ``ValueError``
naming a deterministic alternative: CHORDS integrates the probability-flow ODE.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

import chords_core as cc
from chords_core import _backend as B
from chords_core.checks import _is_int

__all__ = ["VESigmaVP", "VPSigma", "DataTransform", "SchedulerMap", "map_scheduler", "SUPPORTED_SCHEDULERS",
           "STOCHASTIC_SCHEDULERS"]

# class name -> one-line description (the README table is built from the same facts)
SUPPORTED_SCHEDULERS = {
    "FlowMatchEulerDiscreteScheduler": "euler on sigma (shift, dynamic shift with mu, karras/exponential/beta sigmas)",
    "EulerDiscreteScheduler": "euler on the VE sigma (eps / v / sample prediction, any spacing, s_churn = 0)",
    "HeunDiscreteScheduler": "heun on the VE sigma (eps / v / sample prediction, any spacing, clip_sample)",
    "DDIMScheduler": "ddim (eta = 0; eps / v / sample prediction; clip_sample, thresholding, zero terminal SNR; "
                     "spacing must step onto the next timestep)",
    "CogVideoXDDIMScheduler": "ddim on its SNR-shifted alphas (eta = 0; eps / v / sample prediction; "
                              "zero terminal SNR)",
    "DPMSolverMultistepScheduler": "dpmsolver++ orders 1-3, midpoint (eps / v / sample / flow prediction; "
                                   "thresholding)",
    "UniPCMultistepScheduler": "UniPC bh1/bh2 orders 1-3, predict_x0 (eps / v / sample / flow prediction; "
                               "thresholding)",
}

# stochastic samplers: class name -> (what makes it stochastic, the deterministic scheduler to use instead or None)
STOCHASTIC_SCHEDULERS: dict[str, tuple[str, str | None]] = {
    "DDPMScheduler": ("DDPM's ancestral step adds fresh noise", "DDIMScheduler"),
    "DDPMParallelScheduler": ("DDPM's ancestral step adds fresh noise", "DDIMScheduler"),
    "EulerAncestralDiscreteScheduler": ("the ancestral step adds fresh noise", "EulerDiscreteScheduler"),
    "KDPM2AncestralDiscreteScheduler": ("the ancestral step adds fresh noise", "HeunDiscreteScheduler"),
    "DPMSolverSDEScheduler": ("it integrates an SDE with Brownian-tree noise", "DPMSolverMultistepScheduler"),
    "CogVideoXDPMScheduler": ("its step is SDE-DPM-Solver++(2M), adding fresh noise (mult_noise) every step",
                              "CogVideoXDDIMScheduler"),
    "LTXEulerAncestralRFScheduler": ("the ancestral step adds fresh noise", "FlowMatchEulerDiscreteScheduler"),
    "LCMScheduler": ("the consistency sampler re-noises its x0 estimate every step", None),
    "CMStochasticIterativeScheduler": ("the consistency sampler re-noises its x0 estimate every step", None),
    "ScoreSdeVeScheduler": ("it integrates the reverse SDE", None),
}

# step() arguments that add noise at every step; 0 is the ODE
_NOISE_ARGS = ("eta", "s_churn")

_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}

_ODE = "CHORDS integrates the probability-flow ODE, so it needs a deterministic (ODE) sampler"


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
class VPSigma(cc.Schedule):
    """A variance-preserving path in the time t = sigma = sqrt(1 - alphas_cumprod), in [0, 1].

    alpha(t) = sqrt(1 - t^2), sigma(t) = t. A discrete DDPM schedule (a scheduler's ``alphas_cumprod``)
    is this path sampled at t = sqrt(1 - alphas_cumprod[timestep]); unlike the VE coordinate it stays
    finite at zero terminal SNR (alphas_cumprod = 0 is t = 1, lambda = -inf).
    """

    t_noise: float = 1.0
    t_data: float = 0.0
    t_min: float | None = None

    def alpha(self, t: Any) -> np.ndarray:
        """alpha(t) = sqrt(1 - t^2)."""
        t = np.asarray(t, dtype=np.float64)
        return np.sqrt(np.maximum(1.0 - t * t, 0.0))

    def sigma(self, t: Any) -> np.ndarray:
        """sigma(t) = t."""
        return np.asarray(t, dtype=np.float64).copy()

    def d_alpha(self, t: Any) -> np.ndarray:
        """alpha'(t) = -t / sqrt(1 - t^2) (-inf at t = 1)."""
        t = np.asarray(t, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return -t / self.alpha(t)

    def d_sigma(self, t: Any) -> np.ndarray:
        """sigma'(t) = 1."""
        return np.ones_like(np.asarray(t, dtype=np.float64))

    def t_from_lam(self, lam: Any) -> np.ndarray:
        """t = 1/sqrt(1 + e^(2 lambda))."""
        return 1.0 / np.sqrt(1.0 + np.exp(2.0 * np.asarray(lam, dtype=np.float64)))


@dataclass(frozen=True)
class DataTransform:
    """A scheduler's transform of the data prediction (``clip_sample`` or dynamic ``thresholding``).

    Called by the denoiser on the model's output: D = the x0 prediction at each row's time,
    T(D) = clamp(D, -clip, clip) or diffusers' dynamic thresholding, and the output is
    D + w_i (T(D) - D) as an x0 prediction (``SchedulerMap.prediction`` is ``"x0"``). w_i = 1 when the
    step uses T(D) throughout (DPM-Solver, UniPC, Heun, DDIM with ``use_clipped_model_output``). DDIM's
    default step, x_j = alpha_j T(D) + sigma_j eps(D), keeps the unclipped noise; the ddim step of
    chords reproduces it exactly with w_i = alpha_j / (alpha_j - sigma_j alpha_i / sigma_i), j = i + 1.

    Attributes:
        schedule: the schedule the rows' times refer to.
        prediction: the chords prediction of the output the transform receives.
        clip: clamp to [-clip, clip] (``None``: no clipping).
        threshold: (``dynamic_thresholding_ratio``, ``sample_max_value``) of dynamic thresholding
            (``None``: off; it replaces clipping, as in diffusers).
        weights: (steps,) float64 w_i per grid index.
    """

    schedule: cc.Schedule
    prediction: str
    clip: float | None
    threshold: tuple[float, float] | None
    weights: np.ndarray = field(repr=False)

    @functools.cached_property
    def _converter(self) -> cc.DiffusionModel:
        """The prediction -> data conversion of ``prediction`` on ``schedule`` (built once, not per call)."""
        return cc.DiffusionModel(lambda xx, tt: xx, self.schedule, self.prediction, check_outputs=False)

    def apply(self, d: Any) -> Any:
        """T(D): clipping or dynamic thresholding of data predictions, one row per sample.

        Args:
            d: (N, ...) torch tensor of data predictions.

        Returns:
            T(d), the shape and dtype of ``d``.
        """
        import torch

        if self.threshold is None:
            assert self.clip is not None
            return d.clamp(-self.clip, self.clip)
        ratio, max_value = self.threshold  # diffusers' _threshold_sample
        flat = d.reshape(d.shape[0], -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()  # quantile needs float32/64
        s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(d.shape).to(d.dtype)

    def __call__(self, x: Any, out: Any, t: np.ndarray, idx: np.ndarray) -> Any:
        """The transformed x0 prediction of each row.

        Args:
            x: (N, ...) states (torch).
            out: (N, ...) model outputs, a ``prediction`` at the rows' times.
            t: (N,) float64 chords times of the rows, exact grid times for rows on the grid (the
                model's times are rounded to the state's dtype, too coarse for VPSigma near t = 1).
            idx: (N,) their nearest grid indices (for w_i).

        Returns:
            (N, ...) x0 predictions D + w_i (T(D) - D), in ``out``'s dtype.
        """
        import torch

        coef = self._converter.coefficients(np.asarray(t, dtype=np.float64), "data")
        view = (-1,) + (1,) * (x.dim() - 1)
        if coef is None:  # already an x0 prediction
            d = out
        else:
            # (made on the host and uploaded without waiting for the device: B.upload)
            a, b = (B.upload(torch.tensor([c[k] for c in coef], dtype=x.dtype), x.device).view(view) for k in (0, 1))
            d = a * x + b * out.to(x.dtype)
        td = self.apply(d)
        w = self.weights[idx]
        if np.all(w == 1.0):
            return td.to(out.dtype)
        wt = B.upload(torch.tensor(w, dtype=d.dtype), d.device).view(view)
        return (d + wt * (td - d)).to(out.dtype)


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
        scale_input: the model sees x / sqrt(sigma^2 + 1) (EulerDiscrete, HeunDiscrete).
        output: how the raw output becomes the chords ``prediction`` (``None``: as is;
            ``"euler_v"``: VP v-prediction to the VE data prediction
            x0 = -v sigma/sqrt(sigma^2+1) + x/(sigma^2+1), as EulerDiscreteScheduler does).
        init_noise_sigma: the scheduler's ``init_noise_sigma``.
        extra: anything else a mapper records.
        x0_transform: ``clip_sample`` / ``thresholding`` of the data prediction, applied by the
            denoiser after ``output`` (``None``: none); ``prediction`` is then ``"x0"``.
        config_keys: solver option -> the scheduler's config key that sets it, to the same value
            (UniPC's ``order`` is its ``solver_order``); an option not here has none.
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
    x0_transform: DataTransform | None = None
    config_keys: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """T, the number of sampling steps."""
        return len(self.grid) - 1

    @property
    def flow(self) -> bool:
        """Whether the map is on flow sigmas, x = (1 - t) x0 + t noise (``FlowMatchEulerDiscreteScheduler``;
        DPM-Solver and UniPC with ``use_flow_sigmas``), not a diffusion model's VP / VE noise schedule."""
        return isinstance(self.schedule, cc.RectifiedFlow)


def map_scheduler(scheduler: Any, num_inference_steps: int | None = None, *, device: Any = None,
                  step_kwargs: Mapping[str, Any] | None = None, **set_timesteps_kwargs: Any) -> SchedulerMap:
    """Configure ``scheduler`` (``set_timesteps(num_inference_steps, device, **kwargs)``) and map it.

    Args:
        scheduler: a diffusers scheduler in ``SUPPORTED_SCHEDULERS``; configured in place.
        num_inference_steps: T (``None`` with no kwargs: use the scheduler's current timesteps;
            ignored with custom ``sigmas`` / ``timesteps``, which set the steps, as diffusers'
            ``retrieve_timesteps`` does).
        device: the device of ``set_timesteps``.
        step_kwargs: the per-call arguments a pipeline passes to ``scheduler.step`` (``eta``,
            ``s_churn``, ``use_clipped_model_output``, ``generator``, ...). As diffusers' pipelines
            do (``prepare_extra_step_kwargs``), keys that this scheduler's ``step`` does not take are
            dropped; ``eta`` or ``s_churn`` other than 0 (a stochastic sampler) raise ``ValueError``.
        set_timesteps_kwargs: further ``set_timesteps`` keywords (``mu``, ``sigmas``, ...).

    Returns:
        The ``SchedulerMap``. Raises ``ValueError`` naming the supported schedulers, the offending
        config option, or (for a stochastic sampler) a deterministic alternative.
    """
    name = type(scheduler).__name__
    if name in STOCHASTIC_SCHEDULERS:
        why, alt = STOCHASTIC_SCHEDULERS[name]
        fix = (f"use {alt} on the same model, e.g. pipe.scheduler = {alt}.from_config(pipe.scheduler.config)" if alt
               else f"chords_diffusers maps no deterministic counterpart; supported: {', '.join(SUPPORTED_SCHEDULERS)}")
        raise ValueError(f"{name} is a stochastic sampler ({why}); {_ODE}: {fix}")
    if name not in _MAPPERS:
        raise ValueError(
            f"scheduler {name} is not supported by chords_diffusers; supported: {', '.join(SUPPORTED_SCHEDULERS)}"
        )
    step = _step_kwargs(scheduler, name, step_kwargs)
    custom = [k for k in ("sigmas", "timesteps") if set_timesteps_kwargs.get(k) is not None]
    if custom:  # custom sigmas / timesteps set the steps themselves, as diffusers' retrieve_timesteps passes them
        for k in custom:
            if not takes_custom(scheduler, k):
                raise ValueError(f"custom {k} need a scheduler whose set_timesteps takes them; {name} does not: "
                                 "give num_inference_steps only")
        num_inference_steps = None
    if num_inference_steps is not None or set_timesteps_kwargs:
        n = num_inference_steps
        if n is not None and (not _is_int(n) or n < 1):  # (numpy's integers too, as everywhere)
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        num_inference_steps = None if n is None else int(n)
        scheduler.set_timesteps(num_inference_steps, device=device, **set_timesteps_kwargs)
    elif getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("num_inference_steps is required: the scheduler has no timesteps set yet")
    smap = _MAPPERS[name](scheduler, scheduler.config, step)
    _check_descends(name, smap.grid)
    _check_data_at_start(name, scheduler.config, smap)
    return smap


def unscaled_input(scheduler: str, who: str, advice: str) -> ValueError:
    """The refusal of a scheduler that scales the model input (``scale_model_input``: Euler, Heun) for a
    loop ``who`` that never calls it: diffusers warns, and its loop is then no ODE of the model.

    Args:
        scheduler: the scheduler's class name.
        who: the pipeline or loop, for the message.
        advice: the schedulers to use instead (``adapters.Job.unscaled_advice``).
    """
    return ValueError(f"{who}: {scheduler} scales the model input (scale_model_input), which {who} never calls "
                      f"(diffusers warns; its loop is then no ODE of this model): use {advice}")


def other_parametrisation(smap: SchedulerMap, who: str, advice: str) -> ValueError:
    """The refusal of a scheduler in the other parametrisation than the denoiser of ``who``: a diffusion
    model's noise schedule for a flow-matching model, or flow sigmas for a diffusion model (a user trial:
    WanPipeline with DDIMScheduler fails in diffusers, and ran here silently to meaningless latents).

    Args:
        smap: the mapped scheduler.
        who: the pipeline, for the message.
        advice: the schedulers to use instead (``adapters.Job.unscaled_advice``).
    """
    runs, model = (("flow sigmas", "a diffusion model") if smap.flow else
                   ("a diffusion model's noise schedule (not flow sigmas)", "a flow-matching model"))
    return ValueError(f"{who}: {smap.scheduler} runs {runs}, and {who}'s denoiser is {model}, so the samples would "
                      f"be meaningless: use {advice}")


def option_clash(smap: SchedulerMap, option: str, value: Any) -> ValueError:
    """The refusal of a solver option ``option=value`` given to ``sample_latents`` that the map sets
    itself (``smap.solver_options``), naming the scheduler's config key that sets it (a user trial: the
    advice named chords' ``order``, which diffusers' ``from_config`` ignores, for UniPC's ``solver_order``)."""
    what = f"{option}={smap.solver_options[option]!r} for solver {smap.solver!r}"
    key = smap.config_keys.get(option)
    if key is None:
        return ValueError(f"{option}: set by the scheduler map ({what}), and no config option of {smap.scheduler} "
                          "sets it; give a SchedulerMap with other solver_options, e.g. "
                          f"dataclasses.replace(smap, solver_options={{**smap.solver_options, {option!r}: {value!r}}})")
    return ValueError(f"{option}: set by the scheduler's configuration ({what}, from {smap.scheduler}'s {key}); "
                      f"configure the scheduler for another value, e.g. scheduler = "
                      f"{smap.scheduler}.from_config(scheduler.config, {key}={value!r})")


def takes_custom(scheduler: Any, key: str) -> bool:
    """Whether ``scheduler.set_timesteps`` takes custom ``key`` ("sigmas", "timesteps"), as diffusers'
    ``retrieve_timesteps`` asks."""
    return key in inspect.signature(scheduler.set_timesteps).parameters


def _check_descends(name: str, grid: np.ndarray) -> None:
    """Refuse, naming the scheduler and its noise levels, a grid that does not descend strictly: a
    step of length 0 the mapper could not drop (a single step from sigma_min to itself, a zero-length
    DDIM step at one step) or one back up in noise (custom timesteps or sigmas out of order), which
    diffusers runs but no ODE grid holds (the core's own refusal named neither the option nor a fix)."""
    if len(grid) >= 2 and bool(np.all(np.diff(grid) < 0)):
        return
    shown = ", ".join(f"{v:.6g}" for v in grid[:8]) + (", ..." if len(grid) > 8 else "")
    what = ("are not all finite" if not np.isfinite(grid).all() else
            "do not descend strictly (a step of length 0, or one back up in noise)")
    raise ValueError(f"{name}: its noise levels [{shown}] {what}: no ODE grid chords_diffusers can run; give custom "
                     "timesteps / sigmas in descending order, and a single step one that ends below where it starts")


def _check_data_at_start(name: str, cfg: Any, smap: SchedulerMap) -> None:
    """Refuse an epsilon prediction where the grid starts at alpha = 0 (zero terminal SNR: DDIM's and
    CogVideoX's ``rescale_betas_zero_snr`` from timestep 999), where it gives no data prediction
    (diffusers' own loop returns nan; the core's refusal named only its grid, a user trial)."""
    pred = smap.prediction if smap.x0_transform is None else smap.x0_transform.prediction
    if pred != "eps" or float(smap.schedule.alpha(smap.grid[0])) != 0.0:
        return
    why, fix = (("rescale_betas_zero_snr=True", "rescale_betas_zero_snr=False")
                if cfg.get("rescale_betas_zero_snr", False) else
                ("betas whose alphas_cumprod reaches 0", "betas whose alphas_cumprod stays above 0"))
    raise ValueError(f"{name}: prediction_type='epsilon' with {why}: alpha is 0 at the first step (zero terminal "
                     f"SNR, timestep {int(smap.timesteps[0])}), where an epsilon prediction gives no data prediction "
                     f"(diffusers' own loop returns nan); use prediction_type='v_prediction' (a model trained for it), "
                     f"or {fix}")


# -- per scheduler ------------------------------------------------------------------------------

def _step_kwargs(scheduler: Any, name: str, step_kwargs: Mapping[str, Any] | None) -> dict:
    """The ``step`` arguments this scheduler takes (others dropped, as pipelines do); noise-adding ones must be 0."""
    if step_kwargs is None:
        return {}
    if not isinstance(step_kwargs, Mapping):
        raise TypeError(f"step_kwargs must be a mapping, got {type(step_kwargs).__name__}")
    takes = set(inspect.signature(scheduler.step).parameters)
    kw = {k: v for k, v in step_kwargs.items() if k in takes}
    for arg in _NOISE_ARGS:
        v = kw.get(arg, 0.0)
        if v is not None and v != 0:
            raise _stochastic(name, f"step argument {arg}={v!r}", f"{arg}=0")
    return kw


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


def _sigmas64(sigmas: Any) -> np.ndarray:
    """A tensor of sigmas (a scheduler's ``sigmas``) as a float64 numpy array."""
    return sigmas.detach().cpu().double().numpy()


def _stochastic(name: str, what: str, fix: str) -> ValueError:
    """The error for an option that makes a scheduler stochastic, naming the deterministic setting."""
    return ValueError(f"{name}: {what} makes the sampler stochastic (fresh noise every step); {_ODE}: use {fix}")


def _with_transform(smap: SchedulerMap, cfg: Any, *, clip: bool, threshold: bool,
                    weights: np.ndarray | None = None) -> SchedulerMap:
    """``smap`` with the config's ``clip_sample`` / ``thresholding`` as a ``DataTransform`` (if either is on)."""
    on_clip, on_thr = clip and bool(cfg.get("clip_sample", False)), threshold and bool(cfg.get("thresholding", False))
    if not (on_clip or on_thr):
        return smap
    tr = DataTransform(
        smap.schedule, smap.prediction, float(cfg.get("clip_sample_range", 1.0)) if on_clip else None,
        (float(cfg.dynamic_thresholding_ratio), float(cfg.sample_max_value)) if on_thr else None,
        np.ones(smap.steps) if weights is None else weights)
    return replace(smap, prediction="x0", x0_transform=tr)


def _flow_match(s: Any, cfg: Any, step: dict) -> SchedulerMap:
    name = type(s).__name__
    if cfg.get("stochastic_sampling", False):
        raise _stochastic(name, "config option stochastic_sampling=True", "stochastic_sampling=False")
    _reject(cfg, name, invert_sigmas=lambda v: not v)
    grid = _sigmas64(s.sigmas)
    if grid.max() > 1.0:  # (custom sigmas: "grid[0]=1.5 lies outside the schedule's time domain" named neither)
        raise ValueError(f"sigmas: {name}'s noise levels reach {float(grid.max())!r}, above 1, where the "
                         "flow-matching ODE x_t = (1 - t) x_0 + t noise has no time (diffusers extrapolates its steps "
                         "there); give sigmas in [0, 1]")
    if _repeats_last(grid):  # custom sigmas ending at 0, to which diffusers appends another 0: a last step
        grid = grid[:-1]  # of length 0, which leaves the sample as it is (x + 0 v): dropped, as Euler's
    n = len(grid) - 1
    return SchedulerMap(name, cc.RectifiedFlow(), grid, "euler", {}, "flow", s.timesteps[:n], s.sigmas[:n])


def _karras_ve(s: Any, cfg: Any, solver: str, grid: np.ndarray, timesteps: Any, sigmas: Any) -> SchedulerMap:
    """EulerDiscrete / HeunDiscrete: ``solver`` in the VE sigma on the scaled-input model."""
    name = type(s).__name__
    p = _prediction(cfg, name, ("epsilon", "v_prediction", "sample"))
    output, pred = ("euler_v", "x0") if p == "v" else (None, p)
    smap = SchedulerMap(name, cc.EDM(t_noise=float(grid[0]), t_min=None), grid, solver, {}, pred, timesteps, sigmas,
                        scale_input=True, output=output, init_noise_sigma=float(s.init_noise_sigma))
    return _with_transform(smap, cfg, clip=True, threshold=False)


def _repeats_last(grid: np.ndarray) -> bool:
    """Whether the grid of three or more sigmas ends on a repeated one (``final_sigmas_type="sigma_min"``
    where the spacing already ends at sigma_min: Karras, exponential, beta, log-linear): a last step of
    length 0, which leaves the sample as it is at first order, and which no grid can hold."""
    return len(grid) > 2 and grid[-1] == grid[-2]


def _repeated_sigma(name: str, cfg: Any, grid: np.ndarray) -> str:
    """The refusal of a grid that ends on a repeated sigma (``_repeats_last``)."""
    return (f"{name}: final_sigmas_type={cfg.get('final_sigmas_type')!r} here ends on a repeated sigma "
            f"({float(grid[-1]):.6g}): a last step of length 0, which a grid cannot hold; use final_sigmas_type='zero'")


def _euler(s: Any, cfg: Any, step: dict) -> SchedulerMap:
    """EulerDiscreteScheduler: its loop takes one step per timestep, from sigmas[i] to sigmas[i + 1]. The
    grid is those len(timesteps) + 1 sigmas: with ``interpolation_type="log_linear"`` diffusers keeps
    one sigma more than it steps to (its loop ends at sigma_min, not 0), and with
    ``final_sigmas_type="sigma_min"`` the last step runs from sigma_min to sigma_min and leaves the
    sample as it is, so it is dropped (one evaluation fewer, the same result; from two steps on: one
    such step alone is no grid)."""
    grid = _sigmas64(s.sigmas[: len(s.timesteps) + 1])
    if _repeats_last(grid):
        grid = grid[:-1]
    n = len(grid) - 1
    return _karras_ve(s, cfg, "euler", grid, s.timesteps[:n], s.sigmas[:n])


def _heun(s: Any, cfg: Any, step: dict) -> SchedulerMap:
    # diffusers interleaves the stages: sigmas [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0], timesteps [t0, t1, t1, ...]
    import torch

    sig, ts = torch.cat([s.sigmas[:1], s.sigmas[1::2]]), torch.cat([s.timesteps[:1], s.timesteps[1::2]])
    grid = _sigmas64(sig)
    n = len(grid) - 1
    return _karras_ve(s, cfg, "heun", grid, ts, sig[:n])


def _ddim(s: Any, cfg: Any, step: dict) -> SchedulerMap:
    """DDIMScheduler, CogVideoXDDIMScheduler (whose step ignores clip_sample): ddim in t = sqrt(1 - alphas_cumprod)."""
    name = type(s).__name__
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
    if n > 1 and acs[-1] == acs[-2]:  # set_alpha_to_one=False from timestep 0: a last step of zero length
        if name == "DDIMScheduler" and (cfg.get("clip_sample", False) or cfg.get("thresholding", False)):
            # (there, clipping still moves x; CogVideoXDDIMScheduler's step neither clips nor thresholds)
            raise ValueError(f"{name}: the last step runs from timestep {ts[-1]} to the same noise level "
                             "(set_alpha_to_one=False with steps_offset=0), where clip_sample / thresholding "
                             "still change the sample: no ODE step; use set_alpha_to_one=True or steps_offset=1")
        acs, ts, n = acs[:-1], ts[:-1], n - 1  # it leaves the sample as it is: dropped (one evaluation fewer)
    grid = np.sqrt(np.maximum(1.0 - acs, 0.0))
    _check_descends(name, grid)  # (before the clipping weights below divide by its steps)
    schedule = VPSigma()
    smap = SchedulerMap(name, schedule, grid, "ddim", {}, pred, s.timesteps[:n], torch.tensor(grid[:n]))
    if name != "DDIMScheduler":  # CogVideoXDDIMScheduler's step neither clips nor thresholds
        return smap
    a, sg = schedule.alpha(grid), schedule.sigma(grid)
    if step.get("use_clipped_model_output"):
        w = np.ones(n)
    else:  # x_j = alpha_j T(D) + sigma_j eps(D): the effective data prediction of the ddim step i -> i + 1
        w = a[1:] / (a[1:] - sg[1:] * a[:-1] / sg[:-1])  # 1 on a final step to sigma = 0
    return _with_transform(smap, cfg, clip=True, threshold=True, weights=w)


def _multistep_prediction(cfg: Any, name: str) -> str:
    """DPMSolverMultistep's / UniPCMultistep's prediction; the flow prediction only with
    ``use_flow_sigmas`` (diffusers runs it on its VP sigmas too, a conversion no ODE of the flow matches)."""
    pred = _prediction(cfg, name, ("epsilon", "v_prediction", "sample", "flow_prediction"))
    if pred == "flow" and not cfg.get("use_flow_sigmas", False):
        raise ValueError(f"{name}: config option prediction_type='flow_prediction' needs use_flow_sigmas=True "
                         "(on the VP sigmas its loop is no ODE chords_diffusers can reproduce)")
    return pred


#: the spacing options of DPMSolverMultistep / UniPCMultistep that replace the sigmas by VE ones
_VE_SPACINGS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")


def _multistep_schedule(s: Any, cfg: Any) -> cc.Schedule:
    if cfg.get("use_flow_sigmas", False):
        if float(s.sigmas[0]) > 1.0:  # (a user trial: the core's "grid[0]=157.4 lies outside [0, 1]")
            opts = [f"{o}=True" for o in _VE_SPACINGS if cfg.get(o, False)]
            made = f"with {', '.join(opts)} gives VE sigmas" if opts else "with these sigmas has sigmas above 1"
            raise ValueError(f"{type(s).__name__}: config option use_flow_sigmas=True {made} (from "
                             f"{float(s.sigmas[0]):.6g}), not flow sigmas in [0, 1] (diffusers' own loop returns nan "
                             "there)" + (": use one or the other" if opts else ""))
        return cc.RectifiedFlow()
    return VESigmaVP(t_noise=float(s.sigmas[0]))


def _dpm(s: Any, cfg: Any, step: dict) -> SchedulerMap:
    name = type(s).__name__
    order = cfg.solver_order
    n = len(s.timesteps)
    algo = cfg.get("algorithm_type", "dpmsolver++")
    if algo.startswith("sde-"):
        raise ValueError(f"{name}: config option algorithm_type={algo!r} is a stochastic sampler (SDE-DPM-Solver, "
                         f"fresh noise every step); {_ODE}: use algorithm_type='dpmsolver++'")
    if algo != "dpmsolver++":
        raise ValueError(f"{name}: config option algorithm_type={algo!r} is not supported by chords_diffusers; "
                         "use algorithm_type='dpmsolver++' (the data-prediction solver)")
    _reject(
        cfg, name,
        solver_order=lambda v: v in (1, 2, 3),
        solver_type=lambda v: v == "midpoint" or order == 1,
        variance_type=lambda v: v is None,
    )
    final_zero = cfg.get("final_sigmas_type", "zero") == "zero"
    if cfg.get("euler_at_final", False) and not (final_zero or (cfg.lower_order_final and n < 15)) and order > 1:
        raise ValueError(f"{name}: config option euler_at_final=True is not supported by chords_diffusers")
    pred = _multistep_prediction(cfg, name)
    grid = _sigmas64(s.sigmas)
    if _repeats_last(grid):
        # the last step, sigma_min to sigma_min, leaves the sample as it is: dropped (one evaluation
        # fewer, the same result), unless lowering the order on the last steps (lower_order_final,
        # below 15 steps in diffusers) would then lower it on the step before it, which diffusers
        # takes at order 2 (0.7% off at 6 steps of 2M); refused there (diffusers' own loop gives nan
        # at order 3 without that lowering, where the grid without the step gives the sample)
        if order > 1 and cfg.lower_order_final and n < 16:
            raise ValueError(_repeated_sigma(name, cfg, grid) + ", lower_order_final=False or solver_order=1 (with "
                             f"{n} steps the orders would differ from diffusers' on the last steps)")
        grid, n = grid[:-1], n - 1
    solver = {1: "ddim", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order]
    keys = {} if order == 1 else {"lower_order_final": "lower_order_final"}
    smap = SchedulerMap(name, _multistep_schedule(s, cfg), grid, solver, _config_options(cfg, keys), pred,
                        s.timesteps[:n], s.sigmas[:n], config_keys=keys)
    return _with_transform(smap, cfg, clip=False, threshold=True)


def _config_options(cfg: Any, keys: Mapping[str, str]) -> dict:
    """The solver options ``keys`` (option -> config key) read from the scheduler's config
    (``SchedulerMap.config_keys``); ``lower_order_final`` as a bool."""
    return {o: bool(cfg[k]) if o == "lower_order_final" else cfg[k] for o, k in keys.items()}


#: UniPC's solver options -> UniPCMultistepScheduler's config keys (the same values)
_UNIPC_KEYS = {"order": "solver_order", "variant": "solver_type", "lower_order_final": "lower_order_final"}


def _unipc(s: Any, cfg: Any, step: dict) -> SchedulerMap:
    name = type(s).__name__
    _reject(
        cfg, name,
        predict_x0=lambda v: bool(v),
        solver_type=lambda v: v in ("bh1", "bh2"),
        solver_order=lambda v: v in (1, 2, 3),
        disable_corrector=lambda v: not v,
    )
    if getattr(s, "solver_p", None) is not None:
        raise ValueError(f"{name}: solver_p is not supported by chords_diffusers")
    pred = _multistep_prediction(cfg, name)
    grid = _sigmas64(s.sigmas)
    n = len(s.timesteps)
    if _repeats_last(grid):  # (cd.sample failed with the core's "grid must be strictly monotone")
        raise ValueError(_repeated_sigma(name, cfg, grid))
    smap = SchedulerMap(name, _multistep_schedule(s, cfg), grid, "unipc", _config_options(cfg, _UNIPC_KEYS), pred,
                        s.timesteps[:n], s.sigmas[:n], config_keys=dict(_UNIPC_KEYS))
    return _with_transform(smap, cfg, clip=False, threshold=True)


_MAPPERS: dict[str, Callable[[Any, Any, dict], SchedulerMap]] = {
    "FlowMatchEulerDiscreteScheduler": _flow_match,
    "EulerDiscreteScheduler": _euler,
    "HeunDiscreteScheduler": _heun,
    "DDIMScheduler": _ddim,
    "CogVideoXDDIMScheduler": _ddim,
    "DPMSolverMultistepScheduler": _dpm,
    "UniPCMultistepScheduler": _unipc,
}
assert set(_MAPPERS) == set(SUPPORTED_SCHEDULERS) and not set(_MAPPERS) & set(STOCHASTIC_SCHEDULERS)
