"""chords_diffusers scheduler mappings against diffusers' own loops: Heun, DDIM clip_sample / thresholding,
CogVideoX, the stochastic samplers' errors. Tiny random-weight models built from config (no downloads)."""

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from helpers import rel_err  # noqa: E402

import chords_diffusers as cd

STEPS = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd():
    """A tiny StableDiffusionPipeline fed prompt embeddings (no text encoder)."""
    torch.manual_seed(0)
    un = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                              attention_head_dim=4, norm_num_groups=4).eval()
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, sample_size=8).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=un, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _loop_vs_chords(unet, sched, steps=STEPS, tol=2e-6, **map_kw):
    """The scheduler's own loop vs chords at cores=1 and on the slowest of 4 cores; returns (map, reference)."""
    smap = cd.map_scheduler(sched, steps, **map_kw)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(1)) * float(getattr(sched, "init_noise_sigma", 1.0))
    with torch.no_grad():
        ref = cd.scheduler_loop(sched, lambda xi, t: unet(xi, t, return_dict=False)[0], x)
    net = cd.GuidedNet(unet, batch=1)
    one = cd.sample_latents(smap, net, x, cores=1, progress=False)
    assert rel_err(one.x, ref) < tol
    four = cd.sample_latents(smap, net, x, cores=4, stop=None, progress=False)
    assert len(four.hits) == 4 and rel_err(four.hits[-1].x, ref) < tol and four.hits[0].round < one.rounds
    return smap, ref


# -- A1: Heun ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: HeunDiscreteScheduler(),
    lambda: HeunDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True),
    lambda: HeunDiscreteScheduler(clip_sample=True, clip_sample_range=2.0, timestep_spacing="leading"),
], ids=["eps-linspace", "v-karras", "eps-clip-leading"])
def test_heun_reproduces_its_loop(unet, make):
    smap, _ = _loop_vs_chords(unet, make())
    assert smap.solver == "heun" and smap.grid.shape == (STEPS + 1,) and smap.grid[-1] == 0.0
    assert len(smap.timesteps) == STEPS and smap.scale_input


def test_heun_pipeline_matches_diffusers(sd):
    sd.scheduler = HeunDiscreteScheduler.from_config(sd.scheduler.config)
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(1, 5, 16, generator=g), negative_prompt_embeds=torch.randn(1, 5, 16, generator=g),
              height=16, width=16, guidance_scale=4.0, output_type="latent", num_inference_steps=6)
    with torch.no_grad():
        ref = sd(generator=torch.Generator().manual_seed(0), **kw).images
    one = cd.sample(sd, cores=1, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    assert rel_err(one.latents, ref) < 2e-6 and one.chords.nfe == 2 * 6 - 1  # Heun: 2 calls a step, 1 for the last


@pytest.mark.parametrize("make, steps", [
    (lambda: EulerDiscreteScheduler(interpolation_type="log_linear"), STEPS),  # a sigma more than steps: ends at sigma_min
    (lambda: EulerDiscreteScheduler(final_sigmas_type="sigma_min"), STEPS - 1),  # a last step of length 0: dropped
], ids=["log-linear", "final-sigma-min"])
def test_euler_sigma_options_reproduce_the_loop(unet, make, steps):
    """Both raised at sampling time (an IndexError; "grid must be strictly monotone") though the
    scheduler's own loop runs them."""
    smap, _ = _loop_vs_chords(unet, make())
    assert smap.solver == "euler" and smap.grid.shape == (steps + 1,) and len(smap.timesteps) == steps


@pytest.mark.parametrize("kw", [dict(use_karras_sigmas=True, solver_order=1),
                                dict(use_exponential_sigmas=True, lower_order_final=False),
                                dict(use_beta_sigmas=True, lower_order_final=False)],
                         ids=["karras-order-1", "exponential-2m", "beta-2m"])
def test_dpm_final_sigma_min_on_a_spacing_that_ends_there_reproduces_the_loop(unet, kw):
    """A review: the spacing already ends at sigma_min, so final_sigmas_type="sigma_min" repeats it, a
    last step of length 0 that leaves the sample as it is; cd.sample failed with the core's "grid must
    be strictly monotone". Dropped, as Euler's."""
    smap, _ = _loop_vs_chords(unet, DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **kw))
    assert smap.grid.shape == (STEPS,) and len(smap.timesteps) == STEPS - 1


@pytest.mark.parametrize("steps", [14, 15])
def test_dpm_order_3_on_uneven_log_snr_steps_reproduces_its_loop(unet, steps):
    """A mutation review: DPM-Solver++(3M)'s weight r0 / (r0 + r1) could be swapped for r1 / (r0 + r1)
    with no test failing (the order tests use even log-SNR steps, where r0 = r1), and lower_order_final
    could start at 15 steps instead of below 15 (diffusers' ``len(timesteps) < 15``). Karras sigmas
    make the steps uneven; 14 and 15 steps sit on either side of the cap."""
    smap, _ = _loop_vs_chords(unet, DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True), steps=steps)
    assert smap.solver == "dpmpp_3m"


def test_dpm_final_sigma_min_is_refused_where_dropping_it_would_change_the_orders():
    """With lower_order_final below 16 steps the step before the repeated sigma is diffusers' order 2
    (its last is order 1); the grid without it would lower that one (0.7% off at 6 steps of 2M)."""
    sched = DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", use_karras_sigmas=True)
    with pytest.raises(ValueError, match=r"^DPMSolverMultistepScheduler: final_sigmas_type='sigma_min' here ends on "
                                         r"a repeated sigma .* lower_order_final=False or solver_order=1"):
        cd.map_scheduler(sched, STEPS)
    assert cd.map_scheduler(sched, 16).grid.shape == (16,)  # from 16 steps diffusers lowers no order there


# -- A2: clip_sample / thresholding of the data prediction ---------------------------------------

# (scheduler, tolerance): eps-prediction DDIM with clipping divides by alpha ~ 0.03 at the first step; diffusers'
# own float32 loop is 6e-6 from its float64 loop there, so float rounding is a few 1e-6 (measured 4.8e-6 .. 8.8e-6)
CLIPPED = {
    "ddim-default-clip": (lambda: DDIMScheduler(), 2e-5),
    "ddim-v-clip": (lambda: DDIMScheduler(prediction_type="v_prediction", clip_sample_range=0.5), 2e-6),
    "ddim-threshold": (lambda: DDIMScheduler(thresholding=True, sample_max_value=2.5), 2e-5),
    "dpm-threshold": (lambda: DPMSolverMultistepScheduler(thresholding=True, sample_max_value=2.5), 2e-6),
    "unipc-v-threshold": (lambda: UniPCMultistepScheduler(prediction_type="v_prediction", thresholding=True,
                                                          sample_max_value=2.5), 2e-6),
}


@pytest.mark.parametrize("make, tol", [
    (lambda: UniPCMultistepScheduler(lower_order_final=False, final_sigmas_type="sigma_min"), 2e-6),
    (lambda: UniPCMultistepScheduler(lower_order_final=False, final_sigmas_type="sigma_min", solver_order=3,
                                     prediction_type="v_prediction"), 5e-6),
], ids=["order-2", "order-3-v"])
def test_unipc_without_lower_order_final_reproduces_its_loop(unet, make, tol):
    """(Refused before: the core's UniPC always lowered the order on its last steps.) With the default
    final sigma of 0 diffusers' own loop raises numpy's LinAlgError at the last step; the core takes
    that step at first order (its data prediction), as every solver's step to sigma = 0. Order 3 up to
    the last step differs by 2.4e-6 (2.8e-6 with the network in float64; 3e-7 / 4e-8 with the order
    lowered on the last steps): not explained here; diffusers forms its coefficients from float32
    sigmas, which order-3 extrapolation over the short last steps may amplify."""
    smap, ref = _loop_vs_chords(unet, make(), tol=tol)
    assert smap.solver == "unipc" and smap.solver_options["lower_order_final"] is False
    _, lowered = _loop_vs_chords(unet, type(make())(**{**make().config, "lower_order_final": True}))
    assert rel_err(lowered, ref) > 1e-4  # the option is in effect: the last steps differ


@pytest.mark.parametrize("name", sorted(CLIPPED))
def test_data_transform_reproduces_the_loop(unet, name):
    make, tol = CLIPPED[name]
    sched = make()
    smap, ref = _loop_vs_chords(unet, sched, tol=tol)
    assert smap.prediction == "x0" and smap.x0_transform is not None
    off = {k: False for k in ("clip_sample", "thresholding") if k in sched.config}
    _, plain = _loop_vs_chords(unet, type(sched).from_config(sched.config, **off), tol=2e-5)
    assert _.x0_transform is None  # the transform is active: without it the result differs
    assert rel_err(plain, ref) > 1e-2


def test_ddim_use_clipped_model_output_is_the_plain_ddim_step():
    smap = cd.map_scheduler(DDIMScheduler(), STEPS, step_kwargs={"use_clipped_model_output": True, "eta": 0.0})
    assert (smap.x0_transform.weights == 1.0).all()
    w = cd.map_scheduler(DDIMScheduler(), STEPS).x0_transform.weights  # raw eps in the step: effective weights
    assert w[-1] == 1.0 and (w[:-1] > 1.0).all()


def test_ddim_pipeline_default_clip_and_ddpm_pipeline(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())  # clip_sample=True: diffusers' default
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=STEPS, output_type="np")
    with torch.no_grad():
        ref = torch.as_tensor(pipe(generator=torch.Generator().manual_seed(0), **kw).images)
    one = cd.sample(pipe, cores=1, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    assert rel_err(torch.as_tensor(one.images), ref) < 2e-5
    # DDPM: ancestral and stochastic -> a clear error; its deterministic counterpart runs and matches
    ddpm = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    ddpm.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="DDPMScheduler is a stochastic sampler.*DDIMScheduler.from_config"):
        cd.sample(ddpm, cores=1, progress=False, **kw)
    ddpm.scheduler = DDIMScheduler.from_config(ddpm.scheduler.config)
    with torch.no_grad():
        ref = torch.as_tensor(ddpm(generator=torch.Generator().manual_seed(0), **kw).images)
    one = cd.sample(ddpm, cores=1, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    assert rel_err(torch.as_tensor(one.images), ref) < 2e-5


def test_sd_pipeline_ddim_thresholding(sd):
    # v-prediction: with eps this random UNet amplifies float32 rounding to ~1e-4 (diffusers' own loop too)
    sd.scheduler = DDIMScheduler(thresholding=True, sample_max_value=1.5, clip_sample=False, steps_offset=1,
                                 prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(1, 5, 16, generator=g), negative_prompt_embeds=torch.randn(1, 5, 16, generator=g),
              height=16, width=16, guidance_scale=4.0, output_type="latent", num_inference_steps=STEPS)
    with torch.no_grad():
        ref = sd(generator=torch.Generator().manual_seed(0), **kw).images
    one = cd.sample(sd, cores=1, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    assert rel_err(one.latents, ref) < 5e-6  # measured 1.5e-6 (diffusers' float32 loop is 1.0e-6 from float64)
    assert float(ref.abs().max()) <= 1.0 + 1e-6  # the last step returns the thresholded x0, in [-1, 1]


# -- A5: CogVideoX -------------------------------------------------------------------------------

COGVIDEOX_2B = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                    snr_shift_scale=3.0, timestep_spacing="trailing")  # THUDM/CogVideoX-2b's scheduler config


@pytest.mark.parametrize("cfg", [COGVIDEOX_2B, {**COGVIDEOX_2B, "snr_shift_scale": 1.0, "steps_offset": 1},
                                 {"timestep_spacing": "leading"}], ids=["2b", "5b-like", "eps-default"])
def test_cogvideox_ddim_reproduces_its_loop(unet, cfg):
    sched = CogVideoXDDIMScheduler(**cfg)
    smap, _ = _loop_vs_chords(unet, sched)
    assert smap.solver == "ddim" and isinstance(smap.schedule, cd.VPSigma) and smap.x0_transform is None
    ac = sched.alphas_cumprod.double()
    t0 = int(sched.timesteps[0])
    assert abs(smap.grid[0] - float((1 - ac[t0]).sqrt())) < 1e-12  # the grid is the scheduler's own alphas_cumprod
    if cfg.get("rescale_betas_zero_snr"):
        assert smap.grid[0] == 1.0  # zero terminal SNR: alpha = 0 at the first step, finite in t


def test_ddim_zero_terminal_snr(unet):
    smap, _ = _loop_vs_chords(unet, DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                                  timestep_spacing="trailing", clip_sample=False))
    assert smap.grid[0] == 1.0 and float(smap.schedule.alpha(1.0)) == 0.0


@pytest.mark.parametrize("cls", [DDIMScheduler, CogVideoXDDIMScheduler])
@pytest.mark.parametrize("clip", [False, True])
def test_epsilon_at_zero_terminal_snr_is_refused_naming_the_options(cls, clip):
    """Eps at alpha = 0 gives no data prediction (diffusers' loop returns nan): a user trial saw the core's
    "grid[0]=1: ... start the grid inside the schedule", which a cd.sample caller cannot follow, and with
    DDIM's clip_sample (its default) a non-finite model output at round 1. Refused by map_scheduler naming
    the scheduler and its options; from a timestep below 999 ("leading") eps is defined and mapped."""
    zsnr = dict(rescale_betas_zero_snr=True, clip_sample=clip)
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: prediction_type='epsilon' with rescale_betas_zero_snr="
                                         r"True: alpha is 0 at the first step .*use prediction_type='v_prediction'"
                                         r".*or rescale_betas_zero_snr=False$"):
        cd.map_scheduler(cls(timestep_spacing="trailing", **zsnr), STEPS)
    smap = cd.map_scheduler(cls(timestep_spacing="leading", **zsnr), STEPS)
    assert 0 < smap.grid[0] < 1 and (smap.x0_transform.prediction if clip and cls is DDIMScheduler
                                     else smap.prediction) == "eps"


def test_vpsigma_schedule():
    s = cd.VPSigma()
    t = torch.linspace(0.05, 0.95, 7).double().numpy()
    assert abs(s.alpha(t) ** 2 + s.sigma(t) ** 2 - 1).max() < 1e-15
    assert abs(s.t_from_lam(s.lam(t)) - t).max() < 1e-12
    h = 1e-6
    assert abs((s.alpha(t + h) - s.alpha(t - h)) / (2 * h) - s.d_alpha(t)).max() < 1e-6


# -- A3/A4: stochastic samplers ------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: DDPMScheduler(), "DDPMScheduler is a stochastic sampler.*ODE.*DDIMScheduler"),
    (lambda: EulerAncestralDiscreteScheduler(), "stochastic.*use EulerDiscreteScheduler"),
    # DPMSolverSDEScheduler needs torchsde to be built; the mapping goes by the class name
    (lambda: type("DPMSolverSDEScheduler", (), {})(), "stochastic.*use DPMSolverMultistepScheduler"),
    (lambda: CogVideoXDPMScheduler(), "SDE-DPM-Solver\\+\\+\\(2M\\).*use CogVideoXDDIMScheduler"),
    (lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"),
     "algorithm_type='sde-dpmsolver\\+\\+' is a stochastic sampler.*algorithm_type='dpmsolver\\+\\+'"),
    (lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
     "algorithm_type='dpmsolver'.*use algorithm_type"),
    (lambda: FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), "stochastic_sampling=True.*stochastic_sampling=False"),
])
def test_stochastic_samplers_name_a_deterministic_alternative(make, match):
    with pytest.raises(ValueError, match=match):
        cd.map_scheduler(make(), STEPS)


def test_noise_adding_step_arguments():
    with pytest.raises(ValueError, match="eta=0.5 makes the sampler stochastic.*use eta=0"):
        cd.map_scheduler(DDIMScheduler(), STEPS, step_kwargs={"eta": 0.5})
    with pytest.raises(ValueError, match="s_churn=1.0 .*use s_churn=0"):
        cd.map_scheduler(EulerDiscreteScheduler(), STEPS, step_kwargs={"s_churn": 1.0})
    # as diffusers' pipelines do, arguments the scheduler's step does not take are dropped
    assert cd.map_scheduler(UniPCMultistepScheduler(), STEPS, step_kwargs={"eta": 0.5}).solver == "unipc"
    with pytest.raises(TypeError, match="step_kwargs must be a mapping"):
        cd.map_scheduler(DDIMScheduler(), STEPS, step_kwargs=[("eta", 0.0)])


def test_custom_timesteps_are_checked_by_map_scheduler_itself():
    with pytest.raises(ValueError, match="custom timesteps need a scheduler whose set_timesteps takes them; "
                                         "CogVideoXDDIMScheduler does not"):
        cd.map_scheduler(CogVideoXDDIMScheduler(), 8, timesteps=[999, 500])
    smap = cd.map_scheduler(EulerDiscreteScheduler(), 8, timesteps=[999, 600, 300])  # the custom ones set T
    assert smap.steps == 3


def test_ddim_pipeline_call_arguments_as_the_pipeline(unet):
    """DDIMPipeline's own call arguments: ``output_type="pt"`` is the clamped (B, C, H, W) tensor,
    ``return_dict=False`` a tuple, ``eta=0`` and ``use_clipped_model_output`` go to the scheduler's step
    (eta > 0, stochastic, is refused); each as ``pipe(...)`` returns it."""
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    for kw in (dict(output_type="pt"), dict(output_type="np", return_dict=False),
               dict(output_type="pt", eta=0.0, use_clipped_model_output=True)):
        with torch.no_grad():
            ref = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, **kw)
        got = cd.sample(pipe, cores=1, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                        progress=False, **kw)
        ref_images = ref[0] if isinstance(ref, tuple) else ref.images
        assert isinstance(got.output, tuple) == isinstance(ref, tuple)
        assert type(got.images) is type(ref_images) and tuple(got.images.shape) == tuple(ref_images.shape), kw
        assert rel_err(torch.as_tensor(got.images), torch.as_tensor(ref_images)) < 2e-5, kw
    with pytest.raises(ValueError, match="eta"):
        cd.sample(pipe, cores=1, num_inference_steps=STEPS, eta=0.5, progress=False)
    with pytest.raises(TypeError, match="DDPMPipeline: unsupported argument.*eta"):
        cd.sample(DDPMPipeline(unet=unet, scheduler=DDIMScheduler()), cores=1, num_inference_steps=STEPS, eta=0.0)


@pytest.mark.parametrize("make", [EulerDiscreteScheduler, DPMSolverMultistepScheduler, DDIMScheduler,
                                  FlowMatchEulerDiscreteScheduler])
def test_the_denoiser_reads_no_time_back_from_the_device(make):
    """On a GPU the scheduler keeps its sigmas on the CPU and its timesteps on the device, and the
    Denoiser indexed the one with an index on the other (``IndexError`` on the first call), after
    reading the times back from the device (a synchronisation per call). Both are now on the host:
    here on the meta device (a stand-in for a GPU that holds no values to read back), on and off
    the grid."""
    smap = cd.map_scheduler(make(), STEPS)
    seen = []

    def net(x, tau):
        seen.append((tau.device.type, tau.dtype, tuple(tau.shape)))
        return x * 0.5

    den = cd.Denoiser(net, smap)
    x = torch.empty(2, 4, device="meta")
    from chords_core import _backend as B

    on, off = float(smap.grid[1]), float(0.5 * (smap.grid[2] + smap.grid[3]))
    for times in ([on, float(smap.grid[3])], [on, off]):  # on the grid; one time off it (interpolated)
        out = den(x, B.times_like(times, 1, x, exact=True))
        assert out.device.type == "meta" and out.shape == x.shape
    # the scheduler's own timesteps on the grid, float32 ones where a time is interpolated
    assert seen == [("meta", smap.timesteps.dtype, (2,)), ("meta", torch.float32, (2,))]


def test_two_experts_pick_their_rows_on_the_host():
    """Wan 2.2's two experts: each row's expert was chosen on the device and its count read back
    (``int(high.sum())``, then ``nonzero``: device reads every call). From the timesteps' host values
    the Denoiser keeps beside them, it reads none: here on the meta device (no values to read back),
    with rows on both sides of the boundary, guided, both ways of batching the guidance."""
    smap = cd.map_scheduler(FlowMatchEulerDiscreteScheduler(), STEPS)
    calls = []

    def expert(name):
        def net(sample, timestep, return_dict=False, **kw):
            calls.append((name, tuple(sample.shape), sample.device.type))
            return (sample * 0.5,)
        return net

    taus = smap.timesteps.tolist()
    boundary = 0.5 * (taus[2] + taus[3])
    from chords_core import _backend as B

    for batched in (True, False):
        calls.clear()
        net = cd.GuidedNet(expert("high"), batch=1, net_2=expert("low"), boundary=boundary,
                           cond={"c": torch.zeros(1, 3)}, uncond={"c": torch.ones(1, 3)}, guidance_scale=3.0,
                           guidance_scale_2=2.0, cfg_batched=batched)
        den = cd.Denoiser(net, smap)
        x = torch.empty(4, 2, device="meta")
        times = [float(smap.grid[i]) for i in (0, 1, 4, 5)]  # two rows above the boundary, two below
        out = den(x, B.times_like(times, 1, x, exact=True))
        assert out.device.type == "meta" and out.shape == x.shape
        rows = 2 if not batched else 4  # (guided: uncond and cond rows in one call, or two calls)
        assert sorted(c[0] for c in calls) == (["high", "low"] if batched else ["high", "high", "low", "low"])
        assert all(c[1][0] == rows and c[2] == "meta" for c in calls)


def test_flow_custom_sigmas_ending_at_zero_reproduce_the_loop(unet):
    """Custom sigmas that end at 0 (as SD3 users pass them): FlowMatchEuler appends another 0, a last
    step from 0 to 0 that leaves the sample as it is; it is dropped (a user trial: the core's "grid
    must be strictly monotone", naming no option)."""
    sigmas = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    smap, _ = _loop_vs_chords(unet, FlowMatchEulerDiscreteScheduler(), steps=None, sigmas=sigmas)
    assert smap.grid.tolist() == sigmas and len(smap.timesteps) == 8


@pytest.mark.parametrize("make, kw, name", [
    (lambda: EulerDiscreteScheduler(final_sigmas_type="sigma_min"), dict(num_inference_steps=1), "EulerDiscreteScheduler"),
    (lambda: DDIMScheduler(set_alpha_to_one=False, clip_sample=False), dict(num_inference_steps=1), "DDIMScheduler"),
    (lambda: EulerDiscreteScheduler(), dict(timesteps=[999, 400, 700, 100]), "EulerDiscreteScheduler"),
], ids=["euler-one-step-sigma-min", "ddim-one-zero-length-step", "euler-timesteps-out-of-order"])
def test_noise_levels_that_do_not_descend_are_refused_by_name(make, kw, name):
    """A single step of length 0 (diffusers takes it and leaves the sample as it is) or custom timesteps
    out of order (a step back up in noise): no ODE grid; refused naming the scheduler, its noise
    levels and what to change (they failed in the core's grid check, naming neither)."""
    with pytest.raises(ValueError, match=rf"^{name}: its noise levels \[[-0-9.e, ]+\] do not descend strictly .* "
                                         r"descending order, and a single step one that ends below where it starts"):
        cd.map_scheduler(make(), **kw)


@pytest.mark.parametrize("make, option", [(DPMSolverMultistepScheduler, "use_karras_sigmas"),
                                          (DPMSolverMultistepScheduler, "use_lu_lambdas"),
                                          (UniPCMultistepScheduler, "use_exponential_sigmas"),
                                          (UniPCMultistepScheduler, "use_beta_sigmas")])
def test_flow_sigmas_with_a_ve_spacing_are_refused_naming_both_options(make, option):
    """A user trial: use_flow_sigmas with a spacing option that makes VE sigmas (from 157) failed in the
    core ("grid[0]=157.407 lies outside the schedule's time domain [0, 1]"), naming neither (diffusers'
    own loop returns nan there). UniPC's Karras sigmas stay in [0, 1] there and are mapped."""
    s = make(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, **{option: True})
    with pytest.raises(ValueError, match=f"^{make.__name__}: config option use_flow_sigmas=True with {option}=True "
                                         "gives VE sigmas"):
        cd.map_scheduler(s, 6)
    ok = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, use_karras_sigmas=True)
    assert cd.map_scheduler(ok, 6).solver == "unipc"
