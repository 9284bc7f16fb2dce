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
builds a replica (network deep-copied, tensors moved) for ``chords_torch.DeviceExecutor``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

import chords_core as cc

from .schedulers import SchedulerMap

__all__ = ["GuidedNet", "Denoiser", "make_model"]


def _move(v: Any, device: Any) -> Any:
    return v.to(device) if isinstance(v, torch.Tensor) else v


class GuidedNet:
    """``net(**{x_arg: x, t_arg: t_scale * tau}, **cond, **static, return_dict=False)[0]`` with CFG.

    Args:
        net: the UNet or transformer.
        batch: B, the state's batch (rows of the conditioning tensors).
        x_arg: the keyword of the network's input.
        t_arg: the keyword of its timestep.
        t_scale: the factor applied to the timestep (Flux: 1/1000).
        cond: keyword tensors with B rows, tiled over the points.
        uncond: the unconditional counterparts (same keys); ``None`` disables guidance.
        static: keywords passed unchanged.
        guidance_scale: g of classifier-free guidance; <= 1 disables guidance.
        guidance_rescale: the ``rescale_noise_cfg`` factor (0: off).
    """

    def __init__(self, net: Callable, *, batch: int, x_arg: str = "sample", t_arg: str = "timestep",
                 t_scale: float = 1.0, cond: Mapping[str, torch.Tensor] | None = None,
                 uncond: Mapping[str, torch.Tensor] | None = None, static: Mapping[str, Any] | None = None,
                 guidance_scale: float = 1.0, guidance_rescale: float = 0.0) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        cond, uncond = dict(cond or {}), (dict(uncond) if uncond is not None else None)
        for name, d in (("cond", cond), ("uncond", uncond or {})):
            for k, v in d.items():
                if not isinstance(v, torch.Tensor) or v.shape[0] != batch:
                    got = getattr(v, "shape", type(v))
                    raise ValueError(f"{name}[{k!r}] must be a tensor with batch={batch} rows, got {got}")
        if uncond is not None and set(uncond) != set(cond):
            raise ValueError(f"uncond must have the same keys as cond: {sorted(cond)} vs {sorted(uncond)}")
        self.net, self.batch, self.x_arg, self.t_arg, self.t_scale = net, batch, x_arg, t_arg, float(t_scale)
        self.cond, self.static = cond, dict(static or {})
        self.guided = uncond is not None and guidance_scale > 1.0
        self.uncond = uncond if self.guided else None
        self.guidance_scale, self.guidance_rescale = float(guidance_scale), float(guidance_rescale)

    def __call__(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The (guided) network output for N = P * B rows.

        Args:
            x: (N, ...) model inputs, P points of B rows each, point-major.
            tau: (N,) model timesteps.

        Returns:
            (N, ...) outputs, u + g (c - u) under guidance (optionally rescaled).
        """
        n = x.shape[0]
        if n % self.batch:
            raise ValueError(f"the model got {n} rows, not a multiple of the batch {self.batch}")
        points = n // self.batch
        tile = lambda v: v.repeat(points, *([1] * (v.dim() - 1))) if points > 1 else v  # noqa: E731
        kw = {k: tile(v) for k, v in self.cond.items()}
        if self.uncond is not None:  # guided
            uncond = self.uncond
            kw = {k: torch.cat([tile(uncond[k]), kw[k]]) for k in kw}
            x, tau = torch.cat([x, x]), torch.cat([tau, tau])
        if self.t_scale != 1.0:
            tau = tau * self.t_scale
        out = self.net(**{self.x_arg: x, self.t_arg: tau}, **kw, **self.static, return_dict=False)[0]
        if not self.guided:
            return out
        u, c = out.chunk(2)
        g = u + self.guidance_scale * (c - u)
        if self.guidance_rescale > 0.0:  # rescale_noise_cfg: match the std of the conditional prediction
            dims = list(range(1, c.dim()))
            r = g * (c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True))
            g = self.guidance_rescale * r + (1.0 - self.guidance_rescale) * g
        return g

    def to(self, device: Any) -> GuidedNet:
        """A replica on ``device``: the network deep-copied there (if it is a module), tensors moved."""
        new = copy.copy(self)
        if isinstance(self.net, torch.nn.Module):
            new.net = copy.deepcopy(self.net).to(device)
        new.cond = {k: _move(v, device) for k, v in self.cond.items()}
        new.uncond = None if self.uncond is None else {k: _move(v, device) for k, v in self.uncond.items()}
        new.static = {k: _move(v, device) for k, v in self.static.items()}
        return new


class Denoiser:
    """``fn(x (N, ...), t (N,)) -> out (N, ...)`` for ``cc.DiffusionModel``; see the module docstring.

    Args:
        net: ``net(x_in, tau)``, any callable on (N, ...) and (N,) tensors (a ``GuidedNet`` usually).
        smap: the scheduler's conventions (``map_scheduler``).
    """

    def __init__(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], smap: SchedulerMap) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if not isinstance(smap, SchedulerMap):
            raise TypeError(f"smap must be a SchedulerMap (see map_scheduler), got {type(smap).__name__}")
        self.net, self.smap = net, smap
        n = smap.steps
        self._grid = np.asarray(smap.grid[:n], dtype=np.float64)
        self._tau64 = smap.timesteps.detach().cpu().double().numpy()
        spacing = np.abs(np.diff(self._grid)).min() if n > 1 else np.inf
        self._tol = min(1e-6 * max(1.0, float(np.abs(self._grid).max())), 0.25 * spacing)

    def indices(self, t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The nearest grid index of each row's time.

        Args:
            t: (N,) chords times.

        Returns:
            (grid index per row, whether the row's time is on the grid), both (N,).
        """
        tt = t.detach().cpu().double().numpy().reshape(-1)
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
        tt = t.detach().cpu().double().numpy().reshape(-1)
        sel = torch.as_tensor(idx, device=smap.timesteps.device)
        tau = smap.timesteps[sel]
        sig = smap.sigmas[sel]
        if not on_grid.all():  # off the scheduler's grid: interpolate timestep, sigma is the time itself
            g, ts = self._grid[::-1], self._tau64[::-1]
            off = torch.as_tensor(np.interp(tt, g, ts), dtype=torch.float32)
            tau = torch.where(torch.as_tensor(on_grid), tau.to(torch.float32), off)
            sig = torch.where(torch.as_tensor(on_grid), sig.to(torch.float64), torch.as_tensor(tt)).to(sig.dtype)
        tau, sig = tau.to(x.device), sig.to(x.device)
        view = (-1,) + (1,) * (x.dim() - 1)
        x_in = x / ((sig**2 + 1) ** 0.5).view(view).to(x.dtype) if smap.scale_input else x
        out = self.net(x_in, tau)
        if smap.output == "euler_v":
            dt = torch.promote_types(x.dtype, torch.float32)  # diffusers upcasts to float32 here
            s = sig.view(view).to(dt)
            out = out.to(dt) * (-s / (s**2 + 1) ** 0.5) + x.to(dt) / (s**2 + 1)
        return out.to(x.dtype)

    def to(self, device: Any) -> Denoiser:
        """A replica for ``device`` (``chords_torch.DeviceExecutor(replicate=lambda fn, d: fn.to(d))``)."""
        net = self.net.to(device) if hasattr(self.net, "to") else self.net
        return Denoiser(net, self.smap)


def make_model(smap: SchedulerMap, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
               check_outputs: bool = True) -> cc.DiffusionModel:
    """The chords_core model of ``net`` under the scheduler conventions of ``smap``.

    Args:
        smap: the mapped scheduler.
        net: ``net(x_in, tau)`` on (N, ...) and (N,) tensors.
        check_outputs: check each output's shape, dtype and finiteness.

    Returns:
        ``DiffusionModel(Denoiser(net, smap), smap.schedule, smap.prediction)``.
    """
    return cc.DiffusionModel(Denoiser(net, smap), smap.schedule, smap.prediction, check_outputs=check_outputs)
