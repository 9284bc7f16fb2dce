"""Per-pipeline adapters: a pipeline's ``__call__`` minus its denoising loop.

An adapter ``adapter(pipe, prompt, steps, kwargs) -> Job`` encodes the prompt with the pipeline's own
methods and returns the denoiser (a ``GuidedNet``), the ``set_timesteps`` keywords (``mu``, custom
``sigmas``), a latent factory (called after the scheduler is configured, since ``init_noise_sigma``
depends on it) and the decoder from final latents to the pipeline's usual output. Call arguments
an adapter does not know raise ``TypeError`` naming them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chords_core.checks import check_int

from .denoiser import GuidedNet, flux_timestep, refuse_step_cache
from .schedulers import takes_custom

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
        step_kwargs: what the pipeline passes to ``scheduler.step`` (``map_scheduler``'s
            ``step_kwargs``: DDIMPipeline's ``eta`` and ``use_clipped_model_output``).
        scales_input: whether the pipeline calls ``scheduler.scale_model_input`` (the flow
            pipelines and DDPM / DDIM do not: a scheduler that needs it, Euler or Heun, is refused
            for them).
        unscaled_advice: the schedulers that refusal (and that of ``flow``) suggests, for this
            pipeline's model (a user trial: the flow-matching advice given to DDPMPipeline's epsilon
            UNet, followed, gave garbage silently; HunyuanVideo's custom sigmas rule out DPMSolverMultistep).
        flow: whether the denoiser is a flow-matching model (True: a scheduler on a diffusion model's
            noise schedule is refused; False: one on flow sigmas is; ``None``: either runs, where the
            pipeline's model may be of either kind: a UNet trained for flow matching runs in
            StableDiffusionPipeline with UniPC on flow sigmas).
    """

    net: GuidedNet
    make_latents: Callable[[], torch.Tensor]
    finish: Callable[[torch.Tensor], Any]
    device: Any
    timestep_kwargs: dict = field(default_factory=dict)
    step_kwargs: dict = field(default_factory=dict)
    scales_input: bool = True
    unscaled_advice: str = ("the pipeline's flow-matching scheduler (FlowMatchEulerDiscreteScheduler), or "
                            "DPMSolverMultistepScheduler / UniPCMultistepScheduler with use_flow_sigmas=True")
    flow: bool | None = None


#: ``Job.unscaled_advice`` for an epsilon-prediction UNet (DDPMPipeline, DDIMPipeline)
EPSILON_ADVICE = ("a scheduler in the UNet's own parametrisation that does not scale the input: DDIMScheduler, "
                  "DPMSolverMultistepScheduler or UniPCMultistepScheduler (without use_flow_sigmas)")


#: arguments that count images (or videos, or samples): integers >= 1, named as the caller wrote them
#: (0 or 1.5 failed deep inside diffusers or torch, or was named as GuidedNet's "batch")
COUNTS = ("batch_size", "num_images_per_prompt", "num_videos_per_prompt")


def _take(kw: dict, pipe: Any, **defaults: Any) -> list:
    """Pop the known arguments (with defaults) from kw, the counts among them checked (``COUNTS``);
    raise on leftovers, except those passed at the value ``pipe.__call__`` takes by default (code that
    forwards a pipeline's keyword arguments passes ``ip_adapter_image=None``, which changes nothing).
    ``sample`` takes ``return_dict`` itself, named among the supported ones where the pipeline has it."""
    vals = [check_int(k, kw.pop(k), 1) if k in COUNTS and k in kw else kw.pop(k, v) for k, v in defaults.items()]
    if kw:
        call = call_params(pipe)
        left = sorted(k for k, v in kw.items() if k not in call or not _is_default(v, call[k].default))
        if left:
            known = list(defaults) + (["return_dict"] if "return_dict" in call else [])
            raise TypeError(f"{type(pipe).__name__}: unsupported argument(s) for chords_diffusers.sample: "
                            f"{', '.join(left)}; supported: {', '.join(known)}")
    return vals


def _is_default(value: Any, default: Any) -> bool:
    """Whether ``value`` is a parameter's ``default``: the same object, or an equal plain value (a number,
    a string, a bool, or a list / tuple of them: ``callback_on_step_end_tensor_inputs=["latents"]``; not an
    array, whose ``==`` is elementwise)."""
    if value is default:
        return True
    if type(value) is not type(default):
        return False
    if type(value) in (list, tuple):
        return len(value) == len(default) and all(_is_default(a, b) for a, b in zip(value, default))
    return type(value) in (bool, int, float, str) and value == default


_CALL_PARAMS: dict = {}  # pipeline class -> its __call__'s parameters


def call_params(pipe: Any) -> Any:
    """The parameters of ``pipe``'s ``__call__`` (its signature, read once per pipeline class)."""
    cls = type(pipe)
    got = _CALL_PARAMS.get(cls)
    if got is None:
        got = _CALL_PARAMS[cls] = inspect.signature(cls.__call__).parameters
    return got


def _batch_size(prompt: Any, prompt_embeds: Any) -> int:
    if prompt is None and prompt_embeds is None:
        raise ValueError("give prompt or prompt_embeds")
    if prompt is None:
        return prompt_embeds.shape[0]
    return 1 if isinstance(prompt, str) else len(prompt)


def component(pipe: Any, name: str, attr: str, why: str = "") -> Any:
    """``pipe.<attr>``, a ``ValueError`` naming it where it is None (a pipeline made without it); ``why``
    ends the message (what it is needed for)."""
    part = getattr(pipe, attr, None)
    if part is None:
        raise ValueError(f"{name}: pipe.{attr} is None; chords_diffusers needs it{why}")
    return part


def _denoiser(pipe: Any, name: str, attr: str = "transformer") -> Any:
    """``pipe.<attr>``, checked: present and without a step cache (which assumes the sequential loop)."""
    net = component(pipe, name, attr)
    refuse_step_cache(net, name, f"pipe.{attr}")
    return net


def _custom_schedule(name: str, timesteps: Any, sigmas: Any) -> dict:
    """A pipeline's custom ``timesteps`` or ``sigmas`` as ``set_timesteps`` keywords (one or none)."""
    if timesteps is not None and sigmas is not None:
        raise ValueError(f"{name}: give timesteps or sigmas, not both")
    return {k: v for k, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None}


def _no_guidance_embedding(unet: Any, name: str) -> None:
    """Refuse a UNet with a guidance embedding (``time_cond_proj_dim``: the pipeline turns classifier-free
    guidance off and passes ``timestep_cond`` instead)."""
    if unet.config.time_cond_proj_dim is not None:
        raise ValueError(f"{name}: a UNet with time_cond_proj_dim (guidance-distilled, e.g. LCM) is not supported; "
                         "use a UNet without a guidance embedding")


def _repeated(n: int, given: Any, *tensors: Any) -> list:
    """The tensors, each row repeated ``n`` times, where the caller gave the prompt embeddings
    (``given``) and asked n samples a prompt: the pipeline makes n latents a prompt and its
    transformer broadcasts embeddings it did not encode and so did not repeat; repeated here they
    give the same result. ``None`` entries and other cases as they are."""
    if n == 1 or given is None:
        return list(tensors)
    return [t if t is None else t.repeat_interleave(n, 0) for t in tensors]


def _negative_rows(name: str, b: int, n: int, given: Any, *tensors: Any) -> list:
    """The negative conditioning's encoded tensors with the ``b`` rows of the prompts: one row broadcast
    to ``b`` (a view), as the pipelines' transformers broadcast it in their separate unconditional call
    (a user trial: a string negative beside two prompts ran in HunyuanVideo's ``pipe(...)``, equal to
    the negative given twice to 9e-8, and was refused here naming an internal key; Wan alike with one
    row of negative embeddings, with ``num_videos_per_prompt`` = ``n`` > 1 too: a review); other counts
    repeated as ``_repeated`` does given embeddings (``given``), then refused naming the negative where
    they are not ``b``. ``b`` rows given are one a sample, taken as they are, as the pipelines take
    them (a user trial: one negative embedding a video, with ``num_videos_per_prompt`` = 2, ran in
    Wan's and HunyuanVideo's ``pipe(...)`` and was refused here)."""
    out = []
    for t in tensors:
        if t is not None and t.shape[0] == 1 and b > 1:
            t = t.expand(b, *t.shape[1:])
        elif t is not None and t.shape[0] != b:
            rows = t.shape[0]
            (t,) = _repeated(n, given, t)
            if t.shape[0] != b:
                raise ValueError(f"{name}: the negative conditioning has {rows} row(s) for the prompts' {b // n}"
                                 f"{f' ({n} videos or images a prompt)' if n > 1 else ''}; give one negative, one a "
                                 f"prompt{', or one a video or image' if n > 1 else ''}")
        out.append(t)
    return out


def _postprocess_video(pipe: Any, video: torch.Tensor, output_type: str) -> Any:
    return pipe.video_processor.postprocess_video(video, output_type=output_type)


def _sd3(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    (negative_prompt, height, width, guidance_scale, num_images_per_prompt, generator, latents, output_type,
     prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, max_sequence_length,
     mu, sigmas) = _take(
        kw, pipe, negative_prompt=None, height=None, width=None, guidance_scale=7.0,
        num_images_per_prompt=1, generator=None, latents=None, output_type="pil", prompt_embeds=None,
        negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        max_sequence_length=256, mu=None, sigmas=None)
    transformer = _denoiser(pipe, "StableDiffusion3Pipeline")  # (first: encode_prompt reads its config)
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(prompt=prompt, prompt_2=None, prompt_3=None, height=height, width=width,
                      negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                      negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                      negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                      max_sequence_length=max_sequence_length)
    if num_images_per_prompt != 1 and prompt_embeds is not None:  # (diffusers itself fails there)
        n = num_images_per_prompt
        raise ValueError(f"StableDiffusion3Pipeline: num_images_per_prompt={n} with prompt_embeds: the pipeline does "
                         f"not repeat embeddings it did not encode; repeat them yourself "
                         f"(prompt_embeds.repeat_interleave({n}, 0), the negative and pooled ones too) and pass "
                         "num_images_per_prompt=1")
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe, ppe, nppe = pipe.encode_prompt(
        prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        device=device, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
    b = pe.shape[0]
    net = GuidedNet(transformer, batch=b, x_arg="hidden_states", t_arg="timestep",
                    cond={"encoder_hidden_states": pe, "pooled_projections": ppe},
                    uncond={"encoder_hidden_states": npe, "pooled_projections": nppe} if cfg else None,
                    guidance_scale=guidance_scale)
    sc = pipe.scheduler.config
    tkw = {} if sigmas is None else {"sigmas": sigmas}
    if sc.get("use_dynamic_shifting", None) and mu is None:
        p = transformer.config.patch_size
        # the pipeline's: from the latents it runs on (a user's latents decide, not height and width)
        lh, lw = ((latents.shape[2], latents.shape[3]) if latents is not None
                  else (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor))
        seq = (lh // p) * (lw // p)
        mu = calculate_shift(seq, sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                             sc.get("base_shift", 0.5), sc.get("max_shift", 1.16))
    if mu is not None:
        tkw["mu"] = mu

    def make_latents() -> torch.Tensor:
        return pipe.prepare_latents(b, transformer.config.in_channels, height, width, pe.dtype, device, generator,
                                    latents)

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        if output_type == "latent":
            return StableDiffusion3PipelineOutput(images=x)
        x = x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(x, return_dict=False)[0]
        return StableDiffusion3PipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))

    return Job(net, make_latents, finish, device, tkw, scales_input=False, flow=True)


def _flux(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

    (negative_prompt, true_cfg_scale, height, width, guidance_scale, num_images_per_prompt, generator, latents,
     output_type, prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds,
     max_sequence_length, sigmas) = _take(
        kw, pipe, negative_prompt=None, true_cfg_scale=1.0, height=None, width=None, guidance_scale=3.5,
        num_images_per_prompt=1, generator=None, latents=None, output_type="pil", prompt_embeds=None,
        pooled_prompt_embeds=None, negative_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        max_sequence_length=512, sigmas=None)
    transformer = _denoiser(pipe, "FluxPipeline")  # (first: encode_prompt reads its dtype)
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(prompt=prompt, prompt_2=None, height=height, width=width, negative_prompt=negative_prompt,
                      prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                      pooled_prompt_embeds=pooled_prompt_embeds,
                      negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                      max_sequence_length=max_sequence_length)
    device = pipe._execution_device
    cfg = true_cfg_scale > 1 and (negative_prompt is not None or negative_prompt_embeds is not None)
    # as FluxPipeline, given embeddings of two shapes refused (a user trial: another sequence length failed
    # inside the guidance's concatenation, naming neither; another row count ran, where the pipeline refuses)
    if cfg and prompt_embeds is not None and negative_prompt_embeds is not None \
            and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(f"negative_prompt_embeds: shape {tuple(negative_prompt_embeds.shape)}, and prompt_embeds "
                         f"{tuple(prompt_embeds.shape)}; FluxPipeline takes given embeddings of one shape")
    pe, ppe, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_embeds=prompt_embeds,
                                           pooled_prompt_embeds=pooled_prompt_embeds, device=device,
                                           num_images_per_prompt=num_images_per_prompt,
                                           max_sequence_length=max_sequence_length)
    pe, ppe = _repeated(num_images_per_prompt, prompt_embeds, pe, ppe)
    uncond = None
    if cfg:
        npe, nppe, _ = pipe.encode_prompt(prompt=negative_prompt, prompt_2=None, prompt_embeds=negative_prompt_embeds,
                                          pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device,
                                          num_images_per_prompt=num_images_per_prompt,
                                          max_sequence_length=max_sequence_length)
        npe, nppe = _negative_rows("FluxPipeline", pe.shape[0], num_images_per_prompt, negative_prompt_embeds, npe,
                                   nppe)
        uncond = {"encoder_hidden_states": npe, "pooled_projections": nppe}
    b = pe.shape[0]
    ch = transformer.config.in_channels // 4
    lat, image_ids = pipe.prepare_latents(b, ch, height, width, pe.dtype, device, generator, latents)
    cond = {"encoder_hidden_states": pe, "pooled_projections": ppe}
    if transformer.config.guidance_embeds:
        g = torch.full([b], guidance_scale, device=device, dtype=torch.float32)
        cond["guidance"] = g
        if uncond is not None:
            uncond["guidance"] = g
    net = GuidedNet(transformer, batch=b, x_arg="hidden_states", t_arg="timestep",
                    timestep=flux_timestep, cond=cond,
                    uncond=uncond, static={"txt_ids": text_ids, "img_ids": image_ids}, guidance_scale=true_cfg_scale)
    sc = pipe.scheduler.config
    mu = calculate_shift(lat.shape[1], sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                         sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
    if sc.get("use_flow_sigmas", False):
        sigmas = None  # the pipeline drops any sigmas then, a user's too: the scheduler's own flow sigmas
    elif sigmas is None:
        sigmas = np.linspace(1.0, 1 / steps, steps)  # FluxPipeline's default
    tkw = {"mu": mu} if sigmas is None else {"mu": mu, "sigmas": sigmas}

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        if output_type == "latent":
            return FluxPipelineOutput(images=x)
        x = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
        x = x / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(x, return_dict=False)[0]
        return FluxPipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))

    return Job(net, lambda: lat, finish, device, tkw, scales_input=False, flow=True)


def _sd(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput

    (negative_prompt, height, width, timesteps, sigmas, eta, guidance_scale, guidance_rescale, num_images_per_prompt,
     generator, latents, output_type, prompt_embeds, negative_prompt_embeds) = _take(
        kw, pipe, negative_prompt=None, height=None, width=None, timesteps=None, sigmas=None,
        eta=0.0, guidance_scale=7.5, guidance_rescale=0.0, num_images_per_prompt=1, generator=None, latents=None,
        output_type="pil", prompt_embeds=None, negative_prompt_embeds=None)
    _no_guidance_embedding(_denoiser(pipe, "StableDiffusionPipeline", "unet"), "StableDiffusionPipeline")
    tkw = _custom_schedule("StableDiffusionPipeline", timesteps, sigmas)
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    pipe.check_inputs(prompt=prompt, height=height, width=width, callback_steps=None, negative_prompt=negative_prompt,
                      prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe = pipe.encode_prompt(prompt, device, num_images_per_prompt, cfg, negative_prompt,
                                 prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
    b = pe.shape[0]
    net = GuidedNet(_denoiser(pipe, "StableDiffusionPipeline", "unet"), batch=b, x_arg="sample", t_arg="timestep",
                    cond={"encoder_hidden_states": pe},
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

    # eta goes to the scheduler's step as the pipeline passes it (DDIM: 0 only; dropped by steps without it)
    return Job(net, make_latents, finish, device, tkw, step_kwargs={"eta": eta})


def _unconditional(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    """DDPMPipeline / DDIMPipeline: an unconditional UNet2DModel on pixels."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    name = type(pipe).__name__
    if prompt is not None:
        raise ValueError(f"{name} is unconditional: prompt must be None")
    step = {"eta": 0.0, "use_clipped_model_output": None} if name == "DDIMPipeline" else {}  # its step arguments
    batch_size, generator, latents, output_type, *step_values = _take(
        kw, pipe, batch_size=1, generator=None, latents=None, output_type="pil", **step)
    step_kwargs = {k: v for k, v in zip(step, step_values) if v is not None}
    if name == "DDIMPipeline" and isinstance(generator, list) and len(generator) != batch_size:  # (as the
        # pipeline refuses it: one generator drew both rows, a third was ignored, silently, a user trial;
        # DDPMPipeline takes any length, as diffusers' randn_tensor reads it, a review)
        raise ValueError(f"generator: a list of {len(generator)} generators for batch_size={batch_size}; give one "
                         "per sample, or one generator")
    unet = _denoiser(pipe, name, "unet")
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch_size, unet.config.in_channels, *size)
    # (where the UNet runs: under model CPU offload pipe.device is the CPU, as diffusers' own loop knows)
    device = pipe._execution_device
    net = GuidedNet(unet, batch=batch_size, x_arg="sample", t_arg="timestep")

    def make_latents() -> torch.Tensor:  # (given latents, this library's extension, on the UNet's device and dtype)
        x = (latents.to(device=device, dtype=unet.dtype) if latents is not None
             else randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype))
        return x * pipe.scheduler.init_noise_sigma

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        # as the pipeline: "pt" the clamped (B, C, H, W) tensor, "pil" images, anything else a clamped
        # (B, H, W, C) numpy array; "latent" (this library's, as for the latent pipelines) the raw state
        if output_type == "latent":
            image = x
        else:
            image = (x / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                image = image.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    image = pipe.numpy_to_pil(image)
        return ImagePipelineOutput(images=image)

    return Job(net, make_latents, finish, device, step_kwargs=step_kwargs, scales_input=False,
               unscaled_advice=EPSILON_ADVICE)


def _sdxl(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

    name = "StableDiffusionXLPipeline"
    (prompt_2, height, width, timesteps, sigmas, guidance_scale, negative_prompt, negative_prompt_2,
     num_images_per_prompt, generator, latents, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
     negative_pooled_prompt_embeds, output_type, guidance_rescale, original_size, crops_coords_top_left, target_size,
     negative_original_size, negative_crops_coords_top_left, negative_target_size, clip_skip) = _take(
        kw, pipe, prompt_2=None, height=None, width=None, timesteps=None, sigmas=None, guidance_scale=5.0,
        negative_prompt=None, negative_prompt_2=None, num_images_per_prompt=1, generator=None, latents=None,
        prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        output_type="pil", guidance_rescale=0.0, original_size=None, crops_coords_top_left=(0, 0), target_size=None,
        negative_original_size=None, negative_crops_coords_top_left=(0, 0), negative_target_size=None, clip_skip=None)
    unet = _denoiser(pipe, name, "unet")
    _no_guidance_embedding(unet, name)
    tkw = _custom_schedule(name, timesteps, sigmas)
    height = height or pipe.default_sample_size * pipe.vae_scale_factor
    width = width or pipe.default_sample_size * pipe.vae_scale_factor
    pipe.check_inputs(prompt=prompt, prompt_2=prompt_2, height=height, width=width, callback_steps=None,
                      negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                      negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                      negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe, ppe, nppe = pipe.encode_prompt(
        prompt=prompt, prompt_2=prompt_2, device=device, num_images_per_prompt=num_images_per_prompt,
        do_classifier_free_guidance=cfg, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        clip_skip=clip_skip)
    b = pe.shape[0]
    proj = int(ppe.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim

    def time_ids(orig: Any, crop: Any, target: Any) -> torch.Tensor:
        ids = pipe._get_add_time_ids(orig or (height, width), crop, target or (height, width), dtype=pe.dtype,
                                     text_encoder_projection_dim=proj)
        return ids.to(device).repeat(b, 1)

    ids = time_ids(original_size, crops_coords_top_left, target_size)
    # diffusers pairs the negative time ids row-interleaved with the batch; the same for every row unless a
    # negative size is given (then each row gets its own negative ids here)
    nids = (time_ids(negative_original_size, negative_crops_coords_top_left, negative_target_size)
            if negative_original_size is not None and negative_target_size is not None else ids)
    net = GuidedNet(unet, batch=b, x_arg="sample", t_arg="timestep",
                    cond={"encoder_hidden_states": pe, "added_cond_kwargs": {"text_embeds": ppe, "time_ids": ids}},
                    uncond={"encoder_hidden_states": npe, "added_cond_kwargs": {"text_embeds": nppe, "time_ids": nids}}
                    if cfg else None, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale)

    def make_latents() -> torch.Tensor:
        return pipe.prepare_latents(b, unet.config.in_channels, height, width, pe.dtype, device, generator, latents)

    def finish(x: Any) -> Any:  # diffusers types images narrower than its pipelines use them
        if output_type == "latent":
            return StableDiffusionXLPipelineOutput(images=x)
        vae = pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            pipe.upcast_vae()
            x = x.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        if getattr(vae.config, "latents_mean", None) is not None and getattr(vae.config, "latents_std",
                                                                             None) is not None:
            mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1).to(x.device, x.dtype)
            std = torch.tensor(vae.config.latents_std).view(1, 4, 1, 1).to(x.device, x.dtype)
            x = x * std / vae.config.scaling_factor + mean
        else:
            x = x / vae.config.scaling_factor
        image = vae.decode(x, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if pipe.watermark is not None:
            image = pipe.watermark.apply_watermark(image)
        return StableDiffusionXLPipelineOutput(images=pipe.image_processor.postprocess(image, output_type=output_type))

    return Job(net, make_latents, finish, device, tkw)


def _wan(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
    from diffusers.utils.torch_utils import get_module_execution_device

    name = "WanPipeline"
    (negative_prompt, height, width, num_frames, guidance_scale, guidance_scale_2, num_videos_per_prompt, generator,
     latents, prompt_embeds, negative_prompt_embeds, output_type, attention_kwargs, max_sequence_length) = _take(
        kw, pipe, negative_prompt=None, height=480, width=832, num_frames=81, guidance_scale=5.0,
        guidance_scale_2=None, num_videos_per_prompt=1, generator=None, latents=None, prompt_embeds=None,
        negative_prompt_embeds=None, output_type="np", attention_kwargs=None, max_sequence_length=512)
    if pipe.config.expand_timesteps:
        raise ValueError(f"{name}: expand_timesteps=True (Wan 2.2 TI2V, per-token timesteps) is not supported; "
                         "use a WanPipeline with expand_timesteps=False (Wan 2.1, Wan 2.2 T2V A14B)")
    pipe.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds, None,
                      guidance_scale_2)
    boundary_ratio = pipe.config.boundary_ratio
    net = _denoiser(pipe, name)
    net_2 = _denoiser(pipe, name, "transformer_2") if boundary_ratio is not None else None
    # the pipeline's own rounding of num_frames, height and width (it warns; so do its callers)
    if num_frames % pipe.vae_scale_factor_temporal != 1:
        num_frames = num_frames // pipe.vae_scale_factor_temporal * pipe.vae_scale_factor_temporal + 1
    num_frames = max(num_frames, 1)
    ph, pw = (pipe.vae_scale_factor_spatial * p for p in net.config.patch_size[1:])
    height, width = height // ph * ph, width // pw * pw
    if boundary_ratio is not None and guidance_scale_2 is None:
        guidance_scale_2 = guidance_scale
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe = pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
                                 num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
                                 negative_prompt_embeds=negative_prompt_embeds,
                                 max_sequence_length=max_sequence_length, device=device)
    (pe,) = _repeated(num_videos_per_prompt, prompt_embeds, pe)
    b = pe.shape[0]
    if cfg:
        (npe,) = _negative_rows(name, b, num_videos_per_prompt, negative_prompt_embeds, npe)
    dtype = net.dtype
    boundary = None if boundary_ratio is None else boundary_ratio * pipe.scheduler.config.num_train_timesteps
    gnet = GuidedNet(net, batch=b, x_arg="hidden_states", t_arg="timestep",
                     cond={"encoder_hidden_states": pe.to(dtype)},
                     uncond={"encoder_hidden_states": npe.to(dtype)} if cfg else None,
                     static={"attention_kwargs": attention_kwargs}, guidance_scale=guidance_scale, x_dtype=dtype,
                     net_2=net_2, boundary=boundary, cfg_batched=False,
                     guidance_scale_2=None if boundary is None else guidance_scale_2)
    lat = pipe.prepare_latents(b, net.config.in_channels, height, width, num_frames, torch.float32, device, generator,
                               latents)

    def finish(x: Any) -> Any:
        if output_type == "latent":
            return WanPipelineOutput(frames=x)
        vae = pipe.vae
        x = x.to(get_module_execution_device(vae), dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(x.device, x.dtype)
        video = vae.decode(x / inv_std + mean, return_dict=False)[0]
        return WanPipelineOutput(frames=_postprocess_video(pipe, video, output_type))

    return Job(gnet, lambda: lat, finish, device, scales_input=False, flow=True)


def _hunyuan_video(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from diffusers.pipelines.hunyuan_video.pipeline_output import HunyuanVideoPipelineOutput

    name = "HunyuanVideoPipeline"
    (prompt_2, negative_prompt, negative_prompt_2, height, width, num_frames, sigmas, true_cfg_scale, guidance_scale,
     num_videos_per_prompt, generator, latents, prompt_embeds, pooled_prompt_embeds, prompt_attention_mask,
     negative_prompt_embeds, negative_pooled_prompt_embeds, negative_prompt_attention_mask, output_type,
     attention_kwargs, prompt_template, max_sequence_length) = _take(
        kw, pipe, prompt_2=None, negative_prompt=None, negative_prompt_2=None, height=720, width=1280, num_frames=129,
        sigmas=None, true_cfg_scale=1.0, guidance_scale=6.0, num_videos_per_prompt=1, generator=None, latents=None,
        prompt_embeds=None, pooled_prompt_embeds=None, prompt_attention_mask=None, negative_prompt_embeds=None,
        negative_pooled_prompt_embeds=None, negative_prompt_attention_mask=None, output_type="pil",
        attention_kwargs=None, prompt_template=DEFAULT_PROMPT_TEMPLATE, max_sequence_length=256)
    if sigmas is None:  # the pipeline's own: num_inference_steps made into custom sigmas (a user trial: 0 was
        # "noise levels [0] do not descend", 4.0 a numpy TypeError, where the other pipelines name the argument)
        sigmas = np.linspace(1.0, 0.0, check_int("num_inference_steps", steps, 1) + 1)[:-1]
    if not takes_custom(pipe.scheduler, "sigmas"):
        raise ValueError(f"{name}: its loop gives the scheduler custom sigmas, which "
                         f"{type(pipe.scheduler).__name__}.set_timesteps does not take (as in diffusers' own loop): "
                         "use FlowMatchEulerDiscreteScheduler")
    net = _denoiser(pipe, name)
    pipe.check_inputs(prompt, prompt_2, height, width, prompt_embeds, None, prompt_template)
    has_negative = negative_prompt is not None or (negative_prompt_embeds is not None
                                                   and negative_pooled_prompt_embeds is not None)
    cfg = true_cfg_scale > 1 and has_negative
    device, dtype = pipe._execution_device, net.dtype

    def encode(p: Any, p2: Any, given: Any, ppe: Any, mask: Any, rows: int | None = None) -> dict:
        """The conditioning; with ``rows`` (the prompts'), the negative's (``_negative_rows``)."""
        got = pipe.encode_prompt(prompt=p, prompt_2=p2, prompt_template=prompt_template,
                                 num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=given,
                                 pooled_prompt_embeds=ppe, prompt_attention_mask=mask, device=device,
                                 max_sequence_length=max_sequence_length)
        pe, ppe, mask = (_repeated(num_videos_per_prompt, given, *got) if rows is None
                         else _negative_rows(name, rows, num_videos_per_prompt, given, *got))
        return {"encoder_hidden_states": pe.to(dtype), "encoder_attention_mask": mask.to(dtype),
                "pooled_projections": ppe.to(dtype)}

    cond = encode(prompt, prompt_2, prompt_embeds, pooled_prompt_embeds, prompt_attention_mask)
    b = cond["encoder_hidden_states"].shape[0]  # (user latents of other rows: refused naming latents, in sample)
    uncond = encode(negative_prompt, negative_prompt_2, negative_prompt_embeds, negative_pooled_prompt_embeds,
                    negative_prompt_attention_mask, b) if cfg else None
    lat = pipe.prepare_latents(b, net.config.in_channels, height, width, num_frames, torch.float32, device,
                               generator, latents)
    cond["guidance"] = torch.tensor([guidance_scale] * b, dtype=dtype, device=device) * 1000.0
    if uncond is not None:
        uncond["guidance"] = cond["guidance"]
    gnet = GuidedNet(net, batch=b, x_arg="hidden_states", t_arg="timestep", cond=cond, uncond=uncond,
                     static={"attention_kwargs": attention_kwargs}, guidance_scale=true_cfg_scale, x_dtype=dtype,
                     cfg_batched=False)

    def finish(x: Any) -> Any:
        if output_type == "latent":
            return HunyuanVideoPipelineOutput(frames=x)
        video = pipe.vae.decode(x.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return HunyuanVideoPipelineOutput(frames=_postprocess_video(pipe, video, output_type))

    return Job(gnet, lambda: lat, finish, device, {"sigmas": sigmas}, scales_input=False, flow=True,
               unscaled_advice="FlowMatchEulerDiscreteScheduler, or UniPCMultistepScheduler with "
                               "use_flow_sigmas=True (its loop gives the scheduler custom sigmas, which "
                               "DPMSolverMultistepScheduler does not take)")


def _cogvideox(pipe: Any, prompt: Any, steps: int, kw: dict) -> Job:
    from diffusers.pipelines.cogvideo.pipeline_output import CogVideoXPipelineOutput

    name = "CogVideoXPipeline"
    (negative_prompt, height, width, num_frames, timesteps, guidance_scale, use_dynamic_cfg, num_videos_per_prompt,
     eta, generator, latents, prompt_embeds, negative_prompt_embeds, output_type, attention_kwargs,
     max_sequence_length) = _take(
        kw, pipe, negative_prompt=None, height=None, width=None, num_frames=None, timesteps=None, guidance_scale=6.0,
        use_dynamic_cfg=False, num_videos_per_prompt=1, eta=0.0, generator=None, latents=None, prompt_embeds=None,
        negative_prompt_embeds=None, output_type="pil", attention_kwargs=None, max_sequence_length=226)
    if num_videos_per_prompt != 1:
        raise ValueError(f"{name}: the pipeline generates one video per prompt (it ignores num_videos_per_prompt="
                         f"{num_videos_per_prompt}); pass the prompt several times instead")
    net = _denoiser(pipe, name)
    tc = net.config
    height = height or tc.sample_height * pipe.vae_scale_factor_spatial
    width = width or tc.sample_width * pipe.vae_scale_factor_spatial
    num_frames = num_frames or tc.sample_frames
    pipe.check_inputs(prompt, height, width, negative_prompt, None, prompt_embeds, negative_prompt_embeds)
    device, cfg = pipe._execution_device, guidance_scale > 1.0
    pe, npe = pipe.encode_prompt(prompt, negative_prompt, cfg, num_videos_per_prompt=1, prompt_embeds=prompt_embeds,
                                 negative_prompt_embeds=negative_prompt_embeds,
                                 max_sequence_length=max_sequence_length, device=device)
    b = pe.shape[0]
    latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    extra_frames = 0  # CogVideoX 1.5 pads the latent frames to a multiple of patch_size_t
    if tc.patch_size_t is not None and latent_frames % tc.patch_size_t != 0:
        extra_frames = tc.patch_size_t - latent_frames % tc.patch_size_t
        num_frames += extra_frames * pipe.vae_scale_factor_temporal
    scale: Any = guidance_scale
    if use_dynamic_cfg and cfg:  # the pipeline's cosine ramp of the scale over the timestep value
        n, g = (len(timesteps) if timesteps is not None else steps), float(guidance_scale)
        scale = lambda tau: 1 + g * (1 - torch.cos(math.pi * ((n - tau.double()) / n) ** 5.0)) / 2  # noqa: E731
    gnet = GuidedNet(net, batch=b, x_arg="hidden_states", t_arg="timestep", cond={"encoder_hidden_states": pe},
                     uncond={"encoder_hidden_states": npe} if cfg else None,
                     static={"attention_kwargs": attention_kwargs, "image_rotary_emb": None}, guidance_scale=scale)

    def make_latents() -> torch.Tensor:  # after set_timesteps: prepare_latents scales by init_noise_sigma
        x = pipe.prepare_latents(b, tc.in_channels, num_frames, height, width, pe.dtype, device, generator, latents)
        if tc.use_rotary_positional_embeddings:  # (cos, sin) over the latent's frames, as the pipeline builds them
            gnet.static["image_rotary_emb"] = pipe._prepare_rotary_positional_embeddings(height, width, x.size(1),
                                                                                         device)
        return x

    def finish(x: Any) -> Any:
        if output_type == "latent":
            return CogVideoXPipelineOutput(frames=x)
        video = pipe.decode_latents(x[:, extra_frames:])
        return CogVideoXPipelineOutput(frames=_postprocess_video(pipe, video, output_type))

    # eta goes to the scheduler's step as the pipeline passes it: DDIMScheduler's uses it (eta > 0, stochastic, was
    # dropped here: 0.41 off the pipeline at 0.5; refused now), CogVideoXDDIMScheduler's takes it and ignores it
    step = {} if type(pipe.scheduler).__name__ == "CogVideoXDDIMScheduler" else {"eta": eta}
    return Job(gnet, make_latents, finish, device, {"timesteps": timesteps} if timesteps is not None else {},
               step_kwargs=step, flow=False, unscaled_advice="CogVideoXDDIMScheduler (or DDIMScheduler, "
               "DPMSolverMultistepScheduler, UniPCMultistepScheduler without use_flow_sigmas) with the model's "
               "own prediction_type")


ADAPTERS = {
    "StableDiffusion3Pipeline": _sd3,
    "FluxPipeline": _flux,
    "StableDiffusionPipeline": _sd,
    "StableDiffusionXLPipeline": _sdxl,
    "WanPipeline": _wan,
    "HunyuanVideoPipeline": _hunyuan_video,
    "CogVideoXPipeline": _cogvideox,
    "DDPMPipeline": _unconditional,
    "DDIMPipeline": _unconditional,
}
