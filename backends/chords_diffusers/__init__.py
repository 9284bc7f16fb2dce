"""chords_diffusers: CHORDS on Hugging Face diffusers schedulers, denoisers and pipelines.

- ``map_scheduler(scheduler, steps, **set_timesteps_kwargs) -> SchedulerMap``: the scheduler's sigmas,
  timesteps, prediction type and update rule as a chords_core schedule, grid, prediction and solver;
- ``GuidedNet`` / ``Denoiser`` / ``make_model``: a UNet or transformer call (conditioning, classifier-free
  guidance, per-sample timesteps) as a chords_core ``DiffusionModel``;
- ``sample_latents(smap, net, latents, cores=...)``: CHORDS on latents; ``sample(pipe, prompt=..., cores=...)``:
  a whole pipeline (StableDiffusion3, Flux, StableDiffusion, DDPM/DDIM unconditional);
- ``scheduler_loop``: the scheduler's own sequential loop, the reference.
"""

from .denoiser import Denoiser, GuidedNet, make_model
from .pipelines import SUPPORTED_PIPELINES, ChordsPipelineOutput, make_executor, sample, sample_latents
from .reference import scheduler_loop
from .schedulers import SUPPORTED_SCHEDULERS, SchedulerMap, VESigmaVP, map_scheduler

__version__ = "0.1.0"

__all__ = [
    "map_scheduler", "SchedulerMap", "VESigmaVP", "SUPPORTED_SCHEDULERS", "GuidedNet", "Denoiser", "make_model",
    "sample", "sample_latents", "make_executor", "ChordsPipelineOutput", "SUPPORTED_PIPELINES", "scheduler_loop",
]
