"""The denoiser call as a chords_core model: per-sample timesteps, conditioning, guidance.

chords_core calls ``fn(x, t)`` with x of shape (N, ...) = P points (cores) x B rows of the state,
concatenated point-major, and t of shape (N,) holding each row's chords time. Two layers:

- ``GuidedNet(net, ...)``: raw = net(x_in, tau) for N rows, with the conditioning tensors (B rows)
  tiled P times and classifier-free guidance as diffusers does it: one call on 2N rows
  [uncond; cond], out = u + g (c - u), optionally rescaled (``guidance_rescale``, Lin et al. 2023).
- ``Denoiser(net, smap)``: the scheduler conventions around it. Each row's grid index i is the
  nearest grid time to t (times off the grid interpolate the timestep linearly);
  tau = ``smap.timesteps[i]``; the model input is x / sqrt(sigma_i^2 + 1) if ``smap.scale_input``;
  the raw output is converted as ``smap.output`` says and cast to x's dtype.

``make_model(smap, net)`` wraps both into a ``chords_core.DiffusionModel``. ``Denoiser.to(device)``
builds a replica for ``chords_torch.DeviceExecutor``: the UNet / transformer only (``replicate_module``:
shared where it already lives on the device, otherwise copied straight onto it) and the conditioning
tensors; text encoders and VAE stay where they are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

import chords_core as cc
from chords_core import _backend as B

from .schedulers import SchedulerMap

__all__ = ["GuidedNet", "Denoiser", "make_model", "replicate_module"]


def _tree(fn: Callable[..., Any], v: Any, *rest: Any) -> Any:
    """``fn`` on the tensors of a (nested) dict / tuple / list, the other leaves as they are."""
    if isinstance(v, Mapping):
        return {k: _tree(fn, x, *(r[k] for r in rest)) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return type(v)(_tree(fn, x, *(r[i] for r in rest)) for i, x in enumerate(v))
    return fn(v, *rest) if isinstance(v, torch.Tensor) else v


def _leaves(v: Any, path: str) -> list[tuple[str, Any]]:
    """The (path, leaf) pairs of a nested dict (the conditioning: tensors, one level of sub-dicts)."""
    if isinstance(v, Mapping):
        return [leaf for k, x in v.items() for leaf in _leaves(x, f"{path}[{k!r}]")]
    return [(path, v)]


def _move(v: Any, device: Any) -> Any:
    return _tree(lambda t: t.to(device), v)


def replicate_module(module: torch.nn.Module, device: Any) -> torch.nn.Module:
    """A copy of ``module`` for ``device`` (``chords_torch.replicate``: ``module`` itself when all its
    parameters and buffers already live on ``device``, otherwise a copy built there directly), after
    checking that no offloading or caching hook would come along.

    Args:
        module: the UNet or transformer.
        device: the target device.

    Returns:
        The replica. Raises ``ValueError`` when the module carries offloading or caching hooks
        (accelerate's ``enable_model_cpu_offload`` / sequential offload, diffusers' group offloading or
        ``enable_cache``): a copy would drag the hooks' references (other pipeline models) along.
    """
    from chords_torch import replicate  # the general copy; only the hook check is diffusers' own
    from chords_torch.device import resolve_device

    for name, sub in module.named_modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if getattr(sub, "_hf_hook", None) is not None or (registry is not None and registry.hooks):
            where = f"submodule {name!r}" if name else type(module).__name__
            names = sorted(registry.hooks) if registry is not None and registry.hooks else ["accelerate's"]
            raise ValueError(
                f"devices=...: {where} carries hooks ({', '.join(map(str, names))}: offloading, caching or layerwise "
                "casting, enable_model_cpu_offload, enable_sequential_cpu_offload, enable_group_offload, enable_cache "
                "or enable_layerwise_casting); a replica per device needs a plain module: load the model without "
                "them (pipe.remove_all_hooks() removes accelerate's, disable_cache() a cache) and move the pipeline "
                "to one device, or sample without devices=")
    target = resolve_device(device)
    quantized = getattr(module, "hf_quantizer", None) is not None or bool(getattr(module, "is_quantized", False))
    if quantized and not all(t.device == target for t in (*module.parameters(), *module.buffers())):
        raise ValueError(f"devices=...: {type(module).__name__} is quantized; a replica on {device} rebuilds its "
                         "parameters as plain tensors and would lose their quantization state: load an unquantized "
                         "model for several devices, or sample without devices=")
    replica = replicate(module, device)
    assert isinstance(replica, torch.nn.Module)  # a module comes back as a module
    return replica


def count_points(rows: int, batch: int) -> int:
    """P, the points stacked in a call of ``rows`` = P x B rows (B = ``batch``); ``ValueError`` otherwise."""
    if rows % batch:
        raise ValueError(f"the model got {rows} rows, not a multiple of the batch {batch}")
    return rows // batch


def flux_timestep(tau: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The timestep ``FluxPipeline`` gives its transformer: the scheduler's, in the latents' dtype,
    divided by 1000 (``GuidedNet``'s ``timestep``)."""
    return tau.to(x.dtype) / 1000


def refuse_step_cache(net: Any, where: str, name: str) -> None:
    """A ``ValueError`` naming ``name`` (``pipe.transformer``, say) where the network ``net`` has a step
    cache enabled (diffusers' ``enable_cache``): its reuse of earlier steps' features assumes the
    sequential loop. ``where`` begins the message (the pipeline or path)."""
    if getattr(net, "is_cache_enabled", False):
        raise ValueError(f"{where}: {name} has a step cache enabled (enable_cache); its reuse of earlier steps' "
                         f"features assumes the sequential loop, CHORDS evaluates steps out of order: call "
                         f"{name}.disable_cache() first")


def network_output(out: Any, x: torch.Tensor) -> torch.Tensor:
    """``out``, a network's output on the rows ``x``, checked before anything combines it: a tensor
    with ``x``'s rows, else ``ModelOutputError``. A UNet's own output object failed as an
    ``AttributeError`` in ``.to``, naming nothing (a user trial); under guidance the check after it
    was never reached: ``None`` failed in ``chunk``, and a network returning 3 rows of 4 was broadcast
    by ``u + g (c - u)`` into a sample 0.107 off, silently (a later trial)."""
    if not isinstance(out, torch.Tensor):
        raise cc.ModelOutputError(0, f"model returned a {type(out).__name__} from its network, expected a tensor "
                                     f"of shape {tuple(x.shape)}; return the network's tensor (net(x, t).sample, "
                                     "or net(x, t, return_dict=False)[0])")
    if out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise cc.ModelOutputError(0, f"model returned shape {tuple(out.shape)} from its network for {x.shape[0]} "
                                     f"input rows (shape {tuple(x.shape)}); a network returns one row per input row")
    return out


class GuidedNet:
    """``net(**{x_arg: x, t_arg: timestep(tau, x)}, **cond, **static, return_dict=False)[0]`` with CFG.

    Args:
        net: the UNet or transformer.
        batch: B, the state's batch (rows of the conditioning tensors).
        x_arg: the keyword of the network's input.
        t_arg: the keyword of its timestep.
        timestep: how the pipeline forms the network's timestep from the scheduler's timesteps
            ``tau`` (N,) and the rows ``x`` it evaluates, in the pipeline's own operations (Flux:
            ``tau.to(x.dtype) / 1000``, ``flux_timestep``: a product by 1/1000 rounds otherwise at
            most timesteps); ``None``: ``tau`` as is.
        cond: keyword tensors with B rows, tiled over the points; a value may also be a dict of such
            tensors (SDXL's ``added_cond_kwargs``).
        uncond: the unconditional counterparts (same keys); ``None`` disables guidance.
        static: keywords passed unchanged (moved to a replica's device if tensors).
        guidance_scale: g of classifier-free guidance (<= 1 disables it), or a function of the (N,)
            model timesteps giving each row's g (CogVideoX's dynamic CFG, Wan 2.2's two scales).
        guidance_rescale: the ``rescale_noise_cfg`` factor (0: off).
        x_dtype: the network's input dtype (the state is cast to it; ``None``: as is).
        net_2: a second network for the rows whose timestep is below ``boundary`` (Wan 2.2's
            low-noise expert); ``net`` takes the rows with timestep >= ``boundary``.
        boundary: the scheduler's timestep (``tau``, before ``timestep``) where ``net_2`` takes over
            (with ``net_2`` only).
        guidance_scale_2: the guidance scale of the rows ``net_2`` takes (Wan 2.2; with ``net_2``
            only; ``None``: ``guidance_scale`` for all rows).
        cfg_batched: one call on [uncond; cond] rows (2N); ``False``: two calls of N rows (half the
            activation memory; what Wan and HunyuanVideo do).
    """

    def __init__(self, net: Callable, *, batch: int, x_arg: str = "sample", t_arg: str = "timestep",
                 timestep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 cond: Mapping[str, Any] | None = None,
                 uncond: Mapping[str, Any] | None = None, static: Mapping[str, Any] | None = None,
                 guidance_scale: float | Callable[[torch.Tensor], torch.Tensor] = 1.0,
                 guidance_rescale: float = 0.0, x_dtype: torch.dtype | None = None,
                 net_2: Callable | None = None, boundary: float | None = None,
                 guidance_scale_2: float | None = None, cfg_batched: bool = True) -> None:
        for name, f in (("net", net), ("net_2", net_2 if net_2 is not None else net),
                        ("timestep", timestep if timestep is not None else net)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if (net_2 is None) != (boundary is None):
            raise ValueError("give net_2 and boundary together (the timestep where net_2 takes over)")
        if guidance_scale_2 is not None and (net_2 is None or callable(guidance_scale)):
            raise ValueError("guidance_scale_2 needs net_2 and boundary, and a number as guidance_scale")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        cond, uncond = dict(cond or {}), (dict(uncond) if uncond is not None else None)
        for name, d in (("cond", cond), ("uncond", uncond or {})):
            for k, v in _leaves(d, name):
                if not isinstance(v, torch.Tensor) or v.shape[0] != batch:
                    got = getattr(v, "shape", type(v))
                    raise ValueError(f"{k} must be a tensor with batch={batch} rows, got {got}")
        if uncond is not None and sorted(k for k, _ in _leaves(uncond, "")) != sorted(k for k, _ in _leaves(cond, "")):
            raise ValueError(f"uncond must have the same keys as cond: {sorted(cond)} vs {sorted(uncond)}")
        self.net, self.batch, self.x_arg, self.t_arg, self.timestep = net, batch, x_arg, t_arg, timestep
        self.net_2, self.boundary = net_2, boundary
        self.cond, self.static, self.x_dtype, self.cfg_batched = cond, dict(static or {}), x_dtype, bool(cfg_batched)
        self.guidance_scale_2 = None if guidance_scale_2 is None else float(guidance_scale_2)
        self.guided = uncond is not None and (callable(guidance_scale) or guidance_scale > 1.0
                                              or (self.guidance_scale_2 or 0.0) > 1.0)
        self.uncond = uncond if self.guided else None
        self.guidance_scale = guidance_scale if callable(guidance_scale) else float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)

    def _experts(self, tau: torch.Tensor) -> tuple[torch.Tensor, int, np.ndarray | None] | None:
        """(mask of the rows ``net`` takes, their count, the mask on the host or ``None``) with two
        networks, else ``None``. From the timesteps' host values where the ``Denoiser`` keeps them
        beside ``tau`` (``_backend.host_times``: no device read), else read back from the device."""
        if self.net_2 is None or self.boundary is None:
            return None
        host = getattr(tau, B.HOST_TIMES, None)
        if host is not None:  # (compared in tau's dtype, as on the device)
            hi = (torch.from_numpy(np.asarray(host)).to(tau.dtype) >= self.boundary).numpy()
            return B.upload(torch.from_numpy(hi), tau.device), int(hi.sum()), hi
        high = tau >= self.boundary
        return high, int(high.sum()), None

    def _forward(self, x: torch.Tensor, tau: torch.Tensor, kw: dict,
                 experts: tuple[torch.Tensor, int, np.ndarray | None] | None) -> torch.Tensor:
        """The raw network output on rows (x, tau, kw), each row through ``net`` or ``net_2`` as
        ``experts`` (``_experts``) says."""
        def call(net: Callable, x: torch.Tensor, tau: torch.Tensor, kw: dict) -> torch.Tensor:
            t = tau if self.timestep is None else self.timestep(tau, x)
            return network_output(net(**{self.x_arg: x, self.t_arg: t}, **kw, **self.static, return_dict=False)[0], x)

        if experts is None:
            return call(self.net, x, tau, kw)
        (high, n_high, hi), net_2 = experts, self.net_2
        assert net_2 is not None  # experts come with two networks
        if n_high in (0, len(tau)):
            return call(self.net if n_high else net_2, x, tau, kw)
        out: torch.Tensor | None = None
        for net, rows, host in ((self.net, high, hi), (net_2, ~high, None if hi is None else ~hi)):
            idx = (rows.nonzero().squeeze(1) if host is None  # (nonzero reads its count back from the device)
                   else B.upload(torch.from_numpy(np.flatnonzero(host)), x.device))
            part = call(net, x[idx], tau[idx], _tree(lambda v, i=idx: v[i], kw))
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[idx] = part
        assert out is not None
        return out

    def __call__(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The (guided) network output for N = P * B rows.

        Args:
            x: (N, ...) model inputs, P points of B rows each, point-major.
            tau: (N,) model timesteps.

        Returns:
            (N, ...) outputs, u + g (c - u) under guidance (optionally rescaled).
        """
        points = count_points(x.shape[0], self.batch)
        tile = lambda v: v.repeat(points, *([1] * (v.dim() - 1))) if points > 1 else v  # noqa: E731
        kw = _tree(tile, self.cond)
        if self.x_dtype is not None:
            x = x.to(self.x_dtype)
        experts = self._experts(tau)
        if self.uncond is None:
            return self._forward(x, tau, kw, experts)
        if self.cfg_batched:
            kw = _tree(lambda u, c: torch.cat([tile(u), c]), self.uncond, kw)
            both = None if experts is None else (torch.cat([experts[0], experts[0]]), 2 * experts[1],
                                                 None if experts[2] is None else np.concatenate([experts[2]] * 2))
            u, c = self._forward(torch.cat([x, x]), torch.cat([tau, tau]), kw, both).chunk(2)
        else:
            c = self._forward(x, tau, kw, experts)
            u = self._forward(x, tau, _tree(tile, self.uncond), experts)
        g1, g2 = self.guidance_scale, self.guidance_scale_2
        if g2 is not None and g2 != g1 and experts is not None and not callable(g1):  # per row: its expert's
            scale = torch.where(experts[0], g1, g2).to(device=c.device, dtype=c.dtype)
            g = u + scale.view((-1,) + (1,) * (c.dim() - 1)) * (c - u)
        elif callable(self.guidance_scale):
            g = torch.as_tensor(self.guidance_scale(tau), device=c.device)
            g = u + g.to(c.dtype).view((-1,) + (1,) * (c.dim() - 1)) * (c - u)
        else:
            g = u + self.guidance_scale * (c - u)
        if self.guidance_rescale > 0.0:  # rescale_noise_cfg: match the std of the conditional prediction
            dims = list(range(1, c.dim()))
            r = g * (c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True))
            g = self.guidance_rescale * r + (1.0 - self.guidance_rescale) * g
        return g

    def to(self, device: Any) -> GuidedNet:
        """A replica on ``device``: the network(s) via ``replicate_module`` (shared when already
        there), the conditioning tensors moved; nothing else of the pipeline is copied."""
        new = copy.copy(self)
        if isinstance(self.net, torch.nn.Module):
            new.net = replicate_module(self.net, device)
        if isinstance(self.net_2, torch.nn.Module):
            new.net_2 = replicate_module(self.net_2, device)
        new.cond, new.uncond = _move(self.cond, device), _move(self.uncond, device)
        new.static = _move(self.static, device)
        return new


class Denoiser:
    """``fn(x (N, ...), t (N,)) -> out (N, ...)`` for ``cc.DiffusionModel``; see the module docstring.

    Args:
        net: ``net(x_in, tau)``, any callable on (N, ...) and (N,) tensors (a ``GuidedNet`` usually).
        smap: the scheduler's conventions (``map_scheduler``).

    ``exact_times``: ``cc.DiffusionModel`` hands it float64 times whatever the state's dtype. In half
    precision the times rounded off the grid (SD3 in bfloat16 got timestep 921.875 for 923.343), or onto
    the wrong grid time where two round alike (DDIM in bfloat16: 0.999788 and 0.998349 both to 1.0).
    """

    exact_times = True

    def __init__(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], smap: SchedulerMap) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if not isinstance(smap, SchedulerMap):
            raise TypeError(f"smap must be a SchedulerMap (see map_scheduler), got {type(smap).__name__}")
        self.net, self.smap = net, smap
        n = smap.steps
        self._grid = np.asarray(smap.grid[:n], dtype=np.float64)
        self._tau64 = smap.timesteps.detach().cpu().double().numpy()
        # the scheduler's timesteps and sigmas on the host, in their dtypes: indexed there with the
        # host's grid indices and uploaded once a call (a scheduler keeps its sigmas on the CPU and its
        # timesteps on the device: the device's index into the CPU's sigmas failed on a GPU)
        self._tau_host = smap.timesteps.detach().cpu()[:n]
        self._sig_host = smap.sigmas.detach().cpu()[:n]
        spacing = np.abs(np.diff(self._grid)).min() if n > 1 else np.inf
        self._tol = min(1e-6 * max(1.0, float(np.abs(self._grid).max())), 0.25 * spacing)

    def indices(self, t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The nearest grid index of each row's time.

        Args:
            t: (N,) chords times.

        Returns:
            (grid index per row, whether the row's time is on the grid), both (N,).
        """
        tt = B.host_times(t)
        idx = np.abs(tt[:, None] - self._grid[None, :]).argmin(axis=1)
        return idx, np.abs(self._grid[idx] - tt) <= self._tol

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model output under the scheduler's conventions, as the chords ``prediction``.

        Args:
            x: (N, ...) states.
            t: (N,) chords times.

        Returns:
            (N, ...) outputs in x's dtype.
        """
        smap = self.smap
        idx, on_grid = self.indices(t)
        tt = B.host_times(t)
        sel = torch.from_numpy(idx)
        tau, sig = self._tau_host[sel], self._sig_host[sel]  # (on the host: no device read, one upload)
        if not on_grid.all():  # off the scheduler's grid: interpolate timestep, sigma is the time itself
            g, ts = self._grid[::-1], self._tau64[::-1]
            off = torch.as_tensor(np.interp(tt, g, ts), dtype=torch.float32)
            tau = torch.where(torch.as_tensor(on_grid), tau.to(torch.float32), off)
            sig = torch.where(torch.as_tensor(on_grid), sig.to(torch.float64), torch.from_numpy(tt)).to(sig.dtype)
        # (the timesteps with their host values: a two-expert GuidedNet picks each row's expert on the host)
        tau, sig = B.upload_times(tau, x.device), B.upload(sig, x.device)
        view = (-1,) + (1,) * (x.dim() - 1)
        x_in = x / ((sig**2 + 1) ** 0.5).view(view).to(x.dtype) if smap.scale_input else x
        out = network_output(self.net(x_in, tau), x)
        if smap.output == "euler_v":
            dt = torch.promote_types(x.dtype, torch.float32)  # diffusers upcasts to float32 here
            s = sig.view(view).to(dt)
            out = out.to(dt) * (-s / (s**2 + 1) ** 0.5) + x.to(dt) / (s**2 + 1)
        if smap.x0_transform is not None:  # clip_sample / thresholding of the x0 prediction (DataTransform)
            out = smap.x0_transform(x, out, np.where(on_grid, self._grid[idx], tt), idx)
        return out.to(x.dtype)

    def to(self, device: Any) -> Denoiser:
        """A replica for ``device`` (``chords_torch.DeviceExecutor(replicate=lambda fn, d: fn.to(d))``)."""
        net = self.net.to(device) if hasattr(self.net, "to") else self.net
        return Denoiser(net, self.smap)


def make_model(smap: SchedulerMap, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
               check_outputs: bool | str = "auto") -> cc.DiffusionModel:
    """The chords_core model of ``net`` under the scheduler conventions of ``smap``.

    Args:
        smap: the mapped scheduler.
        net: ``net(x_in, tau)`` on (N, ...) and (N,) tensors.
        check_outputs: the output check (``chords_core.Model``): ``"auto"`` checks finiteness at every
            call on the CPU and once per output on a GPU (no device synchronisation per round).

    Returns:
        ``DiffusionModel(Denoiser(net, smap), smap.schedule, smap.prediction)``.
    """
    return cc.DiffusionModel(Denoiser(net, smap), smap.schedule, smap.prediction, check_outputs=check_outputs)
