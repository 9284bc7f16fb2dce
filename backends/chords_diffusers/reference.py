"""The scheduler's own sequential loop, the reference chords_diffusers reproduces.

``scheduler_loop(scheduler, net, latents)`` runs the loop every diffusers pipeline runs:
for each timestep tau: x_in = scale_model_input(x, tau); out = net(x_in, tau (B,)); x = step(out, tau, x).
The scheduler must already be configured (``set_timesteps``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["scheduler_loop"]


def scheduler_loop(scheduler: Any, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   latents: torch.Tensor) -> torch.Tensor:
    """Sample with the scheduler's own sequential loop (``scheduler.step``), the reference.

    Args:
        scheduler: a configured diffusers scheduler (``set_timesteps`` called); deep-copied, so the
            caller's is left as it was.
        net: ``net(x_in, tau)`` with x_in (B, ...) and tau of shape (B,).
        latents: (B, ...) initial latents.

    Returns:
        The final latents (B, ...).
    """
    x = latents
    scheduler = copy.deepcopy(scheduler)  # leave the caller's scheduler as it was
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = None  # a fresh pass over the same timesteps
    if hasattr(scheduler, "model_outputs"):
        scheduler.model_outputs = [None] * len(scheduler.model_outputs)
        scheduler.lower_order_nums = 0
    if hasattr(scheduler, "last_sample"):
        scheduler.last_sample = None
    for tau in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, tau) if hasattr(scheduler, "scale_model_input") else x
        out = net(x_in, tau.expand(x.shape[0]))
        x = scheduler.step(out, tau, x, return_dict=False)[0]
    return x
