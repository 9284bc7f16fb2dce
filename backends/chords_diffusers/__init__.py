"""chords_diffusers: CHORDS on Hugging Face diffusers schedulers, denoisers and pipelines.

- ``map_scheduler(scheduler, steps, **set_timesteps_kwargs) -> SchedulerMap``: the scheduler's sigmas,
  timesteps, prediction type and update rule as a chords_core schedule, grid, prediction and solver;
- ``GuidedNet`` / ``Denoiser`` / ``make_model``: a UNet or transformer call (conditioning, classifier-free
  guidance, per-sample timesteps) as a chords_core ``DiffusionModel``; ``replicate_module``: its copy for
  another device (``devices=...``);
- ``sample_latents(smap, net, latents, cores=...)``: CHORDS on latents; ``sample(pipe, prompt=..., cores=...)``:
  a whole pipeline (StableDiffusion3, Flux, StableDiffusion, StableDiffusionXL, DDPM/DDIM unconditional; the video
  pipelines Wan, HunyuanVideo, CogVideoX);
- ``scheduler_loop``: the scheduler's own sequential loop, the reference.
"""

from .denoiser import Denoiser, GuidedNet, flux_timestep, make_model, replicate_module
from .modular import chords_blocks, chords_loop, is_denoise_loop, with_chords
from .pipelines import SUPPORTED_PIPELINES, ChordsPipelineOutput, make_executor, sample, sample_latents
from .reference import scheduler_loop
from .schedulers import (
    STOCHASTIC_SCHEDULERS,
    SUPPORTED_SCHEDULERS,
    DataTransform,
    SchedulerMap,
    VESigmaVP,
    VPSigma,
    map_scheduler,
)

__version__ = "0.1.0"

__all__ = [
    "map_scheduler", "SchedulerMap", "VESigmaVP", "SUPPORTED_SCHEDULERS", "GuidedNet", "Denoiser", "make_model",
    "sample", "sample_latents", "make_executor", "ChordsPipelineOutput", "SUPPORTED_PIPELINES", "scheduler_loop",
    "replicate_module", "flux_timestep",
]
__all__ += ["VPSigma", "DataTransform", "STOCHASTIC_SCHEDULERS", "with_chords", "chords_blocks", "chords_loop",
            "is_denoise_loop"]
