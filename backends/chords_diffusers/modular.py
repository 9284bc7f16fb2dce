"""The generic path: CHORDS as the denoising block of diffusers' modular pipelines.

A modular pipeline (``diffusers.modular_pipelines``: ``FluxModularPipeline``,
``StableDiffusionXLModularPipeline``, ``WanModularPipeline``, ...) is a tree of blocks, and its denoising
loop is a ``LoopSequentialPipelineBlocks`` whose sub-blocks run once per timestep ``t`` (index ``i``):

    [before_denoiser ...] -> denoiser (network + guidance: sets ``noise_pred``) -> after_denoiser (``scheduler.step``)

when ``after_denoiser`` is a plain ``latents = scheduler.step(noise_pred, t, latents)``: its class is in
``PLAIN_STEP_BLOCKS`` (the text-to-image / video loops of Flux, Flux2, SD3, SDXL, Wan, QwenImage, LTX,
HunyuanVideo 1.5, Z-Image, ...; not inpainting, whose step block also blends the mask).
``chords_loop(loop, cores=4, ...)`` is a block that replaces such a loop: it maps the (already
configured) scheduler with ``map_scheduler`` and runs CHORDS on ``latents``, with the loop's own
sub-blocks before ``after_denoiser`` as the denoiser ``net(x_in, tau)``; the step block is dropped
(the chords solver is the step). ``with_chords(pipe, ...)`` returns the pipeline with every such loop
replaced, sharing its components; ``chords_blocks(blocks, ...)`` does it on a block tree. The run's
``Result`` is the state's ``chords_result``.

Evaluations: ``batched=True`` (default) evaluates all points of a round in one call. The model
blocks then see N = P x B rows: ``latents`` and every other tensor of the block state whose first
dimension is the batch B are tiled P times (names in ``fixed`` are left alone: by default
``DEFAULT_FIXED``, Flux's RoPE position ids and the schedule), ``t`` is the (N,) per-row timesteps and
``i`` the first row's loop index. Where the blocks depend on the step beyond ``t``
(``step_dependence``: a guider by the step, a block reading ``i``, Wan 2.2's experts), a call's points
are evaluated in groups of one step index each (exact; batched only where points share a step).
``verify=True`` checks the first batched call of several points against one call per point and
raises ``ValueError`` naming the tiled tensors if they differ (a tensor tiled that should not be, or
one left that should be tiled): a cheap check for a pipeline not yet tested with the generic path.
``batched=False`` calls the blocks once per point with B rows, a scalar ``t`` and the exact ``i``, as
the loop does. With ``cores=1`` either is the pipeline's own loop to float rounding.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import operator
import textwrap
import types
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

import chords_core as cc
from chords_core import _backend as B
from chords_core.checks import check_int
from chords_core.inits import validate_init

from .denoiser import count_points, refuse_step_cache
from .pipelines import method_arguments, progress_enabled, progress_options, sample_latents
from .schedulers import SchedulerMap, map_scheduler, unscaled_input

__all__ = ["chords_loop", "chords_blocks", "with_chords", "is_denoise_loop", "step_dependence", "batch_dependence",
           "DEFAULT_FIXED", "PLAIN_STEP_BLOCKS", "STEP_FREE_BLOCKS"]

STEP_BLOCK, MODEL_BLOCK = "after_denoiser", "denoiser"

# model blocks (diffusers 0.42) whose __call__ reads the loop index i without depending on the step: Flux3's denoiser
# reads it only to log a warning at step 0
STEP_FREE_BLOCKS: set[str] = {"Flux3LoopDenoiser"}

# after_denoiser blocks (diffusers 0.42) that do nothing but latents = scheduler.step(noise_pred, t, latents) (and a
# dtype cast): CHORDS replaces exactly that. Inpainting's mask blending, LTX's image-to-video frame pinning, Echo's
# re-noising, LTX-2's audio step are not in it. Add a class name after checking its __call__.
PLAIN_STEP_BLOCKS: set[str] = {
    "AnimaLoopAfterDenoiser", "ErnieImageLoopAfterDenoiser", "FluxLoopAfterDenoiser", "Flux2LoopAfterDenoiser",
    "Flux3LoopAfterDenoiser", "HunyuanVideo15LoopAfterDenoiser", "Ideogram4LoopAfterDenoiser", "Krea2LoopAfterDenoiser",
    "LTXLoopAfterDenoiser", "QwenImageLoopAfterDenoiser", "QwenImage21LoopAfterDenoiser",
    "StableDiffusion3LoopAfterDenoiser", "StableDiffusionXLLoopAfterDenoiser", "WanLoopAfterDenoiser",
    "ZImageLoopAfterDenoiser",
}
# what the refusal of a scheduler that scales the input suggests for a loop that never calls scale_model_input
UNSCALED_ADVICE = ("the scheduler the pipeline was built with, or one in the model's parametrisation that does not "
                   "scale the input (FlowMatchEulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler, "
                   "UniPCMultistepScheduler)")
# block-state tensors that are not per sample even when their first dimension happens to equal the batch
DEFAULT_FIXED: tuple[str, ...] = ("timesteps", "sigmas", "txt_ids", "img_ids", "latent_image_ids")


def is_denoise_loop(block: Any) -> bool:
    """Whether ``block`` is a denoising loop CHORDS can run: ``[...], denoiser, after_denoiser``, a plain step.

    Args:
        block: a modular pipeline block.

    Returns:
        True for a ``LoopSequentialPipelineBlocks`` whose sub-blocks end in ``denoiser``, ``after_denoiser``
        with the latter's class in ``PLAIN_STEP_BLOCKS``.
    """
    if not _is_loop(block):
        return False
    subs = block.sub_blocks
    names = list(subs)
    return names[-2:] == [MODEL_BLOCK, STEP_BLOCK] and type(subs[STEP_BLOCK]).__name__ in PLAIN_STEP_BLOCKS


class _NoScale:
    """The scheduler, but ``scale_model_input`` is the identity (the chords ``Denoiser`` scales the input);
    ``called``: whether a block called it (a loop that never does must not be scaled: ``LoopNet``)."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler, self.called = scheduler, False

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.called = True
        return sample

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)


class _Components:
    """The pipeline as the loop's sub-blocks see it, with the scheduler wrapped in ``_NoScale``."""

    def __init__(self, pipe: Any) -> None:
        self._pipe, self.scheduler = pipe, _NoScale(pipe.scheduler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


class LoopNet:
    """The loop's model blocks as ``net(x_in, tau)``: the denoiser of a chords run.

    Args:
        blocks: the loop's sub-blocks before ``after_denoiser``, in order.
        components: the pipeline (its scheduler is wrapped so that ``scale_model_input`` is the identity).
        block_state: the loop's block state (inputs and conditioning for B rows).
        timesteps: the loop's timesteps (for ``i``).
        fixed: block-state names never tiled.
        verify: check the first batched call of several points against per-point calls.
        scaled: where the chords ``Denoiser`` scales the input (``SchedulerMap.scale_input``), the
            loop's name, for the message (``None``: it does not scale): the first call then checks
            that the blocks call ``scale_model_input``, and raises ``ValueError`` where they do not
            (a user trial: modular Wan, which never calls it, with EulerDiscreteScheduler was 1.4
            off its own loop at ``cores=1``, silently).
        declared: the names the pipeline's blocks declare (``declared_names``): a name of ``fixed``
            neither among them nor in ``block_state`` (nested dicts' keys included) raises ``ValueError``.

    Attributes:
        last: the block state of the latest call (its intermediates, e.g. ``noise_pred``).
        by_step: why the blocks depend on the step (``step_dependence``); where any, a call's points
            are evaluated in groups of one step index each.
    """

    def __init__(self, blocks: Sequence[Any], components: Any, block_state: Any, timesteps: torch.Tensor,
                 fixed: Sequence[str] = DEFAULT_FIXED, verify: bool = False, scaled: str | None = None,
                 declared: Collection[str] = ()) -> None:
        self.blocks, self.components, self.state = list(blocks), _Components(components), block_state
        self._unchecked_scale = scaled
        self.batch = int(block_state.latents.shape[0])
        self._ts = timesteps.detach().cpu().double().numpy()
        self.fixed, self.verify = tuple(fixed), verify
        held: set[str] = set()  # the names ``_state`` tiles: the block state's values and those nested in its dicts
        for k, v in block_state.as_dict().items():
            held.update((k, *map(str, v)) if isinstance(v, dict) else (k,))
        unknown = [n for n in self.fixed if n not in held and n not in declared and n not in DEFAULT_FIXED]
        if unknown:  # (a user trial: a misspelt name was accepted, and its tensor tiled, silently; a name a
            # block declares is absent from calls that do not give it, a negative prompt's embeddings, say)
            raise ValueError(f"fixed: {unknown[0]!r} names no value of the loop's block state, which holds "
                             f"{sorted(held)}, nor one the pipeline's blocks declare")
        self.by_step = step_dependence(components, self.blocks)
        self._tiled: dict[int, dict] = {}
        self.tiled_names: list[str] = []
        self.last: Any = None

    def _state(self, points: int) -> Any:
        """A copy of the block state with the B-row tensors tiled ``points`` times (cached)."""
        from diffusers.modular_pipelines import BlockState

        vals = self._tiled.get(points)
        if vals is None:
            b = self.batch

            def tile(k: str, v: Any) -> Any:
                if (points == 1 or k in self.fixed or k == "latents" or not isinstance(v, torch.Tensor) or v.dim() == 0
                        or v.shape[0] != b):
                    return v
                if k not in self.tiled_names:
                    self.tiled_names.append(k)
                return v.repeat(points, *([1] * (v.dim() - 1)))

            vals = {k: ({kk: tile(kk, vv) for kk, vv in v.items()} if isinstance(v, dict) else tile(k, v))
                    for k, v in self.state.as_dict().items()}
            self._tiled[points] = vals
        return BlockState(**vals)

    def __call__(self, x_in: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``noise_pred`` of the model blocks at latents ``x_in`` and timesteps ``tau``.

        Args:
            x_in: (N, ...) latents, N = P x B (P points of B rows, point-major).
            tau: (N,) model timesteps.

        Returns:
            (N, ...) the blocks' ``noise_pred``.
        """
        points = count_points(x_in.shape[0], self.batch)
        out = self._run(x_in, tau, points)
        if self._unchecked_scale is not None:
            loop, self._unchecked_scale = self._unchecked_scale, None
            sched = self.components.scheduler
            if not sched.called:
                raise unscaled_input(type(sched._scheduler).__name__, loop, UNSCALED_ADVICE)
        if self.verify and points > 1:
            self.verify = False
            one = torch.cat([self._run(xp, tp, 1) for xp, tp in zip(x_in.split(self.batch), tau.split(self.batch))])
            err = float((out - one).abs().max()) / max(1.0, float(one.abs().max()))
            if not err < 1e-3:
                raise ValueError(
                    f"chords_diffusers.modular: a batched call of {points} points differs from one call per point "
                    f"(relative {err:.3g}); tiled block-state tensors: {self.tiled_names}. Add the names that are "
                    "not per sample to fixed=...; where a block mixes the rows of a call (a guider normalising "
                    "over the batch, say), use batched=False")
        return out

    def _step(self, t: Any) -> int:
        """The loop index of timestep ``t`` (the nearest of the loop's timesteps)."""
        return int(np.abs(self._ts - float(t)).argmin())

    def _run(self, x_in: torch.Tensor, tau: torch.Tensor, points: int) -> torch.Tensor:
        # (the timesteps' values on the host: kept beside tau by the Denoiser, so no read from the device)
        host = B.host_times(tau)
        # (each point's step index only where the blocks depend on it: otherwise the first row's is passed)
        steps = [self._step(host[p * self.batch]) for p in range(points if self.by_step else 1)]
        if len(set(steps)) > 1:  # one call per step index, with its points
            out: torch.Tensor | None = None
            for i in sorted(set(steps)):
                mine = [p for p in range(points) if steps[p] == i]
                picked = np.array([p * self.batch + r for p in mine for r in range(self.batch)])
                rows = B.upload(torch.from_numpy(picked), x_in.device)
                # (the picked timesteps from their host values, the same values in tau's dtype, uploaded with
                # them kept beside: ``_backend.upload_times``, their one home)
                sub = B.upload_times(torch.from_numpy(host[picked]).to(tau.dtype), tau.device)
                part = self._run(x_in.index_select(0, rows), sub, len(mine))
                if out is None:
                    out = part.new_empty((x_in.shape[0], *part.shape[1:]))
                out.index_copy_(0, rows, part)
            assert out is not None
            return out
        bs = self._state(points)
        bs.latents = x_in
        t = tau[0] if bool((host == host[0]).all()) else tau  # one timestep: a scalar, as the loop passes it
        i = steps[0]
        comp = self.components
        for block in self.blocks:
            comp, bs = block(comp, bs, i=i, t=t)
        self.last = bs
        return bs.noise_pred


@functools.cache
def _loop_class() -> type:
    """The block class (built on first use: importing diffusers.modular_pipelines takes seconds)."""
    from diffusers.modular_pipelines import ModularPipelineBlocks
    from diffusers.modular_pipelines.modular_pipeline_utils import OutputParam

    class ChordsDenoiseLoop(ModularPipelineBlocks):
        """A denoising loop run by CHORDS; see ``chords_loop``."""

        def __init__(self, loop: Any, options: dict | None) -> None:
            super().__init__()
            self.loop, self.options = loop, options  # options None: a loop CHORDS cannot run (raises when called)

        @property
        def model_name(self) -> Any:
            return self.loop.model_name

        @property
        def description(self) -> str:
            if self.options is None:
                return f"{type(self.loop).__name__}: a loop of another layout, which the generic CHORDS path rejects"
            return f"CHORDS ({self.options.get('cores')} cores) in place of {type(self.loop).__name__}'s loop"

        @property
        def expected_components(self) -> list:
            return self.loop.expected_components

        @property
        def expected_configs(self) -> list:
            return self.loop.expected_configs

        @property
        def inputs(self) -> list:
            return self.loop.inputs

        @property
        def intermediate_outputs(self) -> list:
            return [*self.loop.intermediate_outputs,
                    OutputParam("chords_result", type_hint=cc.Result, description="the CHORDS run (rounds, nfe, hits)")]

        def set_progress_bar_config(self, **kwargs: Any) -> None:
            self.loop.set_progress_bar_config(**kwargs)

        @torch.no_grad()
        def __call__(self, components: Any, state: Any) -> tuple[Any, Any]:
            if self.options is None:
                raise ValueError(_layout_error(self.loop))
            loop, opts = self.loop, dict(self.options)
            components, bs = _block_state_at_first_step(loop, components, state)
            if getattr(bs, "cache_enabled", False):  # (QwenImage 2.1: a KV cache the steps fill in turn)
                raise ValueError(f"chords_diffusers.modular: {type(loop).__name__} keeps a key-value cache filled "
                                 "step by step (use_kv_cache=True), which points of different steps cannot share; "
                                 "run the pipeline with use_kv_cache=False")
            for spec in loop.expected_components:  # (a cache on modular Flux failed at 4 cores inside the
                # transformer, naming neither; modular Wan ran on, a user trial; chords_diffusers.sample refused it)
                refuse_step_cache(getattr(components, spec.name, None), "chords_diffusers.modular",
                                  f"pipe.{spec.name}")
            scheduler = components.scheduler
            if not torch.equal(bs.timesteps.cpu(), scheduler.timesteps.cpu()):
                raise ValueError(
                    "chords_diffusers.modular: the loop's timesteps are not the scheduler's (e.g. img2img with "
                    "strength < 1 starts part-way); the generic path runs full schedules only")
            step = {"eta": getattr(bs, "eta", None), **(opts.pop("step_kwargs", None) or {})}  # SDXL's loop takes eta
            smap: SchedulerMap = map_scheduler(scheduler, step_kwargs=step)
            fixed, verify = opts.pop("fixed", DEFAULT_FIXED), opts.pop("verify", False)
            batched = opts.pop("batched", True)
            progress = opts.pop("progress", None)
            if progress is None:  # the loop's progress-bar setting
                progress = progress_enabled(loop)
            model_blocks = list(loop.sub_blocks.values())[:-1]
            init = opts.get("init")  # (an array init: its truth value is ambiguous)
            one = opts.get("cores") == 1 or (opts.get("cores") is None and init is not None and len(init) == 1)
            if not one:  # (one point a round: the cores' steps cannot mix)
                _refuse_momentum(components)
            net = LoopNet(model_blocks, components, bs, bs.timesteps, fixed, verify,
                          type(loop).__name__ if smap.scale_input else None,
                          declared_names(getattr(components, "blocks", None) or loop))
            mixing = batch_dependence(components, bs.latents.dim()) if batched and not one else []
            if mixing:
                warnings.warn(f"chords_diffusers.modular: {'; '.join(mixing)}: the points are evaluated one call "
                              "each (as batched=False), since a call of several points would normalise over all "
                              "their rows", UserWarning, stacklevel=2)
                batched = False
            if batched and not one and net.by_step:
                warnings.warn(f"chords_diffusers.modular: {'; '.join(net.by_step)}: a batched call holds the points of "
                              "one step only (a round's points at different steps go in separate calls)", UserWarning,
                              stacklevel=2)
            if not batched:
                opts["executor"] = cc.SerialExecutor()
            with progress_options(loop):
                res = sample_latents(smap, net, bs.latents, progress=progress, **opts)
            last = net.last
            for p in loop.intermediate_outputs:  # the loop's other outputs: from the latest evaluation
                if p.name != "latents" and not hasattr(bs, p.name) and last is not None and hasattr(last, p.name):
                    setattr(bs, p.name, getattr(last, p.name))
            bs.latents = res.x.to(bs.latents.dtype)
            loop.set_block_state(state, bs)
            state.set("chords_result", res)
            return components, state

    return ChordsDenoiseLoop


def declared_names(block: Any) -> set[str]:
    """The names ``block`` and its sub-blocks, recursively, declare as inputs or intermediate outputs: of
    the whole pipeline, the values a block state may hold (a negative prompt's embeddings, which SDXL's
    loop holds only where the call gives them)."""
    names = {*(getattr(block, "input_names", None) or ()), *(getattr(block, "intermediate_output_names", None) or ())}
    for sub in (getattr(block, "sub_blocks", None) or {}).values():
        names |= declared_names(sub)
    return names


class _AtFirstStep(Exception):
    """Raised by the stand-in loop step of ``_block_state_at_first_step`` with what the loop hands it."""

    def __init__(self, components: Any, block_state: Any) -> None:
        super().__init__("the loop reached its first step")
        self.components, self.block_state = components, block_state


def _block_state_at_first_step(loop: Any, components: Any, state: Any) -> tuple[Any, Any]:
    """(components, block state) as the loop's own ``__call__`` hands them to its first step: the wrapper's
    set-up before its loop runs (the block state alone missed it: QwenImage's ``additional_cond_kwargs``,
    an ``AttributeError``; SDXL's guider switched off for a guidance-distilled UNet, 0.28 off the
    pipeline), and the loop ends there (a stand-in step raises). A loop that never reaches a step (no
    timesteps): its block state as it is."""
    def first_step(components: Any, block_state: Any, **_: Any) -> Any:
        raise _AtFirstStep(components, block_state)

    probe = copy.copy(loop)  # (patched, not the shared block: two runs at once patched each other's)
    probe.loop_step = first_step
    bar = loop.__dict__.get("_progress_bar_config")  # (its own bar stays shut: CHORDS shows its own)
    probe._progress_bar_config = {**(bar if isinstance(bar, dict) else {}), "disable": True}
    try:
        probe(components, state)
    except _AtFirstStep as at:
        return at.components, at.block_state
    bs = loop.get_block_state(state)
    if len(getattr(bs, "timesteps", ())):  # (a loop that steps otherwise ran its whole loop here)
        raise ValueError(f"chords_diffusers.modular: {type(loop).__name__}.__call__ does not step through "
                         "self.loop_step; the generic path cannot run it")
    return components, bs


def chords_loop(loop: Any, /, *, cores: int | None = None, init: Sequence[int] | None = None,
                stop: Any = cc.stopping.DEFAULT_STOP, method: str | None = "chords", batched: bool = True,
                fixed: Sequence[str] = DEFAULT_FIXED, verify: bool = False, step_kwargs: dict | None = None,
                progress: bool | None = None, **method_options: Any) -> Any:
    """A block running CHORDS in place of the denoising loop ``loop``; see the module docstring.

    Args:
        loop: a denoising loop block (``is_denoise_loop``).
        cores: K, the number of cores (``None``: 4, or ``len(init)``; ``sample_latents``).
        init: the cores' start indices.
        stop: the stop rule.
        method: the parallel method (``sample_latents``).
        batched: one call for all points of a round (``False``: one call per point).
        fixed: block-state names never tiled in batched calls.
        verify: check the first batched call of several points against one call per point.
        step_kwargs: the ``scheduler.step`` arguments of the loop (``map_scheduler``; e.g. ``eta``).
        progress: show a progress bar (``None``: follow the loop's ``set_progress_bar_config``).
        method_options: further options of the method (e.g. ``history``, ``tol``).

    Returns:
        The block (a ``ModularPipelineBlocks``). Raises ``ValueError`` if ``loop`` is not of the
        standard layout.
    """
    if not is_denoise_loop(loop):
        raise ValueError(_layout_error(loop))
    for name, value in (("batched", batched), ("verify", verify)):  # (verify="no" was read as True)
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool or None, got {type(progress).__name__}")
    # ("txt_ids" was split into characters; a generator is read once, into the tuple)
    names = tuple(fixed) if isinstance(fixed, Iterable) and not isinstance(fixed, (str, bytes)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(f"fixed must be a collection of block-state names, got {fixed!r}")
    if step_kwargs is not None and not isinstance(step_kwargs, Mapping):
        raise TypeError(f"step_kwargs must be a dict of scheduler.step arguments, got {type(step_kwargs).__name__}")
    # (here, not first when the pipeline runs, after the blocks before the loop: the steps, and so
    # cores and init against them, are known only then)
    if cores is not None:
        check_int("cores", cores, 1)
    if init is not None:
        validate_init(init, 1 << 62, cores)
    cc.stopping.as_stop_rule(stop)
    _one_device(method_options)
    # (the solver is mapped from the scheduler when the pipeline runs: an option no solver takes is refused
    # here, not after diffusers has logged the block's traceback twice, a user trial)
    method = method_arguments(method, cores, init, stop, method_options, any_solver=True)[0]
    options = dict(cores=cores, init=init, stop=stop, method=method, batched=batched, fixed=names,
                   verify=verify, step_kwargs=step_kwargs, progress=progress, **method_options)
    return _loop_class()(copy.deepcopy(loop), options)


def _one_device(options: Mapping[str, Any]) -> None:
    """Refuse ``devices`` and executors that evaluate elsewhere (``ValueError`` naming them): the loop's
    network runs the pipeline's own blocks on the pipeline's device, with one block state, and has no
    replica for another device or process (a review: every device thread ran the first device's
    transformer on its own device's latents). The pipelines' adapters (``chords_diffusers.sample``)
    replicate their networks."""
    if options.get("devices") is not None:
        raise ValueError("devices: the generic modular path runs the pipeline's blocks on the pipeline's device only; "
                         "for several devices use chords_diffusers.sample(pipe, ..., devices=...) with a supported "
                         "pipeline class")
    ex = options.get("executor")
    if ex is not None and not isinstance(ex, (cc.SerialExecutor, cc.BatchedExecutor)):
        raise ValueError(f"executor: the generic modular path evaluates on the pipeline's device in this process "
                         f"(SerialExecutor or BatchedExecutor), got {type(ex).__name__}; for several devices use "
                         "chords_diffusers.sample(pipe, ..., devices=...) with a supported pipeline class")


def _layout_error(loop: Any) -> str:
    subs = getattr(loop, "sub_blocks", None) or {}
    names = list(subs)
    if names[-2:] == [MODEL_BLOCK, STEP_BLOCK]:
        return (f"{type(loop).__name__}: its step block {type(subs[STEP_BLOCK]).__name__} is not in "
                "chords_diffusers.modular.PLAIN_STEP_BLOCKS (blocks that only call scheduler.step); the generic CHORDS "
                "path cannot run it (e.g. inpainting's mask blending changes the latents outside the ODE). If its "
                "__call__ is a plain scheduler.step, add its class name to PLAIN_STEP_BLOCKS")
    return (f"{type(loop).__name__} is not a denoising loop of the standard layout [..., '{MODEL_BLOCK}', "
            f"'{STEP_BLOCK}'] (its sub-blocks: {names}); the generic CHORDS path cannot run it")


def chords_blocks(blocks: Any, /, **options: Any) -> Any:
    """A copy of the block tree ``blocks`` with every denoising loop replaced by ``chords_loop(loop, **options)``.

    Loops of another layout (e.g. inpainting's, which blends the mask after each step) are replaced by a
    block that raises ``ValueError`` when the pipeline runs that workflow: never a silent sequential run.

    Args:
        blocks: a modular pipeline's blocks (e.g. ``FluxAutoBlocks()``), or a loop itself.
        options: ``chords_loop``'s options.

    Returns:
        The new block tree. Raises ``ValueError`` when it holds no denoising loop of the standard layout.
    """
    if is_denoise_loop(blocks):
        return chords_loop(blocks, **options)
    blocks = copy.deepcopy(blocks)
    found: list[str] = []
    others: list[str] = []
    converted: list[str] = []  # loops already replaced by CHORDS (with_chords on its own result)

    def walk(block: Any, path: str) -> None:
        subs = getattr(block, "sub_blocks", None) or {}
        for name, sub in list(subs.items()):
            where = f"{path}.{name}" if path else name
            if isinstance(sub, _loop_class()) and getattr(sub, "options", None) is not None:
                converted.append(where)
            elif is_denoise_loop(sub):
                subs[name] = chords_loop(sub, **options)
                found.append(where)
            elif _is_loop(sub):
                subs[name] = _loop_class()(sub, None)
                others.append(f"{where} ({type(sub).__name__}: {list(sub.sub_blocks)})")
            else:
                walk(sub, where)

    walk(blocks, "")
    if converted and not found:
        raise ValueError(f"{type(blocks).__name__} runs CHORDS already (at {', '.join(converted)}): with_chords and "
                         "chords_blocks take the pipeline's own blocks; call with_chords on the original pipeline "
                         "for other options")
    if not found:
        extra = f"; loops of another layout: {', '.join(others)}" if others else ""
        raise ValueError(f"{type(blocks).__name__} holds no denoising loop of the standard layout [..., "
                         f"'{MODEL_BLOCK}', '{STEP_BLOCK}']{extra}")
    return blocks


def _is_loop(block: Any) -> bool:
    from diffusers.modular_pipelines import LoopSequentialPipelineBlocks

    return isinstance(block, LoopSequentialPipelineBlocks)


def _refuse_momentum(components: Any) -> None:
    """A ``ValueError`` naming ``cores`` for a guider that keeps state from step to step (adaptive
    projected guidance with momentum: its buffer, reset at step 0, mixed every core's steps; the
    slowest core was 9.3e-3 off with ``batched=False``, a batched call a raw torch error)."""
    cfg = _guider_config(components)
    if any(k.endswith("_momentum") and v is not None for k, v in cfg.items()):
        raise ValueError(f"cores: the guider {type(components.guider).__name__} carries momentum from step to step, "
                         "which the cores' interleaved steps would mix; run it on one core, or without momentum")


def _guider_config(components: Any) -> dict:
    """The enabled guider's config with its ``start`` / ``stop`` (``{}``: none)."""
    guider = getattr(components, "guider", None)
    if guider is None or not getattr(guider, "_enabled", True):
        return {}
    cfg = dict(getattr(guider, "config", None) or {})
    cfg.update(start=getattr(guider, "_start", 0.0), stop=getattr(guider, "_stop", 1.0))
    return cfg


def batch_dependence(components: Any, ndim: int) -> list[str]:
    """Why the loop's model blocks mix the rows of a call, so that a call of several points differs from
    one call a point: a guider normalising over the batch axis (a ``*norm_dim`` config option holding
    axis 0 of the ``ndim``-D latents: adaptive projected guidance's
    ``adaptive_projected_guidance_norm_dim=0`` put 4 cores' points in one norm, 0.027 off the
    pipeline's own loop, silently: a user trial).

    Returns:
        One line per reason (empty: the rows of a call are independent, as far as known).
    """
    out = []
    for k, v in _guider_config(components).items():
        if k.endswith("norm_dim") and v is not None and _reduces_axis_0(v, ndim):
            out.append(f"the guider {type(components.guider).__name__} normalises over the batch axis ({k}={v!r})")
    return out


def _reduces_axis_0(dims: Any, ndim: int) -> bool:
    """Whether torch's ``dim=dims`` reduces axis 0 of an ``ndim``-D tensor: an integer (numpy's too)
    equal to 0 modulo ``ndim``, a sequence holding one, or an empty sequence, which torch reduces over
    every axis (a review: ``norm_dim=()`` was 2.2e-3 off, silently). Unknown values count."""
    try:
        return operator.index(dims) % ndim == 0
    except TypeError:
        pass
    if isinstance(dims, (list, tuple)):
        if not dims:
            return True
        try:
            return any(operator.index(d) % ndim == 0 for d in dims)
        except TypeError:
            return True
    return True


def step_dependence(components: Any, blocks: Sequence[Any]) -> list[str]:
    """Why the loop's model blocks behave differently at different steps, so that one call cannot
    hold points of several steps (it passes one loop index ``i``, the first row's):

    - a guider whose guidance depends on the step (``start`` / ``stop`` other than 0 and 1, any
      ``*_steps`` / ``*_step`` > 0: CFG on half the steps gave the faster cores' outputs 1.6e-2 to
      4.1e-2 off, CFG-Zero*'s ``zero_init_steps`` 3e-2 to 9e-2, silently);
    - a block whose ``__call__`` reads ``i`` other than in the guider's ``set_state(step=i)`` (judged
      by the guider's config; passing it on counts, as do ``*args`` / ``**kwargs``): SDXL's and
      QwenImage's ControlNet denoisers (``controlnet_keep[i]``), Ideogram4's ``gw[i]``, Flux3's
      distilled target timestep, ...; a block whose source cannot be read counts; class names in
      ``STEP_FREE_BLOCKS`` do not;
    - Wan 2.2's two-expert denoiser, which picks its expert with ``if t >= boundary`` (a raw
      "Boolean value of Tensor" error on per-row timesteps).

    Returns:
        One line per reason (empty: a call may mix steps).
    """
    cfg = _guider_config(components)
    steps = {k: v for k, v in cfg.items() if not isinstance(v, bool) and isinstance(v, (int, float)) and (
        (k.endswith("start") and v != 0) or (k.endswith("stop") and v != 1)
        or ((k.endswith("_steps") or k.endswith("_step")) and v > 0))}
    out = []
    if steps:
        shown = ", ".join(f"{k}={v:g}" for k, v in steps.items())
        out.append(f"the guider {type(components.guider).__name__} guides by the step ({shown})")
    for block in _leaves(blocks):
        name = type(block).__name__
        if name.startswith("Wan22"):
            out.append(f"{name} chooses its expert per timestep")
        elif name not in STEP_FREE_BLOCKS and _reads_step_index(block):
            out.append(f"{getattr(block, '__name__', name)} reads the step index i")
    return out


def _leaves(blocks: Sequence[Any]) -> list[Any]:
    """The blocks, with those that hold sub-blocks replaced by their leaves."""
    out: list[Any] = []
    for b in blocks:
        subs = getattr(b, "sub_blocks", None)
        out.extend(_leaves(list(subs.values())) if subs else [b])
    return out


def _reads_step_index(block: Any) -> bool:
    """Whether a block's ``__call__`` (a plain function: its body) may read ``i`` (``_reads_i``)."""
    fn = block if isinstance(block, (types.FunctionType, types.MethodType)) else type(block).__call__
    return _reads_i(getattr(fn, "__func__", fn))


@functools.cache
def _reads_i(fn: Any) -> bool:
    """Whether ``fn``'s body reads ``i`` other than in the guider's ``set_state(step=i)``: any other
    use counts (a helper given ``i=i`` may read it); so do ``*args`` / ``**kwargs`` (``i`` may be in
    them), a source that cannot be read, and a wrapper's (a decorator without ``functools.wraps``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return True  # unknown: counted
    func = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if func is None or func.args.vararg is not None or func.args.kwarg is not None:
        return True
    passed: set[int] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set_state":
            passed.update(id(k.value) for k in node.keywords
                          if k.arg == "step" and isinstance(k.value, ast.Name) and k.value.id == "i")
    return any(isinstance(n, ast.Name) and n.id == "i" and id(n) not in passed for n in ast.walk(func))


def with_chords(pipe: Any, /, **options: Any) -> Any:
    """``pipe`` (a ``ModularPipeline``) with CHORDS in place of its denoising loop(s), sharing its components.

    Args:
        pipe: a modular pipeline.
        options: ``chords_loop``'s options (``cores``, ``stop``, ``batched``, ...).

    Returns:
        A new ``ModularPipeline`` of the same class; call it as ``pipe`` (``output="latents"``,
        ``output=["images", "chords_result"]``, ...). It shares ``pipe``'s component objects as they are
        now, with specs of its own: a component replaced later on either pipeline
        (``update_components``) is not seen by the other (the specs were shared, so one pipeline's
        update changed the other's spec but not its component).
    """
    from diffusers.modular_pipelines import ModularPipeline

    if not isinstance(pipe, ModularPipeline):
        raise TypeError(f"with_chords takes a diffusers ModularPipeline, got {type(pipe).__name__}; for the classic "
                        "pipelines use chords_diffusers.sample")
    if not hasattr(pipe, "_blocks"):
        raise TypeError(f"{type(pipe).__name__} has no _blocks: this diffusers version's ModularPipeline is not "
                        "supported")
    new = copy.copy(pipe)  # shares components, config and progress-bar settings; only the blocks differ
    for specs in ("_component_specs", "_config_specs"):  # (update_components replaces and mutates specs)
        if hasattr(pipe, specs):
            setattr(new, specs, copy.deepcopy(getattr(pipe, specs)))
    new._blocks = chords_blocks(pipe._blocks, **options)
    return new
