"""Pipeline-level entry points: ``sample_latents`` (any denoiser) and ``sample`` (a whole pipeline).

``sample(pipe, prompt=..., num_inference_steps=None, cores=None, ...)`` does what the pipeline's
``__call__`` does -- encode the prompt, prepare the latents, configure the scheduler, decode -- but
replaces the sequential denoising loop by ``chords_core.chords`` on the mapped scheduler. Supported
pipelines: ``SUPPORTED_PIPELINES`` (adapters in ``adapters``). ``devices=[...]`` evaluates each
round with ``chords_torch.DeviceExecutor``, one replica of the denoiser per device (the UNet or
transformer and its conditioning only: shared on the device it already lives on, built directly on
the others; text encoders and VAE stay put); without it all cores of a round go through one batched
call on the pipeline's device.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import chords_core as cc
from chords_core.checks import check_bool
from chords_core.progress import bar_options

from .adapters import ADAPTERS, Job, call_params, component
from .denoiser import GuidedNet, make_model
from .schedulers import SchedulerMap, map_scheduler, option_clash, other_parametrisation, unscaled_input

__all__ = ["sample", "sample_latents", "make_executor", "ChordsPipelineOutput", "SUPPORTED_PIPELINES"]

SUPPORTED_PIPELINES = tuple(ADAPTERS)


@dataclass
class ChordsPipelineOutput:
    """What ``sample`` returns.

    Attributes:
        output: what the pipeline returns (e.g. ``StableDiffusion3PipelineOutput``, ``WanPipelineOutput``).
        chords: the ``Result`` (rounds, nfe, every hit as latents).
        latents: the returned latents (B, ...).
    """

    output: Any
    chords: cc.Result = field(repr=False)
    latents: torch.Tensor = field(repr=False)

    @property
    def images(self) -> Any:
        """The pipeline output's ``images`` (image pipelines; with ``return_dict=False``, its tuple's first item)."""
        return self.output[0] if isinstance(self.output, tuple) else self.output.images

    @property
    def frames(self) -> Any:
        """The pipeline output's ``frames`` (video pipelines; with ``return_dict=False``, its tuple's first item)."""
        return self.output[0] if isinstance(self.output, tuple) else self.output.frames


def make_executor(devices: Sequence[Any] | None = None,
                  executor: cc.Executor | None = None) -> tuple[cc.Executor | None, bool]:
    """The executor of a pipeline run, and whether the caller owns (closes) it.

    Args:
        devices: devices for a ``chords_torch.DeviceExecutor`` (batched, one denoiser replica each).
        executor: an executor to use as is (not with ``devices``).

    Returns:
        (``executor`` as given, False), (a new ``DeviceExecutor``, True), or (``None``, False): the
        core's batched executor.
    """
    if devices is None:
        return executor, False
    if executor is not None:
        raise ValueError("give devices or executor, not both")
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):  # ("cpu" was read as "c", "p", "u")
        raise TypeError(f"devices must be a list of devices, e.g. [{devices!r}], got {type(devices).__name__}")
    try:
        from chords_torch import DeviceExecutor
    except ImportError as e:
        raise ImportError(
            f"devices=... needs the chords_torch backend (DeviceExecutor), which failed to import: {e}") from None
    return DeviceExecutor(list(devices), replicate=lambda fn, d: fn.to(d), batched=True), True


#: the cores where neither ``cores`` nor ``init`` is given
DEFAULT_CORES = 4


def call_default(pipe: Any, name: str, fallback: Any) -> Any:
    """The default of argument ``name`` of ``pipe.__call__`` (``fallback`` where it has none)."""
    param = call_params(pipe).get(name)
    return fallback if param is None or param.default is inspect.Parameter.empty else param.default


def progress_enabled(obj: Any) -> bool:
    """Whether a diffusers pipeline (or a modular loop block) shows its progress bar: not disabled by
    its ``set_progress_bar_config(disable=True)``; with ``disable=None`` as tqdm reads it, where stderr
    is a terminal (a user trial saw a bar printed into a pipe the pipeline's own bar stayed out of)."""
    config = getattr(obj, "_progress_bar_config", {})
    disable = config.get("disable", False)
    if disable is None:  # (tqdm asks the bar's file: the configured one, else stderr)
        isatty = getattr(config.get("file", sys.stderr), "isatty", None)
        try:
            return bool(isatty()) if callable(isatty) else False
        except (OSError, ValueError):  # (a closed stream: no bar)
            return False
    return not disable


def progress_options(obj: Any) -> Any:
    """A block in which the progress bar takes a diffusers pipeline's (or a modular loop block's)
    ``set_progress_bar_config`` options: its ``file``, its ``desc`` (before the bar's own label) and
    tqdm's others (``chords_core.progress.bar_options``; only ``disable`` was followed, a user trial)."""
    config = getattr(obj, "_progress_bar_config", None)
    return bar_options(**(config if isinstance(config, dict) else {}))


def method_arguments(method: str | None, cores: int | None, init: Sequence[int] | None, stop: Any,
                     options: dict, solver: str | None = None,
                     any_solver: bool = False) -> tuple[str, int | None, dict]:
    """``sample_latents``' method arguments checked before any model call: ``method`` a name in
    ``chords_core.METHODS`` or ``None`` (``chords_core.RECOMMENDED``, as for ``chords_core.parallel``);
    ``init`` CHORDS' only; ``cores`` needed by the others; an option of another method refused by
    name, and one neither the method nor ``solver`` (the mapped scheduler's) takes, or with
    ``any_solver`` (a pipeline whose scheduler is mapped when it runs) nor any registered solver
    (``chords_core.methods.check_options``); ``executor`` and ``devices`` are the caller's.

    Returns:
        (method, cores, options): the method's name; ``cores`` with its default (``DEFAULT_CORES``
        where neither it nor ``init`` is given); ``options`` a new dict, with ``stop`` among them for
        a method other than CHORDS where one is given.
    """
    if method is None:
        method = cc.methods.RECOMMENDED
    if not isinstance(method, str) or method not in cc.METHODS:
        raise ValueError(f"method must be one of {sorted(cc.METHODS)} or None (the recommended "
                         f"{cc.methods.RECOMMENDED!r}), got {method!r}")
    if cores is None and init is None:
        cores = DEFAULT_CORES
    options = dict(options)
    if method != "chords":
        if init is not None:
            raise ValueError(f"init is CHORDS' start sequence; method {method!r} takes cores")
        if cores is None:
            raise ValueError(f"method {method!r} needs cores")
        if stop is not cc.stopping.DEFAULT_STOP:
            options["stop"] = stop
    cc.methods.check_options(method, {k: v for k, v in options.items() if k not in ("executor", "devices")}, solver,
                             any_solver=any_solver)
    return method, cores, options


def sample_latents(
    smap: SchedulerMap,
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    *,
    cores: int | None = None,
    init: Sequence[int] | None = None,
    stop: Any = cc.stopping.DEFAULT_STOP,
    devices: Sequence[Any] | None = None,
    executor: cc.Executor | None = None,
    progress: bool = True,
    method: str | None = "chords",
    **chords_options: Any,
) -> cc.Result:
    """A parallel method (CHORDS by default) from ``latents`` at the first grid time with
    ``net(x_in, tau)`` under ``smap``.

    ``cores=1`` (or ``stop=None``, which returns the slowest core) is the scheduler's sequential loop.

    Args:
        smap: the mapped scheduler (``map_scheduler``).
        net: ``net(x_in, tau)`` on (N, ...) and (N,) tensors, e.g. a ``GuidedNet``.
        latents: (B, ...) initial latents.
        cores: K, the number of cores (``None``: ``DEFAULT_CORES``, at most the grid's steps, or
            ``len(init)``; a default of 4 with ``init`` given refused the init as of another length).
        init: the cores' start indices.
        stop: the stop rule.
        devices: evaluate each round on these devices (``chords_torch.DeviceExecutor``).
        executor: an executor (not with ``devices``).
        progress: show a progress bar.
        method: a name in ``chords_core.METHODS`` (``"chords"``, ``"cascade"``, ``"paradigms"``,
            ``"parasolver"``, ``"parataa"``, ``"srds"``), or ``None``: ``chords_core.RECOMMENDED``
            (as for ``chords_core.parallel``); the others run through
            ``chords_core.parallel`` with ``cores`` devices' worth of evaluations per round and take
            their own options in ``chords_options`` (``init`` is CHORDS' only; ``stop`` is for the
            methods that take one).
        chords_options: further options of the method (e.g. ``history`` for CHORDS, ``tol``).

    Returns:
        The ``Result``; ``.x`` is the chosen output's latents.
    """
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    defaulted = cores is None and init is None
    method, cores, chords_options = method_arguments(method, cores, init, stop, chords_options, smap.solver)
    if defaulted:  # (the default, at most the steps: a 1- to 3-step turbo schedule failed on cores=4 never given)
        cores = min(DEFAULT_CORES, len(smap.grid) - 1)
    clash = sorted(set(smap.solver_options) & set(chords_options))
    if clash:  # (both went into one call: Python's "got multiple values for keyword argument")
        raise option_clash(smap, clash[0], chords_options[clash[0]])
    model = make_model(smap, net)
    ex, owned = make_executor(devices, executor)
    try:
        with torch.no_grad():
            if method != "chords":
                assert cores is not None  # checked above
                return cc.parallel(model, latents, smap.grid, smap.solver, cores=cores, method=method, executor=ex,
                                   progress=progress, **smap.solver_options, **chords_options)
            return cc.chords(model, latents, smap.grid, smap.solver, cores=cores, init=init, stop=stop,
                             executor=ex, progress=progress, **smap.solver_options, **chords_options)
    except RuntimeError as err:
        _note_latents_dtype(err, latents, net)
        raise
    finally:
        if owned and ex is not None:
            ex.close()


def _note_latents_dtype(err: RuntimeError, latents: torch.Tensor, net: Any) -> None:
    """Add a note naming ``latents`` to the network's error where their dtype is not that of a
    ``GuidedNet``'s network without ``x_dtype`` (a user trial: float64 latents failed inside the UNet's
    first convolution, "Input type (double) and bias type (float) should be the same", naming neither;
    a note, not a refusal: under ``torch.autocast``, or with a network that casts its own input, such
    latents run)."""
    if not isinstance(net, GuidedNet) or net.x_dtype is not None or not hasattr(err, "add_note"):
        return
    for inner in (net.net, net.net_2):
        dtype = getattr(inner, "dtype", None)
        if isinstance(dtype, torch.dtype) and dtype != latents.dtype:
            err.add_note(f"(chords_diffusers: the latents have dtype {latents.dtype}, the network {dtype}: pass "
                         f"latents.to({dtype}), or GuidedNet(..., x_dtype={dtype}) to cast each evaluation's input)")
            return


def sample(
    pipe: Any,
    prompt: str | list[str] | None = None,
    *,
    num_inference_steps: int | None = None,
    cores: int | None = None,
    init: Sequence[int] | None = None,
    stop: Any = cc.stopping.DEFAULT_STOP,
    devices: Sequence[Any] | None = None,
    executor: cc.Executor | None = None,
    progress: bool | None = None,
    method: str | None = "chords",
    method_options: dict | None = None,
    **pipe_kwargs: Any,
) -> ChordsPipelineOutput:
    """Run ``pipe`` with CHORDS instead of its sequential loop; see the module docstring.

    Args:
        pipe: a pipeline in ``SUPPORTED_PIPELINES``.
        prompt: the prompt(s) (``None`` for unconditional pipelines or with ``prompt_embeds``).
        num_inference_steps: T (``None``: the pipeline's own default, as ``pipe(...)`` takes it: 28 for
            SD3 and Flux, 50 for most; a fixed 50 ran SD3 and Flux 4.9e-3 / 2.6e-3 off ``pipe(...)``).
        cores: K, the number of cores (``None``: ``DEFAULT_CORES``, 4, at most the steps, or ``len(init)``).
        init: the cores' start indices.
        stop: the stop rule.
        devices: evaluate each round on these devices (``chords_torch.DeviceExecutor``).
        executor: an executor (not with ``devices``) that evaluates the model it is given: one with
            a network of its own (``own_network``: ``ProcessExecutor``, ``DistributedExecutor``) is
            refused (``ValueError``), since that network knows nothing of this call's prompt.
        progress: show a progress bar (``None``: follow the pipeline's
            ``set_progress_bar_config(disable=...)``).
        method: the parallel method (``sample_latents``; ``None``: ``chords_core.RECOMMENDED``);
            ``method_options`` its options (e.g. ``tol``).
        pipe_kwargs: the pipeline's own call arguments (``guidance_scale``, ``height``, ``width``,
            ``num_frames``, ``generator``, ``latents``, ``output_type``, ``negative_prompt``,
            ``prompt_embeds``, ``mu``, ...); unknown ones raise ``TypeError`` listing the supported
            ones, unsupported values ``ValueError``.

    Returns:
        The ``ChordsPipelineOutput``: the pipeline's usual output (``.images`` / ``.frames``), the
        ``Result`` and the latents.
    """
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"method_options must be a dict of the method's options, got {type(method_options).__name__}")
    clash = sorted(set(method_options or {}) & {"cores", "init", "stop", "devices", "executor", "progress", "method"})
    if clash:
        raise ValueError(f"method_options: {', '.join(clash)} is an argument of sample itself; pass it directly")
    if getattr(executor, "own_network", False):
        # (a user trial: a ProcessExecutor whose workers were built for "a cat" returned the cat for
        # "a dog", bit for bit, with any guidance and batch)
        raise ValueError(f"executor: {type(executor).__name__} evaluates the network its workers were made with, not "
                         "the denoiser sample builds for this call (its prompt encoding, guidance and batch), so the "
                         "result would belong to another prompt; use devices=[...] or a chords_torch.DeviceExecutor "
                         "(replicas of the pipeline's denoiser), or sample_latents with workers whose factory returns "
                         "chords_diffusers.make_model(smap, net), a complete model of the same network and scheduler")
    name = type(pipe).__name__
    adapter = ADAPTERS.get(name)
    if adapter is None:
        base = next((c.__name__ for c in type(pipe).__mro__[1:] if c.__name__ in ADAPTERS), None)
        hint = "" if base is None else (
            f" (it subclasses {base}: an adapter runs the loop of the class it was written for, so a subclass is not "
            f"taken for it; where {name}.__call__ is {base}'s loop, register it: "
            f"chords_diffusers.adapters.ADAPTERS[{name!r}] = ADAPTERS[{base!r}])")
        # (ADAPTERS itself, not the import-time SUPPORTED_PIPELINES: a class registered since is listed)
        raise ValueError(f"pipeline {name} is not supported by chords_diffusers{hint}; supported: "
                         f"{', '.join(ADAPTERS)}")
    if hasattr(pipe, "scheduler"):  # (SD3's adapter read a None's config: an AttributeError)
        component(pipe, name, "scheduler")
    output_type = pipe_kwargs.get("output_type", call_default(pipe, "output_type", "latent"))
    if hasattr(pipe, "vae") and output_type != "latent":  # (a user trial: after the whole sampling, an
        # AttributeError, "'NoneType' object has no attribute 'modules'", in the decoder)
        component(pipe, name, "vae", f" to decode output_type={output_type!r}; output_type='latent' works without it")
    if progress is None:
        progress = progress_enabled(pipe)
    if num_inference_steps is None:
        num_inference_steps = call_default(pipe, "num_inference_steps", 50)
    return_dict = True
    if "return_dict" in pipe_kwargs and "return_dict" in call_params(pipe):  # (one home: every adapter's output)
        return_dict = check_bool("return_dict", pipe_kwargs.pop("return_dict"))
    with torch.no_grad():
        job = adapter(pipe, prompt, num_inference_steps, dict(pipe_kwargs))
        if not isinstance(job, Job):  # (an adapter of one's own: "no attribute 'device'" named nothing)
            raise TypeError(f"ADAPTERS[{name!r}] returned {type(job).__name__}, not a chords_diffusers.adapters.Job")
        smap = map_scheduler(pipe.scheduler, num_inference_steps, device=job.device,
                             step_kwargs=job.step_kwargs or None, **job.timestep_kwargs)
        if smap.scale_input and not job.scales_input:
            raise unscaled_input(smap.scheduler, name, job.unscaled_advice)
        if job.flow is not None and smap.flow != job.flow:
            raise other_parametrisation(smap, name, job.unscaled_advice)
        latents = job.make_latents()
        batch = getattr(job.net, "batch", None)
        if batch is not None and latents.shape[0] != batch:  # (a multiple ran on, cycling the prompts)
            if prompt is None and "batch_size" in call_params(pipe):
                given = f"batch_size gives {batch}"  # (an unconditional pipeline: it said "the prompts give 1")
            else:
                given = f"the prompts give {batch} (prompts x images or videos per prompt)"
            raise ValueError(f"latents: {latents.shape[0]} row(s), where {given}")
        with progress_options(pipe):
            res = sample_latents(smap, job.net, latents, cores=cores, init=init, stop=stop, devices=devices,
                                 executor=executor, progress=progress, method=method, **(method_options or {}))
        out = job.finish(res.x)
    if not return_dict:  # the output's fields in order, as the pipelines return them
        out = (tuple(getattr(out, f.name) for f in dataclasses.fields(out)) if dataclasses.is_dataclass(out)
               else out if isinstance(out, tuple) else (out,))  # (an adapter of one's own: its output as the item)
    if hasattr(pipe, "maybe_free_model_hooks"):
        pipe.maybe_free_model_hooks()
    return ChordsPipelineOutput(out, res, res.x)
