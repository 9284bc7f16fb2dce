"""chords_diffusers against diffusers' own sequential loops, on tiny random-weight models (no downloads).

Text encoders are tiny CLIP models built from config; their tokenizer is a CLIPTokenizer over a
byte-level vocabulary written to a temp dir (256 byte symbols, their end-of-word forms, the two
special tokens, no merges), so prompts tokenize to one id per character.
"""

import copy
import io
import json
import sys
from unittest.mock import patch

import pytest
import torch
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from helpers import rel_err  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

import chords_core as cc
import chords_diffusers as cd  # noqa: E402

STEPS = 8

pytestmark = pytest.mark.usefixtures("one_thread")


# -- tiny models ---------------------------------------------------------------------------------


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=16)


def _clip_config(tok):
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          max_position_embeddings=16, projection_dim=16, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)


def _vae(**kw):
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, sample_size=8, **kw).eval()


@pytest.fixture(scope="module")
def sd3(tokenizer):
    torch.manual_seed(0)
    cfg = _clip_config(tokenizer)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                               pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(shift_factor=0.06, scaling_factor=1.5),
        text_encoder=CLIPTextModelWithProjection(cfg).eval(), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(cfg).eval(), tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd(tokenizer):
    torch.manual_seed(0)
    un = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                              attention_head_dim=4, norm_num_groups=4).eval()
    pipe = StableDiffusionPipeline(vae=_vae(scaling_factor=0.18215), text_encoder=CLIPTextModel(_clip_config(tokenizer)).eval(),
                                   tokenizer=tokenizer, unet=un,
                                   scheduler=DPMSolverMultistepScheduler(prediction_type="v_prediction"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- schedulers on a UNet2DModel -----------------------------------------------------------------

SCHEDULERS = {
    "ddim-v-leading": lambda: DDIMScheduler(clip_sample=False, prediction_type="v_prediction", steps_offset=1),
    "ddim-v-trailing": lambda: DDIMScheduler(clip_sample=False, prediction_type="v_prediction", timestep_spacing="trailing",
                                             set_alpha_to_one=True),
    "euler-v-karras": lambda: EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True),
    "dpm2m-v": lambda: DPMSolverMultistepScheduler(prediction_type="v_prediction"),
    "dpm3m-eps-lu": lambda: DPMSolverMultistepScheduler(solver_order=3, use_lu_lambdas=True),
    # bh1 with final_sigmas_type="zero" is NaN in diffusers itself (B(h) = -inf times a zero residual at sigma = 0)
    "unipc-v-bh1": lambda: UniPCMultistepScheduler(prediction_type="v_prediction", solver_type="bh1",
                                                   final_sigmas_type="sigma_min"),
    "unipc3-eps": lambda: UniPCMultistepScheduler(solver_order=3),
    "flow-shift3": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_unet_chords_reproduces_scheduler_loop(unet, name):
    sched = SCHEDULERS[name]()
    smap = cd.map_scheduler(sched, STEPS)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(1)) * getattr(sched, "init_noise_sigma", 1.0)
    with torch.no_grad():
        ref = cd.scheduler_loop(sched, lambda xi, t: unet(xi, t, return_dict=False)[0], x)
    net = cd.GuidedNet(unet, batch=1)
    one = cd.sample_latents(smap, net, x, cores=1, progress=False)
    assert one.nfe == STEPS and one.rounds == STEPS
    assert rel_err(one.x, ref) < 2e-6
    four = cd.sample_latents(smap, net, x, cores=4, stop=None, progress=False)
    errs = [rel_err(h.x, ref) for h in four.hits]
    assert [h.core for h in four.hits][-1] == 0 and len(errs) == 4
    assert errs[-1] < 2e-6  # the slowest core is the sequential solve
    assert errs[0] > 1e-5  # the fastest output is an approximation ...
    assert min(errs[1:]) <= errs[0]  # ... and later outputs get closer
    assert four.hits[0].round < STEPS


@pytest.mark.parametrize("method", sorted(cc.METHODS))
def test_every_method_through_sample_latents(unet, method):
    sched = DPMSolverMultistepScheduler(prediction_type="v_prediction")
    smap = cd.map_scheduler(sched, STEPS)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(1)) * sched.init_noise_sigma
    net = cd.GuidedNet(unet, batch=1)
    one = cd.sample_latents(smap, net, x, cores=1, progress=False, method=method, **({"tol": 0.0} if method != "chords" and method != "srds" else {}))
    seq = cd.sample_latents(smap, net, x, cores=1, progress=False)
    assert one.method == method and torch.equal(one.x, seq.x)  # (one core: the same steps, bit for bit)
    many = cd.sample_latents(smap, net, x, cores=3, progress=False, method=method)
    assert many.method == method and many.rounds <= STEPS and many.x.shape == x.shape
    with pytest.raises(ValueError, match="method"):
        cd.sample_latents(smap, net, x, cores=3, progress=False, method="fastest")


def test_a_network_output_that_is_no_tensor_and_latents_of_another_dtype_are_named(unet):
    """A user trial: passing the UNet itself (its ``UNet2DOutput``, or a tuple with ``return_dict=False``)
    failed as an ``AttributeError`` in ``.to`` naming nothing, and float64 latents for a float32 UNet
    inside its first convolution ("Input type (double) and bias type (float) should be the same"), which
    now carries a note naming the latents."""
    smap = cd.map_scheduler(DPMSolverMultistepScheduler(), 6)
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    for net in (lambda xi, t: unet(xi, t), lambda xi, t: unet(xi, t, return_dict=False)):
        with pytest.raises(cc.ModelOutputError, match=r"^round 1, core 0 .*model returned a (UNet2DOutput|tuple) from "
                                                      r"its network, expected a tensor of shape \(2, 2, 8, 8\)"):
            cd.sample_latents(smap, net, x, cores=3, progress=False)
    # (a later trial: under guidance the check came after the guidance arithmetic: None failed in chunk, and a
    # network dropping a row of [uncond; cond] was broadcast by u + g (c - u) into a sample 0.107 off, silently)
    dropped = lambda sample, timestep, **kw: (unet(sample, timestep, return_dict=False)[0][1:],)  # noqa: E731
    nothing = lambda sample, timestep, **kw: (None,)  # noqa: E731
    for net, match in ((dropped, r"model returned shape \(3, 2, 8, 8\) from its network for 4 input rows"),
                       (nothing, r"model returned a NoneType from its network, expected a tensor of shape \(4, 2, 8, 8\)")):
        for cfg_batched in (True, False):
            guided = cd.GuidedNet(net, batch=2, cond={"encoder_hidden_states": torch.zeros(2, 1, 1)},
                                  uncond={"encoder_hidden_states": torch.zeros(2, 1, 1)}, guidance_scale=5.0,
                                  cfg_batched=cfg_batched)
            if not cfg_batched:
                match = match.replace("3, 2", "1, 2").replace("for 4", "for 2").replace("(4, 2", "(2, 2")
            for cores in (1, 3):
                with pytest.raises(cc.ModelOutputError, match=r"^round 1, core 0 .*" + match):
                    cd.sample_latents(smap, guided, x, cores=cores, progress=False)
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(RuntimeError) as got:
            cd.sample_latents(smap, cd.GuidedNet(unet, batch=2), x.to(dtype), cores=2, progress=False)
        assert f"the latents have dtype {dtype}, the network torch.float32: pass latents.to(torch.float32)" in \
            "\n".join(getattr(got.value, "__notes__", [])), got.value
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (a review: a refusal here refused a run that works)
        mixed = cd.sample_latents(smap, cd.GuidedNet(unet, batch=2), x, cores=2, progress=False)
    assert mixed.x.dtype == torch.float32 and torch.isfinite(mixed.x).all()
    cast = cd.sample_latents(smap, cd.GuidedNet(unet, batch=2, x_dtype=torch.float32), x.double(), cores=2,
                             progress=False)  # (x_dtype casts each evaluation's input: accepted)
    assert cast.x.dtype == torch.float64 and torch.isfinite(cast.x).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["flow", "euler", "ddim"])
def test_half_precision_times_reach_the_network_as_the_schedulers_timesteps(name, dtype):
    """A user trial: the engine handed times in the state's dtype, and a grid time rounded to half
    precision fell off the grid, so the network got interpolated timesteps (SD3 in bfloat16: 921.875 for
    923.343; SD with Euler: 998.383 for 999, the input scaled with the rounded sigma); a review: DDIM's
    0.999788 and 0.998349 both round to 1.0 in bfloat16. The denoiser asks for float64 times."""
    sched = {"flow": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0), "euler": EulerDiscreteScheduler,
             "ddim": DDIMScheduler}[name]()
    steps = 8
    smap = cd.map_scheduler(sched, steps)
    seen = []

    def net(x_in, tau):
        seen.append(tau.clone())
        return torch.zeros_like(x_in)

    model = cd.make_model(smap, net)
    x = torch.zeros(1, 3, dtype=dtype)
    cc.solve(model, x, smap.grid, smap.solver)
    got = torch.cat([s[:1] for s in seen]).to(torch.float64)
    assert torch.equal(got, smap.timesteps[:steps].to(torch.float64))


def test_mapping_reads_the_scheduler_grid():
    s = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    smap = cd.map_scheduler(s, 6, mu=0.8)
    assert smap.grid.shape == (7,) and smap.grid[-1] == 0.0 and smap.solver == "euler" and smap.prediction == "flow"
    assert torch.equal(torch.as_tensor(smap.grid[:-1], dtype=torch.float32), s.sigmas[:-1])
    d = cd.map_scheduler(DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True), 12)
    assert d.solver == "dpmpp_3m" and d.solver_options == {"lower_order_final": True} and isinstance(d.schedule, cd.VESigmaVP)
    sch = d.schedule
    a, sg = sch.alpha(d.grid[:-1]), sch.sigma(d.grid[:-1])
    assert abs(a**2 + sg**2 - 1).max() < 1e-12


# -- transformer + flow matching, whole pipelines ------------------------------------------------

def _sd3_kw(**kw):
    return dict(height=16, width=16, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="latent", **kw)


@pytest.mark.parametrize("dynamic", [False, True])
def test_sd3_pipeline_matches_diffusers(sd3, dynamic):
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic)
    extra = {"mu": 0.7} if dynamic else {}
    with torch.no_grad():
        ref = sd3("a cat", num_inference_steps=8, **_sd3_kw(**extra)).images
    one = cd.sample(sd3, "a cat", num_inference_steps=8, cores=1, **_sd3_kw(**extra))
    assert rel_err(one.images, ref) < 1e-6 and one.chords.nfe == 8
    four = cd.sample(sd3, "a cat", num_inference_steps=8, cores=4, stop=None, **_sd3_kw(**extra))
    errs = [rel_err(h.x, ref) for h in four.chords.hits]
    assert errs[-1] < 1e-6 and errs[0] > 1e-5 and min(errs[1:]) <= errs[0]


def test_sd3_pipeline_end_to_end_images(sd3):
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    out = cd.sample(sd3, ["a cat", "a dog"], num_inference_steps=8, cores=3, height=16, width=16, progress=False,
                    generator=torch.Generator().manual_seed(0), stop=cc.StopAtCore(1))
    assert len(out.images) == 2 and out.images[0].size == (16, 16)
    r = out.chords
    assert r.rounds < 8 and r.speedup > 1 and r.hits[0].x.shape == (2, 4, 16, 16) and r.x is r.hits[0].x


def refuses_missing_vae(pipe, **kw):
    """``pipe`` rebuilt with vae=None is refused before its denoiser runs where its default output is decoded
    (a user trial: the whole sampling ran, then "'NoneType' object has no attribute 'modules'"), naming
    pipe.vae and output_type="latent", which then runs. Returns that latent run."""
    bare = type(pipe)(**{**pipe.components, "vae": None})
    bare.set_progress_bar_config(disable=True)
    calls = []
    hook = (getattr(bare, "transformer", None) or bare.unet).register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=rf"^{type(pipe).__name__}: pipe.vae is None; chords_diffusers needs it to "
                                             r"decode output_type='(pil|np)'; output_type='latent' works without it$"):
            cd.sample(bare, num_inference_steps=2, progress=False, **kw)
        assert not calls
        out = cd.sample(bare, num_inference_steps=2, cores=1, progress=False, output_type="latent", **kw)
    finally:
        hook.remove()
    assert len(calls) >= 2 and torch.isfinite(out.latents).all()
    return out


def test_a_pipeline_without_its_vae_is_refused_before_sampling_unless_the_output_is_latent(sd3, sd):
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    refuses_missing_vae(sd3, prompt="a", height=16, width=16)
    refuses_missing_vae(sd, prompt="a", height=16, width=16)
    pipe, kw = _tiny_flux()
    refuses_missing_vae(pipe, **{k: v for k, v in kw.items() if k != "output_type"})


def _tiny_flux(scheduler=None):
    """A tiny random FluxPipeline and its call's embeddings (Flux's T5 tokenizer needs a sentencepiece
    model, so the prompt embeddings are fed directly)."""
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                                axes_dims_rope=(2, 2, 4)).eval()
    pipe = FluxPipeline(scheduler=scheduler or FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                        vae=_vae(shift_factor=0.1, scaling_factor=0.4),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(1, 6, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 16, generator=g),
              negative_prompt_embeds=torch.randn(1, 6, 32, generator=g), negative_pooled_prompt_embeds=torch.randn(1, 16, generator=g),
              true_cfg_scale=2.0, height=16, width=16, guidance_scale=3.5, output_type="latent", max_sequence_length=6)
    return pipe, kw


def test_flux_pipeline_true_cfg_matches_diffusers():
    pipe, kw = _tiny_flux()
    with torch.no_grad():
        ref = pipe(num_inference_steps=6, generator=torch.Generator().manual_seed(0), **kw).images
    three = cd.sample(pipe, num_inference_steps=6, cores=3, stop=None, generator=torch.Generator().manual_seed(0), **kw)
    errs = [rel_err(h.x, ref) for h in three.chords.hits]
    assert errs[-1] < 2e-6 and errs[0] > 1e-4 and min(errs[1:]) <= errs[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flux_transformer_gets_the_pipelines_timesteps_bit_for_bit(dtype):
    """A review: the pipeline gives its transformer ``t.to(latents.dtype) / 1000``; the adapter gave
    ``tau * (1 / 1000)`` in float32, one ulp off at 16 of 28 steps (and not rounded to a half
    dtype first), so ``cores=1`` was not the pipeline's run."""
    pipe, kw = _tiny_flux()
    pipe.to(dtype)
    kw = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    seen: dict[str, list] = {"pipe": [], "chords": []}
    forward = type(pipe.transformer).forward
    mode = "pipe"

    def spy(self, *a, **k):
        seen[mode].append(k["timestep"].detach().clone())
        return forward(self, *a, **k)

    with patch.object(type(pipe.transformer), "forward", spy):
        with torch.no_grad():
            pipe(num_inference_steps=12, generator=torch.Generator().manual_seed(0), **kw)
        mode = "chords"
        cd.sample(pipe, num_inference_steps=12, cores=1, generator=torch.Generator().manual_seed(0), progress=False,
                  **kw)
    ours = [t[0] for t in seen["chords"]]  # (one [uncond; cond] call a step)
    theirs = [t[0] for t in seen["pipe"][::2]]  # (true CFG: a cond and an uncond call a step)
    assert len(ours) == len(theirs) == 12
    assert all(a.dtype == b.dtype == dtype and torch.equal(a, b) for a, b in zip(ours, theirs))


def test_sd_unet_pipeline_matches_diffusers(sd):
    kw = dict(height=16, width=16, guidance_scale=5.0, guidance_rescale=0.3, negative_prompt="blur", output_type="latent")
    with torch.no_grad():
        ref = sd("a cat", num_inference_steps=8, generator=torch.Generator().manual_seed(0), **kw).images
    one = cd.sample(sd, "a cat", num_inference_steps=8, cores=1, generator=torch.Generator().manual_seed(0), **kw)
    assert rel_err(one.latents, ref) < 2e-6
    out = cd.sample(sd, "a cat", num_inference_steps=8, cores=2, generator=torch.Generator().manual_seed(0),
                    height=16, width=16, stop=cc.StopAtCore(1))
    assert out.images[0].size == (16, 16) and out.chords.rounds < 8


def test_pipeline_input_checks_run_as_in_the_pipeline(sd, sd3):
    """The pipeline's own ``check_inputs``: a bad call fails as ``pipe(...)`` does (it ran, or failed
    inside with an AttributeError, before)."""
    kw = dict(num_inference_steps=4, cores=2, output_type="latent")
    with pytest.raises(ValueError, match="Provide either `prompt` or `prompt_embeds`"):
        cd.sample(sd, None, **kw)
    with pytest.raises(ValueError, match="divisible by 8"):
        cd.sample(sd, "a cat", height=12, width=16, **kw)
    with pytest.raises(ValueError, match="Cannot forward both `prompt`"):
        cd.sample(sd, "a cat", prompt_embeds=torch.randn(1, 5, 16), **kw)
    with pytest.raises(ValueError, match="Provide either `prompt` or `prompt_embeds`"):
        cd.sample(sd3, None, **kw)


def test_unconditional_pipeline_and_devices(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False, prediction_type="v_prediction"))
    kw = dict(num_inference_steps=8, batch_size=1, output_type="latent")
    base = cd.sample(pipe, cores=4, stop=None, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    import chords_torch  # noqa: F401
    multi = cd.sample(pipe, cores=4, stop=None, devices=["cpu", "cpu"], generator=torch.Generator().manual_seed(0),
                      progress=False, **kw)
    for a, b in zip(base.chords.hits, multi.chords.hits):
        assert a.core == b.core and rel_err(a.x, b.x) < 1e-6
    for bad in (0, 1.5):  # named as the caller wrote it ("batch must be an integer >= 1")
        with pytest.raises((TypeError, ValueError), match="^batch_size"):
            cd.sample(pipe, cores=2, **{**kw, "batch_size": bad})
    lat = torch.randn(3, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    with pytest.raises(ValueError, match=r"^latents: 3 row\(s\), where batch_size gives 1$"):  # ("the prompts give 1")
        cd.sample(pipe, cores=2, latents=lat, **kw)
    # given latents take the UNet's dtype (float64 ones into a float32 UNet raised in its first conv)
    lat64 = base.chords.hits[0].x.new_zeros(base.chords.hits[0].x.shape, dtype=torch.float64).normal_()
    out = cd.sample(pipe, cores=2, latents=lat64, **kw)
    assert out.images.dtype == unet.dtype
    # an executor=DeviceExecutor(...) with the default replicate: each device its own Denoiser replica
    # (before, the Denoiser, not a module, was shared as is: the first device's network on every device)
    seen = []

    def spy(fn, d):
        replica = chords_torch.replicate(fn, d)
        seen.append((type(fn), replica is not fn))
        return replica

    with chords_torch.DeviceExecutor(["cpu", "cpu"], replicate=spy, batched=True) as ex:
        via = cd.sample(pipe, cores=4, stop=None, executor=ex, generator=torch.Generator().manual_seed(0),
                        progress=False, **kw)
    assert seen == [(cd.Denoiser, True)] * 2
    for a, b in zip(base.chords.hits, via.chords.hits):
        assert rel_err(a.x, b.x) < 1e-6


def test_few_steps_numpy_steps_and_a_solver_option_the_scheduler_sets(unet):
    """A user trial: ``cores`` defaulted to 4 refused a 1- to 3-step schedule ("cores=4 needs at least
    as many steps", a cores never given); ``num_inference_steps=np.int64(8)`` was refused though
    ``pipe(...)`` takes it; a solver option the scheduler's config sets (``lower_order_final``) given
    again failed inside Python ("got multiple values for keyword argument")."""
    import numpy as np

    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False, prediction_type="v_prediction"))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(batch_size=1, output_type="latent", progress=False)
    for steps in (1, 2, 3):
        ref = pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")[0]
        out = cd.sample(pipe, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), stop=None,
                        **{**kw, "output_type": "np"})
        assert out.chords.plan.cores == steps and rel_err(torch.as_tensor(out.images), torch.as_tensor(ref)) < 2e-6
    a = cd.sample(pipe, num_inference_steps=np.int64(5), cores=2, generator=torch.Generator().manual_seed(0), **kw)
    b = cd.sample(pipe, num_inference_steps=5, cores=2, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.images, b.images)
    smap = cd.map_scheduler(DPMSolverMultistepScheduler(prediction_type="v_prediction"), STEPS)
    assert "lower_order_final" in smap.solver_options
    x = torch.randn(1, 2, 8, 8)
    for method in ("chords", "cascade"):
        with pytest.raises(ValueError, match="^lower_order_final: set by the scheduler's configuration"):
            cd.sample_latents(smap, cd.GuidedNet(unet, batch=1), x, cores=2, progress=False, method=method,
                              lower_order_final=False)


def test_an_option_neither_the_method_nor_the_mapped_solver_takes_is_refused_before_any_network_call(unet):
    """``sample_latents`` checks its options against the method and the solver the scheduler maps to
    (``check_options``), before a network call: for every method, an option nobody takes is named with
    the mapped solver's options; another method's option names its owner."""
    calls = []

    def net(x, tau):
        calls.append(1)
        return torch.zeros_like(x)

    smap = cd.map_scheduler(DPMSolverMultistepScheduler(prediction_type="v_prediction"), STEPS)
    x = torch.randn(1, 2, 8, 8)
    for method in sorted(cc.METHODS):
        with pytest.raises(ValueError, match=rf"^foo: unknown option, not of method '{method}' \(its options: .*\) "
                                             rf"nor of solver '{smap.solver}' \(its options: .*lower_order_final"):
            cd.sample_latents(smap, net, x, cores=2, progress=False, method=method, foo=1)
    with pytest.raises(ValueError, match=r"^anderson: an option of cascade, not of method 'chords'"):
        cd.sample_latents(smap, net, x, cores=2, progress=False, method="chords", anderson=2)
    assert calls == []


# -- bad input -----------------------------------------------------------------------------------

def test_unsupported_scheduler_names_the_supported_ones():
    with pytest.raises(ValueError, match="PNDMScheduler.*supported: FlowMatchEulerDiscreteScheduler, EulerDiscreteScheduler"):
        cd.map_scheduler(PNDMScheduler(), 10)


@pytest.mark.parametrize("make, match", [
    (lambda: DDIMScheduler(clip_sample=False, timestep_spacing="linspace"), "timestep_spacing='linspace'"),
    (lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), "algorithm_type='sde-dpmsolver\\+\\+'"),
    (lambda: UniPCMultistepScheduler(disable_corrector=[0]), "disable_corrector"),
    (lambda: EulerDiscreteScheduler(prediction_type="flow_prediction"), "prediction_type='flow_prediction'"),
])
def test_unsupported_options_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        cd.map_scheduler(make(), 12)


def test_a_subclass_of_a_supported_pipeline_is_refused_with_how_to_register_it(sd3, monkeypatch):
    sub = type("MySD3Pipeline", (type(sd3),), {})(**sd3.components)
    sub.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"pipeline MySD3Pipeline is not supported by chords_diffusers \(it subclasses "
                                         r"StableDiffusion3Pipeline: .*ADAPTERS\['MySD3Pipeline'\] = "
                                         r"ADAPTERS\['StableDiffusion3Pipeline'\]\)"):
        cd.sample(sub, "a cat", num_inference_steps=4)
    monkeypatch.setitem(cd.adapters.ADAPTERS, "MySD3Pipeline", cd.adapters.ADAPTERS["StableDiffusion3Pipeline"])
    got = cd.sample(sub, "a cat", num_inference_steps=4, cores=2, **_sd3_kw())
    want = cd.sample(sd3, "a cat", num_inference_steps=4, cores=2, **_sd3_kw())
    assert torch.equal(got.images, want.images)
    # a class registered since import is listed among the supported (SUPPORTED_PIPELINES is a snapshot)
    with pytest.raises(ValueError, match=r"pipeline SD3Transformer2DModel is not supported.*; supported: .*, MySD3Pipeline"):
        cd.sample(sd3.transformer, "a cat")


def test_bad_pipeline_arguments(unet, sd3):
    with pytest.raises(ValueError, match="pipeline UNet2DModel is not supported.*StableDiffusion3Pipeline"):
        cd.sample(unet, "x")
    with pytest.raises(TypeError, match="unsupported argument.*callback_on_step_end.*; supported: .*, return_dict$"):
        cd.sample(sd3, "a cat", num_inference_steps=4, callback_on_step_end=print)  # (sample takes return_dict)
    with pytest.raises(ValueError, match="method_options: stop is an argument of sample itself"):
        cd.sample(sd3, "a cat", num_inference_steps=4, method="srds", method_options={"stop": cc.RunAll()})
    with pytest.raises(ValueError, match="stop: an option of chords, srds, not of method 'cascade'"):
        cd.sample(sd3, "a cat", num_inference_steps=4, method="cascade", stop=None)
    with pytest.raises(ValueError, match="batch=2 rows"):
        cd.GuidedNet(unet, batch=2, cond={"encoder_hidden_states": torch.zeros(3, 4)})
    for bad in (0, 1.5):  # (failed deep inside diffusers: "cannot reshape tensor of 0 elements", repeat() of a float)
        with pytest.raises((TypeError, ValueError), match="^num_images_per_prompt"):
            cd.sample(sd3, "a cat", num_inference_steps=4, num_images_per_prompt=bad)
    # (a user trial: DDIM took a list of 1 generator for 2 samples, drawing both from it, or of 3, ignoring one,
    # where the pipeline refuses both; DDPMPipeline takes them, as diffusers' randn_tensor reads them, and so
    # does chords there, a review)
    ddim = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    ddpm = DDPMPipeline(unet=unet, scheduler=DDIMScheduler())
    ddpm.set_progress_bar_config(disable=True)
    for n in (1, 3):
        gens = lambda n=n: [torch.Generator().manual_seed(i) for i in range(n)]  # noqa: E731
        with pytest.raises(ValueError, match=rf"^generator: a list of {n} generators for batch_size=2; give one"):
            cd.sample(ddim, batch_size=2, num_inference_steps=3, progress=False, generator=gens())
        ref = ddpm(batch_size=2, num_inference_steps=3, generator=gens(), output_type="np").images
        got = cd.sample(ddpm, batch_size=2, num_inference_steps=3, progress=False, generator=gens(), output_type="np")
        assert rel_err(torch.as_tensor(got.images), torch.as_tensor(ref)) < 1e-5
    # latents of other rows than the prompts give: a multiple ran on, cycling the prompts (cat, dog, cat, dog)
    size = sd3.transformer.config.sample_size
    for rows in (4, 3):
        lat = torch.randn(rows, sd3.transformer.config.in_channels, size, size)
        with pytest.raises(ValueError, match=rf"^latents: {rows} row\(s\), where the prompts give 2"):
            cd.sample(sd3, ["a cat", "a dog"], num_inference_steps=4, latents=lat, height=size * 8, width=size * 8)


def test_a_pipeline_without_its_denoiser_or_scheduler_is_named_before_anything_reads_it(sd3, unet):
    # (SD3 and Flux encoded the prompt first, and DDIM read the UNet's config: AttributeErrors on None)
    flux, fkw = _tiny_flux()
    for pipe, attr, kw in ((sd3, "transformer", dict(prompt="a cat")), (flux, "transformer", fkw),
                           (sd3, "scheduler", dict(prompt="a cat")),
                           (DDIMPipeline(unet=unet, scheduler=DDIMScheduler()), "unet", {})):
        broken = type(pipe)(**{**pipe.components, attr: None})
        with pytest.raises(ValueError, match=rf"^{type(pipe).__name__}: pipe.{attr} is None; chords_diffusers needs it"):
            cd.sample(broken, num_inference_steps=3, progress=False, **kw)


def test_progress_none_follows_a_pipelines_disable_none_as_tqdm_does(sd3, monkeypatch):
    # (disable=None, tqdm's "hide where stderr is no terminal", was read as "show")
    from chords_diffusers.pipelines import progress_enabled

    class Pipe:
        _progress_bar_config = {"disable": None}

    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (False, True):
        monkeypatch.setattr(sys, "stderr", Stream(tty))
        assert progress_enabled(Pipe()) is tty
    monkeypatch.setattr(sys, "stderr", Stream(False))
    Pipe._progress_bar_config = {"disable": None, "file": Stream(True)}  # (tqdm asks the bar's own file)
    assert progress_enabled(Pipe()) is True
    closed = io.StringIO()
    closed.close()  # (its isatty raises ValueError: no bar, a review)
    Pipe._progress_bar_config = {"disable": None, "file": closed}
    assert progress_enabled(Pipe()) is False
    Pipe._progress_bar_config = {"disable": False}
    assert progress_enabled(Pipe()) is True
    Pipe._progress_bar_config = {"disable": True}
    assert progress_enabled(Pipe()) is False
    assert progress_enabled(object()) is True  # (no configuration: diffusers shows its bar)


def test_the_bar_follows_a_pipelines_file_and_desc(sd3, monkeypatch):
    """A user trial: only ``disable`` of ``set_progress_bar_config`` was followed; the bar went to stderr
    with its own label while the pipeline's went to the configured file."""
    err, buf = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    pipe = copy.copy(sd3)
    pipe.set_progress_bar_config(file=buf, desc="MYDESC", ascii=True)
    cd.sample(pipe, prompt="a cat", num_inference_steps=3, cores=2, output_type="latent")
    assert "MYDESC: chords " in buf.getvalue() and "3/3" in buf.getvalue() and "█" not in buf.getvalue(), buf.getvalue()
    assert "MYDESC" not in err.getvalue() and "chords " not in err.getvalue()
    pipe.set_progress_bar_config(file=buf, disable=True)
    buf.truncate(0)
    buf.seek(0)
    cd.sample(pipe, prompt="a cat", num_inference_steps=3, cores=2, output_type="latent")
    assert buf.getvalue() == ""


def test_an_executor_evaluating_a_network_of_its_own_is_refused(sd3):
    """A user trial: a ProcessExecutor whose workers were built for "a cat" (guidance 5) returned that
    image for "a dog", bit for bit, for any guidance and batch: its workers evaluate their factory's
    network, never the denoiser ``sample`` builds for the call. Refused, naming the executor."""
    from chords_torch import DeviceExecutor, DistributedExecutor, ProcessExecutor

    assert ProcessExecutor.own_network and DistributedExecutor.own_network
    assert not (DeviceExecutor.own_network or cc.SerialExecutor.own_network or cc.BatchedExecutor.own_network)

    class Elsewhere(cc.SerialExecutor):  # (the executors above start processes or need a process group)
        own_network = True

        def __call__(self, model, xs, ts):
            raise AssertionError("never called")

    with pytest.raises(ValueError, match=r"^executor: Elsewhere evaluates the network its workers were made with"):
        cd.sample(sd3, "a dog", num_inference_steps=4, executor=Elsewhere())
    kw = dict(num_inference_steps=4, height=16, width=16, output_type="latent")
    ok = cd.sample(sd3, "a dog", executor=cc.BatchedExecutor(), generator=torch.Generator().manual_seed(0), **kw)
    ref = cd.sample(sd3, "a dog", generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(ok.latents, ref.latents)


def test_method_none_is_the_recommended_method(sd3):
    """``method=None`` is ``chords_core.parallel``'s recommended method, as there (it was refused)."""
    kw = dict(num_inference_steps=4, height=16, width=16, output_type="latent", cores=2)
    got = cd.sample(sd3, "a cat", method=None, generator=torch.Generator().manual_seed(0), **kw)
    named = cd.sample(sd3, "a cat", method=cc.methods.RECOMMENDED, generator=torch.Generator().manual_seed(0), **kw)
    assert got.chords.method == cc.methods.RECOMMENDED and torch.equal(got.latents, named.latents)
    with pytest.raises(ValueError, match=r"^init is CHORDS' start sequence"):
        cd.sample(sd3, "a cat", method=None, init=[0, 2], num_inference_steps=4)


def test_readme_diffusers_snippet_runs_on_a_tiny_pipeline(sd3, tmp_path, monkeypatch, capsys):
    from test_readme import python_blocks, run_block

    monkeypatch.chdir(tmp_path)
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sd3.set_progress_bar_config(disable=True)
    line, src = next(b for b in python_blocks() if "chords_diffusers" in b[1])
    src = src.replace("num_inference_steps=50", "num_inference_steps=8, height=16, width=16")
    run_block(line, src, {"pipe": sd3})
    assert (tmp_path / "lighthouse.png").exists()
    rounds, nfe = (int(v) for v in capsys.readouterr().out.split()[-2:])
    assert rounds < 8 and nfe >= rounds


# -- what a pipeline does differently: reproduced or refused (user trial 5) ----------------------

def test_sd_with_a_guidance_embedding_unet_is_refused(tokenizer):
    """A UNet with ``time_cond_proj_dim`` makes StableDiffusionPipeline turn guidance off and pass
    ``timestep_cond``: the adapter ran classifier-free guidance instead (0.5 off at guidance 7.5)."""
    torch.manual_seed(0)
    un = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                              attention_head_dim=4, norm_num_groups=4, time_cond_proj_dim=8).eval()
    pipe = StableDiffusionPipeline(vae=_vae(scaling_factor=0.18215), text_encoder=CLIPTextModel(_clip_config(tokenizer)).eval(),
                                   tokenizer=tokenizer, unet=un, scheduler=EulerDiscreteScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with pytest.raises(ValueError, match="StableDiffusionPipeline: a UNet with time_cond_proj_dim"):
        cd.sample(pipe, "a cat", num_inference_steps=4, height=16, width=16, cores=1, output_type="latent")


def test_sd3_dynamic_shift_follows_the_latents_given(sd3):
    """The pipeline takes the sequence length for ``mu`` from the latents it runs on; the adapter took
    it from height and width (6e-3 to 2e-2 off with latents of another size)."""
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    lat = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    for hw in ({}, {"height": 16, "width": 16}):
        kw = dict(num_inference_steps=5, latents=lat, output_type="latent", **hw)
        with torch.no_grad():
            ref = sd3("a cat", generator=torch.Generator().manual_seed(0), **kw).images
        one = cd.sample(sd3, "a cat", cores=1, generator=torch.Generator().manual_seed(0), **kw)
        assert rel_err(one.latents, ref) < 1e-6, hw


def test_images_per_prompt_with_precomputed_embeddings_is_refused(sd3):
    """The flow pipelines make n samples a prompt but do not repeat embeddings they did not encode;
    the adapter returned one sample a prompt, silently."""
    pe, npe, ppe, nppe = sd3.encode_prompt("a cat", None, None, device="cpu")
    with pytest.raises(ValueError, match=r"num_images_per_prompt=2 with prompt_embeds: .*repeat_interleave\(2, 0\)"):
        cd.sample(sd3, prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                  negative_pooled_prompt_embeds=nppe, num_images_per_prompt=2, num_inference_steps=4, cores=1,
                  **_sd3_kw())


def test_a_scheduler_that_scales_the_input_is_refused_where_the_pipeline_never_scales(sd3):
    sd3.scheduler = EulerDiscreteScheduler()
    try:
        with pytest.raises(ValueError, match="StableDiffusion3Pipeline: EulerDiscreteScheduler scales the model input"):
            cd.sample(sd3, "a cat", num_inference_steps=4, cores=1, **_sd3_kw())
    finally:
        sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)


def test_flow_prediction_without_flow_sigmas_and_a_zero_length_ddim_step(unet):
    """diffusers runs flow_prediction on VP sigmas (no ODE chords can reproduce: it was 0.8 off,
    silently): refused. DDIM with set_alpha_to_one=False from timestep 0 ends on a step of zero
    length (refused as no grid): dropped, as the loop leaves the sample as it is there."""
    for make in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        with pytest.raises(ValueError, match="prediction_type='flow_prediction' needs use_flow_sigmas=True"):
            cd.map_scheduler(make(prediction_type="flow_prediction"), 8)
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False)
    smap = cd.map_scheduler(sched, 8)
    assert smap.steps == 7
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = cd.scheduler_loop(sched, lambda xi, t: unet(xi, t, return_dict=False)[0], x)
    one = cd.sample_latents(smap, cd.GuidedNet(unet, batch=1), x, cores=1, progress=False)
    assert rel_err(one.x, ref) < 2e-6 and one.nfe == 7
    with pytest.raises(ValueError, match="set_alpha_to_one=False with steps_offset=0"):
        cd.map_scheduler(DDIMScheduler(clip_sample=True, set_alpha_to_one=False), 8)


def test_flux_drops_a_users_sigmas_with_flow_sigmas_as_the_pipeline_does():
    """FluxPipeline ignores ``sigmas`` when the scheduler has ``use_flow_sigmas``; the adapter passed
    them on and failed inside ``set_timesteps``."""
    pipe, kw = _tiny_flux(UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    kw.update(sigmas=[1.0, 0.8, 0.5, 0.3])
    with torch.no_grad():
        ref = pipe(num_inference_steps=6, generator=torch.Generator().manual_seed(0), **kw).images
    one = cd.sample(pipe, num_inference_steps=6, cores=1, generator=torch.Generator().manual_seed(0), **kw)
    assert rel_err(one.latents, ref) < 2e-6


def test_sd_takes_eta_and_a_custom_schedule_as_the_pipeline(sd):
    """``eta=0.0`` (the pipeline's own default), ``timesteps`` and ``sigmas`` were refused."""
    sched = sd.scheduler
    try:
        sd.scheduler = EulerDiscreteScheduler()
        kw = dict(height=16, width=16, guidance_scale=5.0, output_type="latent", eta=0.0)
        for custom in ({"timesteps": [999, 700, 400, 100]}, {"sigmas": [14.0, 6.0, 2.0, 0.5]}):
            with torch.no_grad():
                ref = sd("a cat", generator=torch.Generator().manual_seed(0), **kw, **custom).images
            one = cd.sample(sd, "a cat", cores=1, generator=torch.Generator().manual_seed(0), **kw, **custom)
            assert rel_err(one.latents, ref) < 2e-6, custom
        with pytest.raises(ValueError, match="give timesteps or sigmas, not both"):
            cd.sample(sd, "a cat", cores=1, timesteps=[999, 500], sigmas=[14.0, 1.0], **kw)
        sd.scheduler = DDIMScheduler(steps_offset=1)
        with pytest.raises(ValueError, match="eta=0.5 makes the sampler stochastic"):
            cd.sample(sd, "a cat", num_inference_steps=4, cores=1, **{**kw, "eta": 0.5})
    finally:
        sd.scheduler = sched


def test_ddpm_and_ddim_pipelines_refuse_a_scheduler_that_scales_the_input(unet):
    """DDPMPipeline / DDIMPipeline never call ``scale_model_input`` (nor multiply by the initial
    noise sigma): with EulerDiscrete the result was 1.0 off the pipeline's on images in [0, 1]."""
    pipe = DDPMPipeline(unet=unet, scheduler=EulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    # (the advice in the UNet's parametrisation: the flow-matching one, followed, gave garbage: a user trial)
    with pytest.raises(ValueError, match="DDPMPipeline: EulerDiscreteScheduler scales the model input.*use a scheduler "
                                         "in the UNet's own parametrisation .*DDIMScheduler"):
        cd.sample(pipe, num_inference_steps=4, cores=1, output_type="np")


def test_flux_images_per_prompt_with_given_embeddings_as_the_pipeline():
    """FluxPipeline makes n images a prompt from 1-row embeddings (its transformer broadcasts them):
    the adapter repeats them and matches (it returned one image a prompt, silently)."""
    pipe, kw = _tiny_flux()
    kw.update(num_images_per_prompt=2)
    with torch.no_grad():
        ref = pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(0), **kw).images
    one = cd.sample(pipe, num_inference_steps=4, cores=1, generator=torch.Generator().manual_seed(0), **kw)
    assert ref.shape[0] == 2 and one.latents.shape == ref.shape and rel_err(one.latents, ref) < 2e-6


def test_flux_negative_embeddings_as_the_pipeline_takes_them():
    """A user trial: with true CFG, FluxPipeline refuses given prompt and negative embeddings of two
    shapes; the adapter failed inside the guidance's concatenation (another sequence length, naming
    neither) or ran (another row count). Refused, naming the negative; one shape runs as the pipeline."""
    pipe, kw = _tiny_flux()
    g = torch.Generator().manual_seed(9)
    for bad in (dict(negative_prompt_embeds=torch.randn(1, 4, 32, generator=g)),
                dict(prompt_embeds=torch.randn(2, 6, 32, generator=g), pooled_prompt_embeds=torch.randn(2, 16, generator=g))):
        with pytest.raises(ValueError, match="must have the same shape"):
            pipe(num_inference_steps=2, **{**kw, **bad})
        with pytest.raises(ValueError, match=r"^negative_prompt_embeds: shape \(\d+, \d+, 32\), and prompt_embeds"):
            cd.sample(pipe, num_inference_steps=2, cores=1, **{**kw, **bad})
    good = cd.sample(pipe, num_inference_steps=2, cores=1, generator=torch.Generator().manual_seed(0), **kw)
    with torch.no_grad():
        assert rel_err(good.latents, pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                                          **kw).images) < 2e-6


def test_sample_takes_the_pipelines_own_defaults(sd3):
    """A user trial: ``cd.sample`` ran 50 steps whatever the pipeline (SD3 and Flux take 28: 4.9e-3 /
    2.6e-3 off ``pipe(...)``, silently); ``init`` alone was refused against the default ``cores=4``;
    arguments passed at the pipeline's own default values (``return_dict=True``, ``callback_on_step_end=
    None``, as code forwarding a pipeline's keywords passes them) were refused as unsupported."""
    sd3.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    with torch.no_grad():
        ref = sd3("a cat", **_sd3_kw()).images
    one = cd.sample(sd3, "a cat", cores=1, return_dict=True, callback_on_step_end=None,
                    callback_on_step_end_tensor_inputs=["latents"], **_sd3_kw())  # (a list default too)
    assert one.chords.nfe == 28 and rel_err(one.images, ref) < 1e-6
    with pytest.raises(TypeError, match="unsupported argument.*callback_on_step_end_tensor_inputs"):
        cd.sample(sd3, "a cat", num_inference_steps=4, callback_on_step_end_tensor_inputs=["latents", "x"], **_sd3_kw())
    with pytest.raises(TypeError, match=r"^devices must be a list of devices, e.g. \['cpu'\], got str"):
        cd.sample(sd3, "a cat", num_inference_steps=4, devices="cpu", **_sd3_kw())
    with pytest.raises(TypeError, match="^method_options must be a dict"):
        cd.sample(sd3, "a cat", num_inference_steps=4, method_options=[("tol", 0.1)], **_sd3_kw())
    got = cd.sample(sd3, "a cat", num_inference_steps=6, init=(0, 3), stop=None, **_sd3_kw())
    assert got.chords.plan.init == (0, 3) and len(got.chords.hits) == 2


@pytest.mark.parametrize("output_type", ["latent", "pt"])
def test_return_dict_false_is_the_pipelines_tuple(sd, sd3, output_type):
    """A user trial: ``return_dict=False`` was refused by SD, SD3 and Flux (only DDPM / DDIM took it).
    ``sample`` takes it for every pipeline (here SD and SD3; a review checked the others): ``out.output``
    is the tuple ``pipe(...)`` returns (SD's with its ``nsfw_content_detected``), ``out.images`` its
    first item."""
    for pipe in (sd, sd3):
        kw = dict(height=16, width=16, num_inference_steps=4, output_type=output_type, return_dict=False)
        with torch.no_grad():
            ref = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw)
        got = cd.sample(pipe, "a cat", cores=1, generator=torch.Generator().manual_seed(0), **kw)
        assert type(got.output) is tuple and len(got.output) == len(ref), type(pipe).__name__
        assert [type(v) for v in got.output] == [type(v) for v in ref]
        assert got.images is got.output[0] and rel_err(got.images, ref[0]) < 1e-5
    with pytest.raises(ValueError, match="^return_dict must be True or False"):
        cd.sample(sd3, "a cat", num_inference_steps=4, return_dict="no", **_sd3_kw())


def test_unipc_ending_on_a_repeated_sigma_is_named():
    """UniPC with flow sigmas and ``final_sigmas_type="sigma_min"`` ends on a repeated sigma, which
    diffusers runs and the mapping passed on to fail in the core as "grid must be strictly monotone"."""
    sched = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                    final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match=r"^UniPCMultistepScheduler: final_sigmas_type='sigma_min' here ends on a "
                                         r"repeated sigma"):
        cd.map_scheduler(sched, 5)


def test_a_quantized_network_is_not_replicated_onto_another_device():
    """A replica rebuilds each parameter as a plain tensor on the target device: a quantized network
    (bitsandbytes, GGUF: parameter subclasses with their quantization state) would lose that state, so
    it is refused, naming devices; on its own device it is used as it is."""
    net = torch.nn.Linear(4, 4)
    assert cd.replicate_module(net, "meta").weight.device.type == "meta"  # a plain module is copied
    net.is_quantized = True
    assert cd.replicate_module(net, "cpu") is net
    with pytest.raises(ValueError, match=r"^devices=\.\.\.: Linear is quantized"):
        cd.replicate_module(net, "meta")


def test_an_adapter_returning_no_job_is_named(monkeypatch):
    """A user trial: an adapter of one's own returning a tuple failed as "'tuple' object has no attribute
    'device'", naming neither the adapter nor ``Job``."""
    from chords_diffusers.adapters import ADAPTERS

    class MyPipeline:
        def __call__(self, prompt=None, num_inference_steps=10):
            raise AssertionError("never called")

    monkeypatch.setitem(ADAPTERS, "MyPipeline", lambda pipe, prompt, steps, kw: ("net", "latents"))
    with pytest.raises(TypeError, match=r"^ADAPTERS\['MyPipeline'\] returned tuple, not a chords_diffusers\.adapters\.Job"):
        cd.sample(MyPipeline(), "a cat")


def test_return_dict_false_with_an_adapter_returning_no_dataclass(sd3, monkeypatch):
    """A review: an adapter of one's own whose ``finish`` returns the images themselves failed with
    ``return_dict=False`` after the whole run ("must be called with a dataclass"); its output is the
    tuple's one item now."""
    import dataclasses

    from chords_diffusers.adapters import ADAPTERS

    shipped = ADAPTERS["StableDiffusion3Pipeline"]

    def adapter(pipe, prompt, steps, kw):
        job = shipped(pipe, prompt, steps, kw)
        return dataclasses.replace(job, finish=lambda x: job.finish(x).images)

    monkeypatch.setitem(ADAPTERS, "StableDiffusion3Pipeline", adapter)
    got = cd.sample(sd3, "a cat", num_inference_steps=4, return_dict=False, **_sd3_kw())
    assert type(got.output) is tuple and len(got.output) == 1 and torch.equal(got.images, got.latents)
