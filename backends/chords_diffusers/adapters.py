"""Per-pipeline adapters: a pipeline's ``__call__`` minus its denoising loop.

An adapter ``adapter(pipe, prompt, steps, kwargs) -> Job`` encodes the prompt with the pipeline's own
methods and returns the denoiser (a ``GuidedNet``), the ``set_timesteps`` keywords (``mu``, custom
``sigmas``), a latent factory (called after the scheduler is configured, since ``init_noise_sigma``
depends on it) and the decoder from final latents to the pipeline's usual output. Call arguments
an adapter does not know raise ``TypeError`` naming them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .denoiser import GuidedNet

__all__ = ["Job", "ADAPTERS"]


@dataclass
class Job:
    """What an adapter returns: a pipeline call, minus its denoising loop.

    Attributes:
        net: the denoiser, ``net(x_in, tau)`` with the prompt's conditioning and guidance.
        make_latents: the initial latents (B, ...), called after the scheduler is configured.
        finish: final latents -> the pipeline's usual output (decoded images).
        device: the pipeline's execution device.
        timestep_kwargs: extra ``set_timesteps`` keywords (``mu``, custom ``sigmas``).
    """

    net: GuidedNet
    make_latents: Callable[[], torch.Tensor]
    finish: Callable[[torch.Tensor], Any]
    device: Any
    timestep_kwargs: dict = field(default_factory=dict)


def _take(kw: dict, pipeline: str, **defaults: Any) -> list:
    """Pop the known arguments (with defaults) from kw; raise on leftovers."""
    vals = [kw.pop(k, v) for k, v in defaults.items()]
    if kw:
        raise TypeError(f"{pipeline}: unsupported argument(s) for chords_diffusers.sample: {', '.join(sorted(kw))}; "
                        f"supported: {', '.join(defaults)}")
    return vals


def _batch_size(prompt: Any, prompt_embeds: Any) -> int:
    if prompt is None and prompt_embeds is None:
        raise ValueError("give prompt or prompt_embeds")
    if prompt is None:
        return prompt_embeds.shape[0]
    return 1 if isinstance(prompt, str) else len(prompt)


def _sd3(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    (negative_prompt, height, width, guidance_scale, num_images_per_prompt, generator, latents, output_type,
     prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, max_sequence_length,
     mu, sigmas) = _take(
        kw, "StableDiffusion3Pipeline", negative_prompt=None, height=None, width=None, guidance_scale=7.0,
        num_images_per_prompt=1, generator=None, latents=None, output_type="pil", prompt_embeds=None,
        negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        max_sequence_length=256, mu=None, sigmas=None)
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe, ppe, nppe = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        device=device, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
    b = pe.shape[0]
    net = GuidedNet(pipe.transformer, batch=b, x_arg="hidden_states", t_arg="timestep",
                    cond={"encoder_hidden_states": pe, "pooled_projections": ppe},
                    uncond={"encoder_hidden_states": npe, "pooled_projections": nppe} if cfg else None,
                    guidance_scale=guidance_scale)
    sc = pipe.scheduler.config
    tkw = {} if sigmas is None else {"sigmas": sigmas}
    if sc.get("use_dynamic_shifting", None) and mu is None:
        p = pipe.transformer.config.patch_size
        seq = (height // pipe.vae_scale_factor // p) * (width // pipe.vae_scale_factor // p)
        mu = calculate_shift(seq, sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                             sc.get("base_shift", 0.5), sc.get("max_shift", 1.16))
    if mu is not None:
        tkw["mu"] = mu

    def make_latents() -> torch.Tensor:
        return pipe.prepare_latents(b, pipe.transformer.config.in_channels, height, width, pe.dtype, device, generator,
                                    latents)

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        if output_type == "latent":
            return StableDiffusion3PipelineOutput(images=x)
        x = x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(x, return_dict=False)[0]
        return StableDiffusion3PipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))

    return Job(net, make_latents, finish, device, tkw)


def _flux(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

    (negative_prompt, true_cfg_scale, height, width, guidance_scale, num_images_per_prompt, generator, latents,
     output_type, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
     max_sequence_length, sigmas) = _take(
        kw, "FluxPipeline", negative_prompt=None, true_cfg_scale=1.0, height=None, width=None, guidance_scale=3.5,
        num_images_per_prompt=1, generator=None, latents=None, output_type="pil", prompt_embeds=None,
        pooled_prompt_embeds=None, negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        max_sequence_length=512, sigmas=None)
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    device = pipe._execution_device
    cfg = true_cfg_scale > 1 and (negative_prompt is not None or negative_prompt_embeds is not None)
    pe, ppe, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_embeds=prompt_embeds,
                                           pooled_prompt_embeds=pooled_prompt_embeds, device=device,
                                           num_images_per_prompt=num_images_per_prompt,
                                           max_sequence_length=max_sequence_length)
    uncond = None
    if cfg:
        npe, nppe, _ = pipe.encode_prompt(prompt=negative_prompt, prompt_2=None, prompt_embeds=negative_prompt_embeds,
                                          pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device,
                                          num_images_per_prompt=num_images_per_prompt,
                                          max_sequence_length=max_sequence_length)
        uncond = {"encoder_hidden_states": npe, "pooled_projections": nppe}
    b = pe.shape[0]
    ch = pipe.transformer.config.in_channels // 4
    lat, image_ids = pipe.prepare_latents(b, ch, height, width, pe.dtype, device, generator, latents)
    cond = {"encoder_hidden_states": pe, "pooled_projections": ppe}
    if pipe.transformer.config.guidance_embeds:
        g = torch.full([b], guidance_scale, device=device, dtype=torch.float32)
        cond["guidance"] = g
        if uncond is not None:
            uncond["guidance"] = g
    net = GuidedNet(pipe.transformer, batch=b, x_arg="hidden_states", t_arg="timestep", t_scale=1 / 1000, cond=cond,
                    uncond=uncond, static={"txt_ids": text_ids, "img_ids": image_ids}, guidance_scale=true_cfg_scale)
    sc = pipe.scheduler.config
    mu = calculate_shift(lat.shape[1], sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                         sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
    if sigmas is None and not sc.get("use_flow_sigmas", False):
        sigmas = np.linspace(1.0, 1 / steps, steps)  # FluxPipeline's default
    tkw = {"mu": mu} if sigmas is None else {"mu": mu, "sigmas": sigmas}

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        if output_type == "latent":
            return FluxPipelineOutput(images=x)
        x = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
        x = x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(x, return_dict=False)[0]
        return FluxPipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))

    return Job(net, lambda: lat, finish, device, tkw)


def _sd(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput

    (negative_prompt, height, width, guidance_scale, guidance_rescale, num_images_per_prompt, generator, latents,
     output_type, prompt_embeds, negative_prompt_embeds) = _take(
        kw, "StableDiffusionPipeline", negative_prompt=None, height=None, width=None, guidance_scale=7.5,
        guidance_rescale=0.0, num_images_per_prompt=1, generator=None, latents=None, output_type="pil",
        prompt_embeds=None, negative_prompt_embeds=None)
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe = pipe.encode_prompt(prompt, device, num_images_per_prompt, cfg, negative_prompt,
                                 prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
    b = pe.shape[0]
    net = GuidedNet(pipe.unet, batch=b, x_arg="sample", t_arg="timestep", cond={"encoder_hidden_states": pe},
                    uncond={"encoder_hidden_states": npe} if cfg else None, guidance_scale=guidance_scale,
                    guidance_rescale=guidance_rescale)

    def make_latents() -> torch.Tensor:
        return pipe.prepare_latents(b, pipe.unet.config.in_channels, height, width, pe.dtype, device, generator,
                                    latents)

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        if output_type == "latent":
            return StableDiffusionPipelineOutput(images=x, nsfw_content_detected=None)
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        image, nsfw = pipe.run_safety_checker(image, device, pe.dtype)
        denorm = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
        image = pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denorm)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)

    return Job(net, make_latents, finish, device)


def _unconditional(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    """DDPMPipeline / DDIMPipeline: an unconditional UNet2DModel on pixels."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    if prompt is not None:
        raise ValueError(f"{type(pipe).__name__} is unconditional: prompt must be None")
    batch_size, generator, latents, output_type = _take(kw, type(pipe).__name__, batch_size=1, generator=None,
                                                        latents=None, output_type="pil")
    unet = pipe.unet
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch_size, unet.config.in_channels, *size)
    device = pipe.device
    net = GuidedNet(unet, batch=batch_size, x_arg="sample", t_arg="timestep")

    def make_latents() -> torch.Tensor:
        x = latents if latents is not None else randn_tensor(shape, generator=generator, device=device,
                                                             dtype=unet.dtype)
        return x * pipe.scheduler.init_noise_sigma

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        image = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "latent":
            return ImagePipelineOutput(images=x)
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return ImagePipelineOutput(images=pipe.numpy_to_pil(image) if output_type == "pil" else image)

    return Job(net, make_latents, finish, device)


ADAPTERS = {
    "StableDiffusion3Pipeline": _sd3,
    "FluxPipeline": _flux,
    "StableDiffusionPipeline": _sd,
    "DDPMPipeline": _unconditional,
    "DDIMPipeline": _unconditional,
}
