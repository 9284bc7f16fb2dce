"""Picklable model factories for tests, demos and benchmarks (usable as ``ProcessExecutor`` factories).

- ``TorchGMM``: the exact denoiser of a Gaussian mixture (``chords_core.problems``) on torch tensors,
  computed in float64 numpy row by row-invariant arithmetic, so every executor must reproduce the
  serial executor bit for bit.
- ``mlp``: a deterministic (seeded) MLP network ``fn(x, t)`` costing a tunable amount per call.
- ``Faulty``: wraps a factory's network to raise, return garbage (wrong shape, nan), hang or kill
  its own process on a chosen call, optionally only in one worker / rank.
- ``Trap``: the same faults, triggered by a marker value in the input (``Trap.MARKERS``), so one
  executor can be driven through every fault from the caller; ``Slow`` adds a sleep per call.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from chords_core.models import DiffusionModel
from chords_core.problems import GaussianMixture
from chords_core.results import Result
from chords_core.schedules import EDM, VP, RectifiedFlow, Schedule

__all__ = ["TorchGMM", "gmm_problem", "TorchLinear", "RunsOff", "mlp", "MLP", "Faulty", "Trap", "Slow", "SCHEDULES"]

SCHEDULES = {"rf": RectifiedFlow, "vp": VP.linear, "edm": EDM}


class TorchGMM:
    """``fn(x, t)`` -> the exact ``prediction`` of the GMM ``GaussianMixture.random(dim, modes, seed)``.

    x: (N, dim) float64 tensor, t: (N,) -> (N, dim) float64 tensor on x's device.
    """

    def __init__(self, dim: int = 4, modes: int = 3, seed: int = 0, schedule: str = "rf",
                 prediction: str = "x0") -> None:
        self.args = (dim, modes, seed, schedule, prediction)
        self.gmm = GaussianMixture.random(dim, modes, seed)
        self.schedule: Schedule = SCHEDULES[schedule]()
        self._fn = self.gmm.prediction_fn(self.schedule, prediction)

    def __reduce__(self) -> tuple[type, tuple]:
        return (TorchGMM, self.args)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact prediction at (x (N, dim), t (N,)), an (N, dim) float64 tensor on x's device."""
        out = self._fn(x.detach().cpu().numpy(), t.detach().cpu().numpy())
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def gmm_problem(dim: int = 4, modes: int = 3, seed: int = 0, schedule: str = "rf",
                prediction: str = "x0") -> tuple[DiffusionModel, Callable[[], TorchGMM]]:
    """The GMM as (driver model, factory): a ``DiffusionModel`` and the picklable network factory.

    Args:
        dim: the mixture's dimension.
        modes: its components.
        seed: its seed.
        schedule: "rf", "vp" or "edm" (``SCHEDULES``).
        prediction: the network's prediction type.

    Returns:
        (``DiffusionModel`` of a ``TorchGMM``, factory returning that ``TorchGMM``).
    """
    net = TorchGMM(dim, modes, seed, schedule, prediction)
    return DiffusionModel(net, net.schedule, prediction), _Const(net)


class _Const:
    """A picklable factory returning a picklable object."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


class RunsOff:
    """``f(t, y) = -15 y`` for a batched ``VectorField``, nan where ``|y| > 10``: far coarse jumps from
    y = 5 land there (a faster CHORDS core is retired), the sequential solution never does."""

    def __call__(self, t: Any, y: Any) -> Any:
        return torch.where(y.abs() > 10, torch.nan, -15.0 * y)


class TorchLinear:
    """``f(t, y) = A y`` for a ``VectorField`` (one state y of shape (dim,)), A seeded (dim, dim) float64."""

    def __init__(self, dim: int = 3, seed: int = 0) -> None:
        self.A = torch.randn(dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) / dim ** 0.5

    def __call__(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        """A y for one state y of shape (dim,) (t is ignored)."""
        return self.A.to(y.device) @ y


class MLP(torch.nn.Module):
    """x (N, dim), t (N,) -> (N, dim): tanh MLP with the time added to the first hidden layer."""

    def __init__(self, dim: int, width: int, depth: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        sizes = [dim] + [width] * depth + [dim]
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(a, b, generator=g, dtype=dtype) / a ** 0.5, requires_grad=False)
            for a, b in zip(sizes[:-1], sizes[1:]))
        self.time = torch.nn.Parameter(torch.randn(width, generator=g, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output (N, dim) at x (N, dim), t (N,)."""
        h = x
        for k, w in enumerate(self.weights):
            h = h @ w
            if k == 0:
                h = h + t.to(h.dtype)[:, None] * self.time
            if k < len(self.weights) - 1:
                h = torch.tanh(h)
        return h


def mlp(dim: int = 256, width: int = 1024, depth: int = 3, seed: int = 0, dtype: str = "float32") -> MLP:
    """Factory of a seeded ``MLP`` (identical in every worker)."""
    return MLP(dim, width, depth, seed, getattr(torch, dtype)).eval()


class Faulty:
    """Factory whose network misbehaves on its ``after``-th call (1-based, counted per process).

    ``mode``: "raise" (RuntimeError), "shape" (drops the last column), "nan", "hang" (sleeps an
    hour), "gil" (hangs holding the GIL: a regex that backtracks for ever, as native code may), "exit"
    (``sys.exit(0)``, as a script's stray exit would), "die" (SIGKILLs its own process) or "inplace"
    (halves its input in place, after computing its output). ``only``:
    misbehave only where the environment variable ``only[0]`` equals ``only[1]`` (e.g.
    ("CHORDS_TORCH_WORKER", "1") or ("RANK", "2")).
    """

    MODES = ("raise", "shape", "nan", "hang", "gil", "exit", "die", "inplace")

    def __init__(self, factory: Callable, mode: str, after: int = 1, only: tuple[str, str] | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.factory, self.mode, self.after, self.only = factory, mode, after, only

    def __call__(self) -> Callable:
        """The wrapped factory's network, misbehaving as configured."""
        return _FaultyNet(self.factory(), self.mode, self.after, self.only)


class _FaultyNet:
    def __init__(self, net: Callable, mode: str, after: int, only: tuple[str, str] | None) -> None:
        self.net, self.mode, self.after, self.only, self.calls = net, mode, after, only, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.net(x, t)
        if self.calls < self.after or (self.only and os.environ.get(self.only[0]) != self.only[1]):
            return out
        if self.mode == "inplace":
            x.mul_(0.5)
            return out
        return _misbehave(self.mode, out)


def _misbehave(mode: str, out: torch.Tensor) -> torch.Tensor:
    if mode == "raise":
        raise RuntimeError(f"injected failure in pid {os.getpid()}")
    if mode == "shape":
        return out[..., :-1]
    if mode == "nan":
        return out * float("nan")
    if mode == "hang":
        time.sleep(3600)
    if mode == "gil":
        re.match(r"(a+)+$", "a" * 64 + "b")  # 2^64 steps, the GIL held throughout
    if mode == "exit":
        sys.exit(0)
    os.kill(os.getpid(), 9)
    time.sleep(3600)
    raise AssertionError("unreachable: the process was killed")


class Trap:
    """Factory: ``factory()``'s network, misbehaving when the input's first element is a marker.

    ``Trap.MARKERS[mode]`` is the value that triggers ``mode`` (see ``Faulty``).
    """

    MARKERS = {"raise": 1001.0, "shape": 1002.0, "nan": 1003.0, "hang": 1004.0, "die": 1005.0, "exit": 1006.0}

    def __init__(self, factory: Callable) -> None:
        self.factory = factory

    def __call__(self) -> Callable:
        """The wrapped factory's network, misbehaving on the markers."""
        return _TrapNet(self.factory())


class _TrapNet:
    def __init__(self, net: Callable) -> None:
        self.net, self.modes = net, {v: k for k, v in Trap.MARKERS.items()}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.net(x, t)
        mode = self.modes.get(float(x.reshape(-1)[0]))
        return out if mode is None else _misbehave(mode, out)


class Slow:
    """Factory: ``factory()``'s network, sleeping ``seconds`` before every call."""

    def __init__(self, factory: Callable, seconds: float) -> None:
        self.factory, self.seconds = factory, seconds

    def __call__(self) -> Callable:
        """The wrapped factory's network, sleeping before every call."""
        net = self.factory()

        def slow(x: Any, t: Any) -> Any:
            time.sleep(self.seconds)
            return net(x, t)

        return slow


def seeded_state(batch: int = 3, dim: int = 4, seed: int = 1) -> torch.Tensor:
    """A float64 standard-normal state (batch, dim) from a fixed seed."""
    return torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def same_hits(a: Result, b: Result) -> bool:
    """Whether two Results have the same outputs from the same cores, bit for bit.

    Args:
        a: a ``Result`` with torch outputs.
        b: another.

    Returns:
        True if their hits agree in number, cores and values (``torch.equal``).
    """
    return len(a.hits) == len(b.hits) and all(
        h.core == g.core and torch.equal(h.x, g.x) for h, g in zip(a.hits, b.hits))
