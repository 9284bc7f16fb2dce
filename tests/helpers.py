"""Small helpers shared by test modules (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def rel_err(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors relative to max(1, |b|)."""
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def interpret(prog: Any, x: np.ndarray, fn: Any) -> np.ndarray:
    """A lowered chords_jax program (``Program``) run with numpy, segment by segment: the replay and
    lowering checked independently of jax. Returns the final register buffer (rows, x.size)."""
    buf = prog.init[:, None] * x.reshape(1, -1)
    for seg in prog.segments:
        for _, points, t, _, dest, idx, coef, out_idx, out_coef in zip(*prog.segment_arrays(seg)):
            pts = buf[points].reshape((-1,) + x.shape[1:])
            outs = fn(pts, np.repeat(t, x.shape[0])).reshape(len(points), -1)
            buf[dest] = np.einsum("wm,wmn->wn", coef, buf[idx]) + np.einsum("wm,wmn->wn", out_coef, outs[out_idx])
    return buf


def mixture_problem(schedule: Any, prediction: str, steps: int, seed: int = 3, batch: int = 64, dim: int = 16,
                    spacing: str = "uniform", x_seed: int = 1) -> tuple[Any, np.ndarray, np.ndarray, Any]:
    """A held-out test problem: a ``dim``-D 4-mode Gaussian mixture (``GaussianMixture.random(dim, 4,
    seed)``) as a model on ``schedule`` with ``prediction``, ``batch`` standard normal samples (seed
    ``x_seed``) and a ``steps``-step grid of ``spacing``. Returns (model, x, grid, err), where
    ``err(y)`` is the RMS of y (any float dtype) against the exact solution."""
    import chords_core as cc
    from chords_core.problems import GaussianMixture

    gmm = GaussianMixture.random(dim, 4, seed=seed)
    x = np.random.default_rng(x_seed).standard_normal((batch, dim))
    grid = cc.time_grid(schedule, steps, spacing)
    exact = gmm.reference_solve(x, grid[0], grid[-1], schedule)

    def err(y: Any) -> float:
        return float(np.sqrt(np.mean((np.asarray(y, np.float64) - exact) ** 2)))

    return gmm.model(schedule, prediction), x, grid, err


_WHERE = re.compile(r"round (\d+), core \d+ \(step \d+, stage \d+, t=[^)]*\)")


def first_nonfinite(run: Callable[[], Any]) -> str | None:
    """The core's words for the first non-finite output of ``run()`` (a ``chords_core.chords`` call),
    "round r, core c (step i, stage k, t=..)", or None. The core retires a faster core whose output is
    not finite and goes on (its ``stopped_by``, or the error core 0 raises later, names it), where
    ``chords_jax`` raises at the first: the earliest round named is that one (no round was evaluated
    again before it)."""
    from chords_core import ModelOutputError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the retirements' RuntimeWarning)
        try:
            text = run().stopped_by
        except ModelOutputError as err:
            text = str(err)
    found = [(int(m.group(1)), m.group(0)) for m in _WHERE.finditer(text)]
    return min(found)[1] if found else None


def never_accepts(needed: int | None = 2, decides_on_values: bool = True) -> Any:
    """A tolerance-type stop rule (it warns when unmet) that accepts no output and needs ``needed`` of
    them (``None``: all the cores make)."""
    import chords_core as cc

    class Never(cc.StopRule):
        warns_if_unmet = True

        def outputs_needed(self, available):
            return available if needed is None else needed

        def accept(self, outputs, coarse):
            return False

    rule = Never()
    rule.decides_on_values = decides_on_values
    return rule



def build_under_lock(lock: Any, factory: Callable) -> Any:
    """A worker factory that builds its model holding a multiprocessing lock (one worker at a time
    loading weights, say): the lock travels to the worker only while it is spawned."""
    with lock:
        return factory()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port for a process group that the test's processes bind later: below the system's
    ephemeral range (outgoing connections and ``bind(0)``, of this test's processes or of a test
    running beside it under pytest-xdist, never take it while the ranks start up), in a band of its
    own per xdist worker, and free when asked. Falls back to ``bind(0)`` where no such band exists."""
    import os
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    band = 1000
    start = 20000 + band * index
    rng = random.Random()
    for _ in range(50 if start + band <= ephemeral else 0):
        port = rng.randrange(start, start + band)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def conv_net(out_order: str = "as given", channels: int = 4) -> Callable:
    """A worker factory: a 3x3 convolution of ``channels`` channels plus a GroupNorm-like per-sample
    normalisation, a network whose rounding depends on the memory layout of its input (channels_last
    or not); its output in its input's order ("as given"), or made C-ordered ("C") or channels_last
    ("channels_last")."""
    import torch

    kernel = torch.linspace(-0.3, 0.3, channels * channels * 9, dtype=torch.float64).reshape(channels, channels, 3, 3)
    fmt = {"C": torch.contiguous_format, "channels_last": torch.channels_last}.get(out_order)

    def net(x: Any, t: Any) -> Any:
        y = torch.nn.functional.conv2d(x, kernel.to(x.dtype), padding=1)
        y = torch.nn.functional.group_norm(y, min(2, channels)) * 0.3 + 0.1 * x
        return y if fmt is None else y.contiguous(memory_format=fmt)

    return net
